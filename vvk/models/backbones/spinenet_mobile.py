"""SpineNet-Mobile 49/49S/49XS: the scale-permuted spec with MBConv blocks.

Follows ``tensorflow/models: official/vision/modeling/backbones/spinenet_mobile.py``: 16 MBConv
blocks (expand 6, 3×3 depthwise, SE 0.2 on the block input width with hard-sigmoid gating),
resampling by repeated 3×3/2 depthwise convs (no α squeeze), filters rounded with ``int()``.
The TPU port (``spinenet_mbconv.py``) rounds with ``round_filters`` (multiples of 8), which
changes 49S and 49XS; we follow tf-models. Two quirks of the reference are not copied:
``_block_group`` feeds repeated blocks the group *input* (harmless: every variant has one
repeat), and a block above ``max_level`` is clipped to it (we always build the searched levels).
"""

from __future__ import annotations

from torch import Tensor, nn

from vvk.models.backbones.base import register_variants
from vvk.models.backbones.scale_permuted import BlockSpec, Node, ScalePermutedBackbone
from vvk.models.layers import ConvNormAct, MBConv, mbconv_group

FILTER_SIZE_MAP = {0: 8, 1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}

# SPINENET_BLOCK_SPECS of spinenet_mobile.py: (level, (input0, input1), is_output), all mbconv.
BLOCK_SPECS = tuple(
    BlockSpec(level, inputs, out, kind="mbconv")
    for level, inputs, out in [
        (2, (0, 1), False),
        (2, (1, 2), False),
        (4, (1, 2), False),
        (3, (3, 4), False),
        (4, (3, 5), False),
        (6, (4, 6), False),
        (4, (4, 6), False),
        (5, (7, 8), False),
        (7, (7, 9), False),
        (5, (9, 10), False),
        (5, (9, 11), False),
        (4, (6, 11), True),
        (3, (5, 11), True),
        (5, (8, 13), True),
        (7, (6, 15), True),
        (6, (13, 15), True),
    ]
)


class _ResampleWithSepConv(nn.Sequential):
    """One 3×3/2 depthwise conv (BN, act) per halving, or nearest upsampling; then 1×1 + BN."""

    def __init__(self, parent: Node, level: int, out_channels: int, *, activation: str, norm):
        c = parent.channels
        layers: list[nn.Module] = [
            ConvNormAct(c, c, 3, stride=2, groups=c, activation=activation, **norm)
            for _ in range(level - parent.level)
        ]
        if level < parent.level:
            layers.append(nn.Upsample(scale_factor=2 ** (parent.level - level), mode="nearest"))
        layers.append(ConvNormAct(c, out_channels, 1, activation=None, **norm))
        super().__init__(*layers)


class _MobileStem(nn.Module):
    """3×3/2 conv, MBConv to level-1 width, MBConv /2 to level 2; returns the two MBConv outputs."""

    def __init__(self, widths: list[int], block):
        super().__init__()
        self.conv = ConvNormAct(
            3,
            widths[0],
            3,
            stride=2,
            activation=block["activation"],
            norm_momentum=block["norm_momentum"],
            norm_eps=block["norm_eps"],
        )
        self.block0 = MBConv(widths[0], widths[1], stride=1, **block)
        self.block1 = MBConv(widths[1], widths[2], stride=2, **block)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        level1 = self.block0(self.conv(x))
        return level1, self.block1(level1)


def spinenet_mobile(
    *,
    endpoint_channels: int,
    filter_size_scale: float,
    block_repeats: int = 1,
    expand_ratio: int = 6,
    se_ratio: float = 0.2,
    min_level: int = 3,
    max_level: int = 7,
    stochastic_depth_rate: float = 0.0,
    activation: str = "swish",
    norm_momentum: float = 0.01,
    norm_eps: float = 1e-3,
) -> ScalePermutedBackbone:
    """SpineNet-Mobile; swish as in the ``coco_spinenet49*_mobile_tpu.yaml`` configs."""
    width = lambda level: int(FILTER_SIZE_MAP[level] * filter_size_scale)  # noqa: E731
    norm = {"norm_momentum": norm_momentum, "norm_eps": norm_eps}
    block = {
        "expand_ratio": expand_ratio,
        "se_ratio": se_ratio,
        "activation": activation,
        "se_activation": "relu",
        "se_gate": "hard_sigmoid",
        **norm,
    }

    def make_block(i: int, spec: BlockSpec, drop: float):
        c = width(spec.level)
        return mbconv_group(c, c, block_repeats, drop_rate=drop, **block), c, Node(spec.level, c, spec.kind)

    def make_resample(parent: Node, level: int, out_channels: int):
        return _ResampleWithSepConv(parent, level, out_channels, activation=activation, norm=norm)

    return ScalePermutedBackbone(
        stem=_MobileStem([width(0), width(1), width(2)], block),
        stem_nodes=[Node(1, width(1), "mbconv"), Node(2, width(2), "mbconv")],
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


# SCALING_MAP of spinenet_mobile.py (endpoints, filter scale); inputs from the
# coco_spinenet49{,s,xs}_mobile_tpu.yaml configs (384; 256 for 49XS).
register_variants(
    spinenet_mobile,
    {
        name: ({"endpoint_channels": endpoints, "filter_size_scale": scale}, (3, size, size))
        for name, endpoints, scale, size in [
            ("spinenet-mobile-49", 48, 1.0, 384),
            ("spinenet-mobile-49s", 40, 0.65, 384),
            ("spinenet-mobile-49xs", 24, 0.6, 256),
            ("spinenet-mobile-tiny", 16, 0.35, 128),
        ]
    },
    task="image-backbone",
    source="tensorflow/models: official/vision/modeling/backbones/spinenet_mobile.py (SCALING_MAP)",
)
