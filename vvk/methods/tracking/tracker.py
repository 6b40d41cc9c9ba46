"""SiamFC tracking: the 3-scale search with a cosine window over SiamFC's context crops.

Inference follows ``huanglianghua/siamfc-pytorch: siamfc/siamfc.py`` (``TrackerSiamFC.init`` /
``update``, the got10k ``Tracker`` API) and ``bertinetto/siamese-fc: tracking/tracker.m``:

- the exemplar is the first frame's box with context, ``z_sz = sqrt((w + p)(h + p))`` with
  ``p = context·(w + h)``, resized to 127; the search crop is ``x_sz = z_sz · 255 / 127`` around
  the last centre, at three scales, resized to 255; pixels beyond the frame take the first
  frame's mean colour;
- responses are upsampled 16× (bicubic), the side scales multiplied by the scale penalty, the
  best scale's map shifted to be non-negative, normalised to sum 1 and blended with a Hann
  window; its peak moves the centre, and the size follows the chosen scale at the scale lr.

Boxes are OTB's ``(x, y, w, h)`` with 1-based pixel indices, in and out (siamfc-pytorch's
convention): the centre in 0-based pixel coordinates is ``x - 1 + (w - 1) / 2``. 0-based boxes
in give 0-based boxes out, the crops shifted by one pixel, nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import box_convert

from vvk.data.siamfc_crops import (
    CONTEXT,
    EXEMPLAR_SIZE,
    SEARCH_SIZE,
    box_center,
    context_size,
    crop_and_resize,
)
from vvk.errors import VvkError
from vvk.models.trackers import SiamFC

# Defaults of huanglianghua/siamfc-pytorch: siamfc/siamfc.py (TrackerSiamFC.parse_args), the same
# as bertinetto/siamese-fc: tracking/tracker.m (SiamFC-3S); the crop geometry (exemplar_sz 127,
# instance_sz 255, context 0.5) is vvk.data.siamfc_crops'.
SCALE_NUM = 3  # scale_num
SCALE_STEP = 1.0375  # scale_step
SCALE_PENALTY = 0.9745  # scale_penalty
SCALE_LR = 0.59  # scale_lr
WINDOW_INFLUENCE = 0.176  # window_influence
RESPONSE_UP = 16  # response_up (bicubic: cv2.INTER_CUBIC there)
# bertinetto/siamese-fc: tracking/tracker.m, "arbitrary scale saturation": the search size stays
# within [0.2, 5] times the first frame's (siamfc-pytorch has no bound).
MIN_SCALE, MAX_SCALE = 0.2, 5.0


def as_frame(frame) -> Tensor:
    """A (3, H, W) float 0..1 tensor from a (3, H, W) or (1, H, W) tensor / array (uint8 or float
    0..1), or an (H, W, 3) uint8 array as image readers return it."""
    x = torch.as_tensor(np.asarray(frame) if not isinstance(frame, Tensor) else frame)
    if x.ndim == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3) and x.dtype == torch.uint8:
        x = x.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise VvkError(f"frame: expected (3, H, W), got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x  # greyscale: one channel thrice, as tracker.m


def check_box(box, frame_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``box`` as four floats (x, y, w, h), or a one-line ``VvkError`` naming what is wrong."""
    values = box_values(box)
    x, y, w, h = values
    shown = "(" + ", ".join(f"{v:g}" for v in values) + ")"
    if not all(math.isfinite(v) for v in values):
        raise VvkError(f"box={shown}: not finite", params=["box"])
    if w <= 0 or h <= 0:
        raise VvkError(f"box={shown}: width and height must be positive", params=["box"])
    height, width = frame_size
    # 1-based pixels x .. x + w - 1: the box must share some area with the frame [1, W] x [1, H]
    if x + w <= 1 or y + h <= 1 or x > width or y > height:
        raise VvkError(f"box={shown}: lies outside the {width}×{height} frame", params=["box"])
    return values


