"""Custom ops, each with a pure-PyTorch reference and Triton / CUDA fast paths.

- :func:`roi_align_3d`, :func:`roi_align_tube`, :class:`RoIAlign3d`: RoIAlign over space and time.
- :func:`contrastive_loss`, :class:`ContrastiveLoss`: InfoNCE without the N × M matrix.
- :func:`available_backends`: which of reference / triton / cuda can run here.
"""

from vvk.kernels.backends import available_backends
from vvk.kernels.contrastive import ContrastiveLoss, contrastive_loss
from vvk.kernels.roi_align_3d import RoIAlign3d, roi_align_3d, roi_align_tube

__all__ = [
    "ContrastiveLoss",
    "RoIAlign3d",
    "available_backends",
    "contrastive_loss",
    "roi_align_3d",
    "roi_align_tube",
]
