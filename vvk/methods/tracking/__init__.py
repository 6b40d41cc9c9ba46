"""SiamFC tracking on learned features (Bertinetto et al. 2016; ConST-CL's and VFS's OTB-2015
protocol): the network on any vvk backbone (``siamfc``), its label map and loss, training pair
crops, and the tracker (``SiamFCTracker``, ``track``)."""

from vvk.methods.tracking.siamfc import (
    PRESETS,
    FeatureAdapter,
    SiamFC,
    SiamFCLoss,
    SiamFCPreset,
    build,
    label_map,
    siamfc,
    xcorr,
)
from vvk.methods.tracking.tracker import SiamFCTracker, TrackState, crop_and_resize, pair_crops, track

__all__ = [
    "PRESETS",
    "FeatureAdapter",
    "SiamFC",
    "SiamFCLoss",
    "SiamFCPreset",
    "SiamFCTracker",
    "TrackState",
    "build",
    "crop_and_resize",
    "label_map",
    "pair_crops",
    "siamfc",
    "track",
    "xcorr",
]
