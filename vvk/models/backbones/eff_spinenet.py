"""Eff-SpineNet (SpineNet v2, "Efficient Scale-Permuted Backbone with Learned Resource Distribution").

Follows ``tensorflow/tpu: models/official/detection/modeling/architecture/spinenetv2.py``:
MBConv blocks (expand 6, SE 0.2 with swish / sigmoid) whose widths were *learned per block*,
a compound-scaling map ``m0, m1, m2, d0..d4`` (18 block repeats: 3 stem blocks + 15 blocks, a
filter scale applied with ``round_filters``, endpoint width), and resampling that replaces
strided convs by a space-to-depth for the first ×2 and one depthwise conv (k3 for ×4, else k5,
stride ratio/2) for the rest. No verified paper table of parameters or FLOPs was at hand: the
counts this code gives are reported in docs/models.md next to the reference config values.

``pixel_unshuffle`` orders the 4C channels differently from TF's ``space_to_depth``; it matters
only when porting TF weights.
"""

from __future__ import annotations

from torch import Tensor, nn

from vvk.models.backbones.base import register_variants
from vvk.models.backbones.scale_permuted import BlockSpec, Node, ScalePermutedBackbone
from vvk.models.layers import ConvNormAct, activation_layer, mbconv_group

# SPINENET_BLOCK_SPECS of spinenetv2.py: (level, learned filters, (input0, input1), is_output);
# inputs index into [stem base1, stem base2, block0, ...].
BLOCK_SPECS = tuple(
    BlockSpec(level, inputs, out, kind="mbconv", filters=filters)
    for level, filters, inputs, out in [
        (2, 16, (0, 1), False),
        (4, 104, (0, 1), False),
        (3, 48, (2, 3), False),
        (4, 120, (2, 4), False),
        (6, 40, (3, 5), False),
        (4, 120, (3, 5), False),
        (5, 168, (6, 7), False),
        (7, 96, (6, 8), False),
        (5, 192, (8, 9), False),
        (5, 136, (8, 10), False),
        (4, 104, (5, 10), True),
        (3, 40, (4, 10), True),
        (5, 136, (7, 12), True),
        (7, 136, (5, 14), True),
        (6, 40, (12, 14), True),
    ]
)


