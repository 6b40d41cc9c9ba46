"""vvk.data.queries: query-modulated detection samples from detection annotations: targets per
query kind, a deterministic epoch plan that covers every category, the mix, query texts, and the
dataset wrapper in the training loop's keys; real tiny_coco (crowd objects)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from torchvision import tv_tensors

from vvk.data.coco import CocoAnnotation, CocoDataset, CocoImage, decode_segmentation, tight_box
from vvk.data.detection import DetectionDataset, open_coco
from vvk.data.loader import ShardedSampler
from vvk.data.queries import (
    Query,
    QueryDetectionDataset,
    QueryMix,
    QuerySchedule,
    collate_queries,
    query_target,
    query_text,
)
from vvk.errors import VvkError

SIZE = 96  # the side of the small example's images (conftest's small_detection_example)


@pytest.fixture(scope="module")
def coco(small_detection_example):
    return open_coco(small_detection_example / "train")


@pytest.fixture(scope="module")
def unjittered(coco):
    """Samples as the file draws them: no flip, no scale jitter (the images are 96 x 96)."""
    return DetectionDataset(coco, size=SIZE, scale_range=(1.0, 1.0), flip_prob=0.0)


def category_ids(coco) -> list[int]:
    return [c["id"] for c in coco.categories]


def labels_of(coco, *, crowd: bool = True) -> list[set[int]]:
    """Per image (file order): its categories, with or without the crowd-only ones."""
    return [
        {a.category_id for a in coco.annotations.get(i, []) if crowd or not a.iscrowd} for i in coco.images
    ]


def annotated_boxes(coco, image_id: int, category_id: int) -> list[list[float]]:
    """The tight boxes of the image's objects of one category, from the annotation file."""
    image = coco.images[image_id]
    return sorted(
        list(map(float, tight_box(decode_segmentation(a.segmentation, image.height, image.width))))
        for a in coco.annotations[image_id]
        if a.category_id == category_id and not a.iscrowd
    )


def test_a_negative_query_gives_an_empty_target_of_the_same_types(coco, unjittered):
    _, target = unjittered[0]
    absent = next(c for c in category_ids(coco) if c not in labels_of(coco)[0])
    out = query_target(target, Query("negative", absent), category_ids=category_ids(coco))
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes)
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == torch.float32
    assert out["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(out["boxes"].canvas_size) == (SIZE, SIZE)
    assert out["labels"].shape == (0,) and out["labels"].dtype == torch.int64
    assert isinstance(out["masks"], tv_tensors.Mask) and out["masks"].shape == (0, SIZE, SIZE)
    assert out["image_id"] == target["image_id"]
    assert len(target["boxes"]) > 0  # the full target is left alone


def test_a_positive_query_keeps_exactly_the_queried_categorys_objects_labelled_1(coco, unjittered):
    checked = 0
    for index, image_id in enumerate(coco.images):
        _, target = unjittered[index]
        for category in sorted(labels_of(coco)[index]):
            out = query_target(target, Query("positive", category), category_ids=category_ids(coco))
            assert sorted(out["boxes"].tolist()) == annotated_boxes(coco, image_id, category)
            assert isinstance(out["boxes"], tv_tensors.BoundingBoxes) and isinstance(
                out["masks"], tv_tensors.Mask
            )
            assert out["labels"].tolist() == [1] * len(out["boxes"])
            for box, mask in zip(out["boxes"].tolist(), out["masks"], strict=True):  # masks kept in step
                assert list(map(float, tight_box(mask.bool().numpy()))) == box
            checked += 1
    assert checked > 20


def test_a_none_query_leaves_the_target_as_it_is(coco, unjittered):
    _, target = unjittered[3]
    out = query_target(target, Query("none", None), category_ids=category_ids(coco))
    assert out.keys() == target.keys()
    for key in ("boxes", "labels", "masks"):
        assert type(out[key]) is type(target[key]) and torch.equal(out[key], target[key])
    assert len(set(out["labels"].tolist())) > 1  # still the multi-class labels


def test_a_negative_query_answers_with_objects_an_augmentation_brought_in():
    # A Copy-Paste may paste the negative query's category in: the target is what the image shows.
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8], [1, 1, 3, 3]]), format="XYXY", canvas_size=(8, 8)
    )
    target = {"boxes": boxes, "labels": torch.tensor([2, 1, 2]), "area": torch.tensor([16, 36, 4])}
    out = query_target(target, Query("negative", 20), category_ids=[10, 20])
    assert out["boxes"].tolist() == [[0, 0, 4, 4], [1, 1, 3, 3]] and out["area"].tolist() == [16, 4]
    assert out["labels"].tolist() == [1, 1]


