"""Squeeze-and-excitation: global pooling, bottleneck, gate that rescales channels."""

from __future__ import annotations

from torch import Tensor, nn

from vvk.models.layers.conv import activation_layer


class SqueezeExcitation(nn.Module):
    """``x * gate(W2 act(W1 mean(x)))`` over all non-channel axes (2D images or 3D video).

    Both 1×1 convs carry biases, as in every reference implementation. The reduced width is
    computed by the caller because the families disagree on its base: 3D ResNet-RS uses the block
    output (``int(4f · ratio)``), MBConv blocks the block *input* before expansion.

    Args:
        channels: channels of ``x`` (and of the gate).
        reduced_channels: bottleneck width.
        activation: inner activation (relu in tf-models, swish in the TPU MBConv).
        gate: gating activation (sigmoid, or hard_sigmoid in SpineNet-Mobile).
    """

    def __init__(
        self,
        channels: int,
        reduced_channels: int,
        *,
        dims: int = 2,
        activation: str = "relu",
        gate: str = "sigmoid",
    ):
        super().__init__()
        conv_cls = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
        self.reduce = conv_cls(channels, reduced_channels, 1)
        self.act = activation_layer(activation)
        self.expand = conv_cls(reduced_channels, channels, 1)
        self.gate = activation_layer(gate)

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)  # (B, C, 1, 1[, 1])
        return x * self.gate(self.expand(self.act(self.reduce(squeezed))))