def round_filters(filters: float, multiplier: float, divisor: int = 8) -> int:
    """``nn_ops.round_filters``: scale, round to a multiple of ``divisor``, never lose more than 10%."""
    scaled = filters * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class _ResampleSpaceToDepth(nn.Module):
    """Down: space-to-depth ×2 (BN, act), then a k3 (×4) or k5 depthwise conv /(ratio/2) (BN, act).
    Up: nearest. Then 1×1 conv + BN to the target width."""

    def __init__(self, parent: Node, level: int, out_channels: int, *, activation: str, norm):
        super().__init__()
        c = parent.channels
        layers: list[nn.Module] = []
        if level > parent.level:
            ratio = 2 ** (level - parent.level)
            c = 4 * c
            layers += [
                nn.PixelUnshuffle(2),
                nn.BatchNorm2d(c, momentum=norm["norm_momentum"], eps=norm["norm_eps"]),
            ]
            layers.append(activation_layer(activation))
            if ratio > 2:
                kernel = 3 if ratio == 4 else 5
                layers.append(
                    ConvNormAct(c, c, kernel, stride=ratio // 2, groups=c, activation=activation, **norm)
                )
        elif level < parent.level:
            layers.append(nn.Upsample(scale_factor=2 ** (parent.level - level), mode="nearest"))
        layers.append(ConvNormAct(c, out_channels, 1, activation=None, **norm))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class _EffStem(nn.Module):
    """3×3/2 conv (8), MBConv 8→16, MBConv 16→24 /2, MBConv 24→16; returns the last two (level 2)."""

    def __init__(self, width, repeats: list[int], activation: str, block, norm):
        super().__init__()
        self.conv = ConvNormAct(3, width(8), 3, stride=2, activation=activation, **norm)
        self.base0 = mbconv_group(width(8), width(16), repeats[0], **block)
        self.base1 = mbconv_group(width(16), width(24), repeats[1], stride=2, **block)
        self.base2 = mbconv_group(width(24), width(16), repeats[2], **block)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        base1 = self.base1(self.base0(self.conv(x)))
        return base1, self.base2(base1)


def eff_spinenet(
    *,
    block_repeats: tuple[int, ...],
    filter_size_scale: float,
    endpoint_channels: int,
    expand_ratio: int = 6,
    se_ratio: float = 0.2,
    min_level: int = 3,
    max_level: int = 7,
    stochastic_depth_rate: float = 0.0,
    activation: str = "swish",
    norm_momentum: float = 0.003,
    norm_eps: float = 1e-4,
) -> ScalePermutedBackbone:
    """Eff-SpineNet with the TPU code's defaults (swish; BN momentum 0.997 / eps 1e-4 in TF terms).

    Args:
        block_repeats: 18 entries, 3 for the stem blocks then one per scale-permuted block.
    """
    if len(block_repeats) != 3 + len(BLOCK_SPECS):
        raise ValueError(f"block_repeats needs {3 + len(BLOCK_SPECS)} entries, got {len(block_repeats)}")
    width = lambda filters: round_filters(filters, filter_size_scale)  # noqa: E731
    norm = {"norm_momentum": norm_momentum, "norm_eps": norm_eps}
    block = {
        "expand_ratio": expand_ratio,
        "se_ratio": se_ratio,
        "activation": activation,
        "se_activation": "swish",
        "se_gate": "sigmoid",
        **norm,
    }

    def make_block(i: int, spec: BlockSpec, drop: float):
        c = width(spec.filters)
        return (
            mbconv_group(c, c, block_repeats[i + 3], **block, drop_rate=drop),
            c,
            Node(spec.level, c, spec.kind),
        )

    def make_resample(parent: Node, level: int, out_channels: int):
        return _ResampleSpaceToDepth(parent, level, out_channels, activation=activation, norm=norm)

    return ScalePermutedBackbone(
        stem=_EffStem(width, list(block_repeats[:3]), activation, block, norm),
        stem_nodes=[Node(2, width(24), "mbconv"), Node(2, width(16), "mbconv")],
        specs=BLOCK_SPECS,
        make_block=make_block,
        make_resample=make_resample,
        endpoint_channels=endpoint_channels,
        min_level=min_level,
        max_level=max_level,
        activation=activation,
        stochastic_depth_rate=stochastic_depth_rate,
        norm=norm,
    )


_D1 = (2, 2, 1, 1, 2, 2, 2, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1)
_D3 = (2, 2, 1, 1, 2, 2, 2, 1, 2, 2, 1, 2, 2, 2, 1, 1, 1, 1)
_D4 = (2, 2, 2, 1, 3, 2, 3, 1, 2, 3, 1, 2, 2, 2, 2, 2, 1, 1)
# DEFAULT_SCALING_MAP of spinenetv2.py: (block repeats, filter scale, endpoint filters). The
# default inputs (384 for m*, 640 for d*) are our assumption: the reference code sets none.
SCALING_MAP = {
    "eff-spinenet-m0": ((1,) * 18, 0.4, 24, 384),
    "eff-spinenet-m1": ((1,) * 18, 0.5, 40, 384),
    "eff-spinenet-m2": ((1,) * 18, 0.8, 64, 384),
    "eff-spinenet-d0": ((1,) * 18, 1.0, 64, 640),
    "eff-spinenet-d1": (_D1, 1.0, 88, 640),
    "eff-spinenet-d2": (_D1, 1.1, 112, 640),
    "eff-spinenet-d3": (_D3, 1.2, 160, 640),
    "eff-spinenet-d4": (_D4, 1.4, 224, 640),
    "eff-spinenet-tiny": ((1,) * 18, 0.25, 16, 128),
}
register_variants(
    eff_spinenet,
    {
        name: (
            {"block_repeats": repeats, "filter_size_scale": scale, "endpoint_channels": endpoints},
            (3, size, size),
        )
        for name, (repeats, scale, endpoints, size) in SCALING_MAP.items()
    },
    task="image-backbone",
    source="tensorflow/tpu: models/official/detection/modeling/architecture/spinenetv2.py"
    " (DEFAULT_SCALING_MAP)",
)
