"""The one interface every backbone exposes: named feature maps plus their shapes.

Heads and methods read ``output_shape()`` instead of guessing channels or strides, so a
detection head fits SpineNet or a 3D ResNet alike, and a video method knows how far time is
subsampled before it builds its temporal layers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from vvk.models.registry import register


@dataclass(frozen=True)
class FeatureSpec:
    """Shape of one named output.

    Args:
        channels: feature dimension (channels of a map, or width of a token).
        stride: spatial subsampling relative to the input (1 for audio/text tokens).
        temporal_stride: temporal subsampling relative to the input (1 for images).
    """

    channels: int
    stride: int
    temporal_stride: int = 1


class Backbone(nn.Module, ABC):
    """A feature extractor: ``forward(x)`` returns a dict of named feature maps."""

    @abstractmethod
    def forward(self, x: Tensor) -> dict[str, Tensor]: ...

    @abstractmethod
    def output_shape(self) -> dict[str, FeatureSpec]:
        """Channels and strides of every key ``forward`` returns."""


def register_variants(
    factory: Callable[..., Backbone],
    variants: Mapping[str, tuple[dict[str, Any], tuple[int, ...]]],
    *,
    task: str,
    source: str,
) -> None:
    """Register one builder per row of a family's size table: ``name -> (fixed kwargs, default input)``.

    The builder calls ``factory(**{**fixed, **overrides})``, so ``build("r3d-50",
    stem_temporal_stride=1)`` changes one argument and the registry records it for checkpoints.
    Tiny variants get "; tiny test variant" appended to their source.
    """
    for name, (fixed, default_input) in variants.items():
        note = "; tiny test variant" if name.endswith("-tiny") else ""
        register(name, task=task, default_input=default_input, source=source + note)(
            _bind(name, factory, fixed)
        )


def _bind(name: str, factory: Callable[..., Backbone], fixed: dict[str, Any]) -> Callable[..., Backbone]:
    def builder(**overrides: Any) -> Backbone:
        return factory(**{**fixed, **overrides})

    builder.__name__ = name.replace("-", "_")
    return builder
