"""TeG: temporal granularity (Qian et al., "Exploring Temporal Granularity in Self-Supervised
Video Representation Learning", arXiv 2112.04480).

No code was published (reference/video_ssl.md §6); only the abstract is public. This follows
its description and the reference's suggested design, on the CVRL recipe the authors share::

    long clip ──augment──► backbone ─res5─┬─ GAP ─► global MLP ─► g_long ──┐ persistent loss
    short clip (inside) ─► backbone ─res5─┼─ GAP ─► global MLP ─► g_short ─┘ (NT-Xent)
                                          └─ spatial mean ─► per-step MLP ─► dense (B, T', D)
    (clips of the same length go through the backbone as one batch of 2B, as CVRL's views do)

    fine-grained loss: short step k  ⟷  long embedding at the same absolute time
    total = persistent + fine_weight · fine-grained

Time alignment: ``LongShortClips`` gives ``index_map[j]``, the position of short frame j on the
long clip's frame axis. The backbone subsamples time by ``s`` (res5 ``temporal_stride``) with
centred ("same") kernels, so feature step i stands for input frame ``s·i``: short step k sits at
long step ``index_map[s·k] / s``, generally fractional, and its positive is the long clip's
dense embedding linearly interpolated there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.data.augment import VideoAugment, cvrl_view_augments
from vvk.data.samplers import LongShortClips
from vvk.engine import TrainConfig
from vvk.errors import VvkError
from vvk.kernels import contrastive_loss
from vvk.methods.base import PretrainModel, global_pool, laptop_train, process_group
from vvk.methods.heads import ProjectionMLP
from vvk.methods.losses import nt_xent
from vvk.models import build as build_model

NAME = "teg"
FEATURE = "res5"
MAX_TEMPORAL_STRIDE = 2  # dense temporal embeddings need res5 to keep most of the frame rate
# Same-video steps that are not negatives get this logit: exp() of it is exactly 0 in float32,
# while the backward pass stays finite (an all -inf row would give NaN gradients).
_EXCLUDED = -1e4


@dataclass(frozen=True)
class TegPreset:
    """TeG hyperparameters. The defaults are the ``paper`` preset: the paper's values are not
    public (reference/video_ssl.md §6, §11), so each default is our choice, built on the CVRL
    recipe (``tensorflow/models: official/projects/video_ssl/configs/experiments/
    cvrl_pretrain_k600_200ep.yaml``) with the reason beside it."""

    # CVRL's R3D-50 with a temporal stride of 1 in the stem: res5 keeps all 16 steps of a
    # 16-frame clip (the reference asks for <= 2; 1 gives the fine-grained loss 16 positions).
    backbone: str = "r3d-50"
    stem_temporal_stride: int = 1
    # CVRL's backbone batch norm (Keras momentum 0.9, i.e. 0.1 in PyTorch's convention, eps 1e-5).
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    size: int = 256  # decoded short side; the random resized crop takes `crop` from it
    crop: int = 224  # CVRL's 224² views
    # CVRL's two asymmetric views (colour jitter, grayscale, blur, solarize); off: random
    # resized crop and flip only, which a 1/8-width network can learn through in a few steps.
    color_augment: bool = True
    fps: float | None = None  # the videos' own rate, as CVRL samples
    # Long clip: 16 frames every 8 (5.1 s at 25 fps), the persistent, slow view. Short clip:
    # CVRL's 16 frames every 2 (1.2 s) inside it; its steps fall every quarter long step.
    long_frames: int = 16
    long_stride: int = 8
    short_frames: int = 16
    short_stride: int = 2
    # Both heads have CVRL's global-head shape (3 x 2048 hidden, 128-d out), separate weights.
    hidden_dim: int = 2048
    embed_dim: int = 128
    head_layers: int = 3
    temperature: float = 0.1  # persistent NT-Xent: CVRL's temperature
    fine_temperature: float = 0.1  # the same scale for the dense InfoNCE
    # λ = 1: both granularities weighted equally; the paper reports that the weighting trades
    # fine-grained tasks against persistent ones, so this is the neutral starting point.
    fine_weight: float = 1.0
    # CVRL K600 yaml: SGD momentum 0.9, cosine from 0.32 with 1787 warm-up steps over 71488
    # steps, global batch 1024 (batch_size is per rank: 16 ranks x 64), L2 1e-6, bf16.
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            steps=71488,
            batch_size=64,
            lr=0.32,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=1e-6,
            warmup_steps=1787,
            schedule="cosine",
            precision="bf16",
        )
    )


PRESETS: dict[str, TegPreset] = {
    "paper": TegPreset(),
    # A laptop CPU: the 1/8-width test ResNet at 48², 8-frame clips whose short steps fall
    # every half long step (every other positive is interpolated), small heads, crop and flip
    # only, Adam at 3e-3: both losses well below chance within 60 steps.
    "tiny": TegPreset(
        backbone="r3d-tiny",
        size=64,
        crop=48,
        color_augment=False,
        long_frames=8,
        long_stride=4,
        short_frames=8,
        short_stride=2,
        hidden_dim=128,
        embed_dim=32,
        head_layers=2,
        train=laptop_train(steps=60, batch_size=6, lr=3e-3, weight_decay=0.0, num_workers=0),
    ),
}


def sampler(preset: TegPreset) -> LongShortClips:
    return LongShortClips(
        long_frames=preset.long_frames,
        long_stride=preset.long_stride,
        short_frames=preset.short_frames,
        short_stride=preset.short_stride,
        fps=preset.fps,
    )


def dataset_options(preset: TegPreset) -> dict[str, Any]:
    return {}


def build(preset: TegPreset) -> TegModel:
    backbone = build_model(
        preset.backbone,
        stem_temporal_stride=preset.stem_temporal_stride,
        norm_momentum=preset.bn_momentum,
        norm_eps=preset.bn_eps,
    )
    spec = backbone.output_shape().get(FEATURE)
    if spec is None:
        raise VvkError(f"teg: backbone '{preset.backbone}' has no {FEATURE} output (use an r3d-* model)")
    if spec.temporal_stride > MAX_TEMPORAL_STRIDE:
        raise VvkError(
            f"teg: backbone '{preset.backbone}' subsamples time by {spec.temporal_stride} at {FEATURE}; "
            f"dense temporal embeddings need <= {MAX_TEMPORAL_STRIDE}",
            hint="set stem_temporal_stride=1",
        )
    head = {"in_dim": spec.channels, "hidden_dim": preset.hidden_dim, "out_dim": preset.embed_dim}
    if preset.color_augment:  # CVRL's views: the long clip gets view 1, the short clip view 2
        augment_long, augment_short = cvrl_view_augments(preset.crop)
    else:
        augment_long = augment_short = VideoAugment(size=preset.crop, jitter=0.0, grayscale=0.0, blur=0.0)
    return TegModel(
        backbone=backbone,
        global_head=ProjectionMLP(**head, layers=preset.head_layers),
        dense_head=ProjectionMLP(**head, layers=preset.head_layers),
        augment_long=augment_long,
        augment_short=augment_short,
        temperature=preset.temperature,
        fine_temperature=preset.fine_temperature,
        fine_weight=preset.fine_weight,
    )


class TegModel(PretrainModel):
    """The training module: ``forward(batch)`` -> {"loss", "persistent", "fine_grained"}.

    ``loss = persistent + fine_weight · fine_grained``; the two parts are logged unweighted.

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
        long, short = self.augment_long(batch["video"]), self.augment_short(batch["video_short"])
        if long.shape == short.shape:
            # One batch of 2B clips, as CVRL feeds its two views: batch norm mixes both clips.
            global_both, dense_both = self.embed(torch.cat([long, short]))
            (global_long, global_short), (dense_long, dense_short) = global_both.chunk(2), dense_both.chunk(2)
        else:
            (global_long, dense_long), (global_short, dense_short) = self.embed(long), self.embed(short)
        where = short_steps_on_long(
            batch["index_map"], temporal_stride=self.temporal_stride, steps=dense_short.shape[1]
        )
        persistent = nt_xent(global_long, global_short, self.temperature)
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


