"""Training detectors (``vvk train detector``): RetinaNet and Mask R-CNN of the model registry on
COCO-format data, with the Copy-Paste paper's input pipeline (scale jitter, flip, crop/pad to a
square, optional Simple Copy-Paste) and COCO AP on a val set during training::

    COCO folder ─ DetectionDataset (vvk.data.detection) ─ (B, 3, S, S) + targets ─┐
    registry detector (categories of the data, image_size S) ─────────────────────┴─ losses dict
    every eval_every steps: val images ─ detector (eval) ─ COCO results ─ pycocotools AP

``preset`` holds the ``tiny`` and ``paper`` presets, ``train`` the orchestration and the step,
``evaluate`` the scoring.
"""

from vvk.methods.detection.preset import PRESETS, DetectionPreset, family_of, preset_for
from vvk.methods.detection.train import (
    DETECTOR_FILE,
    DetectorPlan,
    DetectorResult,
    detection_step,
    plan_detector,
    resolve_detection_preset,
    run_detector,
    train_detector,
)

__all__ = [
    "DETECTOR_FILE",
    "PRESETS",
    "DetectionPreset",
    "DetectorPlan",
    "DetectorResult",
    "detection_step",
    "family_of",
    "plan_detector",
    "preset_for",
    "resolve_detection_preset",
    "run_detector",
    "train_detector",
]
