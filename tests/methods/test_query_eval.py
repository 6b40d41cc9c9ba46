"""Query-conditioned AP (vvk.methods.detection.query_eval) on hand-made ground truth and answers,
through both detector paths: a query-modulated model's and a standard detector filtered to the
queried label. Two images, categories 1..3:

- image 1 (40x50): two boxes of 1, one of 2 -> positive pairs (1, 1), (1, 2), negative (1, 3);
- image 2 (60x30): one box of 1, a crowd region of 3 -> positive (2, 1), negative (2, 2), as the
  crowd makes 3 present."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vvk.data.detection import open_coco
from vvk.eval.detection import load_ground_truth
from vvk.methods.detection.query_eval import (
    QueryPair,
    QueryValEvaluation,
    evaluate_queries,
    filtered_detector,
    query_detector,
    query_pairs,
)

SIZES = {1: (40, 50), 2: (60, 30)}  # image id -> (height, width)
BOXES = [  # (image, category, XYWH, crowd)
    (1, 1, [2, 2, 10, 10], 0), (1, 1, [20, 20, 15, 12], 0), (1, 2, [5, 25, 20, 10], 0),
    (2, 1, [4, 30, 12, 20], 0), (2, 3, [0, 0, 30, 20], 1),
]  # fmt: skip
CATEGORIES = [{"id": k, "name": name} for k, name in ((1, "one"), (2, "two"), (3, "three"))]
PAIRS = [QueryPair(1, 1, True), QueryPair(1, 2, True), QueryPair(1, 3, False),
         QueryPair(2, 1, True), QueryPair(2, 2, False)]  # fmt: skip


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    root = tmp_path_factory.mktemp("queries")
    (root / "images").mkdir()
    for image_id, (h, w) in SIZES.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / f"{image_id}.png")
    annotations = [
        {
            "id": i + 1,
            "image_id": image,
            "category_id": c,
            "bbox": box,
            "area": box[2] * box[3],
            "iscrowd": crowd,
        }
        for i, (image, c, box, crowd) in enumerate(BOXES)
    ]
    images = [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in SIZES.items()]
    path = root / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    coco = open_coco(root, images=root / "images", annotations=path)
    return coco, load_ground_truth(coco)


def _image_id(image: torch.Tensor) -> int:
    return next(i for i, size in SIZES.items() if tuple(image.shape[1:]) == size)


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    xyxy = torch.tensor(boxes, dtype=torch.float).reshape(-1, 4)  # (N, 4) from XYWH
    xyxy[:, 2:] += xyxy[:, :2]
    return {"boxes": xyxy, "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.int64)}


def _truth(image_id: int, category: int) -> list[list[float]]:
    return [box for image, c, box, crowd in BOXES if (image, c, crowd) == (image_id, category, 0)]


def test_pairs_are_each_present_category_and_one_absent():
    class GT:  # the two fields query_pairs reads of a GroundTruth
        category_ids = frozenset({1, 2, 3})
        api = type("Api", (), {"dataset": {"annotations": [
            {"image_id": i, "category_id": c, "iscrowd": crowd} for i, c, _, crowd in BOXES]}})  # fmt: skip

    assert query_pairs(GT(), [1, 2]) == PAIRS
    assert query_pairs(GT(), [2]) == PAIRS[3:]


def test_a_perfect_answerer_scores_one(val):
    coco, gt = val
    ids = {c["name"]: c["id"] for c in CATEGORIES}

    def perfect(images, queries):
        answers = [_truth(_image_id(image), ids[q]) for image, q in zip(images, queries, strict=True)]
        return [_detections(boxes, [0.9] * len(boxes), [1] * len(boxes)) for boxes in answers]

    scores = evaluate_queries(perfect, coco, gt, batch_size=2)
    assert (scores["query_AP50"], scores["query_AP"]) == (1.0, 1.0)
    assert (scores["query_pairs"], scores["negative_pairs"]) == (5, 2)


def test_one_box_for_every_query_scores_by_hand(val):
    """The box of the first pair's first object, score 0.9, for all 5 pairs: 5 detections
    against 4 objects, one right, ranked first (equal scores keep pycocotools' pair order).
    Precision 1 up to recall 1/4: 26 of COCO's 101 recall points, AP50 = AP = 26/101."""
    coco, gt = val

    def same_box(images, queries):
        return [_detections([BOXES[0][2]], [0.9], [1]) for _ in images]

    scores = evaluate_queries(same_box, coco, gt, batch_size=3)
    assert scores["query_AP50"] == pytest.approx(26 / 101, abs=1e-6)
    assert scores["query_AP"] == pytest.approx(26 / 101, abs=1e-6)


class _Standard(nn.Module):
    """A standard detector stub: every object of the image under its own label (1..3 in
    CATEGORIES' order), plus a box labelled 3 on image 1 (which holds no 3) at a higher score."""

    categories = CATEGORIES

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, images, **options):
        assert not options and not self.training  # no queries reach a standard detector
        outputs = []
        for image in images:
            image_id = _image_id(image)
            found = [(box, c) for i, c, box, crowd in BOXES if i == image_id and not crowd]
            extra = [([30, 2, 10, 10], 3)] if image_id == 1 else []
            scores = [0.9] * len(found) + [0.95] * len(extra)
            boxes, labels = zip(*found, *extra, strict=True)
            outputs.append(_detections(list(boxes), scores, list(labels)))
        return outputs


def test_a_filtered_standard_detector_answers_with_the_queried_label_only(val):
    """Filtered, every positive pair gets exactly its objects and the negative (1, 3) the extra
    box, ranked first: precision 1/2, 2/3, 3/4, 4/5 at recall 1/4..1, interpolated 0.8 at every
    recall point. Unfiltered, the other categories' boxes would be wrong answers too."""
    coco, gt = val
    scores = evaluate_queries(filtered_detector(_Standard()), coco, gt)
    assert scores["query_AP50"] == pytest.approx(0.8, abs=1e-6)


class _Queried(nn.Module):
    """A query-modulated stub: the queried category's objects, labels 1, from ``queries=``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.ids = {c["name"]: c["id"] for c in CATEGORIES}

    def forward(self, images, *, queries):
        answers = [_truth(_image_id(image), self.ids[q]) for image, q in zip(images, queries, strict=True)]
        return [_detections(boxes, [0.5] * len(boxes), [1] * len(boxes)) for boxes in answers]


def test_the_in_training_evaluation_scores_a_query_model_and_adds_the_standard_scores(val):
    coco, gt = val
    model = _Queried().train()
    assert evaluate_queries(query_detector(model), coco, gt)["query_AP50"] == 1.0
    evaluate = QueryValEvaluation(coco, batch_size=4, precision="fp32", max_images=1, ground_truth=gt,
                                  standard=lambda model, step: {"bbox_AP50": 0.25, "images": 1})  # fmt: skip
    scores = evaluate(model, step=3)
    assert scores["query_AP50"] == 1.0 and scores["bbox_AP50"] == 0.25
    assert (scores["images"], scores["query_pairs"], scores["negative_pairs"]) == (1, 3, 1)  # image 1 only
