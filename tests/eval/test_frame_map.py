"""Frame-mAP: hand-computed APs, the AVA evaluator's matching rules, and sklearn where it agrees."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from vvk.eval.frame_map import Boxes, average_precision, frame_map, match

A = [0.1, 0.1, 0.3, 0.5]
A_DUPLICATE = [0.11, 0.1, 0.31, 0.5]  # IoU 0.90 with A
B = [0.6, 0.1, 0.8, 0.5]
NOT_B = [0.0, 0.6, 0.2, 0.9]  # overlaps nothing
C = [0.4, 0.4, 0.6, 0.9]
D = [0.7, 0.5, 0.9, 0.9]
E = [0.2, 0.2, 0.4, 0.6]
X = [0.5, 0.0, 0.7, 0.3]
F1, F2, F3, F4 = ("v", 1.0), ("v", 2.0), ("w", 1.0), ("w", 2.0)


def _boxes(rows, scores=None) -> Boxes:
    boxes = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
    labels = np.array([r[1] for r in rows], dtype=np.int64)
    return Boxes(boxes, labels, None if scores is None else np.array(scores, dtype=np.float64))


def _hand_case() -> tuple[dict, dict]:
    """Class 1: ground truth A (f1), B (f2), C (f3); detections A 0.9 (hit), a duplicate of A 0.8
    (false: A is taken), a box off B 0.7 (false; B is missed), a box on f4, a key frame without
    ground truth, 0.65 (false), C 0.6 (hit).
    Class 2: ground truth D (f1), E (f2); detections X 0.95 on f3 (false: no class 2 there), D 0.85
    (hit), E 0.75 (hit). Class 3: detections only, no ground truth."""
    truth = {F1: _boxes([(A, 1), (D, 2)]), F2: _boxes([(B, 1), (E, 2)]), F3: _boxes([(C, 1)])}
    detections = {
        # the duplicate comes first: within a key frame detections are taken by score
        F1: _boxes([(A_DUPLICATE, 1), (A, 1), (D, 2), (A, 3)], [0.8, 0.9, 0.85, 0.99]),
        F2: _boxes([(NOT_B, 1), (E, 2)], [0.7, 0.75]),
        F3: _boxes([(C, 1), (X, 2)], [0.6, 0.95]),
        F4: _boxes([(X, 1)], [0.65]),
    }
    return truth, detections


def test_hand_computed_frame_map():
    score = frame_map(*_hand_case(), classes=[1, 2, 3])
    # Class 1, ranked: hit, false, false, false, hit, of 3 boxes: precision 1, 1/2, 1/3, 1/4, 2/5 at
    # recall 1/3, 1/3, 1/3, 1/3, 2/3. Envelope: 1 up to recall 1/3, then 2/5 up to 2/3, then 0.
    # AP = 1/3 · 1 + 1/3 · 2/5 = 7/15.
    assert score.per_class[1] == pytest.approx(7 / 15)
    # Class 2, ranked: false, hit, hit, of 2: precision 0, 1/2, 2/3 at recall 0, 1/2, 1. The
    # envelope lifts the first step to 2/3 (VOC interpolation): AP = 1/2 · 2/3 + 1/2 · 2/3 = 2/3.
    assert score.per_class[2] == pytest.approx(2 / 3)
    assert math.isnan(score.per_class[3])  # no ground truth: left out of the mean
    assert score.mean_ap == pytest.approx((7 / 15 + 2 / 3) / 2)
    assert score.ground_truth == {1: 3, 2: 2, 3: 0}


def test_sklearn_agrees_without_interpolation_and_misses():
    """sklearn's AP is the sum of precision × recall step without the envelope, over the positives it
    is given: class 2 has no miss, and there it is 1/2 · 1/2 + 1/2 · 2/3 where the VOC AP is 2/3."""
    assert average_precision_score([0, 1, 1], [0.95, 0.85, 0.75]) == pytest.approx(7 / 12)
    assert average_precision(np.array([0.95, 0.85, 0.75]), np.array([False, True, True]), 2) == pytest.approx(
        2 / 3
    )


def test_order_of_detections_and_key_frames_does_not_matter():
    truth, detections = _hand_case()
    expected = frame_map(truth, detections, classes=[1, 2, 3]).per_class
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = {}
        for key in rng.permutation(len(detections)):
            key = list(detections)[key]
            found, order = detections[key], rng.permutation(len(detections[key].labels))
            shuffled[key] = Boxes(found.boxes[order], found.labels[order], found.scores[order])
        got = frame_map(truth, shuffled, classes=[1, 2, 3]).per_class
        assert got[1] == pytest.approx(expected[1]) and got[2] == pytest.approx(expected[2])


def test_a_class_with_ground_truth_and_no_detection_scores_zero():
    truth = {F1: _boxes([(A, 1), (B, 2)])}
    score = frame_map(truth, {F1: _boxes([(A, 1)], [0.5])}, classes=[1, 2])
    assert score.per_class == {1: 1.0, 2: 0.0} and score.mean_ap == 0.5


def test_best_overlap_taken_is_a_false_positive_not_a_match_to_the_next_box():
    """The evaluator matches a detection to the box it overlaps most; when that box is taken the
    detection is false even if another free box overlaps it by more than 0.5."""
    g1, g2 = [0.0, 0.0, 0.4, 0.4], [0.1, 0.0, 0.5, 0.4]  # IoU 0.6
    second = [0.04, 0.0, 0.44, 0.4]  # IoU 0.82 with g1, 0.74 with g2
    assert match(np.array([g1, second]), np.array([g1, g2])).tolist() == [True, False]
    truth = {F1: _boxes([(g1, 1), (g2, 1)])}
    score = frame_map(truth, {F1: _boxes([(g1, 1), (second, 1)], [0.9, 0.8])}, classes=[1])
    assert score.per_class[1] == pytest.approx(0.5)  # a greedy "best free box" matching gives 1.0


def test_with_given_boxes_a_neighbour_overlapping_a_person_is_credited():
    """With ground-truth boxes as detections, a high score on a person standing close to (IoU >= 0.5)
    the one who does the action is a hit, as in the AVA evaluator: boxes, not people, are matched."""
    doer, neighbour = [0.15, 0.1, 0.55, 0.9], [0.1, 0.1, 0.5, 0.9]  # IoU 0.78
    truth = {F1: _boxes([(doer, 1)])}
    score = frame_map(truth, {F1: _boxes([(neighbour, 1), (doer, 1)], [0.9, 0.3])}, classes=[1])
    assert score.per_class[1] == 1.0


def test_given_boxes_equal_interpolated_sklearn_ap_on_random_scores():
    """Every ground-truth box scored once for every class, boxes apart: frame-AP is then the VOC
    AP of a binary ranking, computed here from sklearn's precision-recall curve (the envelope:
    the best precision at this recall or more) and bounded below by sklearn's AP."""
    rng = np.random.default_rng(3)
    classes = [1, 2, 3]
    grid = [[0.1 * i, 0.0, 0.1 * i + 0.08, 0.5] for i in range(10)]  # 10 disjoint people per frame
    truth, detections, labels, scores = {}, {}, [], []
    for k in range(6):
        doing = rng.random((10, 3)) < 0.3  # (people, classes) multi-label
        doing[k % 10, k % 3] = True  # every class has ground truth
        score = rng.random((10, 3))
        truth[("v", float(k))] = _boxes(
            [(grid[p], classes[c]) for p, c in zip(*np.nonzero(doing), strict=True)]
        )
        rows = [(grid[p], classes[c]) for p in range(10) for c in range(3)]
        detections[("v", float(k))] = _boxes(rows, score.reshape(-1))
        labels.append(doing)
        scores.append(score)
    labels, scores = np.concatenate(labels), np.concatenate(scores)
    result = frame_map(truth, detections, classes=classes)
    for c in range(3):
        precision, recall, _ = precision_recall_curve(labels[:, c], scores[:, c])  # recall decreasing
        voc = -np.sum(np.diff(recall) * np.maximum.accumulate(precision)[:-1])
        assert result.per_class[classes[c]] == pytest.approx(voc)
        assert average_precision_score(labels[:, c], scores[:, c]) <= voc + 1e-12
    assert result.mean_ap == pytest.approx(np.mean(list(result.per_class.values())))


def test_average_precision_needs_ground_truth():
    with pytest.raises(ValueError, match="num_truth"):
        average_precision(np.array([0.5]), np.array([True]), 0)
    assert average_precision(np.zeros(0), np.zeros(0, dtype=bool), 3) == 0.0
