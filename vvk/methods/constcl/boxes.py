"""Where ConST-CL's region instances come from, in each augmented view's own coordinates.

- ``RandomBoxes``: the reference's (``const_cl/datasets/video_ssl_inputs.py::
  _generate_random_positions``): per view and clip, N boxes with xmin, ymin ~ U(0, 1),
  width ~ U(0.1, 0.5), aspect ~ U(0.5, 2) (height = width · aspect), the far corner clipped to
  1 − 1e-3, drawn independently for the two views directly in view coordinates.
- ``FileBoxes``: detected people from an AVA-style CSV (``video_id, timestamp, x1, y1, x2, y2,
  ...``, coordinates normalised to the whole frame, extra columns such as action and person
  ids ignored, repeated boxes merged). The boxes at the timestamp nearest each pooled frame
  (within ``max_gap`` seconds) are mapped through the same crop and flip as the
  view's pixels. N of them are drawn per view; too few detections, or a detection less than
  half inside the view, are topped up with random boxes so every clip has N instances.

All boxes are normalised ``[x1, y1, x2, y2]``; a source returns (2B, N, S, 4): view a's clips
then view b's, N instances, one box for each of the S pooled feature steps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vvk.data.ava import csv_rows, is_number, parse_number
from vvk.data.video_transforms import VideoAugment
from vvk.errors import VvkError

Views = tuple[VideoAugment, VideoAugment]  # the two views' augmentations, after their last call
MIN_VISIBLE = 0.5  # a detected box keeps its instance when at least half of it is in the view
_FAR_EDGE = 1.0 - 1e-3  # the reference keeps boxes just inside the frame


def random_boxes(*shape: int, device: torch.device | str | None = None) -> Tensor:
    """(*shape, 4) boxes drawn as the reference draws them (see the module docstring)."""
    x1, y1, u_width, u_aspect = torch.rand(4, *shape, device=device)
    width = 0.1 + 0.4 * u_width
    height = width * (0.5 + 1.5 * u_aspect)
    return torch.stack(
        [x1, y1, (x1 + width).clamp(max=_FAR_EDGE), (y1 + height).clamp(max=_FAR_EDGE)], dim=-1
    )


class RandomBoxes:
    """Random instances (the reference's region generator), the same box on every pooled step."""

    def __init__(self, *, num: int):
        self.num = num

    def __call__(self, batch: dict[str, Any], augments: Views, frames: list[int]) -> Tensor:
        clips = batch["video"].shape[0]
        boxes = random_boxes(2 * clips, self.num, 1, device=batch["video"].device)  # (2B, N, 1, 4)
        return boxes.expand(-1, -1, len(frames), -1)


# ---- from the decoded frame into the view -------------------------------------------------


@dataclass(frozen=True)
class CropFlip:
    """How one view was cut from the decoded clips: per clip, the crop (pixels ``[x1, y1, x2,
    y2]`` of the decoded frame, end exclusive), whether the view was mirrored, and the decoded
    frame's size. The crop is resized with half-pixel centres, so the continuous frame
    coordinate ``x1 + u · (x2 - x1)`` lands exactly at view coordinate ``u`` in [0, 1].

    Attributes:
        crop: (B, 4) int; flipped: (B,) bool; frame_size: (B, 2) int (height, width).
    """

    crop: Tensor
    flipped: Tensor
    frame_size: Tensor

    @classmethod
    def of(cls, augment: VideoAugment, frame_size: Tensor) -> CropFlip:
        """The crop and flip ``augment`` drew on its last call, for frames of ``frame_size``."""
        if augment.last_crop is None or augment.last_flip is None:
            raise ValueError("the augmentation has not been called yet")
        return cls(crop=augment.last_crop, flipped=augment.last_flip, frame_size=frame_size)

    def apply(self, boxes: Tensor) -> Tensor:
        """(B, ..., 4) normalised to the decoded frame -> normalised to the view (unclipped)."""
        extra = (1,) * (boxes.dim() - 2)  # (B, 4) -> (B, 1, ..., 1, 4) to broadcast over boxes
        h, w = self.frame_size.to(boxes).unbind(dim=-1)  # (B,) each
        x1, y1, x2, y2 = self.crop.to(boxes).unbind(dim=-1)
        scale = torch.stack([w, h, w, h], dim=-1) / torch.stack([x2 - x1, y2 - y1] * 2, dim=-1)  # (B, 4)
        offset = torch.stack([x1, y1, x1, y1], dim=-1) / torch.stack([x2 - x1, y2 - y1] * 2, dim=-1)
        view = boxes * scale.view(-1, *extra, 4) - offset.view(-1, *extra, 4)
        mirrored = torch.stack([1 - view[..., 2], view[..., 1], 1 - view[..., 0], view[..., 3]], dim=-1)
        return torch.where(self.flipped.to(boxes.device).view(-1, *extra, 1), mirrored, view)


# ---- detected boxes from a file ------------------------------------------------------------

_COLUMNS = ("video_id", "timestamp", "x1", "y1", "x2", "y2")


class BoxTable:
    """Boxes by video id and timestamp, read from an AVA-style CSV (see the module docstring).

    ``at(video_id, seconds, max_gap)`` gives the boxes of the annotated timestamp nearest
    ``seconds`` ((k, 4), normalised to the whole frame), or none when it is further than
    ``max_gap`` seconds away. The video id is the file name without its extension.
    """

    def __init__(self, boxes: dict[str, dict[float, np.ndarray]]):
        self.times = {video: np.array(sorted(by_time)) for video, by_time in boxes.items()}
        self.boxes = {video: [by_time[t] for t in sorted(by_time)] for video, by_time in boxes.items()}

    def __len__(self) -> int:
        return sum(len(per_time) for per_video in self.boxes.values() for per_time in per_video)

    @classmethod
    def read(cls, path: str | os.PathLike) -> BoxTable:
        """Malformed lines are a ``VvkError`` naming the file, line and field."""
        path = Path(path)
        rows: dict[str, dict[float, list[list[float]]]] = {}
        for number, cells in csv_rows(path, what="boxes file"):
            if len(cells) < len(_COLUMNS):
                raise VvkError(f"{path}:{number}: expected {', '.join(_COLUMNS)}, got {len(cells)} fields")
            if not rows and not is_number(cells[1]):
                continue  # a header line
            fields = zip(_COLUMNS[1:], cells[1 : len(_COLUMNS)], strict=True)
            time, *box = (parse_number(path, number, name, cell) for name, cell in fields)
            if not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
                corners = ", ".join(cells[2 : len(_COLUMNS)])
                raise VvkError(
                    f"{path}:{number}: box ({corners}) must have 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1"
                )
            rows.setdefault(cells[0], {}).setdefault(time, []).append(box)
        if not rows:
            raise VvkError(f"boxes file {path}: no boxes")
        # AVA lists a person once per action: the same box repeated.
        return cls({video: {t: np.unique(np.array(b, np.float32), axis=0) for t, b in by_time.items()}
                    for video, by_time in rows.items()})  # fmt: skip

    def at(self, video_id: str, seconds: float, max_gap: float) -> np.ndarray:
        times = self.times.get(video_id)
        if times is not None:
            nearest = int(np.abs(times - seconds).argmin())
            if abs(times[nearest] - seconds) <= max_gap:
                return self.boxes[video_id][nearest]
        return np.zeros((0, 4), np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4), (m, 4) -> (n, m) intersection over union."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


class FileBoxes:
    """Detected instances: N per view, drawn among the boxes at the key frame's time and, for
    a tube, followed to each other pooled frame by the best-overlapping box there (the box
    stays put when nothing overlaps it).

    Needs the batch's ``positions`` (``PositionedTwoViews``), ``frame_grid``, ``frame_size`` and
    ``path``.

    Args:
        table: the boxes; num: instances per view; max_gap: seconds between a frame and the
            annotated timestamp used for it.
    """

    def __init__(self, table: BoxTable, *, num: int, max_gap: float):
        self.table, self.num, self.max_gap = table, num, max_gap

    def __call__(self, batch: dict[str, Any], augments: Views, frames: list[int]) -> Tensor:
        video = batch["video"]
        grid = batch["frame_grid"].double().cpu()  # (B, 4): start, fps, width, height
        positions = batch["positions"][:, :, frames].double().cpu()  # (B, 2, T) -> (B, 2, S)
        times = grid[:, None, None, 0] + (positions + 0.5) / grid[:, None, None, 1]  # (B, 2, S) seconds
        views = []
        for view, augment in enumerate(augments):
            found = [
                self.instances(Path(path).stem, times[i, view].numpy())
                for i, path in enumerate(batch["path"])
            ]
            boxes = torch.from_numpy(np.stack(found)).to(video.device)
            views.append(CropFlip.of(augment, batch["frame_size"]).apply(boxes.float()))
        return fill_with_random(torch.cat(views), key=len(frames) // 2)  # (2B, N, S, 4)

    def instances(self, video_id: str, times: np.ndarray) -> np.ndarray:
        """(N, S, 4) boxes of one clip at the S ``times`` (NaN rows: no detection for that slot)."""
        out = np.full((self.num, len(times), 4), np.nan, np.float32)
        key = len(times) // 2
        detections = self.table.at(video_id, float(times[key]), self.max_gap)
        if not len(detections):
            return out
        chosen = detections[torch.randperm(len(detections))[: self.num].numpy()]  # (n, 4)
        tubes = np.repeat(chosen[:, None], len(times), axis=1)  # (n, 4) -> (n, S, 4)
        for step, seconds in enumerate(times):
            others = self.table.at(video_id, float(seconds), self.max_gap) if step != key else chosen
            if len(others):
                overlap = _iou(chosen, others)  # (n, m)
                linked = overlap.max(axis=1) > 0
                tubes[linked, step] = others[overlap.argmax(axis=1)[linked]]
        out[: len(chosen)] = tubes
        return out


def fill_with_random(boxes: Tensor, *, key: int) -> Tensor:
    """Clip boxes to the view; instances without a box (NaN) or whose key-frame box is less
    than ``MIN_VISIBLE`` inside the view get random boxes instead.

    Args:
        boxes: (2B, N, S, 4) view coordinates, possibly outside [0, 1] or NaN.
    """
    area = lambda x: (x[..., 2] - x[..., 0]).clamp(min=0) * (x[..., 3] - x[..., 1]).clamp(min=0)  # noqa: E731
    inside = boxes.clamp(0.0, 1.0)
    whole, visible = area(boxes[:, :, key]), area(inside[:, :, key])
    keep = (whole > 0) & (visible >= MIN_VISIBLE * whole)  # False for NaN
    random = random_boxes(*boxes.shape[:2], 1, device=boxes.device).expand_as(boxes)
    return torch.where(keep[:, :, None, None], inside, random)
