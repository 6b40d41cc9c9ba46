"""Asking a query-modulated detector (``qmd-*``) about image files: the query side of ``vvk detect``.

::

    queries = read_queries("queries.txt")                       # one a line, blank lines ignored
    summary = detect_images(images, weights="runs/qmd", queries=["mug", *queries], min_score=0.3)

Each image is run once per query (``predict_images(queries=...)``). A query's answers are labelled
1 by the model; ``predict_images`` relabels the answers to query ``j`` as ``j + 1``, so that
``query_categories`` (entry ``j`` names query ``j``) serves ``records_of`` and drawings unchanged.
A record of an answer carries ``"query"``; a pair (image, query) answered with nothing still gets
one record (``unanswered_record``), so a pipeline, and ``vvk eval detections --queries``, sees
every pair asked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vvk.errors import VvkError
from vvk.models.detectors.qmd import QueryModulatedRetinaNet

Categories = list[dict[str, Any]]


def read_queries(path: str | os.PathLike) -> list[str]:
    """The queries of a text file, one a line (stripped; blank lines ignored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VvkError(f"queries_file={path}: cannot read it as text ({type(e).__name__})",
                       params=("queries_file",)) from None  # fmt: skip
    queries = [line.strip() for line in lines if line.strip()]
    if not queries:
        raise VvkError(f"queries_file={path}: no queries in it (one per line)", params=("queries_file",))
    return queries


def check_queries(model: nn.Module, queries: Sequence[str], *, weights: str) -> list[str]:
    """``queries``, refused before any image is read when ``model`` takes none or one is empty,
    or when its query encoder refuses one (the model's own error: an unknown label names the
    close ones)."""
    if not isinstance(model, QueryModulatedRetinaNet):
        raise VvkError(
            f"weights={weights}: a {type(model).__name__}, which takes no queries "
            "(they need a qmd-* detector: vvk train detector --method qmd)",
            params=("queries", "weights"),
        )
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise VvkError(f"queries={query!r}: an empty query (query {i + 1} of {len(queries)})",
                           params=("queries",))  # fmt: skip
    with torch.no_grad():
        model.adapter.encoder(list(queries))  # embeds (and so checks) each query once, here
    return list(queries)


def check_unqueried(model: nn.Module) -> None:
    """A qmd detector that is not multitask finds only what a query asks for: refuse to run it
    without one, before any image is read (its forward would refuse each batch)."""
    if isinstance(model, QueryModulatedRetinaNet) and not model.multitask:
        raise VvkError(
            "queries: this detector finds only what a query asks for; give at least one",
            params=("queries",),
        )


def query_categories(model: nn.Module, queries: Sequence[str]) -> Categories:
    """Entry ``j`` names query ``j``: its text, and the id of the model's category of that name
    (None for a text query that is no category's name)."""
    ids = {c["name"]: c["id"] for c in model.categories}
    return [{"id": ids.get(query), "name": query} for query in queries]


def unanswered_record(image: str, query: str, *, image_id: int | None = None) -> dict[str, Any]:
    """The record of a pair answered with nothing: a detection record's keys, values null."""
    record: dict[str, Any] = {"image": image}
    if image_id is not None:
        record["image_id"] = image_id
    record.update(query=query, category=None, category_id=None, score=None, bbox=None)
    return record


def merged(parts: Sequence[Any]) -> Any:
    """One image's ``Prediction``s, one per query, as one (its labels tell the queries apart):
    what the image's one drawing shows."""
    from dataclasses import replace

    masks = [p.masks for p in parts]
    return replace(
        parts[0], query=None, boxes=torch.cat([p.boxes for p in parts]),
        scores=torch.cat([p.scores for p in parts]), labels=torch.cat([p.labels for p in parts]),
        masks=None if any(m is None for m in masks) else torch.cat(masks),
    )  # fmt: skip
