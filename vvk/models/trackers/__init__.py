"""Trackers on vvk's backbones; importing this package registers them (task ``"tracking"``):
``siamfc``."""

from vvk.models.trackers.siamfc import FeatureAdapter, SiamFC, siamfc, xcorr

__all__ = ["FeatureAdapter", "SiamFC", "siamfc", "xcorr"]
