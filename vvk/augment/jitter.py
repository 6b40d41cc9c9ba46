"""Large scale jittering: random horizontal flip, aspect-preserving resize, crop/pad to a square.

The geometry follows the official Copy-Paste input pipeline (``resize_and_crop_image`` in the
TF detection code): a scale ``s`` drawn uniformly from ``scale_range`` makes the target side
``size * s``; the image is resized so that it fits that square with its aspect ratio kept; a
random ``size x size`` crop is taken where it is larger and it is padded with black at the
bottom and right where it is smaller.

Pixel coordinates are continuous, pixel ``i`` covering ``[i, i + 1)``; images are resampled
with that convention (pixel centres at ``i + 0.5``) and polygons are mapped exactly, then
rasterised at the output resolution, so masks stay sharp when an image is enlarged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vvk.augment import runs
from vvk.augment.masks import Box, InstanceMask, LocalMask, RunMask
from vvk.errors import VvkError

SCALE_PRESETS = {"lsj": (0.1, 2.0), "ssj": (0.8, 1.25)}  # large / standard scale jitter


def parse_scale_range(text: str) -> tuple[float, float]:
    """``MIN,MAX`` or a preset name (``lsj`` 0.1-2.0, ``ssj`` 0.8-1.25), as --scale-jitter takes it."""
    if text.lower() in SCALE_PRESETS:
        return SCALE_PRESETS[text.lower()]
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise VvkError(f"--scale-jitter: expected MIN,MAX or lsj or ssj, got {text!r}") from None
    if not 0 < low <= high or not math.isfinite(high):
        raise VvkError(f"--scale-jitter: need 0 < MIN <= MAX, got {text!r}")
    return low, high


@dataclass(frozen=True)
class Jitter:
    """One draw of the geometry that takes an (h, w) image to a (size, size) frame.

    ``scaled`` is the resized image (rows, cols) before the crop and ``offset`` the (row, col)
    of the crop's corner in it. The flip happens before the resize.
    """

    in_size: tuple[int, int]
    size: int
    scaled: tuple[int, int]
    offset: tuple[int, int]
    flip: bool

    @property
    def content(self) -> tuple[int, int]:
        """(rows, cols) of the frame holding image pixels; the rest is padding."""
        return (
            min(self.size, self.scaled[0] - self.offset[0]),
            min(self.size, self.scaled[1] - self.offset[1]),
        )

    def map_xy(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Input-image coordinates to frame coordinates."""
        (h, w), (sh, sw), (oy, ox) = self.in_size, self.scaled, self.offset
        if self.flip:
            xs = w - xs
        return xs * (sw / w) - ox, ys * (sh / h) - oy


def sample_jitter(
    rng: np.random.Generator,
    *,
    height: int,
    width: int,
    size: int,
    scale_range: tuple[float, float],
    flip_prob: float = 0.5,
) -> Jitter:
    """Draw flip, scale and crop offset (always four draws, so later draws stay aligned)."""
    flip = bool(rng.random() < flip_prob)
    target = size * rng.uniform(*scale_range)
    ratio = min(target / height, target / width)
    scaled = (max(1, round(height * ratio)), max(1, round(width * ratio)))
    oy = int(rng.random() * max(0, scaled[0] - size))
    ox = int(rng.random() * max(0, scaled[1] - size))
    return Jitter((height, width), size, scaled, (oy, ox), flip)


def jitter_image(image: np.ndarray, jitter: Jitter) -> np.ndarray:
    """(h, w, 3) uint8 -> (size, size, 3) uint8: flip, antialiased bilinear resize, crop/pad."""
    import torch
    import torch.nn.functional as F

    # (h, w, 3) -> (1, 3, h, w) in channels-last memory: torch's fast uint8 resampling path
    pixels = torch.from_numpy(image).unsqueeze(0).permute(0, 3, 1, 2)
    scaled = F.interpolate(pixels, size=jitter.scaled, mode="bilinear", antialias=True, align_corners=False)
    scaled = scaled[0].permute(1, 2, 0)  # (1, 3, H', W') -> (H', W', 3), still channels-last memory
    rows, cols = jitter.content
    (oy, ox), sw = jitter.offset, jitter.scaled[1]
    if jitter.flip:  # flipping after the resize is the same map, and touches only the crop
        window = scaled[oy : oy + rows, sw - ox - cols : sw - ox].flip(1)
    else:
        window = scaled[oy : oy + rows, ox : ox + cols]
    out = torch.zeros((jitter.size, jitter.size, 3), dtype=torch.uint8)
    out[:rows, :cols] = window  # torch copies strided windows far faster than numpy's ::-1
    return out.numpy()


