"""Open-vocabulary splits: which categories of a dataset are *novel* (never boxed in training).

``novel_categories(spec, categories)`` reads ``--novel``:

- ``rare``: LVIS's rare categories, from the annotation file's ``frequency`` field ("r"); base are
  the frequent and common ones (866 base / 337 novel in LVIS v1);
- ``coco17``: the 17 novel categories of the COCO open-vocabulary split (:data:`COCO_NOVEL`;
  48 base, the other 15 of COCO's 80 are in neither);
- a file, one category name per line;
- names separated by commas (``"7,8,9"``).

Names are matched against the dataset's category names after ViLD's cleaning (case, ``_``); a
name the dataset does not have is an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vvk.errors import VvkError
from vvk.methods.vild.text import clean_name

# The COCO open-vocabulary split of Bansal et al. (ECCV 2018), as ViLD and OVR-CNN use it.
COCO_NOVEL = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard",
    "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
)  # fmt: skip


def novel_categories(spec: str, categories: Sequence[dict[str, Any]]) -> list[int]:
    """The ids of the novel categories ``spec`` names among ``categories`` (module docstring);
    ``""``: none."""
    if not spec:
        return []
    if spec == "rare":
        if not any("frequency" in c for c in categories):
            raise VvkError(
                "novel=rare: the categories have no 'frequency' field (not LVIS)", params=("novel",)
            )
        return [int(c["id"]) for c in categories if c.get("frequency") == "r"]
    if spec == "coco17":
        names: list[str] = list(COCO_NOVEL)
    elif os.path.isfile(spec):
        try:
            names = [
                line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        except (OSError, UnicodeDecodeError) as e:
            raise VvkError(f"novel={spec}: cannot read it ({type(e).__name__})", params=("novel",)) from None
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise VvkError(f"novel={spec}: no category names in it", params=("novel",))
    by_name = {clean_name(str(c["name"])): int(c["id"]) for c in categories}
    missing = [n for n in names if clean_name(n) not in by_name]
    if missing:
        raise VvkError(
            f"novel={spec}: the dataset has no category '{missing[0]}'"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            params=("novel",),
        )
    ids = [by_name[clean_name(n)] for n in names]
    if len(set(ids)) != len(ids):
        raise VvkError(f"novel={spec}: a category is named twice", params=("novel",))
    if len(ids) == len(categories):
        raise VvkError(f"novel={spec}: every category would be novel; nothing is left to train on",
                       params=("novel",))  # fmt: skip
    return ids


def base_and_novel(categories: Sequence[dict[str, Any]], novel_ids: Sequence[int]) -> dict[str, list[int]]:
    """The category ids to score apart: ``{"base": [...], "novel": [...]}`` ({} when none is
    novel: the whole vocabulary is the only split)."""
    if not novel_ids:
        return {}
    return {"base": [int(c["id"]) for c in categories if c["id"] not in novel_ids], "novel": list(novel_ids)}
