"""3D ResNets: the CVRL / ConST-CL R3D-50 (also Y-shaped) and 3D ResNet-RS 50–350.

Follows ``tensorflow/models: official/vision/modeling/backbones/resnet_3d.py`` and
``official/vision/modeling/layers/nn_blocks_3d.py`` (``BottleneckBlock3D``, ``SelfGating``).
Where that code differs from the 3D ResNet-RS paper's prose we follow the code:

- self-gating only in the *last* block of each stage, applied *before* SE;
- the shortcut is a plain strided 1×1 conv (only the stem is ResNet-D style);
- temporal kernel sizes per stage are (1, 1, 3, 3), placed in the block's first (1×1) conv.

ConST-CL's Y-shaped backbone (``official/projects/const_cl/modeling/backbones/resnet_3d.py``,
``ResNet3DY``) builds res5 twice off res4: ``res5`` feeds the global loss, ``res5_1`` the local one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vvk.models.backbones.base import Backbone, FeatureSpec, register_variants
from vvk.models.layers import (
    ConvNormAct,
    SqueezeExcitation,
    StochasticDepth,
    activation_layer,
    init_conv_weights,
)
from vvk.models.layers.stochastic_depth import drop_rate_for_block

_BASE_FILTERS = (64, 128, 256, 512)  # bottleneck widths of res2..res5; outputs are 4x these
_STAGES = ("res2", "res3", "res4", "res5")


class SelfGating(nn.Module):
    """S3D-G feature gating: ``x * sigmoid(W mean(x) + b)``, a full-width 1×1×1 conv, no bottleneck."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Conv3d(channels, channels, 1)
        nn.init.trunc_normal_(self.proj.weight, std=0.01)  # TruncatedNormal(0.01) in nn_blocks_3d
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.proj(x.mean(dim=(2, 3, 4), keepdim=True)))