def box_values(box) -> tuple[float, float, float, float]:
    """Four floats x, y, w, h from any box vvk takes: numbers, a tensor, ``BoundingBoxes``."""
    if isinstance(box, tv_tensors.BoundingBoxes) and box.format.name != "XYWH":
        box = box_convert(box.as_subclass(Tensor), box.format.name.lower(), "xywh")
    try:
        flat = np.asarray(box.detach().cpu() if isinstance(box, Tensor) else box, dtype=np.float64).reshape(
            -1
        )
    except (TypeError, ValueError):
        raise VvkError(f"box={box!r}: expected four numbers x, y, w, h", params=["box"]) from None
    if flat.size != 4:
        raise VvkError(f"box: expected four numbers x, y, w, h, got {flat.size}", params=["box"])
    return tuple(float(v) for v in flat)  # type: ignore[return-value]


@dataclass
class TrackState:
    """What the tracker knows after a frame; ``center`` (x, y) 0-based, ``size`` (w, h)."""

    center: np.ndarray
    size: np.ndarray
    z_size: float
    x_size: float
    scale_index: int = -1  # of the last update; the middle one is no scale change
    peak: float = float("nan")  # the chosen scale's largest (penalised) response


class SiamFCTracker:
    """A SiamFC tracker on a trained (or any) :class:`SiamFC` network.

    ``init(frame, box)`` on the first frame, then ``update(frame) -> (x, y, w, h)`` per frame.
    Frames are (3, H, W) uint8 or float 0..1 tensors (see :func:`as_frame`). The defaults are
    SiamFC-3S's (constants above); ``clip_center`` keeps the centre inside the frame, as
    ``STVIR/pysot: pysot/tracker/siamrpn_tracker.py`` (``_bbox_clip``) does and siamfc-pytorch
    does not.
    """

    def __init__(
        self,
        model: SiamFC,
        *,
        exemplar_size: int = EXEMPLAR_SIZE,
        search_size: int = SEARCH_SIZE,
        context: float = CONTEXT,
        scale_num: int = SCALE_NUM,
        scale_step: float = SCALE_STEP,
        scale_penalty: float = SCALE_PENALTY,
        scale_lr: float = SCALE_LR,
        window_influence: float = WINDOW_INFLUENCE,
        response_up: int = RESPONSE_UP,
        min_scale: float = MIN_SCALE,
        max_scale: float = MAX_SCALE,
        clip_center: bool = True,
    ):
        if scale_num < 1 or scale_num % 2 == 0:
            raise VvkError(
                f"scale_num={scale_num}: must be odd (the middle scale is no change)", params=["scale_num"]
            )
        self.model = model
        self.exemplar_size, self.search_size, self.context = exemplar_size, search_size, context
        self.scale_penalty, self.scale_lr, self.window_influence = scale_penalty, scale_lr, window_influence
        self.response_up, self.min_scale, self.max_scale = response_up, min_scale, max_scale
        self.clip_center = clip_center
        half = scale_num // 2
        self.scales = scale_step ** np.linspace(-half, half, scale_num)  # e.g. 1/1.0375, 1, 1.0375
        self.state: TrackState | None = None
        self._kernel: Tensor | None = None
        self._window: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.model.features.mean.device  # a buffer: a parameter-free model works too

    @torch.inference_mode()
    def init(self, frame, box) -> None:
        """Start on ``frame`` with the target at ``box`` (x, y, w, h, OTB convention)."""
        image = as_frame(frame)
        x, y, w, h = check_box(box, tuple(image.shape[-2:]))
        self.model.eval()
        image = image.to(self.device)
        center = np.array(box_center((x, y, w, h)))  # 1-based corner -> 0-based centre
        z_size = context_size(w, h, self.context)
        self.state = TrackState(
            center, np.array([w, h]), z_size, z_size * self.search_size / self.exemplar_size
        )
        self._first_x_size = self.state.x_size
        self._fill = image.mean(dim=(1, 2))  # the first frame's mean colour pads every later crop
        z = crop_and_resize(image, _row(center), torch.tensor([z_size]), self.exemplar_size, self._fill)
        self._kernel = self.model.exemplar(z)

    @torch.inference_mode()
    def update(self, frame) -> np.ndarray:
        """Track into ``frame``: the target's box (x, y, w, h), OTB convention, float64."""
        if self.state is None or self._kernel is None:
            raise VvkError("update before init: call init(frame, box) on the first frame")
        image = as_frame(frame).to(self.device)
        s = self.state
        sizes = torch.tensor(s.x_size * self.scales)
        centers = _row(s.center).expand(len(self.scales), 2)
        crops = crop_and_resize(image, centers, sizes, self.search_size, self._fill)  # (S, 3, 255, 255)
        responses = self.model.correlate(self._kernel, self.model.search(crops))  # (S, 1, R, R)
        scale_id, disp, peak = self._locate(responses)
        # upsampled response cells -> search-crop pixels -> frame pixels (at the chosen scale)
        disp *= (
            self.model.total_stride / self.response_up * s.x_size * self.scales[scale_id] / self.search_size
        )
        s.center = s.center + disp
        if self.clip_center:
            s.center = np.clip(s.center, 0, [image.shape[-1] - 1, image.shape[-2] - 1])
        scale = (1 - self.scale_lr) + self.scale_lr * self.scales[scale_id]
        lo, hi = self.min_scale * self._first_x_size, self.max_scale * self._first_x_size
        scale = float(np.clip(s.x_size * scale, lo, hi)) / s.x_size
        s.size, s.z_size, s.x_size = s.size * scale, s.z_size * scale, s.x_size * scale
        s.scale_index, s.peak = int(scale_id), peak
        return self.box()

    def box(self) -> np.ndarray:
        """The current box (x, y, w, h), OTB convention."""
        if self.state is None:
            raise VvkError("no target yet: call init(frame, box) first")
        c, size = self.state.center, self.state.size
        return np.concatenate([c + 1 - (size - 1) / 2, size])

    def _locate(self, responses: Tensor) -> tuple[int, np.ndarray, float]:
        """The best scale, the peak's (x, y) offset from the centre of its upsampled, windowed
        response in upsampled cells, and the peak's penalised value."""
        r = responses.shape[-1]
        up = F.interpolate(
            responses.float(), size=(r * self.response_up,) * 2, mode="bicubic", align_corners=False
        )
        up = up[:, 0].double().cpu()  # (S, U, U)
        middle = len(self.scales) // 2
        penalty = torch.full((len(self.scales),), self.scale_penalty, dtype=up.dtype)
        penalty[middle] = 1.0
        up = up * penalty.view(-1, 1, 1)  # as the reference: side scales multiplied, whatever the sign
        peaks = up.flatten(1).amax(dim=1)
        scale_id = int(peaks.argmax())
        best = up[scale_id] - up[scale_id].min()
        best = best / (best.sum() + 1e-16)
        if self._window is None or self._window.shape != best.shape:
            self._window = _hann_window(best.shape[-1])
        best = (1 - self.window_influence) * best + self.window_influence * self._window
        row, col = divmod(int(best.argmax()), best.shape[-1])
        disp = np.array([col, row], dtype=np.float64) - (best.shape[-1] - 1) / 2
        return scale_id, disp, float(peaks[scale_id])


