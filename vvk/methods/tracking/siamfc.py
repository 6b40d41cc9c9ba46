"""SiamFC's presets, and the training side of the network: the label map and the balanced loss.

The network itself (``SiamFC``, ``FeatureAdapter``, ``xcorr``, the ``siamfc`` builder) is the
model registry's ``siamfc`` entry, ``vvk.models.trackers.siamfc``; it is re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.models.backbones import Backbone
from vvk.models.trackers.siamfc import (
    OUT_SCALE,
    TOTAL_STRIDE,
    Adjust,
    FeatureAdapter,
    SiamFC,
    default_normalisation,
    siamfc,
    xcorr,
)

R_POS = 16  # huanglianghua/siamfc-pytorch: siamfc/siamfc.py (parse_args, r_pos), pixels of the search crop
R_NEG = 0  # huanglianghua/siamfc-pytorch: siamfc/siamfc.py (parse_args, r_neg): no neutral band

__all__ = [
    "OUT_SCALE", "PRESETS", "R_NEG", "R_POS", "TOTAL_STRIDE", "FeatureAdapter", "SiamFC", "SiamFCLoss",
    "SiamFCPreset", "build", "default_normalisation", "label_map", "siamfc", "xcorr",
]  # fmt: skip


@dataclass(frozen=True)
class SiamFCPreset:
    """Network settings; ``build(preset)`` is the one place they become arguments."""

    backbone: str = "r3d-50"
    feature: str | None = None  # None: res5 dilated to stride 8 for a 3D ResNet (VFS)
    branch_channels: int | None = 512  # xvjiarui/VFS: default_config_base.py, extra_conv / out_channels
    # A fixed gain, as the recipe the paper preset trains with: huanglianghua/siamfc-pytorch
    # siamfc/heads.py (SiamFC, out * out_scale) and VFS's heads.py. A learned gain ("conv") under
    # that recipe's SGD at lr 1e-2 diverges in a few steps on a network trained end to end
    # (r3d-tiny: loss 1.7, then 3e4, then 9e5).
    adjust: Adjust = "scale"
    out_scale: float = OUT_SCALE
    freeze_backbone: bool = True  # the frozen-feature protocol of VFS and ConST-CL's OTB numbers


PRESETS: dict[str, SiamFCPreset] = {
    "paper": SiamFCPreset(),
    # Test variant: 1/8-width R3D, res3 at stride 8 (no dilation), trained end to end; CPU-fast.
    # Batch norm on the response (siamfc-pytorch @75a105c's bn_adjust): with the paper's SGD on
    # the shared OTB pairs it took the loss from 0.64 to 0.48 in 60 steps, where the fixed gain
    # only came down to ln 2 (0.69, a flat response) and the learned one diverged. Branch convs
    # as wide as res3 (64): without them a frozen backbone's tracker trains two numbers, and a
    # CVRL-pretrained r3d-tiny tracked no better than a random one (docs/results.md).
    "tiny": SiamFCPreset(
        backbone="r3d-tiny", feature="res3", branch_channels=64, adjust="bn", freeze_backbone=False
    ),
}


def build(
    preset: SiamFCPreset,
    *,
    backbone: Backbone | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    pretrained_state: Mapping[str, Tensor] | None = None,
) -> SiamFC:
    """The network ``preset`` describes: on its registry backbone at random initialisation
    (built with ``backbone_kwargs``), on ``backbone`` (a loaded, pretrained one, which stands in
    for ``preset.backbone``), or with ``pretrained_state`` loaded strictly into its backbone."""
    kwargs = asdict(preset)
    if backbone is not None:
        kwargs["backbone"] = backbone
    return siamfc(**kwargs, backbone_kwargs=backbone_kwargs, pretrained_state=pretrained_state)


def label_map(
    size: int, *, r_pos: float = R_POS, r_neg: float = R_NEG, total_stride: int = TOTAL_STRIDE
) -> tuple[Tensor, Tensor]:
    """SiamFC's logistic labels on a ``size``×``size`` response and their balanced weights.

    A cell at block (L1) distance ``d`` cells from the centre is positive if ``d ≤ r_pos /
    total_stride``, neutral (0.5, weight 0) if ``d < r_neg / total_stride``, else negative; the
    positives and the negatives each carry half the total weight (siamfc-pytorch
    ``_create_labels`` and ``losses.py::BalancedLoss``).

    Returns:
        labels, weights: (size, size) float tensors; ``weights`` sums to 1.
    """
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    dist = offsets.abs()[:, None] + offsets.abs()[None, :]  # (size, size) block distance
    labels = torch.zeros(size, size, dtype=torch.float64)
    labels[dist < r_neg / total_stride] = 0.5
    labels[dist <= r_pos / total_stride] = 1.0
    positive, negative = labels == 1, labels == 0
    weights = torch.zeros_like(labels)
    weights[positive] = 0.5 / positive.sum()
    weights[negative] = 0.5 / negative.sum()
    return labels.float(), weights.float()


class SiamFCLoss(nn.Module):
    """Balanced logistic loss on responses whose target sits at the centre of every map.

    ``forward(responses)``: (N, 1, R, R) logits -> scalar, the weighted BCE-with-logits summed
    over each map with :func:`label_map` weights and averaged over the N maps.
    """

    def __init__(self, *, r_pos: float = R_POS, r_neg: float = R_NEG, total_stride: int = TOTAL_STRIDE):
        super().__init__()
        self.r_pos, self.r_neg, self.total_stride = r_pos, r_neg, total_stride

    def forward(self, responses: Tensor) -> Tensor:
        if responses.ndim != 4 or responses.shape[1] != 1 or responses.shape[2] != responses.shape[3]:
            raise ValueError(f"expected (N, 1, R, R) responses, got {tuple(responses.shape)}")
        labels, weights = label_map(
            responses.shape[-1], r_pos=self.r_pos, r_neg=self.r_neg, total_stride=self.total_stride
        )
        labels = labels.to(responses).expand_as(responses)
        per_cell = F.binary_cross_entropy_with_logits(responses.float(), labels.float(), reduction="none")
        return (per_cell * weights.to(per_cell)).sum(dim=(1, 2, 3)).mean()

    def hits(self, responses: Tensor) -> Tensor:
        """The share of the (N, 1, R, R) maps whose peak is a positive cell of the label map: the
        training pairs the network would track (0-d, on the responses' device)."""
        labels, _ = label_map(
            responses.shape[-1], r_pos=self.r_pos, r_neg=self.r_neg, total_stride=self.total_stride
        )
        peaks = responses.flatten(1).argmax(dim=1)  # (N, 1, R, R) -> (N,) flat cell index
        return (labels.flatten().to(responses.device)[peaks] == 1).float().mean()
