"""Instance masks in a large frame, held so that their cost is what the object covers.

``InstanceMask`` is the contract Copy-Paste relies on for one object's binary mask in an (H, W)
frame: its area, its tight box, the mask less a ``Cover`` (the union of pasted masks), the
pixels of its tight window (``local``), its spans (``vvk.augment.runs``), the frame's pixels,
and COCO's RLE and polygons. Two classes implement it, and give the same answers on the same
mask:

- ``LocalMask``: the window of pixels that holds the object (masks made from pixels: the
  online transform's ``tv_tensors.Mask``, resampled RLE annotations);
- ``RunMask``: the spans of ones of the frame's column-major index (polygons rasterised by
  ``vvk.augment.runs``); area, box, subtraction and RLE never expand the pixels.

Boxes here are ``Box`` tuples, XYXY in pixel edges (a one-pixel mask at (x, y) has the box
(x, y, x + 1, y + 1)): per object in the dataset writer's loop, where a tensor would cost more
than the work. ``vvk.augment.transform`` turns them into ``tv_tensors.BoundingBoxes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vvk.augment import runs
from vvk.data.coco import tight_box

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) pixel edges of the frame, x1 and y1 exclusive


@runtime_checkable
class InstanceMask(Protocol):
    """One object's binary mask in an (H, W) ``frame``: what Copy-Paste does with a mask.

    Implementations are immutable: every operation returns a new mask or a new array.
    """

    @property
    def frame(self) -> tuple[int, int]:
        """(H, W) of the frame the mask lives in."""

    @property
    def area(self) -> int:
        """Pixels that are ones."""

    @property
    def box(self) -> Box | None:
        """Tight XYXY box in pixel edges; None when the mask is empty."""

    @property
    def spans(self) -> np.ndarray:
        """(n, 2) int64 spans of ones of the frame's column-major index (``vvk.augment.runs``)."""

    @property
    def local(self) -> LocalMask:
        """The pixels of a window holding every one of the mask."""

    def tight(self) -> InstanceMask:
        """The same mask with nothing to trim (the window, if any, is its box)."""

    def minus(self, cover: Cover) -> InstanceMask:
        """This mask with the covered pixels removed (not necessarily tight)."""

    def paint(self, canvas: np.ndarray) -> None:
        """OR this mask into an (H, W) bool canvas."""

    def to_full(self) -> np.ndarray:
        """(H, W) bool pixels of the whole frame."""

    def to_rle(self) -> dict[str, Any]:
        """Compressed COCO RLE of the whole frame, ``counts`` as a str (as JSON holds it)."""

    def to_polygons(self) -> list[list[float]]:
        """Outer boundaries as flat COCO polygons; holes are filled."""


def _rle(spans: np.ndarray, frame: tuple[int, int]) -> dict[str, Any]:
    """Compressed COCO RLE as JSON holds it (``counts`` as a str)."""
    height, width = frame
    counts = runs.encode_spans(spans, height, width).tobytes().decode("ascii")
    return {"size": [height, width], "counts": counts}


