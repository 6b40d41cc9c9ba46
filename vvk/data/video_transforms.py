"""Temporally consistent video augmentation with kornia, on whole batches, on any device.

Every frame of a clip gets the same crop, flip, colour jitter, grayscale, blur and solarize
(kornia ``VideoSequential(same_on_frame=True)``); clips in a batch get independent draws. Run
it where the batch is (``augment(batch["video"].cuda())``): decoding stays uint8 and small on
the CPU, and the float work happens on the GPU.

Defaults follow CVRL / ConST-CL (``video_ssl_input._process_image``, reference/video_ssl.md
§5.4): random resized crop of area (0.3, 1) and aspect (0.5, 2), flip, colour jitter with
p = 0.8 at SimCLR strength 1 (brightness, contrast, saturation 0.8, hue 0.2), grayscale
p = 0.2, Gaussian blur with a kernel of a tenth of the crop and sigma in (0.1, 2), solarize at
0.5. ``cvrl_view_augments`` gives the two asymmetric views (blur 1.0 / 0.1, solarize 0 / 0.2).
"""

from __future__ import annotations

import torch
from torch import nn


class VideoAugment(nn.Module):
    """(B, C, T, H, W) uint8 or float in [0, 1] -> (B, C, T, size, size) float.

    Args:
        size: output side.
        crop_scale, crop_ratio: area fraction and aspect range of the random resized crop.
        flip, jitter, grayscale, blur, solarize: probabilities of each transform.
        strength: colour-jitter strength (SimCLR's s).
        zero_center: map [0, 1] to [-1, 1], as CVRL and ConST-CL feed their backbones.
    """

    def __init__(
        self,
        *,
        size: int = 224,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        crop_ratio: tuple[float, float] = (0.5, 2.0),
        flip: float = 0.5,
        jitter: float = 0.8,
        strength: float = 1.0,
        grayscale: float = 0.2,
        blur: float = 0.5,
        solarize: float = 0.0,
        zero_center: bool = True,
    ):
        super().__init__()
        import kornia.augmentation as K

        s = strength
        radius = size // 10 // 2  # kernel of about a tenth of the crop, odd (the reference's rule)
        self.zero_center = zero_center
        self.pipeline = K.VideoSequential(
            K.RandomResizedCrop((size, size), scale=crop_scale, ratio=crop_ratio),
            K.RandomHorizontalFlip(p=flip),
            K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=jitter),
            K.RandomGrayscale(p=grayscale),
            K.RandomGaussianBlur((2 * radius + 1, 2 * radius + 1), (0.1, 2.0), p=blur),
            # thresholds=0 and additions=0: solarize exactly at 0.5, as SimCLR does.
            K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize),
            data_format="BCTHW",
            same_on_frame=True,
        )

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"expected (B, C, T, H, W), got shape {tuple(video.shape)}")
        x = video.float().div_(255.0) if video.dtype == torch.uint8 else video.float()
        x = self.pipeline(x).clamp_(0.0, 1.0)
        return x.mul_(2.0).sub_(1.0) if self.zero_center else x


def cvrl_view_augments(size: int = 224) -> tuple[VideoAugment, VideoAugment]:
    """The two views of CVRL / ConST-CL: blur always on the first, rarely on the second,
    which alone is solarized."""
    return VideoAugment(size=size, blur=1.0, solarize=0.0), VideoAugment(size=size, blur=0.1, solarize=0.2)
