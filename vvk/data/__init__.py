"""Video and image input: decoding, datasets, clip samplers, augmentation.

The video pipeline, for a pretraining method::

    from vvk.data import TwoViews, make_loader, open_video_dataset

    data = open_video_dataset("videos/", sampler=TwoViews(frames=16, stride=2), size=128, cache_dir=run_dir)
    for batch in make_loader(data, batch_size=8):
        batch["video"], batch["video_b"]    # (B, 3, 16, H, W) uint8 each

Modules: ``decode`` / ``decode_torchcodec`` (the decoders), ``decoders`` (choosing one),
``frame_cache`` (decoded frames on disk), ``samplers`` (pure index maths), ``sources`` (folders,
lists, captions), ``index`` (metadata and bad files, cached), ``datasets`` (``ClipDataset``,
``collate``), ``loader`` (sharded resumable order), ``video_transforms`` (clip augmentation on
the GPU), ``images`` (image reading and writing), ``coco`` (COCO annotations). Importing this
package does not import torch; the names below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AudioVisualClip": "samplers",
    "Caption": "samplers",
    "ClipPlan": "samplers",
    "ClipSampler": "samplers",
    "LongShortClips": "samplers",
    "RandomClip": "samplers",
    "TwoViews": "samplers",
    "UniformClips": "samplers",
    "BadVideo": "media",
    "VideoMeta": "media",
    "VideoItem": "sources",
    "open_source": "sources",
    "read_captions": "sources",
    "read_list": "sources",
    "scan_folder": "sources",
    "VideoIndex": "index",
    "build_index": "index",
    "get_decoder": "decoders",
    "BadFiles": "datasets",
    "ClipDataset": "datasets",
    "collate": "datasets",
    "open_video_dataset": "datasets",
    "ShardedSampler": "loader",
    "make_loader": "loader",
    "VideoAugment": "video_transforms",
    "cvrl_view_augments": "video_transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vvk.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vvk.data.{_EXPORTS[name]}"), name)
