"""A query-modulated detector's training data: each image of each epoch asks for one category it
holds (positive), one it lacks (negative) or, for a multitask model, nothing (``QuerySchedule``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from vvk.data.coco import CocoDataset
from vvk.data.queries import QueryDetectionDataset, QuerySchedule, collate_queries
from vvk.methods.detection.preset import QMDSettings


def query_training_data(
    dataset: Any, coco: CocoDataset, settings: QMDSettings, *, seed: int
) -> tuple[QueryDetectionDataset, Callable[[list], dict[str, Any]]]:
    """``dataset`` (a ``DetectionDataset`` of ``coco``) with one query per sample, planned per
    epoch from ``seed`` (the run's: a resumed run asks what the first run would have), and the
    collate function that gives the model its queries.

    The loop's sampler keys carry the epoch (``ShardedSampler``: ``draw`` counts the samples of
    every rank, each epoch padded to a multiple of the ranks); ``world_size`` is how the dataset
    finds it, read from torchrun's environment as ``vvk.engine.dist`` reads it.
    """
    schedule = QuerySchedule(coco, settings.mix(), seed=seed)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return QueryDetectionDataset(dataset, schedule, world_size=world_size), collate_model_queries


def collate_model_queries(samples: Sequence[tuple]) -> dict[str, Any]:
    """``collate_queries``' batch with ``"queries"`` as the label encoder takes them: the
    queried category's name, None for an image without a query."""
    batch = collate_queries(samples)
    batch["queries"] = [record["name"] for record in batch["queries"]]
    return batch
