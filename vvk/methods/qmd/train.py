"""A query-modulated detector's training: each image of each epoch asks for one category it
holds (positive), one it lacks (negative) or, for a multitask model, nothing (``QuerySchedule``);
the queries are the categories' names (label encoder) or texts a teacher embeds (text encoder:
a name, or one of its synonyms)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from vvk.data.coco import CocoDataset
from vvk.data.queries import QueryDetectionDataset, QuerySchedule, collate_queries, query_texts
from vvk.methods.detection.preset import LABEL_QUERIES, QMDSettings


@dataclass(frozen=True)
class QueryPlan:
    """A checked QMD run: its settings and, for text queries, the teacher's embedding width.

    Attributes:
        settings: the preset's ``qmd``.
        teacher_dim: the width of the text teacher (``settings.query_encoder``) when the queries
            are texts; None for label queries.
    """

    settings: QMDSettings
    teacher_dim: int | None = None

    @property
    def text_queries(self) -> bool:
        return self.teacher_dim is not None

    def build_options(self) -> dict[str, Any]:
        """The ``qmd-*`` builder's arguments the run stands for."""
        settings = self.settings
        options = {
            "modulation": settings.modulation,
            "modulate": settings.modulate,
            "multitask": settings.multitask,
        }
        if not self.text_queries:
            return {**options, "query_encoder": "label"}
        return {
            **options,
            "query_encoder": "text",
            "teacher": settings.query_encoder,
            "teacher_dim": self.teacher_dim,
        }

    def training_data(
        self, dataset: Any, coco: CocoDataset, *, seed: int
    ) -> tuple[QueryDetectionDataset, Callable[[list], dict[str, Any]]]:
        """``dataset`` (a ``DetectionDataset`` of ``coco``) with one query per sample, planned per
        epoch from ``seed`` (the run's: a resumed run asks what the first run would have), and
        the collate function that gives the model its queries.

        The loop's sampler keys carry the epoch (``ShardedSampler``: ``draw`` counts the samples
        of every rank, each epoch padded to a multiple of the ranks); ``world_size`` is how the
        dataset finds it, read from torchrun's environment as ``vvk.engine.dist`` reads it.
        """
        schedule = QuerySchedule(coco, self.settings.mix(), seed=seed)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        queried = QueryDetectionDataset(
            dataset,
            schedule,
            world_size=world_size,
            synonyms=self.text_queries,
            queries_per_image=self.settings.queries_per_image,
        )
        return queried, partial(collate_model_queries, key="text" if self.text_queries else "name")


def plan_queries(settings: QMDSettings, coco: CocoDataset) -> QueryPlan:
    """The run's :class:`QueryPlan`; a text teacher is read now (once per process, shared with
    the model's encoder) and every query text of ``coco`` checked against it, so that a name it
    cannot embed fails before training, not at the step that first draws it."""
    if settings.query_encoder == LABEL_QUERIES:
        return QueryPlan(settings)
    from vvk.methods.vild.teacher import shared_teacher

    teacher = shared_teacher(settings.query_encoder)
    for text in query_texts(coco.categories):
        teacher.check_text(text)
    return QueryPlan(settings, teacher_dim=teacher.dim)


def collate_model_queries(samples: Sequence[tuple], *, key: str = "name") -> dict[str, Any]:
    """``collate_queries``' batch as ``QueryModulatedRetinaNet`` takes it: per image, its query
    and target, or the list of its queries and the list of their targets when it asks several;
    a query is the record's ``key`` (``name``: the queried category's, for a label encoder;
    ``text``: the words drawn for it, for a text encoder), None for an image without a query."""
    batch = collate_queries(samples)
    queries, targets = [], []
    for records, image_targets in zip(batch["queries"], batch["targets"], strict=True):
        asked = [record[key] for record in records]
        queries.append(asked[0] if len(asked) == 1 else asked)
        targets.append(image_targets[0] if len(asked) == 1 else image_targets)
    batch["queries"], batch["targets"] = queries, targets
    return batch
