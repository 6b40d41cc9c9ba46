"""Where ConST-CL's region instances come from, in each augmented view's own coordinates.

- ``RandomBoxes``: the reference's (``const_cl/datasets/video_ssl_inputs.py::
  _generate_random_positions``): per view and clip, N boxes with xmin, ymin ~ U(0, 1),
  width ~ U(0.1, 0.5), aspect ~ U(0.5, 2) (height = width · aspect), the far corner clipped to
  1 − 1e-3, drawn independently for the two views directly in view coordinates.
- ``FileBoxes``: detected people from an AVA-style CSV (``video_id, timestamp, x1, y1, x2, y2,
  ...``, coordinates normalised to the whole frame, extra columns such as action and person
  ids ignored, repeated boxes merged). The boxes at the timestamp nearest each pooled frame
  (within ``max_gap`` seconds) are mapped through the same centre square, crop and flip as the
  view's pixels. N of them are drawn per view; too few detections, or a detection less than
  half inside the view, are topped up with random boxes so every clip has N instances.

All boxes are normalised ``[x1, y1, x2, y2]``; a source returns (2B, N, S, 4): view a's clips
then view b's, N instances, one box for each of the S pooled feature steps.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

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


def centre_square(boxes: Tensor, width: Tensor, height: Tensor) -> Tensor:
    """Boxes normalised to a width × height frame -> normalised to its central square, which
    the dataset keeps (``size`` an int: short side resized, centre square cut).

    Args:
        boxes: (B, ..., 4); width, height: (B,) the videos' displayed sizes.
    """
    side = torch.minimum(width, height)
    scale = torch.stack([width, height, width, height], dim=-1) / side[:, None]  # (B, 4)
    offset = (scale - 1) / 2  # the cut margin on each side, in units of the square's side
    extra = (1,) * (boxes.dim() - 2)  # (B, 4) -> (B, 1, ..., 1, 4) to broadcast over boxes
    return boxes * scale.view(-1, *extra, 4) - offset.view(-1, *extra, 4)


@dataclass(frozen=True)
class CropFlip:
    """How one view was cut from the decoded clips: per clip, the crop's corner pixels (kornia's
    ``src``: inclusive pixel indices x1, y1, x2, y2 of the decoded frame, resized with
    ``align_corners=True``) and whether the view was flipped horizontally.

    Attributes:
        corners: (B, 4) float; flipped: (B,) bool; in_size: the decoded (height, width);
        out_size: the view's side.
    """

    corners: Tensor
    flipped: Tensor
    in_size: tuple[int, int]
    out_size: int

    @classmethod
    def of(cls, augment: VideoAugment, *, clips: int, in_size: tuple[int, int], out_size: int) -> CropFlip:
        """The crop and flip ``augment`` drew on its last call (a batch of ``clips`` clips).

        kornia's ``VideoSequential`` keeps the parameters of its last forward in ``_params``,
        one row per frame; with ``same_on_frame`` every frame of a clip has the same row.
        """
        found: dict[str, dict[str, Tensor]] = {}
        for item in augment.pipeline._params:
            for prefix in ("RandomResizedCrop", "RandomHorizontalFlip"):
                if item.name.startswith(prefix):
                    found[prefix] = item.data
        src = found["RandomResizedCrop"]["src"]  # (B*T, 4, 2) corners (x, y): tl, tr, br, bl
        first = src.reshape(clips, -1, 4, 2)[:, 0]  # (B*T, 4, 2) -> (B, T, 4, 2) -> frame 0
        corners = torch.cat([first[:, 0], first[:, 2]], dim=-1).float()  # (B, 4) x1, y1, x2, y2
        flipped = found["RandomHorizontalFlip"]["batch_prob"].reshape(clips, -1)[:, 0] > 0.5
        return cls(corners=corners, flipped=flipped, in_size=in_size, out_size=out_size)

    def apply(self, boxes: Tensor) -> Tensor:
        """(B, ..., 4) normalised to the decoded frame -> normalised to the view (unclipped)."""
        extra = (1,) * (boxes.dim() - 2)  # (B, 4) -> (B, 1, ..., 1, 4) to broadcast over boxes
        corners = self.corners.to(boxes).view(-1, *extra, 4)
        (h, w), n = self.in_size, self.out_size
        pixels = boxes * boxes.new_tensor([w, h, w, h]) - 0.5  # pixel j's centre at index j
        start = torch.cat([corners[..., :2], corners[..., :2]], dim=-1)
        span = torch.cat([corners[..., 2:] - corners[..., :2]] * 2, dim=-1)
        view = ((pixels - start) * (n - 1) / span + 0.5) / n  # align_corners: index 0 -> 0, span -> n-1
        mirrored = torch.stack([1 - view[..., 2], view[..., 1], 1 - view[..., 0], view[..., 3]], dim=-1)
        return torch.where(self.flipped.view(-1, *extra, 1), mirrored, view)


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
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise VvkError(f"boxes file {path}: cannot read ({e})") from e
        rows: dict[str, dict[float, list[list[float]]]] = {}
        for number, row in enumerate(csv.reader(lines), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if len(cells) < len(_COLUMNS):
                raise VvkError(f"{path}:{number}: expected {', '.join(_COLUMNS)}, got {len(cells)} fields")
            if not rows and not _is_number(cells[1]):
                continue  # a header line
            fields = zip(_COLUMNS[1:], cells[1 : len(_COLUMNS)], strict=True)
            time, *box = (_number(path, number, name, cell) for name, cell in fields)
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


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _number(path: Path, line: int, name: str, cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise VvkError(f"{path}:{line}: field '{name}' is not a number: {cell!r}") from None


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

    Needs the batch's ``positions`` (``PositionedTwoViews``), ``frame_grid`` and ``path``.

    Args:
        table: the boxes; num: instances per view; max_gap: seconds between a frame and the
            annotated timestamp used for it; view_size: the side of the augmented views.
    """

    def __init__(self, table: BoxTable, *, num: int, max_gap: float, view_size: int):
        self.table, self.num, self.max_gap, self.view_size = table, num, max_gap, view_size

    def __call__(self, batch: dict[str, Any], augments: Views, frames: list[int]) -> Tensor:
        video = batch["video"]
        clips, in_size = video.shape[0], (video.shape[-2], video.shape[-1])
        grid = batch["frame_grid"].double().cpu()  # (B, 4): start, fps, width, height
        positions = batch["positions"][:, :, frames].double().cpu()  # (B, 2, T) -> (B, 2, S)
        times = grid[:, None, None, 0] + (positions + 0.5) / grid[:, None, None, 1]  # (B, 2, S) seconds
        views = []
        for view, augment in enumerate(augments):
            found = [
                self.instances(Path(path).stem, times[i, view].numpy())
                for i, path in enumerate(batch["path"])
            ]
            boxes = centre_square(torch.from_numpy(np.stack(found)).to(video.device),
                                  grid[:, 2].to(video.device), grid[:, 3].to(video.device))  # fmt: skip
            crop = CropFlip.of(augment, clips=clips, in_size=in_size, out_size=self.view_size)
            views.append(crop.apply(boxes.float()))
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
