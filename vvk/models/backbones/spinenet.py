"""SpineNet 49S/49/96/143/190: the 15-block scale-permuted ResNet-style backbone.

Follows ``tensorflow/tpu: models/official/detection/modeling/architecture/spinenet.py`` (the
paper's 15 blocks). ``tensorflow/models: official/vision/modeling/backbones/spinenet.py`` appends
a 16th block (an extra L2 output, ≈ +0.14M at ``min_level=3``); we follow the TPU spec, which is
what the published parameter tables count. Where the two files differ in the resampling we
follow the TPU file too: one max pool (kernel 3 for ×4, else 5, stride ratio/2) after the strided
conv, instead of tf-models' repeated 3×3/2 pools. Neither choice has parameters.

The paper's SpineNet-49S (12.0M params with its RetinaNet head) cannot be reproduced from the
code: filter scale 0.65 gives 9.09M backbone / 11.27M with head, and the PyTorch port gets
the same; the legacy ``spinenet_lib`` builder uses 0.75. We follow the code (0.65).
"""

from __future__ import annotations

from torch import Tensor, nn

from vvk.models.backbones.base import register_variants
from vvk.models.backbones.scale_permuted import BlockSpec, Node, ScalePermutedBackbone
from vvk.models.layers import ConvNormAct, StochasticDepth, activation_layer

FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}

# SPINENET_BLOCK_SPECS: (level, block fn, (input0, input1), is_output); inputs index into
# [stem0, stem1, block0, block1, ...].
BLOCK_SPECS = tuple(
    BlockSpec(level, inputs, out, kind=kind)
    for level, kind, inputs, out in [
        (2, "bottleneck", (0, 1), False),
        (4, "residual", (0, 1), False),
        (3, "bottleneck", (2, 3), False),
        (4, "bottleneck", (2, 4), False),
        (6, "residual", (3, 5), False),
        (4, "bottleneck", (3, 5), False),
        (5, "residual", (6, 7), False),
        (7, "residual", (6, 8), False),
        (5, "bottleneck", (8, 9), False),
        (5, "bottleneck", (8, 10), False),
        (4, "bottleneck", (5, 10), True),
        (3, "bottleneck", (4, 10), True),
        (5, "bottleneck", (7, 12), True),
        (7, "bottleneck", (5, 14), True),
        (6, "bottleneck", (12, 14), True),
    ]
)

_EXPANSION = {"bottleneck": 4, "residual": 1}


class _ResBlock(nn.Module):
    """``bottleneck``: 1×1 f, 3×3 f, 1×1 4f; ``residual``: 3×3 f, 3×3 f. BN after every conv,
    activation between them and after the residual sum; projection shortcut when widths differ."""

    def __init__(self, in_channels: int, filters: int, *, kind: str, drop_rate: float, activation: str, norm):
        super().__init__()
        out = filters * _EXPANSION[kind]
        conv = lambda cin, cout, k, act=activation: ConvNormAct(cin, cout, k, activation=act, **norm)  # noqa: E731
        if kind == "bottleneck":
            self.body = nn.Sequential(
                conv(in_channels, filters, 1), conv(filters, filters, 3), conv(filters, out, 1, None)
            )
        else:
            self.body = nn.Sequential(conv(in_channels, filters, 3), conv(filters, filters, 3, None))
        self.shortcut = conv(in_channels, out, 1, None) if in_channels != out else nn.Identity()
        self.drop = StochasticDepth(drop_rate)
        self.act = activation_layer(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(self.body(x)) + self.shortcut(x))


def _block_group(in_channels: int, filters: int, *, kind: str, repeats: int, **block) -> nn.Sequential:
    width = filters * _EXPANSION[kind]
    return nn.Sequential(
        *(_ResBlock(in_channels if r == 0 else width, filters, kind=kind, **block) for r in range(repeats))
    )


