"""ViLD's training loss and test-time scores (tensorflow/tpu: models/official/detection/projects/
vild): the distillation loss of ViLD-image (``modeling/vild_model.py``, ``feat_distill_loss``) and
the ensemble's scores, the text head's and the image head's probabilities geometrically weighted
towards the text head on base categories and towards the image head on novel ones
(``ops/postprocess_ops.py``, ``GenericDetectionGenerator`` with ``visual_feature_distill:
double_branch``)."""

from __future__ import annotations

import torch
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


def ensemble_scores(text_logits: Tensor, image_logits: Tensor, base: Tensor) -> Tensor:
    """(N, K) category scores of N regions.

    Args:
        text_logits: (N, K + 1) the text head's logits, background first: softmax over all
            K + 1, then the background column dropped (``discard_background: False``).
        image_logits: (N, K) the image head's logits: softmax over the K categories only.
        base: (K,) bool, True for categories trained with boxes.

    Returns ``(p_text · p_image · third) ** (1/3)`` with ``third`` = p_text on base categories
    and p_image on novel ones: p_text^(2/3) p_image^(1/3) for base, p_text^(1/3) p_image^(2/3)
    for novel. (The reference's mask is named ``rare_mask`` but is 1 on the categories it
    keeps in training, as its class loss shows.)
    """
    p_text = text_logits.float().softmax(dim=-1)[:, 1:]  # (N, K)
    p_image = image_logits.float().softmax(dim=-1)  # (N, K)
    third = torch.where(base.to(p_text.device), p_text, p_image)
    return (p_text * p_image * third).pow(1.0 / 3.0)
