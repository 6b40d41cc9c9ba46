"""RoIAlign-3D (boxes spanning time) and tube RoIAlign (one box per frame); see ``op.py``."""

from vvk.kernels.roi_align_3d.op import RoIAlign3d, roi_align_3d, roi_align_tube

__all__ = ["RoIAlign3d", "roi_align_3d", "roi_align_tube"]