def plans(schedule: QuerySchedule, epochs: range) -> list[list[Query]]:
    return [[schedule.query(epoch, p) for p in range(len(schedule))] for epoch in epochs]


def test_the_schedule_is_a_function_of_seed_epoch_and_position(coco):
    mix = QueryMix(positive=0.5, negative=0.4, none=0.1)
    first = plans(QuerySchedule(coco, mix, seed=3), range(4))
    assert plans(QuerySchedule(coco, mix, seed=3), range(4)) == first
    assert plans(QuerySchedule(coco, mix, seed=4), range(4)) != first
    assert first[0] != first[1]  # every epoch its own plan
    shuffled = QuerySchedule(coco, mix, seed=3)  # as workers ask: any order, epochs interleaved
    for epoch, position in reversed([(e, p) for p in range(len(shuffled)) for e in (2, 0, 3, 1)]):
        assert shuffled.query(epoch, position) == first[epoch][position]


def test_every_present_category_is_a_positive_query_each_epoch_and_negatives_are_absent(coco):
    # 3 positives of 10 at random could never cover the 9 categories the example holds.
    schedule = QuerySchedule(coco, QueryMix(positive=0.3, negative=0.7), seed=0)
    present = labels_of(coco)
    held = set().union(*present)
    assert len(held) == 9
    for epoch in range(5):
        queries = [schedule.query(epoch, p) for p in range(len(schedule))]
        for query, labels in zip(queries, present, strict=True):
            assert (query.category_id in labels) == (query.kind == "positive")
        assert {q.category_id for q in queries if q.kind == "positive"} == held
        assert any(q.kind == "negative" for q in queries)


def test_on_real_coco_an_epoch_covers_as_many_categories_as_distinct_images_can(shared_data):
    coco = open_coco(shared_data / "coco" / "tiny_coco")
    objects, present = labels_of(coco, crowd=False), labels_of(coco)
    held = sorted(set().union(*objects))
    # 49 categories in 50 images, but some only share images: an independent maximum matching
    # says how many distinct images can cover at most.
    pairs = [(k, i) for k, c in enumerate(held) for i, labels in enumerate(objects) if c in labels]
    graph = csr_matrix((np.ones(len(pairs)), tuple(np.array(pairs).T)), shape=(len(held), len(objects)))
    most = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    assert len(held) == 49 and most == 43
    schedule = QuerySchedule(coco, QueryMix(positive=0.5, negative=0.5), seed=0)
    covered_ever = set()
    for epoch in range(10):
        queries = [schedule.query(epoch, p) for p in range(len(schedule))]
        covered = {q.category_id for q in queries if q.kind == "positive"}
        assert len(covered) == most
        covered_ever |= covered
        for query, has, shows in zip(queries, objects, present, strict=True):
            assert query.category_id in (has if query.kind == "positive" else set(category_ids(coco)) - shows)
    assert covered_ever == set(held)  # those left out change from epoch to epoch


def test_a_crowd_makes_its_category_present_but_never_its_positive():
    crowd_only = [
        CocoAnnotation(1, 1, 1, [[0, 0, 4, 0, 4, 4]], iscrowd=True),
        CocoAnnotation(2, 1, 2, [], False),
    ]
    coco = CocoDataset(
        annotations_path=Path("instances_x.json"),
        images_dir=Path("x"),
        images={i: CocoImage(i, f"{i}.jpg", 8, 8) for i in (1, 2, 3)},
        annotations={
            1: crowd_only,
            2: [CocoAnnotation(3, 2, 1, [], False)],
            3: [CocoAnnotation(4, 3, 2, [], False)],
        },
        categories=[{"id": c, "name": str(c)} for c in (1, 2, 3)],
    )
    schedule = QuerySchedule(coco, QueryMix(positive=0.5, negative=0.5), seed=0)
    seen = set()
    for epoch in range(20):
        first, second = schedule.query(epoch, 0), schedule.query(epoch, 1)
        seen.add(first)
        assert first.category_id == (2 if first.kind == "positive" else 3)
        assert second == Query("positive", 1)  # the only image that can cover category 1
    assert seen == {Query("positive", 2), Query("negative", 3)}


