"""CVRL's training module: two augmented views, one backbone pass, the global head and loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vvk.data.video_transforms import VideoAugment
from vvk.methods.base import PretrainModel, augment_views, global_pool
from vvk.methods.cvrl.loss import contrastive_accuracy, global_loss
from vvk.models.heads.projection import ProjectionMLP

FEATURE = "res5"


class CvrlModel(PretrainModel):
    """The training module: ``forward(batch)`` -> {"loss", "accuracy"}.

    Args:
        backbone: a 3D ResNet returning ``res5``.
        head: GAP(res5) -> embedding.
        augment_a, augment_b: uint8 clips -> float views (view 1, view 2 of the reference).
        temperature: NT-Xent temperature.
    """

    def __init__(self, *, backbone, head: ProjectionMLP, augment_a: VideoAugment, augment_b: VideoAugment,
                 temperature: float):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.augment_a, self.augment_b = augment_a, augment_b
        self.temperature = temperature

    def views(self, batch: dict[str, Any]) -> Tensor:
        """Both augmented views as one batch: (2B, 3, T, crop, crop), view a first."""
        size = batch.get("frame_size")  # (B, 2) decoded frame sizes on a padded canvas
        a = augment_views(self.augment_a, batch["video"], size)
        return torch.cat([a, augment_views(self.augment_b, batch["video_b"], size)])

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        """Backbone outputs of 2B clips -> (2B, embed_dim) global embeddings."""
        return self.head(global_pool(features[FEATURE]))

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        z_a, z_b = self.embed(self.backbone(self.views(batch))).chunk(2)
        return {"loss": global_loss(z_a, z_b, self.temperature), "accuracy": contrastive_accuracy(z_a, z_b)}
