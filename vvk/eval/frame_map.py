"""Frame-mAP: spatio-temporal action detection scored per key frame, as the AVA evaluator does.

The AVA evaluator is ActivityNet's ``Evaluation/get_ava_performance.py`` on the TF object
detection API's PASCAL metrics (``Evaluation/ava/object_detection_evaluation.py``,
``per_image_evaluation.py``, ``metrics.py``; the same files as SlowFast's ``ava_evaluation/``).
Per class, with IoU threshold 0.5:

1. On each key frame the class's detections are taken by descending score (``read_csv``: "the
   evaluation API assumes boxes with descending scores"). Each one is matched to the ground-truth
   box of that class it overlaps most (``np.argmax`` over all of them); it is a true positive if
   that IoU is >= 0.5 and the box is not matched yet, else a false positive
   (``PerImageEvaluation._compute_tp_fp_for_single_class``). A detection whose best box is taken
   stays a false positive even when another free box also overlaps it by 0.5: this is not a
   greedy "best free box" matching. Detections on a key frame without ground truth are false
   positives.
2. All key frames' detections are ranked by score; precision and recall follow
   (``metrics.compute_precision_recall``), and the AP is the VOC area under the interpolated
   curve, precision made non-increasing from the right and summed over the recall steps
   (``metrics.compute_average_precision``, quoted in ``average_precision`` below). A class with
   ground truth and no detection scores 0.
3. The mAP is the mean over the classes with ground truth; the others are NaN and left out
   (``ObjectDetectionEvaluation.evaluate``: ``np.nanmean``).

Where this differs: key frames are whatever keys the caller gives (the evaluator truncates
timestamps to whole seconds, ``make_image_key``, which would merge UCF101-24's per-frame key
frames); every detection is kept (``get_ava_performance.py`` keeps the 50 best of a key frame,
``capacity=50``; SlowFast's evaluation of its own predictions keeps all); ties in score are
ranked in input order (stable) where the evaluator's ``np.argsort`` leaves them unspecified.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class Boxes:
    """Boxes of one key frame, one class label each (a box doing two actions is listed twice).

    Attributes:
        boxes: (N, 4) ``x1, y1, x2, y2`` (any one unit for ground truth and detections).
        labels: (N,) int class ids.
        scores: (N,) float, for detections; None for ground truth.
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None


@dataclass(frozen=True)
class FrameMap:
    """The score: ``mean_ap`` over the classes with ground truth; ``per_class`` AP of every
    class asked for (NaN without ground truth); ``ground_truth`` boxes per class."""

    mean_ap: float
    per_class: dict[int, float]
    ground_truth: dict[int, int]


def frame_map(
    ground_truth: Mapping[Hashable, Boxes],
    detections: Mapping[Hashable, Boxes],
    *,
    classes: Sequence[int],
    iou_threshold: float = IOU_THRESHOLD,
) -> FrameMap:
    """Frame-mAP of ``detections`` against ``ground_truth``, both keyed by key frame (module
    docstring). Labels not in ``classes`` are ignored, as the evaluator's class whitelist does;
    leave excluded key frames out of both mappings."""
    scores: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    hits: dict[int, list[np.ndarray]] = {c: [] for c in classes}
    counts = dict.fromkeys(classes, 0)
    empty = Boxes(np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    for truth in ground_truth.values():
        for c in classes:
            counts[c] += int((truth.labels == c).sum())
    for key, found in detections.items():
        if found.scores is None:
            raise ValueError(f"detections of key frame {key!r} have no scores")
        truth = ground_truth.get(key, empty)
        for c in classes:
            mine = found.labels == c
            if mine.any():
                order = np.argsort(-found.scores[mine], kind="stable")
                ranked = found.boxes[mine][order]
                scores[c].append(found.scores[mine][order])
                hits[c].append(match(ranked, truth.boxes[truth.labels == c], iou_threshold))
    per_class = {}
    for c in classes:
        if counts[c] == 0:
            per_class[c] = math.nan
            continue
        all_scores = np.concatenate(scores[c]) if scores[c] else np.zeros(0)
        all_hits = np.concatenate(hits[c]) if hits[c] else np.zeros(0, dtype=bool)
        per_class[c] = average_precision(all_scores, all_hits, counts[c])
    scored = [ap for ap in per_class.values() if not math.isnan(ap)]
    mean_ap = float(np.mean(scored)) if scored else math.nan
    return FrameMap(mean_ap=mean_ap, per_class=per_class, ground_truth=counts)


def match(detected: np.ndarray, truth: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """(D,) bool true positives of one class's detections on one key frame, ``detected`` (D, 4)
    in the order they are taken (by descending score) against the boxes ``truth`` (G, 4)."""
    hit = np.zeros(len(detected), dtype=bool)
    if len(truth) == 0 or len(detected) == 0:
        return hit
    iou = box_iou(torch.from_numpy(detected).double(), torch.from_numpy(truth).double()).numpy()  # (D, G)
    best = iou.argmax(axis=1)  # np.argmax: the first of equal overlaps, as the evaluator
    taken = np.zeros(len(truth), dtype=bool)
    for i, g in enumerate(best):
        if iou[i, g] >= iou_threshold and not taken[g]:
            hit[i] = taken[g] = True
    return hit


def average_precision(scores: np.ndarray, hits: np.ndarray, num_truth: int) -> float:
    """VOC AP of detections ranked by ``scores`` (descending, stable), ``hits`` true positives
    among ``num_truth`` ground-truth boxes; 0 without detections.

    As the AVA evaluator's ``metrics.compute_average_precision`` (the VOCdevkit's rule): recall
    padded with 0 before and 1 after, precision with 0 on both ends; precision replaced by its
    running maximum from the right; the sum over the indices where recall changes of the recall
    step times the precision there.
    """
    if num_truth <= 0:
        raise ValueError(f"num_truth must be positive, got {num_truth}")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.cumsum(np.asarray(hits, dtype=np.int64)[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / num_truth
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: non-increasing
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))