class Bottleneck3D(nn.Module):
    """``BottleneckBlock3D``::

        x ─► [kt,1,1] conv /t, BN, act ─► [1,3,3] conv /s, BN, act ─► 1×1 conv (4f), BN
          ─► self-gating ─► SE ─► stochastic depth ─► (+ shortcut) ─► act

    Shortcut: identity, a strided subsample (the reference's 1×1 max pool) when only the stride
    changes, else a strided 1×1 conv + BN.
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        *,
        temporal_kernel: int,
        temporal_stride: int,
        spatial_stride: int,
        se_ratio: float | None,
        self_gating: bool,
        drop_rate: float,
        activation: str,
        norm: dict[str, float],
    ):
        super().__init__()
        out_channels = 4 * filters
        self.stride = (temporal_stride, spatial_stride, spatial_stride)
        self.shortcut = (
            None
            if in_channels == out_channels
            else ConvNormAct(
                in_channels, out_channels, 1, stride=self.stride, dims=3, activation=None, **norm
            )
        )
        self.temporal = ConvNormAct(
            in_channels,
            filters,
            (temporal_kernel, 1, 1),
            stride=(temporal_stride, 1, 1),
            dims=3,
            activation=activation,
            **norm,
        )
        self.spatial = ConvNormAct(
            filters,
            filters,
            (1, 3, 3),
            stride=(1, spatial_stride, spatial_stride),
            dims=3,
            activation=activation,
            **norm,
        )
        self.expand = ConvNormAct(filters, out_channels, 1, dims=3, activation=None, **norm)
        self.gating = SelfGating(out_channels) if self_gating else nn.Identity()
        self.se = (
            SqueezeExcitation(out_channels, max(1, int(out_channels * se_ratio)), dims=3)
            if se_ratio
            else nn.Identity()
        )
        self.drop = StochasticDepth(drop_rate)
        self.act = activation_layer(activation)

    def forward(self, x: Tensor) -> Tensor:
        if self.shortcut is not None:
            shortcut = self.shortcut(x)
        else:
            t, s, _ = self.stride
            shortcut = x[:, :, ::t, ::s, ::s]  # the reference's MaxPool3D(pool_size=1, strides)
        y = self.expand(self.spatial(self.temporal(x)))
        y = self.drop(self.se(self.gating(y)))
        return self.act(y + shortcut)


def _stem(
    kind: str, width: float, temporal_kernel: int, temporal_stride: int, activation, norm
) -> nn.Sequential:
    """v0: one [kt,7,7]×64 /(t,2,2) conv (CVRL); v1: ResNet-D's three convs [kt,3,3]×32 /(t,2,2),
    [1,3,3]×32, [1,3,3]×64."""
    ch = lambda c: max(1, int(c * width))  # noqa: E731
    conv = lambda cin, cout, k, s=1: ConvNormAct(  # noqa: E731
        cin, cout, k, stride=s, dims=3, activation=activation, **norm
    )
    first_stride = (temporal_stride, 2, 2)
    if kind == "v0":
        return nn.Sequential(conv(3, ch(64), (temporal_kernel, 7, 7), first_stride))
    if kind == "v1":
        return nn.Sequential(
            conv(3, ch(32), (temporal_kernel, 3, 3), first_stride),
            conv(ch(32), ch(32), (1, 3, 3)),
            conv(ch(32), ch(64), (1, 3, 3)),
        )
    raise ValueError(f"unknown stem '{kind}' (choose v0 or v1)")


class ResNet3D(Backbone):
    """A 3D ResNet returning ``stem`` (before the pool), ``res2``..``res5`` (and ``res5_1`` if Y-shaped).

    Args:
        depths: bottleneck blocks per stage (``RESNET_SPECS``).
        width: multiplier on every filter count (1.0 for the published models; tiny variants shrink it).
        stem: ``"v0"`` (CVRL/ConST-CL) or ``"v1"`` (ResNet-D, 3D ResNet-RS).
        stem_temporal_stride: temporal stride of the first conv. 1 keeps the full frame rate
            (TeG needs res5 temporally dense).
        stem_pool_temporal_stride: the K400 RS yaml and CVRL use 1 (the dataclass default is 2).
        temporal_kernels: temporal kernel of every block, per stage.
        stage_temporal_strides: temporal stride of each stage's first block.
        se_ratio: squeeze-excitation ratio on the block output, or None.
        self_gating: S3D-G gating in the last block of every stage.
        stochastic_depth_rate: stage ``i`` (2..5) drops with ``rate · i / 5``.
        y_shaped: build res5 a second time (``res5_1``), ConST-CL's local branch.
    """

    def __init__(
        self,
        *,
        depths: tuple[int, ...],
        width: float = 1.0,
        stem: str = "v0",
        stem_temporal_kernel: int = 5,
        stem_temporal_stride: int = 2,
        stem_pool_temporal_stride: int = 1,
        temporal_kernels: tuple[int, ...] = (1, 1, 3, 3),
        stage_temporal_strides: tuple[int, ...] = (1, 1, 1, 1),
        se_ratio: float | None = None,
        self_gating: bool = False,
        stochastic_depth_rate: float = 0.0,
        y_shaped: bool = False,
        activation: str = "relu",
        norm_momentum: float = 0.01,
        norm_eps: float = 1e-3,
    ):
        super().__init__()
        if not len(depths) == len(temporal_kernels) == len(stage_temporal_strides) == 4:
            raise ValueError("depths, temporal_kernels and stage_temporal_strides need one entry per stage")
        norm = {"norm_momentum": norm_momentum, "norm_eps": norm_eps}
        self.stem = _stem(stem, width, stem_temporal_kernel, stem_temporal_stride, activation, norm)
        pool_t = stem_pool_temporal_stride
        pool_kt = 1 if pool_t == 1 else 3  # reference: temporal pool kernel 1 unless it strides
        self.pool = nn.MaxPool3d((pool_kt, 3, 3), stride=(pool_t, 2, 2), padding=(pool_kt // 2, 1, 1))
        stem_channels = max(1, int(64 * width))
        self._shapes = {"stem": FeatureSpec(stem_channels, 2, stem_temporal_stride)}
        in_channels, t_stride, s_stride = stem_channels, stem_temporal_stride * pool_t, 4
        stages = {}
        for i, name in enumerate(_STAGES):
            filters = max(1, int(_BASE_FILTERS[i] * width))
            spatial = 1 if i == 0 else 2
            stage_kwargs = dict(
                in_channels=in_channels,
                filters=filters,
                depth=depths[i],
                temporal_kernel=temporal_kernels[i],
                temporal_stride=stage_temporal_strides[i],
                spatial_stride=spatial,
                se_ratio=se_ratio,
                self_gating=self_gating,
                drop_rate=drop_rate_for_block(stochastic_depth_rate, i + 2, 5),
                activation=activation,
                norm=norm,
            )
            stages[name] = _stage(**stage_kwargs)
            if name == "res5" and y_shaped:
                stages["res5_1"] = _stage(**stage_kwargs)
            t_stride, s_stride = t_stride * stage_temporal_strides[i], s_stride * spatial
            in_channels = 4 * filters
            self._shapes[name] = FeatureSpec(in_channels, s_stride, t_stride)
        if y_shaped:
            self._shapes["res5_1"] = self._shapes["res5"]
        self.stages = nn.ModuleDict(stages)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: (B, 3, T, H, W) -> {"stem", "res2", ..., "res5"[, "res5_1"]}, each (B, C, T', H', W')."""
        stem = self.stem(x)
        out = {"stem": stem}
        h = self.pool(stem)
        for name in _STAGES:
            out[name] = self.stages[name](h)
            h = out[name]
        if "res5_1" in self.stages:
            out["res5_1"] = self.stages["res5_1"](out["res4"])
        return out

    def output_shape(self) -> dict[str, FeatureSpec]:
        return dict(self._shapes)