@dataclass(frozen=True)
class LocalMask:
    """A binary mask in a ``frame`` of (H, W) pixels; ``bits`` is its (h, w) window at (top, left).

    Pixels outside the window are 0. The window need not be tight; ``tight()`` makes it so.
    """

    top: int
    left: int
    bits: np.ndarray  # (h, w) bool
    frame: tuple[int, int]

    @classmethod
    def empty(cls, frame: tuple[int, int]) -> LocalMask:
        return cls(0, 0, np.zeros((0, 0), dtype=bool), frame)

    @classmethod
    def from_full(cls, full: np.ndarray) -> LocalMask:
        """The tight window of an (H, W) bool mask."""
        return cls(0, 0, np.asarray(full, dtype=bool), tuple(full.shape)).tight()

    # bits are never modified after construction, so area and box are computed once.
    @cached_property
    def area(self) -> int:
        return int(np.count_nonzero(self.bits))

    def window(self) -> tuple[slice, slice]:
        h, w = self.bits.shape
        return slice(self.top, self.top + h), slice(self.left, self.left + w)

    @cached_property
    def box(self) -> Box | None:
        box = tight_box(self.bits)
        if box is None:
            return None
        return box[0] + self.left, box[1] + self.top, box[2] + self.left, box[3] + self.top

    @classmethod
    def from_tight(
        cls, top: int, left: int, bits: np.ndarray, frame: tuple[int, int], area: int | None = None
    ) -> LocalMask:
        """A mask whose non-empty ``bits`` are known to be its tight window (and ``area`` its
        pixel count, when given), so neither is scanned for again."""
        mask = cls(top, left, bits, frame)
        h, w = bits.shape
        # cached_property keeps its value in the instance __dict__, which frozen leaves writable
        mask.__dict__["box"] = (left, top, left + w, top + h)
        if area is not None:
            mask.__dict__["area"] = area
        return mask

    def tight(self) -> LocalMask:
        box = self.box
        if box is None:
            return LocalMask.empty(self.frame)
        x0, y0, x1, y1 = box
        if (x1 - x0, y1 - y0) == (self.bits.shape[1], self.bits.shape[0]):
            return self
        bits = self.bits[y0 - self.top : y1 - self.top, x0 - self.left : x1 - self.left]
        return LocalMask.from_tight(y0, x0, bits, self.frame, self.__dict__.get("area"))

    def minus(self, cover: Cover) -> LocalMask:
        """This mask with the covered pixels removed."""
        # bits > covered is bits & ~covered in one pass over the window
        return LocalMask(self.top, self.left, self.bits > cover.bits[self.window()], self.frame)

    def paint(self, canvas: np.ndarray) -> None:
        """OR this mask into an (H, W) bool canvas."""
        canvas[self.window()] |= self.bits

    def to_full(self) -> np.ndarray:
        full = np.zeros(self.frame, dtype=bool)
        self.paint(full)
        return full

    @property
    def local(self) -> LocalMask:
        return self

    @cached_property
    def spans(self) -> np.ndarray:
        """(n, 2) int64 spans of the frame's column-major index (``vvk.augment.runs``)."""
        return runs.window_spans(self.bits, self.top, self.left, self.frame[0])

    def to_rle(self) -> dict[str, Any]:
        """Compressed COCO RLE of the whole frame, computed from the window alone."""
        return _rle(self.spans, self.frame)

    def to_polygons(self) -> list[list[float]]:
        """Outer boundaries as COCO polygons (holes cannot be expressed and are filled).

        Each boundary passes half-way between inside and outside pixel centres, so rasterising
        it marks the same pixels except at holes and one-pixel-wide diagonal links.
        """
        from skimage import measure

        m = self.tight()
        if m.bits.size == 0:
            return []
        padded = np.pad(m.bits, 1).astype(np.uint8)
        polygons = []
        for contour in measure.find_contours(padded, 0.5):  # (N, 2) rows of (row, col)
            ys = contour[:-1, 0] - 1 + m.top + 0.5
            xs = contour[:-1, 1] - 1 + m.left + 0.5
            signed = np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))
            if signed <= 0 or len(xs) < 3:  # holes run the other way round
                continue
            flat = np.empty(2 * len(xs))
            flat[0::2], flat[1::2] = xs, ys
            polygons.append([round(float(v), 2) for v in flat])
        return polygons


@dataclass(frozen=True)
class RunMask:
    """A mask as the spans of ones of its (H, W) ``frame``'s column-major index (COCO's order).

    Area, box, subtraction and the RLE written are compiled loops over the spans, so the pixels
    are never expanded; the window of pixels is decoded only when asked for (``local``).
    """

    spans: np.ndarray  # (n, 2) int64 [start, end), sorted, disjoint, never touching
    frame: tuple[int, int]

    @cached_property
    def _stats(self) -> tuple[int, int, int, int, int]:
        return runs.span_stats(self.spans, self.frame[0])

    @property
    def area(self) -> int:
        return self._stats[0]

    @property
    def box(self) -> Box | None:
        area, *box = self._stats
        return tuple(box) if area else None

    def tight(self) -> RunMask:
        return self  # spans have no window to trim

    def minus(self, cover: Cover) -> RunMask:
        """This mask with the covered pixels removed."""
        return RunMask(runs.minus_spans(self.spans, cover.spans), self.frame)

    @cached_property
    def local(self) -> LocalMask:
        """The pixels of the tight window."""
        box = self.box
        if box is None:
            return LocalMask.empty(self.frame)
        x0, y0, x1, y1 = box
        bits = runs.decode_window(self.spans, self.frame[0], x0, y0, x1, y1)
        return LocalMask.from_tight(y0, x0, bits, self.frame, self.area)

    def paint(self, canvas: np.ndarray) -> None:
        self.local.paint(canvas)

    def to_full(self) -> np.ndarray:
        return self.local.to_full()

    def to_rle(self) -> dict[str, Any]:
        return _rle(self.spans, self.frame)

    def to_polygons(self) -> list[list[float]]:
        return self.local.to_polygons()


class Cover:
    """The union of the masks pasted on a frame, each form made on first use: (H, W) pixels
    (for ``LocalMask.minus``) and spans (for ``RunMask.minus``, and the union as a ``RunMask``)."""

    def __init__(self, frame: tuple[int, int], masks: Sequence[InstanceMask]):
        self.frame = frame
        self.masks = masks

    @cached_property
    def bits(self) -> np.ndarray:
        bits = np.zeros(self.frame, dtype=bool)
        for mask in self.masks:
            mask.paint(bits)
        return bits

    @cached_property
    def spans(self) -> np.ndarray:
        if not self.masks:
            return np.zeros((0, 2), dtype=np.int64)
        return runs.merge_spans(np.concatenate([mask.spans for mask in self.masks]))
