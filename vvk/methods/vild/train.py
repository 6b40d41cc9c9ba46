"""What ``vvk train detector --method vild...`` adds to a detector run (``vvk.methods.detection.train``).

:func:`plan_vild` resolves, before anything trains: the teacher, the novel categories of the
split (their annotations leave the training targets, their pixels stay), the regions folder
(checked against the training images and the teacher; distilling methods need one) and the text
embeddings of every category. The run then

- builds the ``vild-*`` model with the teacher's width and the *base* categories' embeddings
  (the training classes: background + base, novel never among them);
- feeds the dataset the regions (:class:`~vvk.data.detection.DetectionDataset` ``regions``);
- evaluates with every category's embedding and the base mask, reporting AP on the base and the
  novel categories apart (``base_bbox_AP50``, ``novel_bbox_AP50``, ...);
- exports the detector with the whole vocabulary, so that ``vvk detect`` finds novel categories.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vvk.data.coco import CocoDataset
from vvk.errors import VvkError
from vvk.methods.detection.preset import ViLDSettings
from vvk.methods.vild.regions import RegionStore
from vvk.methods.vild.split import base_and_novel, novel_categories
from vvk.methods.vild.teacher import Teacher, load_teacher
from vvk.methods.vild.vocabulary import category_synonyms, vocabulary_embeddings

# The built-in example's open-vocabulary split: three of its ten digits are never boxed.
DEMO_NOVEL = "7,8,9"


@dataclass(frozen=True)
class ViLDPlan:
    """A ViLD run's teacher, split, regions and text embeddings (:func:`plan_vild`).

    Attributes:
        categories: every category of the dataset, in the file's order.
        novel_ids: the ids of the novel ones.
        embeddings: (K, D) text embeddings of ``categories``.
    """

    settings: ViLDSettings
    teacher: Teacher = field(repr=False)
    categories: list[dict[str, Any]]
    novel_ids: tuple[int, ...]
    regions: RegionStore | None = field(repr=False)
    embeddings: Tensor = field(repr=False)

    @property
    def base_mask(self) -> Tensor:
        return torch.tensor([c["id"] not in self.novel_ids for c in self.categories], device="cpu")

    @property
    def base_categories(self) -> list[dict[str, Any]]:
        return [c for c in self.categories if c["id"] not in self.novel_ids]

    def splits(self) -> dict[str, list[int]]:
        """Category ids to score apart: ``base`` and ``novel`` (when the split has novel ones)."""
        return base_and_novel(self.categories, self.novel_ids)

    def build_options(self) -> dict[str, Any]:
        return {"method": self.settings.method, "embedding_dim": self.teacher.dim,
                "distill_weight": self.settings.distill_weight, "teacher": self.settings.teacher}  # fmt: skip

    def dataset_options(self) -> dict[str, Any]:
        return {"exclude_categories": self.novel_ids, "regions": self.regions}

    def train_vocabulary(self, model: nn.Module) -> None:
        """The training classes: the base categories' embeddings; the novel ones absent."""
        from vvk.models.detectors.vild import set_vocabulary

        base = self.base_mask
        set_vocabulary(
            model, self.embeddings[base], categories=self.base_categories, absent=int((~base).sum())
        )

    def full_vocabulary(self, model: nn.Module) -> None:
        """Every category, the novel ones marked (what evaluation and the exported model use)."""
        from vvk.models.detectors.vild import set_vocabulary

        set_vocabulary(model, self.embeddings, categories=self.categories, base=self.base_mask)

    @contextmanager
    def evaluating(self, model: nn.Module) -> Iterator[None]:
        self.full_vocabulary(model)
        try:
            yield
        finally:
            self.train_vocabulary(model)


def plan_vild(
    settings: ViLDSettings,
    train: CocoDataset,
    *,
    regions: str | os.PathLike | None,
    demo: bool,
) -> ViLDPlan:
    """Resolve and check a ViLD run's teacher, split, regions and text embeddings.

    Args:
        regions: the ``vvk detect embed-regions`` folder of ``train`` (None: none; without data,
            the built-in example's, made once into the cache).
        demo: ``train`` is the built-in example's train split.
    """
    from vvk.data.detection import categories_of

    categories = [dict(c) for c in train.categories]  # with LVIS's synonyms and frequency, if any
    novel = novel_categories(settings.novel, categories)
    teacher = load_teacher(settings.teacher)
    distills = settings.method != "vild-text"
    store = None
    if regions is not None:
        store = RegionStore(regions, max_regions=settings.max_regions)
        store.check(train, teacher=teacher.name)
    elif distills and demo:
        from vvk.methods.vild.demo import demo_regions

        store = demo_regions(teacher, teacher_spec=settings.teacher, novel_spec=settings.novel,
                             max_regions=settings.max_regions)  # fmt: skip
    elif distills:
        raise VvkError(
            f"method={settings.method}: distils the teacher's region embeddings, and no regions were given",
            hint="make them with vvk detect embed-regions, then pass --regions DIR", params=("regions",),
        )  # fmt: skip
    embeddings = vocabulary_embeddings(teacher, category_synonyms(categories))
    plain = categories_of(train)
    return ViLDPlan(settings=settings, teacher=teacher, categories=plain, novel_ids=tuple(novel),
                    regions=store, embeddings=embeddings)  # fmt: skip


def regions_path(regions: str | os.PathLike | None) -> Path | None:
    """``--regions`` as an absolute path (None stays None); a missing folder is an error."""
    if regions is None:
        return None
    if not os.path.isdir(regions):
        raise VvkError(f"regions={os.fspath(regions)}: no such folder", params=("regions",))
    return Path(regions).resolve()