def interpolate_steps(x: Tensor, where: Tensor) -> Tensor:
    """(B, T, D) sequences read at fractional steps ``where`` (B, K) -> (B, K, D), linearly
    interpolated between the two neighbouring steps (clamped to [0, T - 1])."""
    t = x.shape[1]
    where = where.to(x.dtype).clamp(0, t - 1)
    low = where.floor().long().clamp(max=t - 1)
    high = (low + 1).clamp(max=t - 1)
    frac = (where - low.to(x.dtype)).unsqueeze(-1)  # (B, K) -> (B, K, 1)
    pick = lambda idx: x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # noqa: E731
    return pick(low) * (1 - frac) + pick(high) * frac


def fine_grained_loss(short: Tensor, long: Tensor, where: Tensor, temperature: float) -> Tensor:
    """InfoNCE of every short-clip step against the long clip at the same absolute time.

    For short step k of video b (query q, at fractional long step τ = ``where[b, k]``):

    - positive: the long embedding of video b interpolated at τ;
    - negatives: video b's long steps at least one step from τ (the one or two steps the
      positive is interpolated from are not negatives: at an integral τ one of them *is* the
      positive), and every long embedding of every other video in the global batch (their
      steps and their interpolated positives).

    Cosine similarities over ``temperature``; the mean over all query steps. The cross-video
    part goes through ``contrastive_loss`` (gathered across processes, no N × N matrix); the
    same-video part is a small (B, K, T) term on each rank.

    Args:
        short: (B, K, D) dense short-clip embeddings (queries).
        long: (B, T, D) dense long-clip embeddings.
        where: (B, K) position of each short step on the long step axis.
    """
    b, k, _ = short.shape
    t = long.shape[1]
    q = F.normalize(short.float(), dim=-1)
    keys = F.normalize(long.float(), dim=-1)
    positive = F.normalize(interpolate_steps(long.float(), where), dim=-1)  # (B, K, D)
    video = torch.arange(b, device=short.device)
    # Columns: every long step, then every positive; same-video columns leave the denominator
    # (group = video) except the row's own positive.
    columns = torch.cat([keys.flatten(0, 1), positive.flatten(0, 1)])  # (B*T + B*K, D)
    column_video = torch.cat([video.repeat_interleave(t), video.repeat_interleave(k)])
    cross = contrastive_loss(
        q.flatten(0, 1),
        columns,
        temperature,
        positives=b * t + torch.arange(b * k, device=short.device),
        groups=(video.repeat_interleave(k), column_video),
        normalize=False,
        reduction="none",
        process_group=process_group(),
    ).view(b, k)  # log(e^{s+} + Σ other videos) - s+
    s_pos = (q * positive).sum(-1) / temperature  # (B, K)
    s_same = torch.einsum("bkd,btd->bkt", q, keys) / temperature  # (B, K, T)
    far = (torch.arange(t, device=short.device) - where.unsqueeze(-1)).abs() >= 1  # (B, K, T)
    same = torch.logsumexp(s_same.masked_fill(~far, _EXCLUDED), dim=-1)  # log Σ same-video negatives
    return torch.logaddexp(cross, same - s_pos).mean()