def _row(center: np.ndarray) -> Tensor:
    return torch.as_tensor(center, dtype=torch.float32).view(1, 2)


def _hann_window(size: int) -> Tensor:
    """Outer product of two symmetric Hann windows (``np.hanning``), summing to 1."""
    hann = torch.hann_window(size, periodic=False, dtype=torch.float64)
    window = hann[:, None] * hann[None, :]
    return window / window.sum()


def track(
    model: SiamFC, frames: Iterable, first_box: Sequence[float] | Tensor, **hyperparameters
) -> tuple[np.ndarray, float]:
    """Track through ``frames`` from ``first_box`` on the first one.

    Returns:
        boxes: (N, 4) float64 (x, y, w, h), OTB convention; row 0 is ``first_box``.
        fps: frames per second of the tracker's own work (init and updates; frame reading and
            decoding excluded), as got10k's experiments time it.
    """
    tracker = SiamFCTracker(model, **hyperparameters)
    boxes, elapsed = [], 0.0
    for i, frame in enumerate(frames):
        start = time.perf_counter()
        if i == 0:
            tracker.init(frame, first_box)
            boxes.append(np.asarray(box_values(first_box), dtype=np.float64))
        else:
            boxes.append(tracker.update(frame))
        elapsed += time.perf_counter() - start
    if not boxes:
        raise VvkError("frames: empty, nothing to track")
    return np.stack(boxes), len(boxes) / max(elapsed, 1e-9)
