"""The RoI action head on a video backbone: ConST-CL's downstream protocol with given boxes::

    clip (B, 3, T, H, W) ─ backbone ─ res5 (res5_1 of a Y backbone: the local branch)
      (B, C, T', H', W') ─ RoIAlign-3D, one bin over all T' (the temporal average), size² bins
      (K, C, 1, s, s) ─ max over the bins ─ (K, C) ─┬──────────────────────────── dropout ─ linear ─ logits
                                                     └─ transformer: attends to the clip's
                                                        T'·H'·W' feature tokens (+ positions) ─┘

The linear form is SlowFast's AVA head (``slowfast/models/head_helper.py::ResNetRoIHead``:
temporal average, RoIAlign, spatial max pool, dropout, linear); RoIAlign-3D with one temporal
bin spanning the clip computes the temporal average and the RoIAlign in one op. The transformer
form is ConST-CL's ``ActionTransformer`` idea (reference/video_ssl.md: only its config is
public), built from ConST-CL's own decoder (``vvk.methods.constcl.local``) with one layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.kernels import roi_align_3d
from vvk.methods.constcl.local import POSITION_CHANNELS, ContextDecoder, PositionFeatures
from vvk.methods.localization.preset import HEADS, LocalizationPreset

FEATURES = ("res5_1", "res5")  # the Y backbone's local branch first


def feature_name(backbone: nn.Module) -> str:
    """The backbone map the head pools: ``res5_1`` when there is one, else ``res5``."""
    shapes = backbone.output_shape() if hasattr(backbone, "output_shape") else {}
    for name in FEATURES:
        if name in shapes:
            return name
    raise VvkError(
        "action localization pools a 3D ResNet's res5 map; this backbone has none "
        f"(its outputs: {', '.join(shapes) or 'unknown'})",
        params=("weights", "backbone"),
    )


def clip_rois(boxes: Tensor, batch_index: Tensor, frame_size: Tensor, steps: int) -> Tensor:
    """(K, 7) RoIAlign-3D rois ``[b, 0, x1, y1, steps, x2, y2]``: each box over the whole clip,
    in pixels of its own clip's frame (``frame_size`` (B, 2) height, width: clips of a batch
    are padded to the largest, and a normalised box is relative to its clip's frame)."""
    hw = frame_size.to(boxes)[batch_index]  # (K, 2)
    scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)  # (K, 4): w, h, w, h
    xyxy = boxes * scale
    column = batch_index.to(boxes)[:, None]
    start, end = torch.zeros_like(column), torch.full_like(column, float(steps))
    return torch.cat([column, start, xyxy[:, :2], end, xyxy[:, 2:]], dim=1)


class RoIActionHead(nn.Module):
    """Per-box action logits from a clip's feature map (module docstring).

    Args:
        channels: C of the pooled map.
        num_classes: actions scored.
        spatial_scale: feature cells per input pixel (1 / the map's stride).
        kind: ``linear`` or ``transformer``.
        roi_size: RoIAlign bins per side.
        dropout: before the classifier.
        decoder_dim, decoder_heads: the transformer's unit width and units (one layer).
    """

    def __init__(
        self,
        *,
        channels: int,
        num_classes: int,
        spatial_scale: float,
        kind: str = "linear",
        roi_size: int = 7,
        dropout: float = 0.5,
        decoder_dim: int = 128,
        decoder_heads: int = 2,
    ):
        super().__init__()
        if kind not in HEADS:
            raise VvkError(f"head={kind}: not a head (choose {' or '.join(HEADS)})", params=("head",))
        self.spatial_scale, self.roi_size = spatial_scale, roi_size
        width = channels
        self.positions = self.decoder = None
        if kind == "transformer":
            self.positions = PositionFeatures()
            self.decoder = ContextDecoder(
                query_dim=channels, memory_dim=channels + POSITION_CHANNELS, channels=decoder_dim, layers=1,
                heads=decoder_heads,
            )  # fmt: skip
            width = decoder_heads * decoder_dim
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        """(B, C, T', H', W'), (K, 7) rois (``clip_rois``) -> (K, num_classes) logits."""
        pooled = roi_align_3d(
            features, rois, (1, self.roi_size, self.roi_size), spatial_scale=self.spatial_scale
        )  # (K, C, 1, s, s)
        regions = pooled.flatten(2).amax(dim=2)  # (K, C, 1, s, s) -> (K, C): SlowFast's spatial max pool
        if self.decoder is not None:
            regions = self.decoder(regions[:, None], self._memory(features)[rois[:, 0].long()])[:, 0]
        return self.classifier(self.dropout(regions))

    def _memory(self, features: Tensor) -> Tensor:
        """(B, C, T', H', W') -> (B, T'·H'·W', C + 16) context tokens with their positions (a
        clip padded to the batch's canvas keeps its padding's tokens: grey input, never a box)."""
        b, _, t, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (B, C, T', H', W') -> (B, T'*H'*W', C)
        where = self.positions(t, h, w, device=tokens.device, dtype=tokens.dtype)  # (T'*H'*W', 16)
        return torch.cat([tokens, where.expand(b, -1, -1)], dim=-1)


class ActionLocalizer(nn.Module):
    """A backbone and a ``RoIActionHead`` on one of its maps. The backbone stays in eval mode
    (frozen batch-norm statistics: a few key frames per step are too few to estimate them) and,
    unless ``finetune_backbone``, runs without gradients (its ``requires_grad`` is set so)."""

    def __init__(self, *, backbone: nn.Module, head: RoIActionHead, feature: str, finetune_backbone: bool):
        super().__init__()
        self.backbone, self.head, self.feature = backbone, head, feature
        self.finetune_backbone = finetune_backbone
        self.backbone.requires_grad_(finetune_backbone)

    def train(self, mode: bool = True) -> ActionLocalizer:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, video: Tensor, boxes: Tensor, batch_index: Tensor, frame_size: Tensor) -> Tensor:
        """Logits (K, classes) of ``boxes`` (K, 4) normalised, on clips ``video`` (B, 3, T, H, W)
        in [-1, 1]; ``batch_index`` (K,) their clips, ``frame_size`` (B, 2) the clips' frames."""
        with torch.set_grad_enabled(self.finetune_backbone and torch.is_grad_enabled()):
            features = self.backbone(video)[self.feature]  # (B, C, T', H', W')
        return self.head(features, clip_rois(boxes, batch_index, frame_size, features.shape[2]))


def build_localizer(backbone: nn.Module, *, num_classes: int, preset: LocalizationPreset) -> ActionLocalizer:
    """The localizer of ``preset`` on ``backbone``, for ``num_classes`` actions."""
    name = feature_name(backbone)
    spec = backbone.output_shape()[name]
    head = RoIActionHead(
        channels=spec.channels, num_classes=num_classes, spatial_scale=1.0 / spec.stride, kind=preset.head,
        roi_size=preset.roi_size, dropout=preset.dropout, decoder_dim=preset.decoder_dim,
        decoder_heads=preset.decoder_heads,
    )  # fmt: skip
    return ActionLocalizer(
        backbone=backbone, head=head, feature=name, finetune_backbone=preset.finetune_backbone
    )
