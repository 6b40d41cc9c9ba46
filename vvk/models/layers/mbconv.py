"""MBConv: the inverted-bottleneck block of SpineNet-Mobile and Eff-SpineNet."""

from __future__ import annotations

from torch import Tensor, nn

from vvk.models.layers.conv import ConvNormAct
from vvk.models.layers.squeeze_excitation import SqueezeExcitation
from vvk.models.layers.stochastic_depth import StochasticDepth


class MBConv(nn.Module):
    """Inverted bottleneck with squeeze-excitation::

        x ─► 1×1 expand (×expand_ratio), BN, act ─► k×k depthwise /stride, BN, act
          ─► SE ─► 1×1 project, BN ─► stochastic depth ─► (+ x when shapes match)

    The SE bottleneck is ``max(1, int(in_channels · se_ratio))`` wide: the block *input* width,
    not the expanded one (tf-models ``InvertedBottleneckBlock`` with ``expand_se_in_filters=False``;
    the TPU ``mbconv_block`` does the same).

    Args:
        se_activation, se_gate: SE inner and gating activations (tf-models SpineNet-Mobile:
            relu / hard_sigmoid; TPU Eff-SpineNet: swish / sigmoid).
        drop_rate: stochastic depth on the residual branch (only used when there is a residual).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        expand_ratio: int = 6,
        stride: int = 1,
        kernel_size: int = 3,
        se_ratio: float = 0.2,
        activation: str = "swish",
        se_activation: str = "relu",
        se_gate: str = "sigmoid",
        drop_rate: float = 0.0,
        norm_momentum: float = 0.01,
        norm_eps: float = 1e-3,
    ):
        super().__init__()
        norm = {"norm_momentum": norm_momentum, "norm_eps": norm_eps}
        hidden = in_channels * expand_ratio
        self.expand = (
            ConvNormAct(in_channels, hidden, 1, activation=activation, **norm)
            if expand_ratio != 1
            else nn.Identity()
        )
        self.depthwise = ConvNormAct(
            hidden, hidden, kernel_size, stride=stride, groups=hidden, activation=activation, **norm
        )
        self.se = (
            SqueezeExcitation(
                hidden, max(1, int(in_channels * se_ratio)), activation=se_activation, gate=se_gate
            )
            if 0 < se_ratio <= 1
            else nn.Identity()
        )
        self.project = ConvNormAct(hidden, out_channels, 1, activation=None, **norm)
        self.has_residual = in_channels == out_channels and stride == 1
        self.drop = StochasticDepth(drop_rate if self.has_residual else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + self.drop(y) if self.has_residual else y


def mbconv_group(
    in_channels: int, out_channels: int, repeats: int, *, stride: int = 1, **block
) -> nn.Sequential:
    """``repeats`` MBConv blocks; only the first changes width and stride (``block_group``)."""
    return nn.Sequential(
        *(
            MBConv(
                in_channels if r == 0 else out_channels, out_channels, stride=stride if r == 0 else 1, **block
            )
            for r in range(repeats)
        )
    )
