"""Key-frame clips for action localization: the videos, their annotations, and the frames
around each key frame with its boxes.

A sample is the clip of ``frames`` frames ``stride`` source frames apart, centred on the key
frame (frame ``frames // 2`` is the one on screen at the timestamp; frames before the video's
start or after its end repeat the first or last one, as SlowFast pads AVA clips), decoded whole
at a short side of ``size`` (no crop: the people at the frame's edges are annotated too), with
the key frame's boxes and their multi-hot action targets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from vvk.data.ava import Annotations, match_videos, read_ava, read_ucf24
from vvk.data.datasets import BadFiles
from vvk.data.decoders import Decoder, get_decoder
from vvk.data.index import build_index, cache_path
from vvk.data.media import BadVideo, VideoMeta
from vvk.data.paths import real_path
from vvk.data.sources import Data, open_source
from vvk.errors import VvkError


@dataclass(frozen=True)
class Videos:
    """The usable videos by id, and the files skipped. A video's id is its file name without
    extension, ``v_Biking_g01_c01``, or that with its folder, ``Biking/v_Biking_g01_c01``
    (how UCF101-24's pickle and vvk's built-in example set name them)."""

    files: dict[str, tuple[str, VideoMeta]]
    bad_files: BadFiles

    @property
    def durations(self) -> dict[str, float]:
        return {video_id: meta.duration for video_id, (_, meta) in self.files.items()}


def open_videos(
    data: Data, *, decoder: str = "auto", cache_dir: str | os.PathLike | None = None, progress: bool = False
) -> Videos:
    """The videos of ``data`` (a folder, a list, files), probed through the cached index; bad
    files are skipped and counted (``vvk.data.datasets.BadFiles``)."""
    found = open_source(data)
    bad = BadFiles()
    bad.merge(found.skipped)
    paths = [item.path for item in found.items]
    index = build_index(paths, cache=cache_path(data, cache_dir), decoder=decoder, progress=progress)
    files: dict[str, tuple[str, VideoMeta]] = {}
    for item in found.items:
        entry = index[real_path(item.path)]
        if entry.ok:
            for video_id in (item.video_id, f"{Path(item.path).parent.name}/{item.video_id}"):
                files.setdefault(video_id, (item.path, entry.meta))
        else:
            bad.add(item.path, entry.problem, entry.detail)
    return Videos(files, bad)


def load_annotations(
    path: str | os.PathLike,
    *,
    videos: Videos,
    label_map: str | os.PathLike | None = None,
    excluded: str | os.PathLike | None = None,
) -> Annotations:
    """AVA CSV or UCF101-24 pickle (by suffix: ``.pkl``) annotations, restricted to the key
    frames of ``videos`` (``vvk.data.ava.match_videos``)."""
    if Path(path).suffix.lower() == ".pkl":
        if label_map is not None or excluded is not None:
            raise VvkError(
                "label_map= and excluded= are AVA files; UCF101-24's pickle has its classes",
                params=("label_map", "excluded"),
            )
        fps = {video_id: meta.fps for video_id, (_, meta) in videos.files.items()}
        annotations = read_ucf24(path, fps=fps)
    else:
        annotations = read_ava(path, label_map=label_map, excluded=excluded)
    return match_videos(annotations, videos.durations)


def clip_times(timestamp: float, *, fps: float, frames: int, stride: int, duration: float) -> np.ndarray:
    """(frames,) seconds of the clip's frames: ``stride`` frames apart, frame ``frames // 2`` at
    ``timestamp``, clamped into the video (to the middle of its last frame)."""
    offsets = (np.arange(frames) - frames // 2) * stride / fps
    return np.clip(timestamp + offsets, 0.0, max(0.0, duration - 0.5 / fps))


class KeyFrameClips(Dataset):
    """``{"video": (3, T, H, W) uint8, "boxes": (N, 4) float32 normalised, "targets": (N, C)
    float32 multi-hot over ``classes``, "index": int}`` per key frame of ``annotations``.

    Args:
        annotations: key frames matched to ``videos`` (``load_annotations``).
        videos: the video files by id.
        classes: the action ids scored, in order (the targets' columns).
        frames, stride, size: the clip (module docstring).
        decoder: how frames are decoded (a ``vvk.data.decoders`` decoder or ``FrameCache``).
    """

    def __init__(
        self,
        annotations: Annotations,
        videos: Videos,
        *,
        classes: Sequence[int],
        frames: int,
        stride: int,
        size: int,
        decoder: Decoder,
    ):
        self.annotations, self.videos = annotations, videos
        self.column = {action: i for i, action in enumerate(classes)}
        self.frames, self.stride, self.size, self.decoder = frames, stride, size, decoder

    def __len__(self) -> int:
        return len(self.annotations.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        frame = self.annotations.frames[index]
        path, meta = self.videos.files[frame.video_id]
        times = clip_times(frame.timestamp, fps=meta.fps, frames=self.frames, stride=self.stride,
                           duration=meta.duration)  # fmt: skip
        try:
            pixels = self.decoder.frames(path, times, meta=meta, size=self.size)  # (T, H, W, 3)
        except BadVideo as e:  # the index decoded it: the file changed or breaks mid-stream
            raise VvkError(f"{path}: {e}") from None
        targets = np.zeros((len(frame.boxes), len(self.column)), dtype=np.float32)
        for row, actions in enumerate(frame.actions):
            targets[row, [self.column[a] for a in actions if a in self.column]] = 1.0
        return {
            "video": torch.from_numpy(pixels).permute(3, 0, 1, 2),  # (T, H, W, 3) -> (3, T, H, W)
            "boxes": torch.from_numpy(frame.boxes).float(),
            "targets": torch.from_numpy(targets),
            "index": index,
        }


def collate_key_frames(samples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
    """A batch: ``video`` (B, 3, T, H, W) padded below and to the right to the largest frame,
    ``frame_size`` (B, 2) each clip's own (height, width), ``boxes`` (K, 4) and ``targets``
    (K, C) of all key frames, ``batch_index`` (K,) each box's clip, ``index`` (B,)."""
    height = max(s["video"].shape[2] for s in samples)
    width = max(s["video"].shape[3] for s in samples)
    videos = [F.pad(s["video"], (0, width - s["video"].shape[3], 0, height - s["video"].shape[2]))
              for s in samples]  # fmt: skip
    counts = torch.tensor([len(s["boxes"]) for s in samples])
    return {
        "video": torch.stack(videos),  # B x (3, T, H, W) -> (B, 3, T, H, W)
        "frame_size": torch.tensor([list(s["video"].shape[2:]) for s in samples]),
        "boxes": torch.cat([s["boxes"] for s in samples]),
        "targets": torch.cat([s["targets"] for s in samples]),
        "batch_index": torch.repeat_interleave(torch.arange(len(samples)), counts),
        "index": torch.tensor([s["index"] for s in samples]),
    }


def clip_decoder(decoder: str = "auto", *, frame_cache: bool = False) -> Decoder:
    """The decoder of ``decoder=``, behind the user's frame cache when ``frame_cache``."""
    inner = get_decoder(decoder)
    if not frame_cache:
        return inner
    from vvk.data.frame_cache import FrameCache, default_root

    return FrameCache(inner, default_root())
