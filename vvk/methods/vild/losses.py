"""ViLD-image's distillation loss (tensorflow/tpu: models/official/detection/projects/vild/
modeling/vild_model.py, ``feat_distill_loss``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def valid_rois(boxes: Tensor) -> Tensor:
    """(B, R) bool from (B, R, 4) padded proposal boxes: a row of zeros is padding (the
    reference's ``reduce_max(roi_boxes, -1) > 0``)."""
    return boxes.amax(dim=-1) > 0


def distillation_loss(regions: Tensor, teacher: Tensor, valid: Tensor) -> Tensor:
    """L1 between region embeddings and the teacher's, summed over the embedding and averaged
    over the valid proposals.

    Args:
        regions: (B, R, D) the detector's (already normalised) region embeddings.
        teacher: (B, R, D) the teacher's embeddings of the same proposals, normalised here
            (``normalize_feat_during_training: True``; a zero vector stays zero).
        valid: (B, R) bool, False for padding.

    The reference's ``absolute_difference`` with per-RoI weights and ``SUM_BY_NONZERO_WEIGHTS``
    divides the summed |difference| by the count of valid *elements* (valid RoIs x D), then
    multiplies by ``visual_feature_dim`` (D, 512 for CLIP ViT-B/32): the sum over D per RoI,
    averaged over valid RoIs. No valid RoI: 0 (TF's safe division).
    """
    target = F.normalize(teacher.float(), dim=-1, eps=0.0).nan_to_num(0.0)  # divide_no_nan
    per_roi = (regions.float() - target).abs().sum(dim=-1)  # (B, R)
    return (per_roi * valid).sum() / valid.sum().clamp(min=1)  # no valid RoI: 0 / 1
