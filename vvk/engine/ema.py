"""Exponential moving average of a model's weights (``ema = decay * ema + (1 - decay) * w``).

The average is a full copy of the module, so it can be saved with ``vvk.models.save`` and
evaluated like the model itself. Floating buffers (batch-norm statistics) are copied from the
model, or averaged like the weights (``average_buffers``); others (batch counts) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vvk.models.checkpoint import unwrap


class EMA:
    def __init__(self, model: nn.Module, decay: float, *, average_buffers: bool = False):
        self.decay, self.average_buffers = decay, average_buffers
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = unwrap(model)
        averaged = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        current = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            if self.average_buffers and mine.dtype.is_floating_point:
                averaged.append(mine)
                current.append(theirs)
            else:
                mine.copy_(theirs)
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
