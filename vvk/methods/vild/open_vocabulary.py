"""A new vocabulary for a trained ViLD detector: ``vvk detect --vocab "red mug,stapler,cat"``.

``--vocab`` for a ViLD detector is any list of categories: ``coco`` (its 80), a file with one
category a line (synonyms after the name, separated by commas: ``bow tie, bowtie``), a JSON list of
``{"id", "name", "synonyms"}`` (or an annotation file: its ``categories``, LVIS's synonyms
included), or names separated by commas. Each category is embedded by the teacher the detector
was trained with (cached: ``vvk.methods.vild.vocabulary``); a category named like one the
detector was trained with boxes of counts as base for the ensemble, any other as novel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vvk.errors import VvkError
from vvk.methods.vild.text import clean_name


def parse_vocabulary(spec: str) -> list[list[str]]:
    """The categories ``spec`` names, each a list of synonyms (the name first); an empty list or
    a category named twice is an error naming ``vocab``."""
    from vvk.models.detectors.common import coco_categories

    if spec == "coco":
        vocabulary = [[c["name"]] for c in coco_categories()]
    elif spec == "lvis":
        raise VvkError(
            "vocab=lvis: vvk does not ship LVIS's category names",
            hint="give an LVIS annotation file (lvis_v1_val.json): its categories, with synonyms",
            params=("vocab",),
        )
    elif os.path.isfile(spec):
        vocabulary = _read_file(Path(spec))
    else:
        vocabulary = [[name.strip()] for name in spec.split(",") if name.strip()]
    if not vocabulary:
        raise VvkError(f"vocab={spec}: no category names in it", params=("vocab",))
    seen: dict[str, int] = {}
    for index, names in enumerate(vocabulary):
        key = clean_name(names[0])
        if key in seen:
            raise VvkError(f"vocab={spec}: '{names[0]}' is named twice (categories {seen[key] + 1} and "
                           f"{index + 1})", params=("vocab",))  # fmt: skip
        seen[key] = index
    return vocabulary


def _read_file(path: Path) -> list[list[str]]:
    if path.suffix.lower() == ".json":
        from vvk.data.coco import read_json

        data = read_json(path)
        data = data.get("categories", data) if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(c, dict) and c.get("name") for c in data):
            raise VvkError(f"vocab={path}: expected a list of {{'id', 'name'}} categories", params=("vocab",))
        return [[str(c["name"]), *(str(s) for s in c.get("synonyms", ()) if s != c["name"])] for c in data]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VvkError(
            f"vocab={path}: cannot read it as text ({type(e).__name__})", params=("vocab",)
        ) from None
    return [[name.strip() for name in line.split(",") if name.strip()] for line in lines if line.strip()]


def apply_vocabulary(model: nn.Module, spec: str) -> list[dict[str, Any]]:
    """Give the ViLD ``model`` the vocabulary ``spec`` names; returns its categories (ids 1..K)."""
    from vvk.methods.vild.teacher import load_teacher
    from vvk.methods.vild.vocabulary import vocabulary_embeddings
    from vvk.models.detectors.vild import set_vocabulary

    vocabulary = parse_vocabulary(spec)
    if not getattr(model, "teacher", None):
        raise VvkError("vocab: the detector does not record its teacher, so new names cannot be embedded",
                       params=("vocab",))  # fmt: skip
    device = next(model.parameters()).device
    embeddings = vocabulary_embeddings(load_teacher(model.teacher, device=device), vocabulary)
    flags = model.roi_heads.base.tolist()
    trained = {clean_name(c["name"]) for c, base in zip(model.categories, flags, strict=True) if base}
    base = torch.tensor([clean_name(names[0]) in trained for names in vocabulary])
    categories = [{"id": i, "name": names[0]} for i, names in enumerate(vocabulary, start=1)]
    set_vocabulary(model, embeddings.to(device), categories=categories, base=base)
    return categories
