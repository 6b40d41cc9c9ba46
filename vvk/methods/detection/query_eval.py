"""Query-conditioned AP: how well a detector finds what a query asks for (Fornoni et al., arXiv
2106.10258), scored on an ordinary COCO validation set.

::

    from vvk.methods.detection.query_eval import evaluate_queries, filtered_detector, query_detector

    gt = load_ground_truth(val_coco)
    evaluate_queries(query_detector(qmd_model), val_coco, gt)        # {"query_AP", "query_AP50", ...}
    evaluate_queries(filtered_detector(retinanet), val_coco, gt)     # the paper's baseline

Each val image is asked for every category it holds (positive pairs) and for one category it
lacks (a negative pair, drawn once from a fixed seed, so every evaluation asks the same). Each
(image, query) pair is a pseudo-image of one category, "the queried thing": its ground truth is
the queried category's boxes in the image (none for a negative), its detections the detector's
answer to the query. One pycocotools evaluation over all pairs pools them: a box answered to a
negative query is a false positive that ranks against the true answers of every other pair.

A detector is any callable ``(images, queries) -> detections``: a list of (3, H, W) images, one
category name each, and one ``{"boxes" (XYXY, image pixels), "scores", "labels"}`` per image with
labels 1 (the answer); ``query_detector`` and ``filtered_detector`` make one from a model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vvk.data.coco import CocoDataset
from vvk.data.detection import DetectionImages
from vvk.engine import autocast
from vvk.errors import VvkError
from vvk.methods.detection.evaluate import gather_on_rank_zero, merge_parts, rank_and_world, to_coco_results

QueryDetector = Callable[[list[Tensor], list[str]], list[dict[str, Tensor]]]
QUERIED = {"id": 1, "name": "queried"}  # the one category of every pseudo-image: label 1
NEGATIVE_SEED = 0  # fixed, not the run's: every run and evaluation asks the same negatives


@dataclass(frozen=True)
class QueryPair:
    """One val image asked for one category: ``positive`` when the image holds it."""

    image_id: int
    category_id: int
    positive: bool


def query_pairs(ground_truth: Any, image_ids: Sequence[int], *, seed: int = NEGATIVE_SEED) -> list[QueryPair]:
    """The pairs of ``image_ids`` (in that order): each category with a non-crowd object in the
    image, then one category absent from it (crowd regions count as present, as in training),
    drawn from ``[seed, image_id]``; none when the image holds every category."""
    categories = np.array(sorted(ground_truth.category_ids), dtype=np.int64)  # (K,)
    objects, present = _categories_by_image(ground_truth)
    pairs = []
    for image_id in image_ids:
        pairs += [QueryPair(image_id, c, True) for c in sorted(objects.get(image_id, ()))]
        absent = np.setdiff1d(categories, sorted(present.get(image_id, ())))  # (m,)
        if len(absent):
            rng = np.random.default_rng([seed, int(image_id)])
            pairs.append(QueryPair(image_id, int(absent[rng.integers(len(absent))]), False))
    return pairs


def _categories_by_image(ground_truth: Any) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    objects: dict[int, set[int]] = {}
    present: dict[int, set[int]] = {}
    for a in ground_truth.api.dataset["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
        if not a.get("iscrowd", 0):
            objects.setdefault(a["image_id"], set()).add(a["category_id"])
    return objects, present


def pair_ground_truth(ground_truth: Any, pairs: Sequence[QueryPair]) -> dict[str, Any]:
    """A COCO instances dict whose image ``i`` is ``pairs[i]`` (ids from 0), with the queried
    category's annotations of that image as category 1."""
    by_key: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for a in ground_truth.api.dataset["annotations"]:
        by_key.setdefault((a["image_id"], a["category_id"]), []).append(a)
    images, annotations = [], []
    for i, pair in enumerate(pairs):
        height, width = ground_truth.image_sizes[pair.image_id]
        images.append({"id": i, "height": height, "width": width})
        for a in by_key.get((pair.image_id, pair.category_id), []):
            box = {"bbox": a["bbox"], "area": a["area"], "iscrowd": a.get("iscrowd", 0)}
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": QUERIED["id"], **box}
            )
    return {"images": images, "annotations": annotations, "categories": [QUERIED]}


