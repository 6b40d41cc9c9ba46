"""Crops of boxes, resized for a teacher: ViLD embeds each proposal at 1x and 1.5x its box.

The resize is ``torchvision.ops.roi_align`` with adaptive sampling: every output pixel averages
the input pixels of its bin, so a large box shrinks without aliasing and a small one is
bilinearly enlarged, in one batched call for all boxes of an image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align

# ViLD's two crops per proposal (paper §3.2: "we ensemble the image embeddings of 1x and 1.5x
# crops"; the official code computed them offline and did not release that step).
CROP_SCALES = (1.0, 1.5)


def enlarge_boxes(boxes: Tensor, scale: float, height: int, width: int) -> Tensor:
    """(R, 4) XYXY boxes scaled by ``scale`` about their centres, then cut to the image (the
    teacher sees image pixels only, never padding)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (R, 2)
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)  # (R, 2)
    limit = boxes.new_tensor([width, height])
    return torch.cat([(centre - half).clamp(min=0), torch.minimum(centre + half, limit)], dim=1)


def crop_regions(image: Tensor, boxes: Tensor, size: int, scales: Sequence[float] = CROP_SCALES) -> Tensor:
    """(len(scales), R, 3, size, size) crops of ``image`` (3, H, W) at each scale of the (R, 4)
    XYXY ``boxes`` (pixels)."""
    _, height, width = image.shape
    if boxes.numel() == 0:
        return image.new_zeros((len(scales), 0, 3, size, size))
    rois = torch.cat([enlarge_boxes(boxes.float(), s, height, width) for s in scales])  # (S*R, 4)
    crops = roi_align(
        image[None].float(), [rois], output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )  # fmt: skip  (S*R, 3, size, size)
    return crops.view(len(scales), len(boxes), 3, size, size)
