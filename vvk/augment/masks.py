"""Instance masks kept as the small window that holds them inside a large frame.

A 1024x1024 frame with twenty objects would be 20 MB of full-frame masks, and every union,
subtraction, area, box and RLE would touch all of it; a window costs what the object covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from vvk.data.coco import rle_from_runs, tight_box


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
    def box(self) -> tuple[int, int, int, int] | None:
        """Tight (x0, y0, x1, y1) in frame pixel edges (x1, y1 exclusive); None when empty."""
        box = tight_box(self.bits)
        if box is None:
            return None
        return box[0] + self.left, box[1] + self.top, box[2] + self.left, box[3] + self.top

    def tight(self) -> LocalMask:
        box = self.box
        if box is None:
            return LocalMask(0, 0, np.zeros((0, 0), dtype=bool), self.frame)
        x0, y0, x1, y1 = box
        if (x1 - x0, y1 - y0) == (self.bits.shape[1], self.bits.shape[0]):
            return self
        bits = self.bits[y0 - self.top : y1 - self.top, x0 - self.left : x1 - self.left]
        return LocalMask(y0, x0, bits, self.frame)

    def minus(self, frame_mask: np.ndarray) -> LocalMask:
        """This mask with the pixels of an (H, W) frame mask removed."""
        return LocalMask(self.top, self.left, self.bits & ~frame_mask[self.window()], self.frame)

    def paint(self, canvas: np.ndarray) -> None:
        """OR this mask into an (H, W) bool canvas."""
        canvas[self.window()] |= self.bits

    def to_full(self) -> np.ndarray:
        full = np.zeros(self.frame, dtype=bool)
        self.paint(full)
        return full

    def to_rle(self) -> dict[str, Any]:
        """Compressed COCO RLE of the whole frame, computed from the window alone."""
        height, width = self.frame
        m = self.tight()
        h, w = m.bits.shape
        if h == 0:
            return rle_from_runs([height * width], height, width)
        runs = _column_runs(m.bits, m.top, height)
        runs[0] += m.left * height  # the empty columns left of the window
        trailing = (width - m.left - w) * height
        if len(runs) % 2 == 1:  # the last run is zeros
            runs[-1] += trailing
        elif trailing:
            runs.append(trailing)
        return rle_from_runs(runs, height, width)

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


def _column_runs(bits: np.ndarray, top: int, height: int) -> list[int]:
    """Column-major run lengths (zeros first) of the full-height strip holding ``bits`` at ``top``.

    Each window column is padded with one background pixel above and below; a pad stands for
    all the background rows on its side, so the work is the window's, not the strip's.
    """
    h, w = bits.shape
    bottom = height - top - h
    if top == 0 and bottom == 0:  # full height: the window is the strip
        seq, pitch = bits.T.ravel(), 0
    else:
        padded = np.zeros((w, h + 2), dtype=bool)  # (w, h) -> (w, h + 2): pads above and below
        padded[:, 1:-1] = bits.T
        seq, pitch = padded.ravel(), h + 2
    edges = np.concatenate(([0], np.flatnonzero(seq[1:] != seq[:-1]) + 1, [seq.size]))
    starts, ends = edges[:-1], edges[1:]
    runs = ends - starts
    if pitch:
        tops = (ends + pitch - 1) // pitch - (starts + pitch - 1) // pitch  # top pads in each run
        bottoms = ends // pitch - starts // pitch  # bottom pads in each run
        runs = runs + tops * (top - 1) + bottoms * (bottom - 1)
    runs = runs.tolist()
    if seq[0]:
        runs.insert(0, 0)  # RLE counts always start with a (possibly empty) run of zeros
    if len(runs) > 1 and runs[-1] == 0:
        runs.pop()  # an empty final run (a zero-height bottom pad) is not written
    return runs