def test_the_mix_holds_over_an_epoch():
    rng = np.random.default_rng(0)
    label_sets = [set(rng.choice(20, size=rng.integers(1, 5), replace=False).tolist()) for _ in range(2000)]
    label_sets += [set()] * 150 + [set(range(20))] * 50  # images that only a negative / positive fits
    for mix in (QueryMix(positive=0.6, negative=0.3, none=0.1), QueryMix(positive=0.25, negative=0.75)):
        schedule = QuerySchedule(label_sets, mix, seed=1)
        for epoch in range(3):
            plan = schedule.plan(epoch)
            shares = {kind: n / len(label_sets) for kind, n in plan.counts().items()}
            assert shares == pytest.approx(
                dict(zip(("positive", "negative", "none"), mix.weights(), strict=True)), abs=0.01
            )
            assert plan.fallbacks == {"positive_to_negative": 0, "negative_to_positive": 0}


def test_images_that_cannot_take_their_kind_fall_back_and_are_counted():
    full = QuerySchedule([{1, 2}] * 4, QueryMix(positive=0.0, negative=1.0), seed=0).plan(0)
    assert full.counts()["positive"] == 4 and full.fallbacks["negative_to_positive"] == 4
    empty = QuerySchedule(
        [set()] * 4, QueryMix(positive=1.0, negative=0.0), seed=0, category_ids=[1, 2]
    ).plan(0)
    assert empty.counts()["negative"] == 4 and empty.fallbacks["positive_to_negative"] == 4


def test_the_mix_is_validated():
    for bad in ({"positive": -0.1}, {"negative": math.nan}, {"positive": 0.0, "negative": 0.0}):
        with pytest.raises(VvkError, match=next(iter(bad))):
            QueryMix(**bad)
    assert QueryMix(positive=2, negative=1, none=1).weights().tolist() == [0.5, 0.25, 0.25]


