"""Spatio-temporal action localization with given person boxes: ConST-CL's AVA / UCF101-24
downstream protocol (a clip centred on each key frame through the backbone, RoIAlign-3D on
each box, a classifier trained on the training key frames, frame-mAP at IoU 0.5)::

    from vvk.eval.features import load_backbone
    from vvk.methods.localization import PRESETS, action_localization

    backbone, _ = load_backbone("runs/constcl-1")
    result = action_localization(backbone, "ucf24/", annotations="ucf24/pyannot_with_class_names.pkl",
                                 preset=PRESETS["tiny"])
    result["frame_mAP"], result["per_class"]

Modules: ``preset`` (settings), ``head`` (the RoI head and the localizer), ``data`` (videos,
annotations, key-frame clips), ``train`` (training, scoring, frame-mAP inputs), ``evaluate`` (the
protocol). Annotations are read by ``vvk.data.ava``; the metric is ``vvk.eval.frame_map``.
"""

from vvk.methods.localization.evaluate import action_localization
from vvk.methods.localization.preset import PRESETS, LocalizationPreset

__all__ = ["PRESETS", "LocalizationPreset", "action_localization"]
