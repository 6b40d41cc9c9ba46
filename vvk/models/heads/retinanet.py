"""RetinaNet head (class and box towers shared across pyramid levels), and backbone + head.

Follows ``tensorflow/models: official/vision/modeling/heads/dense_prediction_heads.py``
(``RetinaNetHead``), the head the SpineNet tables count: convolutions *with* bias shared by all
levels, batch norm *per level*, a 3×3 classifier and box regressor; with ``separable=True``
every conv is a depthwise 3×3 + biased pointwise 1×1 (Keras ``SeparableConv2D``), the
SpineNet-Mobile head. Anchor generation, losses and decoding belong to the detector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vvk.models.backbones.base import Backbone
from vvk.models.layers import activation_layer
from vvk.models.registry import build


def _conv3x3(in_channels: int, out_channels: int, *, separable: bool) -> nn.Module:
    if not separable:
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class RetinaNetHead(nn.Module):
    """Per level: ``num_convs`` × (conv, level BN, act) then the classifier, twice (class and box).

    ``forward(features)`` returns ``{"cls_logits": {level: (B, A·K, H, W)}, "bbox_deltas":
    {level: (B, A·4, H, W)}}``; :meth:`flatten` turns that into (B, N, K) and (B, N, 4).

    Args:
        levels: feature keys to read, e.g. ``("P3", ..., "P7")``.
        num_classes: K, logits per anchor (sigmoid focal loss: no background column).
        num_anchors: A per location (3 scales × 3 aspect ratios = 9).
        prior_prob: the classifier bias starts at ``-log((1 - p) / p)`` (focal-loss prior).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_anchors: int = 9,
        levels: Sequence[str] = ("P3", "P4", "P5", "P6", "P7"),
        num_convs: int = 4,
        num_filters: int = 256,
        separable: bool = False,
        activation: str = "swish",
        prior_prob: float = 0.01,
        norm_momentum: float = 0.01,
        norm_eps: float = 1e-3,
    ):
        super().__init__()
        self.levels = tuple(levels)
        self.num_classes, self.num_anchors = num_classes, num_anchors
        widths = [in_channels] + [num_filters] * num_convs
        towers, norms = {}, {}
        for tower in ("cls", "box"):
            towers[tower] = nn.ModuleList(
                _conv3x3(widths[i], widths[i + 1], separable=separable) for i in range(num_convs)
            )
            norms[tower] = nn.ModuleDict(
                {
                    level: nn.ModuleList(
                        nn.BatchNorm2d(num_filters, momentum=norm_momentum, eps=norm_eps)
                        for _ in range(num_convs)
                    )
                    for level in self.levels
                }
            )
        self.towers, self.norms = nn.ModuleDict(towers), nn.ModuleDict(norms)
        self.act = activation_layer(activation)
        self.classifier = _conv3x3(widths[-1], num_anchors * num_classes, separable=separable)
        self.box_regressor = _conv3x3(widths[-1], num_anchors * 4, separable=separable)
        self._init(prior_prob)

    def _init(self, prior_prob: float) -> None:
        for tower in self.towers.values():
            for m in tower.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.01)
        for out in (self.classifier, self.box_regressor):
            for m in out.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=1e-5)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        last = self.classifier if isinstance(self.classifier, nn.Conv2d) else self.classifier[-1]
        nn.init.constant_(last.bias, -math.log((1 - prior_prob) / prior_prob))

    def _tower(self, name: str, level: str, x: Tensor) -> Tensor:
        for conv, norm in zip(self.towers[name], self.norms[name][level], strict=True):
            x = self.act(norm(conv(x)))
        return x

    def forward(self, features: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
        return {
            "cls_logits": {
                lvl: self.classifier(self._tower("cls", lvl, features[lvl])) for lvl in self.levels
            },
            "bbox_deltas": {
                lvl: self.box_regressor(self._tower("box", lvl, features[lvl])) for lvl in self.levels
            },
        }

    def flatten(self, outputs: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Concatenate levels in ``self.levels`` order, anchors ordered (level, y, x, anchor)."""

        def per_anchor(maps: dict[str, Tensor], width: int) -> Tensor:
            flat = []
            for lvl in self.levels:
                b, _, h, w = maps[lvl].shape
                # (B, A*width, H, W) -> (B, H, W, A, width) -> (B, H*W*A, width)
                flat.append(
                    maps[lvl]
                    .view(b, self.num_anchors, width, h, w)
                    .permute(0, 3, 4, 1, 2)
                    .reshape(b, -1, width)
                )
            return torch.cat(flat, dim=1)

        return per_anchor(outputs["cls_logits"], self.num_classes), per_anchor(outputs["bbox_deltas"], 4)


class RetinaNet(nn.Module):
    """A backbone with a RetinaNet head: ``forward(images)`` returns the head's outputs."""

    def __init__(self, backbone: Backbone, head: RetinaNetHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> dict[str, dict[str, Tensor]]:
        return self.head(self.backbone(images))


# Head shape per backbone (num_convs, num_filters, separable), from tensorflow/tpu
# configs/spinenet/*_retinanet.yaml (4×256; 49S: 128 filters; 190: 7×512) and tensorflow/models
# configs/experiments/retinanet/coco_spinenet49{,s,xs}_mobile_tpu.yaml (separable, 48/40/24).
HEAD_SPECS: dict[str, tuple[int, int, bool]] = {
    "spinenet-49s": (4, 128, False),
    "spinenet-49": (4, 256, False),
    "spinenet-96": (4, 256, False),
    "spinenet-143": (4, 256, False),
    "spinenet-190": (7, 512, False),
    "spinenet-tiny": (2, 16, False),
    "spinenet-mobile-49": (4, 48, True),
    "spinenet-mobile-49s": (4, 40, True),
    "spinenet-mobile-49xs": (4, 24, True),
    # vvk's CPU variant: the reference's 4 convs, dense and 32 wide. A 2x16 separable head found
    # the example's digits but could not name them: box AP50 0.22 at 1,500 steps against 0.45 at
    # 1,100 with this one, in the same ten CPU minutes (docs/results.md).
    "spinenet-mobile-tiny": (4, 32, False),
}


def build_retinanet(
    backbone_name: str, *, num_classes: int = 91, num_anchors: int = 9, **backbone_kwargs
) -> RetinaNet:
    """Registry backbone ``backbone_name`` with the RetinaNet head its reference config uses.

    91 classes and 9 anchors are the COCO settings the published parameter counts use.
    """
    if backbone_name not in HEAD_SPECS:
        raise ValueError(
            f"no reference RetinaNet head for '{backbone_name}' (known: {', '.join(HEAD_SPECS)})"
        )
    num_convs, num_filters, separable = HEAD_SPECS[backbone_name]
    backbone = build(backbone_name, **backbone_kwargs)
    shapes = backbone.output_shape()
    head = RetinaNetHead(
        in_channels=next(iter(shapes.values())).channels,
        num_classes=num_classes,
        num_anchors=num_anchors,
        levels=tuple(shapes),
        num_convs=num_convs,
        num_filters=num_filters,
        separable=separable,
    )
    return RetinaNet(backbone, head)
