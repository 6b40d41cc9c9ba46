"""The reference's detection losses, on torchvision's matching and box coding.

RetinaNet (tensorflow/models: official/vision/tasks/retinanet.py, ``build_losses``; values from
official/vision/configs/retinanet.py ``Losses``): sigmoid focal loss (α 0.25, γ 1.5) summed over
every non-ignored anchor and class, and a Huber loss (δ 0.1) on the encoded box deltas of the
positive anchors, averaged over the 4 coordinates (Keras' ``Huber`` reduces the last axis with a
mean) and summed; both are divided by the number of positive anchors *in the whole batch* plus
one, and the box term is weighted by 50. torchvision's own RetinaNet normalises per image and
uses an L1 box loss.

Mask R-CNN (tensorflow/tpu: models/official/detection/modeling/losses.py, δ values from
configs/maskrcnn_config.py): the RPN box loss is Huber δ 1/9 and the Fast R-CNN box loss Huber
δ 1.0, each averaged over the non-zero-weight coordinates (``SUM_BY_NONZERO_WEIGHTS``: 4 per
positive); the RPN score loss is summed and divided by ``batch · rpn_batch_size_per_im``.
torchvision uses smooth L1 with β 1/9 divided by the number of sampled anchors or RoIs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import sigmoid_focal_loss

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 1.5  # official/vision/configs/retinanet.py: Losses
RETINANET_HUBER_DELTA, RETINANET_BOX_WEIGHT = 0.1, 50.0  # same
RPN_HUBER_DELTA = 1.0 / 9.0  # tensorflow/tpu configs/maskrcnn_config.py: rpn_box_loss
FRCNN_HUBER_DELTA = 1.0  # same: frcnn_box_loss


def retinanet_losses(
    *,
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: list[Tensor],
    targets: list[dict[str, Tensor]],
    matched_idxs: list[Tensor],
    box_coder: det_utils.BoxCoder,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
    huber_delta: float = RETINANET_HUBER_DELTA,
    box_weight: float = RETINANET_BOX_WEIGHT,
) -> dict[str, Tensor]:
    """``{"classification", "bbox_regression"}`` of a batch, already weighted.

    Args:
        cls_logits: (B, N, C) logits of N anchors, C = K + 1 (column 0 is never a target).
        box_deltas: (B, N, 4) encoded box deltas.
        anchors: B tensors (N, 4) XYXY.
        matched_idxs: B tensors (N,): the matched target box, or a ``Matcher`` negative code.
    """
    cls_terms, box_terms, positives = [], [], []
    for logits, deltas, anc, target, matched in zip(
        cls_logits, box_deltas, anchors, targets, matched_idxs, strict=True
    ):
        positive = matched >= 0  # (N,)
        valid = matched != det_utils.Matcher.BETWEEN_THRESHOLDS
        gt_index = matched[positive]
        one_hot = torch.zeros_like(logits)  # (N, C)
        one_hot[positive, target["labels"][gt_index]] = 1.0
        cls_terms.append(
            sigmoid_focal_loss(logits[valid], one_hot[valid], alpha=alpha, gamma=gamma, reduction="sum")
        )
        encoded = box_coder.encode_single(target["boxes"][gt_index], anc[positive])  # (P, 4)
        huber = F.huber_loss(deltas[positive], encoded.to(deltas.dtype), delta=huber_delta, reduction="none")
        box_terms.append(huber.mean(dim=-1).sum())
        positives.append(positive.sum())
    normalizer = torch.stack(positives).sum() + 1.0
    return {
        "classification": torch.stack(cls_terms).sum() / normalizer,
        "bbox_regression": box_weight * torch.stack(box_terms).sum() / normalizer,
    }


def rpn_losses(
    *,
    objectness: Tensor,
    box_deltas: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    sampled_positive: Tensor,
    sampled_negative: Tensor,
    num_images: int,
    batch_size_per_image: int,
    huber_delta: float = RPN_HUBER_DELTA,
) -> tuple[Tensor, Tensor]:
    """``(objectness loss, box loss)`` of the RPN over the flattened anchors of a batch.

    Args:
        objectness: (N,) logits; box_deltas, regression_targets: (N, 4); labels: (N,) 1/0/-1.
        sampled_positive, sampled_negative: (N,) masks of the anchors the sampler kept.
    """
    sampled = sampled_positive | sampled_negative
    score = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled], reduction="sum")
    score = score / (num_images * batch_size_per_image)
    box = F.huber_loss(
        box_deltas[sampled_positive], regression_targets[sampled_positive], delta=huber_delta, reduction="sum"
    )
    return score, box / (4 * sampled_positive.sum()).clamp(min=1)


def fast_rcnn_losses(
    *,
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    huber_delta: float = FRCNN_HUBER_DELTA,
) -> tuple[Tensor, Tensor]:
    """``(class loss, box loss)`` of the sampled RoIs.

    Args:
        class_logits: (R, C); labels: (R,) in 0..K (0 = background).
        box_regression: (R, 4·C) per class, or (R, 4) class-agnostic.
        regression_targets: (R, 4) encoded with the RoI heads' box coder (weights 10, 10, 5, 5).
    """
    class_loss = F.cross_entropy(class_logits, labels)
    positive = torch.where(labels > 0)[0]
    per_box = box_regression.reshape(box_regression.shape[0], -1, 4)  # (R, 1 or C, 4)
    column = labels[positive] if per_box.shape[1] > 1 else torch.zeros_like(positive)
    box = F.huber_loss(
        per_box[positive, column], regression_targets[positive], delta=huber_delta, reduction="sum"
    )
    return class_loss, box / max(1, 4 * positive.numel())
