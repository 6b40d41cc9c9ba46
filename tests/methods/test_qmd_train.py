"""vvk.methods.qmd: the training data of `vvk train detector --method qmd` on real COCO images,
keyed as the training loop's sampler keys them."""

from __future__ import annotations

import pytest

from vvk.data.detection import DetectionDataset, open_coco
from vvk.data.loader import ShardedSampler
from vvk.methods.detection.preset import QMDSettings
from vvk.methods.qmd import QueryPlan


@pytest.mark.parametrize("world_size", [1, 3])
def test_each_rank_reads_the_epoch_its_sampler_is_in(shared_data, monkeypatch, world_size):
    """Over three epochs of every rank's keys, the query asked is that of the sampler's epoch:
    the dataset's padded epoch length is the sampler's."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    coco = open_coco(shared_data / "coco" / "tiny_coco")
    data, collate = QueryPlan(QMDSettings()).training_data(DetectionDataset(coco, size=64), coco, seed=5)
    assert data.schedule.seed == 5
    for rank in range(world_size):
        sampler = ShardedSampler(len(data), rank=rank, world_size=world_size, seed=1)
        for count in range(0, 3 * sampler.per_rank, 7):
            index, draw = sampler.key(count)
            epoch = count // sampler.per_rank
            assert draw // data.epoch_length == epoch
            *_, (record,) = data[(index, draw)]
            assert record["category_id"] == data.schedule.query(epoch, index).category_id


def test_the_batch_gives_the_model_category_names_and_none(shared_data):
    coco = open_coco(shared_data / "coco" / "tiny_coco")
    settings = QMDSettings(multitask=True, positive_ratio=1, negative_ratio=0, none_ratio=1)
    data, collate = QueryPlan(settings).training_data(DetectionDataset(coco, size=64), coco, seed=0)
    batch = collate([data[i] for i in range(len(data))])  # the covering positives come first
    names = {c["name"] for c in data.categories}
    assert None in batch["queries"] and set(batch["queries"]) - {None} <= names
    assert len(batch["queries"]) == len(batch["targets"]) == len(data)


def test_an_image_asking_several_queries_gives_the_model_lists(shared_data):
    coco = open_coco(shared_data / "coco" / "tiny_coco")
    settings = QMDSettings(queries_per_image=3)
    data, collate = QueryPlan(settings).training_data(DetectionDataset(coco, size=64), coco, seed=0)
    batch = collate([data[i] for i in range(4)])
    names = {c["name"] for c in data.categories}
    for queries, targets in zip(batch["queries"], batch["targets"], strict=True):
        assert isinstance(queries, list) and len(queries) == len(targets) == 3
        assert set(queries) <= names and all(bool((t["labels"] == 1).all()) for t in targets)
