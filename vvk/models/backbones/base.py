"""The one interface every backbone exposes: named feature maps plus their shapes.

Heads and methods read ``output_shape()`` instead of guessing channels or strides, so a
detection head fits SpineNet or a 3D ResNet alike, and a video method knows how far time is
subsampled before it builds its temporal layers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn


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
