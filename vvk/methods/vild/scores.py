"""ViLD-ensemble's scores: the text head's and the image head's probabilities, geometrically
weighted towards the text head on base categories and towards the image head on novel ones
(tensorflow/tpu: models/official/detection/projects/vild/ops/postprocess_ops.py,
``GenericDetectionGenerator`` with ``visual_feature_distill: double_branch``)."""

from __future__ import annotations

import torch
from torch import Tensor


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
