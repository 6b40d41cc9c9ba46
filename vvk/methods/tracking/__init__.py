"""SiamFC tracking on learned features (Bertinetto et al. 2016; ConST-CL's and VFS's OTB-2015
protocol): the network on any vvk backbone (``siamfc``, the model registry's), its presets, label
map and loss, and the tracker (``SiamFCTracker``, ``track``). Training: ``vvk.methods.tracking.train``;
the crops: ``vvk.data.siamfc_crops``."""

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
from vvk.methods.tracking.tracker import SiamFCTracker, TrackState, track

__all__ = [
    "PRESETS",
    "FeatureAdapter",
    "SiamFC",
    "SiamFCLoss",
    "SiamFCPreset",
    "SiamFCTracker",
    "TrackState",
    "build",
    "label_map",
    "siamfc",
    "track",
    "xcorr",
]