def pair_results(detections: Sequence[dict[str, Tensor]], pair_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO result records of the answers ``detections`` to the pairs ``pair_ids`` (pseudo-image ids)."""
    return to_coco_results(detections, pair_ids, [QUERIED])


def score_queries(
    ground_truth: Any, pairs: Sequence[QueryPair], results: list[dict[str, Any]], pair_ids: Sequence[int]
) -> dict[str, float]:
    """``{"query_AP", "query_AP50", "query_pairs", "negative_pairs"}`` of the pooled evaluation
    of ``results`` (``pair_results``) on the pairs ``pair_ids`` (the ones answered); -1 where
    pycocotools leaves AP undefined (no positive pair)."""
    from vvk.eval.detection import evaluate_detections

    found = evaluate_detections(pair_ground_truth(ground_truth, pairs), results, iou_type="bbox",
                                image_ids=list(pair_ids))  # fmt: skip
    negatives = sum(not pairs[i].positive for i in pair_ids)
    return {"query_AP": round(found["AP"], 6), "query_AP50": round(found["AP50"], 6),
            "query_pairs": len(pair_ids), "negative_pairs": negatives}  # fmt: skip


@torch.no_grad()
def predict_queries(
    detect: QueryDetector,
    coco: CocoDataset,
    pairs: Sequence[QueryPair],
    pair_ids: Sequence[int],
    *,
    batch_size: int = 8,
) -> tuple[list[dict[str, Any]], list[int], list[dict[str, str]]]:
    """``(result records, pairs answered, skipped-image records)`` of ``detect`` on the pairs
    ``pair_ids`` of ``coco``'s images: ``batch_size`` pairs per call, each image read once."""
    names = {int(c["id"]): c["name"] for c in coco.categories}
    images = DetectionImages(coco)
    position = {int(image_id): i for i, image_id in enumerate(images.image_ids)}
    results: list[dict[str, Any]] = []
    done: list[int] = []
    skipped: list[dict[str, str]] = []
    for batch in _batches(pair_ids, pairs, batch_size):
        pixels: dict[int, Tensor | None] = {}
        for i in batch:
            image_id = pairs[i].image_id
            if image_id not in pixels:
                pixels[image_id], info = images[position[image_id]]
                skipped.extend(info["skipped"])
        batch = [i for i in batch if pixels[pairs[i].image_id] is not None]
        if batch:
            answers = detect(
                [pixels[pairs[i].image_id] for i in batch], [names[pairs[i].category_id] for i in batch]
            )
            results += pair_results(answers, batch)
            done += batch
    return results, done, skipped


def _batches(pair_ids: Sequence[int], pairs: Sequence[QueryPair], size: int) -> Iterator[list[int]]:
    """Runs of ``size`` pairs; an image's pairs are consecutive, so a run reads few images."""
    ordered = sorted(pair_ids, key=lambda i: pairs[i].image_id)
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def evaluate_queries(
    detect: QueryDetector, coco: CocoDataset, ground_truth: Any, *, max_images: int = 0, batch_size: int = 8
) -> dict[str, Any]:
    """Query-conditioned AP of ``detect`` on the first ``max_images`` images of ``coco`` (0: all)."""
    started = time.perf_counter()
    pairs = query_pairs(ground_truth, first_images(coco, max_images))
    results, done, skipped = predict_queries(detect, coco, pairs, range(len(pairs)), batch_size=batch_size)
    scores = score_queries(ground_truth, pairs, results, done) if done else {}
    return {**scores, "skipped_images": len(skipped), "eval_seconds": round(time.perf_counter() - started, 3)}


def first_images(coco: CocoDataset, max_images: int) -> list[int]:
    """The ids of ``coco``'s first ``max_images`` images (0: all), as ``predict_coco`` takes them."""
    ids = [int(i) for i in coco.images]
    return ids if max_images <= 0 else ids[:max_images]


def query_detector(model: nn.Module, *, precision: str = "fp32") -> QueryDetector:
    """A query-modulated detector (``qmd-*``) as a ``QueryDetector``: one forward pass per call."""

    def detect(images: list[Tensor], queries: list[str]) -> list[dict[str, Tensor]]:
        return _run(model, images, precision, queries=queries)

    return detect


def filtered_detector(model: nn.Module, *, precision: str = "fp32") -> QueryDetector:
    """A standard detector (labels 1..K of ``model.categories``) as a ``QueryDetector``: its
    detections of the queried category, relabelled 1 (the paper's baseline)."""
    labels = {c["name"]: k + 1 for k, c in enumerate(model.categories)}

    def detect(images: list[Tensor], queries: list[str]) -> list[dict[str, Tensor]]:
        outputs = _run(model, images, precision)
        return [_answer(out, labels[query]) for out, query in zip(outputs, queries, strict=True)]

    return detect


def _answer(detections: dict[str, Tensor], label: int) -> dict[str, Tensor]:
    keep = detections["labels"] == label  # (N,) bool
    return {"boxes": detections["boxes"][keep], "scores": detections["scores"][keep],
            "labels": torch.ones_like(detections["labels"][keep])}  # fmt: skip


def _run(model: nn.Module, images: list[Tensor], precision: str, **options: Any) -> list[dict[str, Tensor]]:
    model.eval()
    device = next(model.parameters()).device
    with autocast(device, precision):
        return model([image.to(device) for image in images], **options)


class QueryValEvaluation:
    """The in-training evaluation of a query-modulated detector (a ``vvk.engine.Every``
    function): its query-conditioned AP, plus ``standard``'s scores (a multitask model's box AP
    without queries, ``ValEvaluation``). Every rank answers its share of the pairs, rank 0
    scores them all; the other ranks return None."""

    def __init__(
        self,
        coco: CocoDataset,
        *,
        batch_size: int,
        precision: str,
        max_images: int,
        ground_truth: Any,
        standard: Callable[[nn.Module, int], dict[str, Any] | None] | None = None,
    ):
        self.coco, self.ground_truth, self.standard = coco, ground_truth, standard
        self.batch_size, self.precision = batch_size, precision
        self.pairs = query_pairs(ground_truth, first_images(coco, max_images))

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any] | None:
        scores = self.standard(model, step) if self.standard is not None else {}
        rank, world = rank_and_world()
        started = time.perf_counter()
        detect = query_detector(model, precision=self.precision)
        part = predict_queries(detect, self.coco, self.pairs, range(rank, len(self.pairs), world),
                               batch_size=self.batch_size)  # fmt: skip
        parts = gather_on_rank_zero(part)
        if parts is None:
            return None
        results, done, skipped_records = merge_parts(parts)
        skipped = {s["path"] for s in skipped_records}
        queried = score_queries(self.ground_truth, self.pairs, results, done) if done else {}
        seconds = round(time.perf_counter() - started, 3)
        images = len({self.pairs[i].image_id for i in done})
        # a multitask model's standard figures keep their names; the query pass adds its own time
        return {"images": images, "skipped_images": len(skipped), **scores, **queried,
                "query_eval_seconds": seconds}  # fmt: skip