@dataclass(frozen=True)
class Polygons:
    """The COCO polygons of one object as arrays, the form ``vvk.augment.runs`` rasterises."""

    xy: np.ndarray  # (n, 2) float64: every polygon's (x, y) vertices, end to end
    ends: np.ndarray  # (p,) int64: where each polygon ends in ``xy``

    @classmethod
    def from_coco(cls, polygons: list[list[float]]) -> Polygons:
        """From flat ``[x0, y0, x1, y1, ...]`` lists (three vertices or more each)."""
        xy = np.concatenate([np.asarray(p, dtype=np.float64) for p in polygons]).reshape(-1, 2)
        return cls(xy, np.cumsum([len(p) // 2 for p in polygons], dtype=np.int64))


def source_box(segmentation: Any, height: int, width: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) around polygons (their vertices) or an RLE (its pixels)."""
    if isinstance(segmentation, list | Polygons):
        xy = segmentation.xy if isinstance(segmentation, Polygons) else Polygons.from_coco(segmentation).xy
        (x0, y0), (x1, y1) = xy.min(axis=0).tolist(), xy.max(axis=0).tolist()
        return max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)
    from pycocotools import mask as mask_utils

    rle = segmentation
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, height, width)
    elif isinstance(rle["counts"], str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    return x, y, x + w, y + h


def frame_window(box: tuple[float, float, float, float], jitter: Jitter) -> Box | None:
    """Integer (x0, y0, x1, y1) in the frame that covers an input box, cut to the content."""
    # Plain floats: numpy's per-call overhead dominates on two points, for every object.
    (h, w), (sh, sw), (oy, ox) = jitter.in_size, jitter.scaled, jitter.offset
    left, right = (w - box[2], w - box[0]) if jitter.flip else (box[0], box[2])
    rows, cols = jitter.content
    x0, x1 = max(0, math.floor(left * sw / w - ox)), min(cols, math.ceil(right * sw / w - ox))
    y0, y1 = max(0, math.floor(box[1] * sh / h - oy)), min(rows, math.ceil(box[3] * sh / h - oy))
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def jitter_segmentation(
    segmentation: Any, jitter: Jitter, box: tuple[float, float, float, float] | None = None
) -> InstanceMask:
    """A COCO segmentation of the input image as a mask in the jittered frame.

    Polygons (COCO lists or ``Polygons``) are mapped exactly and rasterised in the whole frame,
    as a COCO tool rasterises the mapped polygon, cut to the image's pixels: a ``RunMask``. RLE
    masks are resampled with nearest neighbour into their window: a ``LocalMask``. ``box`` (from
    ``source_box``) saves recomputing it.
    """
    h, w = jitter.in_size
    frame = (jitter.size, jitter.size)
    window = frame_window(box or source_box(segmentation, h, w), jitter)
    if window is None:
        return LocalMask.empty(frame)
    if isinstance(segmentation, list):
        segmentation = Polygons.from_coco(segmentation)
    if isinstance(segmentation, Polygons):
        (sh, sw), (oy, ox) = jitter.scaled, jitter.offset
        spans = runs.polygon_spans(  # maps the vertices with map_xy's float steps
            segmentation.xy,
            segmentation.ends,
            jitter.size,
            *jitter.content,
            jitter.flip,
            w,
            sw / w,
            sh / h,
            ox,
            oy,
        )
        return RunMask(spans, frame)
    bits = _resample_raster(segmentation, jitter, window)
    return LocalMask(window[1], window[0], bits, frame).tight()


def _resample_raster(rle: dict, jitter: Jitter, window: tuple[int, ...]) -> np.ndarray:
    from vvk.data.coco import decode_segmentation

    (h, w), (sh, sw), (oy, ox) = jitter.in_size, jitter.scaled, jitter.offset
    x0, y0, x1, y1 = window
    full = decode_segmentation(rle, h, w)
    cols = np.arange(x0, x1) + ox  # frame columns -> resized-image columns
    if jitter.flip:
        cols = sw - 1 - cols
    src_rows = np.minimum(((np.arange(y0, y1) + oy + 0.5) * (h / sh)).astype(np.int64), h - 1)
    src_cols = np.minimum(((cols + 0.5) * (w / sw)).astype(np.int64), w - 1)
    return full[src_rows[:, None], src_cols[None, :]]
