"""Replaceable classifiers: logits from fixed class embeddings (ViLD's text classifier).

A detector's classifier maps region features to ``K + 1`` logits, background first. Replacing
it by an :class:`EmbeddingClassifier` makes the categories a matrix of (text) embeddings, which a
new vocabulary replaces without retraining (``model.set_classifier(clf, categories=...)``).

ViLD (tensorflow/tpu: models/official/detection/projects/vild/modeling/vild_head.py): region
features are projected to the embedding width ("project-to-clip"), L2-normalised and compared by
cosine similarity with the frozen, normalised class embeddings and a learned background
embedding (initialised N(0, 0.01)) at index 0; the logits are divided by a temperature
(``temperature: 100.0`` is the multiplier, τ = 0.01; configs/vild_config.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EmbeddingClassifier(nn.Module):
    """``(..., in_features)`` region features -> ``(..., K + 1)`` logits against fixed embeddings.

    Args:
        embeddings: (K, D) class embeddings (e.g. CLIP text embeddings); kept as a frozen buffer.
        in_features: width of the region features; ``None`` when they already have width D.
        temperature: multiplier of the cosine similarities (ViLD: 100).
        bias: initial value of a learned logit offset shared by all classes (0 for softmax
            heads; RetinaNet's focal-loss prior ``-log((1 - p) / p)`` for sigmoid heads).
    """

    def __init__(
        self,
        *,
        embeddings: Tensor,
        in_features: int | None = None,
        temperature: float = 100.0,
        bias: float = 0.0,
    ):
        super().__init__()
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings: expected (K, D), got {tuple(embeddings.shape)}")
        dim = embeddings.shape[1]
        self.project = nn.Linear(in_features, dim) if in_features is not None else nn.Identity()
        self.register_buffer("embeddings", F.normalize(embeddings.detach().float(), dim=-1))
        self.background = nn.Parameter(torch.randn(1, dim) * 0.01)
        self.bias = nn.Parameter(torch.tensor(float(bias)))
        self.temperature = temperature

    @property
    def num_classes(self) -> int:
        return self.embeddings.shape[0] + 1

    def set_embeddings(self, embeddings: Tensor) -> None:
        """Another vocabulary: (K', D) class embeddings of the same width D, normalised here."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"embeddings: expected (K, {self.embeddings.shape[1]}), got {tuple(embeddings.shape)}"
            )
        self.embeddings = F.normalize(embeddings.detach().float(), dim=-1).to(self.embeddings.device)

    def forward(self, features: Tensor) -> Tensor:
        regions = F.normalize(self.project(features), dim=-1)  # (..., D)
        background = F.normalize(self.background, dim=-1)  # (1, D)
        classes = torch.cat([background, self.embeddings.to(regions.dtype)])  # (K+1, D)
        return self.temperature * regions @ classes.t() + self.bias  # (..., K+1)


class DenseEmbeddingClassifier(nn.Module):
    """RetinaNet's class subnet output with an :class:`EmbeddingClassifier`: a 3×3 conv gives
    each of the ``A`` anchors a D-dim embedding; ``(B, C, H, W) -> (B, A·(K+1), H, W)`` in the
    channel order ``RetinaNetHead.flatten`` reads (anchor-major, then class)."""

    def __init__(self, *, in_channels: int, num_anchors: int, classifier: EmbeddingClassifier):
        super().__init__()
        dim = classifier.embeddings.shape[1]
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, num_anchors * dim, 3, padding=1)
        self.classifier = classifier

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        emb = self.conv(x).view(b, self.num_anchors, -1, h, w).permute(0, 3, 4, 1, 2)  # (B, H, W, A, D)
        logits = self.classifier(emb)  # (B, H, W, A, K+1)
        return logits.permute(0, 3, 4, 1, 2).reshape(b, -1, h, w)  # (B, A*(K+1), H, W)