def _stage(
    *,
    in_channels: int,
    filters: int,
    depth: int,
    temporal_stride: int,
    spatial_stride: int,
    self_gating: bool,
    **block,
) -> nn.Sequential:
    blocks = []
    for j in range(depth):
        first = j == 0
        blocks.append(
            Bottleneck3D(
                in_channels if first else 4 * filters,
                filters,
                temporal_stride=temporal_stride if first else 1,
                spatial_stride=spatial_stride if first else 1,
                self_gating=self_gating and j == depth - 1,  # reference: last block of the stage only
                **block,
            )
        )
    return nn.Sequential(*blocks)


# RESNET_SPECS of tensorflow/models resnet_3d.py: bottleneck blocks per stage.
RESNET_SPECS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    270: (4, 29, 53, 4),
    300: (4, 36, 54, 4),
    350: (4, 36, 72, 4),
}
# RS settings: configs/backbones_3d.py::ResNet3DRS and configs/experiments/video_classification/
# k400_resnet3drs_50_tpu.yaml (se_ratio 0.25, init stochastic depth 0.1, stem v1).
_RS = {"stem": "v1", "se_ratio": 0.25, "self_gating": True, "stochastic_depth_rate": 0.1}
# Test variants: one block per stage, 1/8 width.
_TINY = {"depths": (1, 1, 1, 1), "width": 0.125}
_CLIP16, _CLIP32, _TINY_CLIP = (3, 16, 224, 224), (3, 32, 224, 224), (3, 4, 32, 32)

register_variants(
    ResNet3D,
    {"r3d-50": ({"depths": RESNET_SPECS[50], "stem": "v0"}, _CLIP16)},
    task="video-backbone",
    source="tensorflow/models: official/projects/video_ssl (CVRL R3D-50, README 31.7M)",
)
register_variants(
    ResNet3D,
    {
        "r3d-50-y": ({"depths": RESNET_SPECS[50], "stem": "v0", "y_shaped": True}, _CLIP16),
        "r3d-y-tiny": ({**_TINY, "stem": "v0", "y_shaped": True}, _TINY_CLIP),
    },
    task="video-backbone",
    source="tensorflow/models: official/projects/const_cl/modeling/backbones/resnet_3d.py (ResNet3DY)",
)
register_variants(
    ResNet3D,
    {
        **{f"r3d-rs-{depth}": ({"depths": blocks, **_RS}, _CLIP32) for depth, blocks in RESNET_SPECS.items()},
        "r3d-tiny": ({**_TINY, **_RS}, _TINY_CLIP),  # every optional piece switched on
    },
    task="video-backbone",
    source="tensorflow/models: official/vision/modeling/backbones/resnet_3d.py",
)