class _ResampleWithAlpha(nn.Sequential):
    """``resample_with_alpha``: 1×1 to ``int(C·α)`` (C divided by 4 for a bottleneck parent), then
    a 3×3/2 conv and a max pool to go down, or nearest upsampling to go up, then 1×1 to the target
    width with BN and no activation."""

    def __init__(self, parent: Node, level: int, out_channels: int, *, alpha: float, activation: str, norm):
        base = parent.channels / _EXPANSION[parent.kind]
        mid = int(base * alpha)
        layers: list[nn.Module] = [ConvNormAct(parent.channels, mid, 1, activation=activation, **norm)]
        if level > parent.level:
            ratio = 2 ** (level - parent.level)
            layers.append(ConvNormAct(mid, mid, 3, stride=2, activation=activation, **norm))
            if ratio > 2:
                kernel = 3 if ratio <= 4 else 5
                layers.append(nn.MaxPool2d(kernel, stride=ratio // 2, padding=kernel // 2))
        elif level < parent.level:
            layers.append(nn.Upsample(scale_factor=2 ** (parent.level - level), mode="nearest"))
        layers.append(ConvNormAct(mid, out_channels, 1, activation=None, **norm))
        super().__init__(*layers)


class _Stem(nn.Module):
    """7×7/2 conv, 3×3/2 max pool, then two level-2 bottleneck groups; returns both groups' outputs."""

    def __init__(self, stem_channels: int, filters: int, repeats: int, activation: str, norm):
        super().__init__()
        self.conv = ConvNormAct(3, stem_channels, 7, stride=2, activation=activation, **norm)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        block = {
            "kind": "bottleneck",
            "repeats": repeats,
            "drop_rate": 0.0,
            "activation": activation,
            "norm": norm,
        }
        self.group0 = _block_group(stem_channels, filters, **block)
        self.group1 = _block_group(4 * filters, filters, **block)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        first = self.group0(self.pool(self.conv(x)))
        return first, self.group1(first)


def spinenet(
    *,
    endpoint_channels: int,
    filter_size_scale: float,
    resample_alpha: float,
    block_repeats: int,
    stem_channels: int = 64,
    min_level: int = 3,
    max_level: int = 7,
    stochastic_depth_rate: float = 0.0,
    activation: str = "swish",
    norm_momentum: float = 0.003,
    norm_eps: float = 1e-4,
) -> ScalePermutedBackbone:
    """SpineNet with the TPU code's defaults (swish, BN momentum 0.997 / eps 1e-4 in TF terms).

    Args:
        stochastic_depth_rate: block *i* of 15 drops with ``rate · (i+1) / 15`` (protocol C: 0.2).
    """
    norm = {"norm_momentum": norm_momentum, "norm_eps": norm_eps}
    filters_at = lambda level: int(FILTER_SIZE_MAP[level] * filter_size_scale)  # noqa: E731
    stem_filters = filters_at(2)

    def make_block(i: int, spec: BlockSpec, drop: float):
        filters = filters_at(spec.level)
        width = filters * _EXPANSION[spec.kind]
        group = _block_group(
            width,
            filters,
            kind=spec.kind,
            repeats=block_repeats,
            drop_rate=drop,
            activation=activation,
            norm=norm,
        )
        return group, width, Node(spec.level, width, spec.kind)

    def make_resample(parent: Node, level: int, out_channels: int):
        return _ResampleWithAlpha(
            parent, level, out_channels, alpha=resample_alpha, activation=activation, norm=norm
        )

    return ScalePermutedBackbone(
        stem=_Stem(stem_channels, stem_filters, block_repeats, activation, norm),
        stem_nodes=[Node(2, 4 * stem_filters, "bottleneck")] * 2,
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


def _scaling(
    endpoints: int, scale: float, alpha: float, repeats: int, size: int, **extra
) -> tuple[dict, tuple]:
    spec = {
        "endpoint_channels": endpoints,
        "filter_size_scale": scale,
        "resample_alpha": alpha,
        "block_repeats": repeats,
    }
    return {**spec, **extra}, (3, size, size)


# SCALING_MAP of tensorflow/tpu spinenet.py (endpoints, filter scale, alpha, repeats); default
# inputs from configs/spinenet/spinenet*_retinanet.yaml and MODEL_ZOO.md.
register_variants(
    spinenet,
    {
        "spinenet-49s": _scaling(128, 0.65, 0.5, 1, 640),
        "spinenet-49": _scaling(256, 1.0, 0.5, 1, 640),
        "spinenet-96": _scaling(256, 1.0, 0.5, 2, 1024),
        "spinenet-143": _scaling(256, 1.0, 1.0, 3, 1280),
        "spinenet-190": _scaling(512, 1.3, 1.0, 4, 1280),
        "spinenet-tiny": _scaling(16, 0.125, 0.5, 1, 128, stem_channels=16),
    },
    task="image-backbone",
    source="tensorflow/tpu: models/official/detection/modeling/architecture/spinenet.py (SCALING_MAP)",
)
