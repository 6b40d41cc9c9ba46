"""TeG's training module: long and short clips, global and dense embeddings, both losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vvk.data.video_transforms import VideoAugment
from vvk.methods.base import PretrainModel, augment_views, global_pool
from vvk.methods.cvrl.loss import global_loss
from vvk.methods.teg.loss import fine_grained_loss
from vvk.models.heads.projection import ProjectionMLP

FEATURE = "res5"


class TegModel(PretrainModel):
    """The training module: ``forward(batch)`` -> {"loss", "persistent", "fine_grained"}.

    ``loss = persistent + fine_weight · fine_grained``; the two parts are logged unweighted.
    The persistent loss is CVRL's global loss on the two clips' global embeddings, the sum of
    its two directions (long -> short and short -> long, each a mean over the batch); the
    fine-grained loss has one direction (short steps -> long clip), a mean over the steps.

    Args:
        backbone: a 3D ResNet whose ``res5`` keeps time (temporal stride <= 2).
        global_head: GAP(res5) -> global embedding.
        dense_head: spatially pooled res5, per time step -> dense embedding.
        augment_long, augment_short: the views' augmentations (uint8 clips -> float views).
    """

    def __init__(
        self,
        *,
        backbone,
        global_head: ProjectionMLP,
        dense_head: ProjectionMLP,
        augment_long: VideoAugment,
        augment_short: VideoAugment,
        temperature: float,
        fine_temperature: float,
        fine_weight: float,
    ):
        super().__init__()
        self.backbone = backbone
        self.global_head = global_head
        self.dense_head = dense_head
        self.augment_long, self.augment_short = augment_long, augment_short
        self.temporal_stride = backbone.output_shape()[FEATURE].temporal_stride
        self.temperature, self.fine_temperature, self.fine_weight = temperature, fine_temperature, fine_weight

    def embed(self, clips: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, T, H, W) -> global (B, D) and dense (B, T', D) embeddings."""
        features = self.backbone(clips)[FEATURE]  # (B, C, T', H', W')
        per_step = features.mean(dim=(3, 4)).transpose(1, 2)  # (B, C, T', H', W') -> (B, T', C)
        return self.global_head(global_pool(features)), self.dense_head(per_step)

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        size = batch.get("frame_size")  # (B, 2) decoded frame sizes on a padded canvas
        long = augment_views(self.augment_long, batch["video"], size)
        short = augment_views(self.augment_short, batch["video_short"], size)
        if long.shape == short.shape:
            # One batch of 2B clips, as CVRL feeds its two views: batch norm mixes both clips.
            global_both, dense_both = self.embed(torch.cat([long, short]))
            (global_long, global_short), (dense_long, dense_short) = global_both.chunk(2), dense_both.chunk(2)
        else:
            (global_long, dense_long), (global_short, dense_short) = self.embed(long), self.embed(short)
        where = short_steps_on_long(
            batch["index_map"], temporal_stride=self.temporal_stride, steps=dense_short.shape[1]
        )
        persistent = global_loss(global_long, global_short, self.temperature)
        fine = fine_grained_loss(dense_short, dense_long, where, self.fine_temperature)
        return {"loss": persistent + self.fine_weight * fine, "persistent": persistent, "fine_grained": fine}


def short_steps_on_long(index_map: Tensor, *, temporal_stride: int, steps: int) -> Tensor:
    """(B, F_short) frame map -> (B, steps): where each short feature step falls on the long
    clip's feature axis. Step k stands for short frame ``s·k``, which lies at long frame
    ``index_map[s·k]``, i.e. long step ``index_map[s·k] / s``."""
    frames = index_map[:, ::temporal_stride]
    if frames.shape[1] < steps:
        raise ValueError(
            f"{steps} short steps at temporal stride {temporal_stride} need "
            f"{(steps - 1) * temporal_stride + 1} mapped frames, got {index_map.shape[1]}"
        )
    return frames[:, :steps].float() / temporal_stride
