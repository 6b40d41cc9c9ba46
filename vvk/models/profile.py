"""Model size without allocating weights: parameters counted on the meta device."""

from __future__ import annotations

import torch
from torch import nn

from vvk.models.registry import build


def count_params(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Trainable parameters (conv/linear weights and biases, norm affine), as papers count them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_params_by_name(name: str, **kwargs) -> int:
    """Parameter count of registry model ``name`` built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        return count_params(build(name, **kwargs))