def score_answered_pairs(
    ground_truth: Any, records: Sequence[Any], *, name: str = "results"
) -> dict[str, Any]:
    """Query-conditioned AP of a results list whose records carry ``"query"`` (a category name of
    ``ground_truth``), as ``vvk detect --query ... --format coco-results`` writes it. The pairs
    scored are exactly the (image_id, query) pairs the records answer, in order of first answer;
    a pair's ground truth is the queried category's boxes in that image (none: a negative pair).
    A record with a null bbox (a pair answered with nothing) adds its pair and no detection."""
    ids = {ground_truth.api.cats[c]["name"]: c for c in sorted(ground_truth.category_ids)}
    objects, _ = _categories_by_image(ground_truth)
    index: dict[tuple[int, int], int] = {}
    results = []
    for i, record in enumerate(records):
        image_id, category_id = _answered_pair(record, i, ids, ground_truth.image_sizes, name=name)
        pair = index.setdefault((image_id, category_id), len(index))
        if record.get("bbox") is not None:
            results.append({"image_id": pair, "category_id": QUERIED["id"], "bbox": record["bbox"],
                            "score": record.get("score")})  # fmt: skip
    if not index:
        raise VvkError(f"{name}: no records, so no (image, query) pair to score")
    pairs = [QueryPair(image, c, c in objects.get(image, ())) for image, c in index]
    return score_queries(ground_truth, pairs, results, range(len(pairs)))


def _answered_pair(
    record: Any, i: int, ids: dict[str, int], image_sizes: dict[int, Any], *, name: str
) -> tuple[int, int]:
    """``(image_id, category_id)`` of one results record, or a one-line error naming it."""
    import difflib

    if not isinstance(record, dict) or not isinstance(record.get("query"), str):
        raise VvkError(f"{name}[{i}]: no 'query' (a category name), as `vvk detect --query` writes")
    query, image_id = record["query"], record.get("image_id")
    if query not in ids:
        close = difflib.get_close_matches(query, list(ids))
        raise VvkError(f"{name}[{i}].query: {query!r} is no category of the ground truth",
                       hint=f"close: {', '.join(close)}" if close else None)  # fmt: skip
    if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id not in image_sizes:
        raise VvkError(f"{name}[{i}].image_id: {image_id!r} is no image of the ground truth")
    return image_id, ids[query]
