"""Data augmentation for instance segmentation: Simple Copy-Paste.

- ``augment_coco``: a COCO dataset in, a copy-pasted COCO dataset out (``vvk augment copy-paste``).
- ``CopyPaste``: the same paste as a transform over torchvision ``tv_tensors`` (``Image``,
  ``BoundingBoxes``, ``Mask``) for training; composes with ``torchvision.transforms.v2``.
- ``paste`` / ``survives_occlusion``: the per-image algorithm on numpy frames, its objects'
  masks typed by the ``InstanceMask`` protocol (``LocalMask`` pixels, ``RunMask`` spans).
"""

from __future__ import annotations

from typing import Any

from vvk.augment.copy_paste import Instance, PasteResult, choose_objects, compose, paste, survives_occlusion
from vvk.augment.dataset_writer import augment_coco
from vvk.augment.jitter import SCALE_PRESETS, Jitter, jitter_image, sample_jitter
from vvk.augment.masks import Cover, InstanceMask, LocalMask, RunMask
from vvk.augment.render import CopyPasteOptions

__all__ = [
    "SCALE_PRESETS",
    "CopyPaste",
    "CopyPasteOptions",
    "Cover",
    "Instance",
    "InstanceMask",
    "Jitter",
    "LocalMask",
    "PasteResult",
    "RunMask",
    "augment_coco",
    "choose_objects",
    "compose",
    "jitter_image",
    "paste",
    "sample_jitter",
    "survives_occlusion",
]


def __getattr__(name: str) -> Any:
    # torchvision is heavy to import; only the online transform needs it.
    if name == "CopyPaste":
        from vvk.augment.transform import CopyPaste

        return CopyPaste
    raise AttributeError(name)
