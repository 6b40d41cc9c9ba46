"""TeG's fine-grained temporal loss: each short-clip step against the long clip at the same time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.kernels import contrastive_loss
from vvk.methods.base import process_group

# Same-video steps that are not negatives get this logit: exp() of it is exactly 0 in float32,
# while the backward pass stays finite (an all -inf row would give NaN gradients).
_EXCLUDED = -1e4


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
