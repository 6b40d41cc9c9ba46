"""Stochastic depth (per-sample residual-branch dropout, a.k.a. drop connect)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_rate_for_block(init_rate: float, index: int, count: int) -> float:
    """Linearly increasing rate ``init_rate * index / count`` (tf-models' ``get_stochastic_depth_rate``)."""
    if not 0.0 <= init_rate <= 1.0:
        raise ValueError(f"stochastic depth rate must be in [0, 1], got {init_rate}")
    return init_rate * index / count


class StochasticDepth(nn.Module):
    """Zero the whole residual branch of a sample with probability ``rate``; scale survivors by 1/keep.

    Identity in eval mode and when ``rate`` is 0.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        # One Bernoulli draw per sample, broadcast over every other axis: (B, 1, 1, ...).
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(
            keep
        )
        return x * mask / keep if keep > 0 else x * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate}"