def test_query_text_draws_synonyms_when_given():
    lvis = {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"]}
    texts = [query_text(lvis, synonyms=True, rng=np.random.default_rng(s)) for s in range(40)]
    assert set(texts) == {"aerosol can", "spray can"}
    assert texts == [query_text(lvis, synonyms=True, rng=np.random.default_rng(s)) for s in range(40)]
    assert {query_text(lvis, synonyms=False, rng=np.random.default_rng(s)) for s in range(40)} == {
        "aerosol can"
    }
    coco_style = {"id": 2, "name": "traffic light"}
    assert query_text(coco_style, synonyms=True, rng=np.random.default_rng(0)) == "traffic light"


def test_the_dataset_gives_each_sample_its_query_target_and_record(coco, unjittered):
    schedule = QuerySchedule(coco, QueryMix(positive=0.5, negative=0.3, none=0.2), seed=7)
    data = QueryDetectionDataset(unjittered, schedule)
    data.set_epoch(2)
    names = {c["id"]: c["name"] for c in coco.categories}
    samples = [data[i] for i in range(len(data))]
    for index, (image_id, (_, targets, records)) in enumerate(zip(coco.images, samples, strict=True)):
        (target,), (record,) = targets, records  # one query per image by default
        query = schedule.query(2, index)
        assert (record["kind"], record["category_id"]) == (query.kind, query.category_id)
        if query.kind == "none":
            assert record["text"] is None and torch.equal(target["labels"], unjittered[index][1]["labels"])
        else:
            assert record["name"] == record["text"] == names[query.category_id]
            assert len(target["boxes"]) == len(annotated_boxes(coco, image_id, query.category_id))
    batch = collate_queries(samples[:3])
    assert batch["images"].shape == (3, 3, SIZE, SIZE)
    assert batch["queries"] == [records for _, _, records in samples[:3]]
    assert [len(t) for t in batch["targets"]] == [1, 1, 1] and "skipped" not in batch["targets"][0][0]


def test_an_image_asks_its_planned_query_then_distinct_others_by_presence(coco):
    schedule = QuerySchedule(coco, QueryMix(positive=0.5, negative=0.3, none=0.2), seed=3)
    present = labels_of(coco)
    k = len(category_ids(coco))
    for position in range(len(schedule)):
        asked = schedule.queries(1, position, 4)
        assert asked[0] == schedule.query(1, position)
        assert asked == schedule.queries(1, position, 4)  # a function of seed, epoch and position
        if asked[0].kind == "none":
            assert len(asked) == 1  # plain detection: nothing more to ask
            continue
        ids = [q.category_id for q in asked]
        assert len(ids) == len(set(ids)) == 4
        assert all((q.kind == "positive") == (q.category_id in present[position]) for q in asked[1:])
        everything = schedule.queries(1, position, k + 5)  # more than there are: each category once
        assert sorted(q.category_id for q in everything) == sorted(category_ids(coco))
    # another epoch asks other things besides
    assert any(schedule.queries(1, p, 4)[1:] != schedule.queries(2, p, 4)[1:] for p in range(len(schedule)))
    with pytest.raises(ValueError, match="count=0"):
        schedule.queries(0, 0, 0)


def test_the_dataset_gives_one_target_and_record_per_query(coco, unjittered):
    schedule = QuerySchedule(coco, QueryMix(positive=0.6, negative=0.4), seed=0)
    data = QueryDetectionDataset(unjittered, schedule, queries_per_image=3)
    names = {c["id"]: c["name"] for c in coco.categories}
    for index, image_id in enumerate(coco.images):
        _, targets, records = data[index]
        asked = schedule.queries(0, index, 3)
        assert [(r["kind"], r["category_id"]) for r in records] == [(q.kind, q.category_id) for q in asked]
        for target, record in zip(targets, records, strict=True):
            assert record["name"] == names[record["category_id"]]
            assert len(target["boxes"]) == len(annotated_boxes(coco, image_id, record["category_id"]))
    with pytest.raises(VvkError, match="queries_per_image=0: must be >= 1"):
        QueryDetectionDataset(unjittered, schedule, queries_per_image=0)


class _Blank:
    """A detection dataset of empty targets: only the keys matter."""

    def __init__(self, size: int):
        self.size = size
        self.categories = [{"id": c, "name": f"c{c}"} for c in range(30)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(4, 4))
        return torch.zeros(3, 4, 4), {"boxes": boxes, "labels": torch.zeros(0, dtype=torch.int64)}


@pytest.mark.parametrize("world_size", [1, 3])
def test_a_loop_key_carries_the_samplers_epoch(world_size):
    rng = np.random.default_rng(0)
    schedule = QuerySchedule([set(rng.choice(30, size=3).tolist()) for _ in range(10)], QueryMix(), seed=5)
    data = QueryDetectionDataset(_Blank(10), schedule, world_size=world_size)
    data.set_epoch(99)  # a key's own epoch wins: the loop's workers never see set_epoch
    for rank in range(world_size):
        sampler = ShardedSampler(10, rank=rank, world_size=world_size, seed=0)
        for count in range(6 * sampler.per_rank):
            index, draw = sampler.key(count)
            query = schedule.query(count // sampler.per_rank, index)
            (record,) = data[index, draw][2]
            assert (record["kind"], record["category_id"]) == (query.kind, query.category_id)


def test_a_schedule_must_fit_the_datasets_categories(coco):
    kept = DetectionDataset(coco, size=SIZE, exclude_categories=[2])
    with pytest.raises(VvkError, match=r"categories \[2\]"):
        QueryDetectionDataset(kept, QuerySchedule(coco, QueryMix(), seed=0))
    ids = [c["id"] for c in kept.categories]
    schedule = QuerySchedule(coco, QueryMix(), seed=0, category_ids=ids)
    assert all(schedule.query(e, p).category_id != 2 for e in range(3) for p in range(len(schedule)))
    QueryDetectionDataset(kept, schedule)
    with pytest.raises(VvkError, match="positions"):
        QueryDetectionDataset(kept, QuerySchedule(labels_of(coco)[:5], QueryMix(), seed=0))
