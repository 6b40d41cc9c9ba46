"""Model size and cost without allocating weights: parameters and MACs counted on the meta device.

MACs (multiply-accumulates) are what the Google papers in our references call "FLOPs":
``torch.utils.flop_counter`` counts 2 FLOPs per multiply-add of convolutions, matmuls and
attention, so MACs = FLOPs / 2. Element-wise ops, norms and pooling are not counted (nor are
they in the published tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vvk.models.registry import build, get_entry

# Tasks whose input is integer token ids rather than a float signal.
_TOKEN_TASKS = frozenset({"text-backbone"})


def human_count(value: int) -> str:
    """``88023531520`` -> ``"88.02G"``; ``1073280`` -> ``"1.07M"`` (K, M, G, T)."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return str(value)


def count_params(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Trainable parameters (conv/linear weights and biases, norm affine), as papers count them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_params_by_name(name: str, **kwargs) -> int:
    """Parameter count of registry model ``name`` built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        return count_params(build(name, **kwargs))


def count_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one ``model(*inputs)`` call in eval mode (works on the meta device)."""
    return run_counted(model, *inputs)[1]


def run_counted(model: nn.Module, *inputs: torch.Tensor) -> tuple[Any, int]:
    """``(model(*inputs), MACs)`` of one eval-mode call without gradients.

    A model with a ``profile_forward`` method (the detectors: their post-processing is
    data-dependent, so it cannot run on the meta device, and has no MACs) is counted through it.
    """
    was_training = model.training
    model.eval()
    forward = getattr(model, "profile_forward", model)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            outputs = forward(*inputs)
    finally:
        model.train(was_training)
    return outputs, counter.get_total_flops() // 2


def example_input(
    name: str, input_shape: Sequence[int] | None = None, *, device: str = "meta"
) -> torch.Tensor:
    """A batch of one for registry model ``name``: its default input, or ``input_shape`` (no batch axis)."""
    entry = get_entry(name)
    shape = (1, *(input_shape or entry.default_input))
    if entry.task in _TOKEN_TASKS:
        return torch.zeros(shape, dtype=torch.long, device=device)
    return torch.zeros(shape, device=device)


def count_macs_by_name(name: str, input_shape: Sequence[int] | None = None, **kwargs) -> int:
    """MACs of registry model ``name`` on one sample of ``input_shape`` (default: its default input)."""
    with torch.device("meta"):
        model = build(name, **kwargs)
    return count_macs(model, example_input(name, input_shape))
