"""Instance masks in a large frame, held so that their cost is what the object covers.

A 1024x1024 frame with twenty objects would be 20 MB of full-frame masks, and every union,
subtraction, area, box and RLE would touch all of it. ``LocalMask`` keeps the small window of
pixels that holds the object (for masks whose pixels are needed: pasted objects, online use);
``RleMask`` keeps pycocotools' RLE of the frame and never expands it (for destination objects,
which only need their area, box, RLE and the subtraction of what is pasted over them).
Both answer the same calls: area, box, tight, minus(cover), paint, to_full, to_rle, to_polygons.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from vvk.data.coco import compress_runs, rle_from_runs, tight_box


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
            return LocalMask(0, 0, np.zeros((0, 0), dtype=bool), self.frame)
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

    def to_rle(self) -> dict[str, Any]:
        """Compressed COCO RLE of the whole frame, computed from the window alone."""
        return rle_from_runs(self.runs, *self.frame)

    @cached_property
    def runs(self) -> list[int]:
        """Column-major run lengths of the whole frame, zeros first (uncompressed COCO RLE).
        Not to be modified: it is computed once, for the RLE written and for a ``Cover``."""
        height, width = self.frame
        m = self.tight()
        h, w = m.bits.shape
        if h == 0:
            return [height * width]
        runs = _column_runs(m.bits, m.top, height)
        runs[0] += m.left * height  # the empty columns left of the window
        trailing = (width - m.left - w) * height
        if len(runs) % 2 == 1:  # the last run is zeros
            runs[-1] += trailing
        elif trailing:
            runs.append(trailing)
        return runs

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
class RleMask:
    """A mask as pycocotools' compressed RLE of the whole frame (``counts`` as bytes).

    Area, box, subtraction and the RLE written out are pycocotools' C functions over the runs,
    so the pixels are never expanded; they are decoded (the whole frame) only when asked for.
    """

    rle: dict[str, Any]

    @property
    def frame(self) -> tuple[int, int]:
        height, width = self.rle["size"]
        return height, width

    @cached_property
    def area(self) -> int:
        return int(mask_utils.area(self.rle))

    @cached_property
    def box(self) -> tuple[int, int, int, int] | None:
        """Tight (x0, y0, x1, y1) in frame pixel edges (x1, y1 exclusive); None when empty."""
        if not self.area:
            return None
        x, y, w, h = (int(v) for v in mask_utils.toBbox(self.rle))
        return x, y, x + w, y + h

    def tight(self) -> RleMask:
        return self  # runs have no window to trim

    def minus(self, cover: Cover) -> RleMask:
        """This mask with the covered pixels removed: an intersection with the cover's complement."""
        return RleMask(mask_utils.merge([self.rle, cover.complement_rle], intersect=True))

    @cached_property
    def pixels(self) -> LocalMask:
        return LocalMask.from_full(mask_utils.decode(self.rle).view(bool))

    def paint(self, canvas: np.ndarray) -> None:
        self.pixels.paint(canvas)

    def to_full(self) -> np.ndarray:
        return self.pixels.to_full()

    def to_rle(self) -> dict[str, Any]:
        return {"size": list(self.frame), "counts": self.rle["counts"].decode("ascii")}

    def to_polygons(self) -> list[list[float]]:
        return self.pixels.to_polygons()


class Cover:
    """The union of the masks pasted on a frame, each form made on first use: (H, W) pixels
    (for ``LocalMask.minus`` and callers who want the union) and the RLE of the complement
    (for ``RleMask.minus``), made from the masks' runs without touching pixels."""

    def __init__(self, frame: tuple[int, int], masks: list[LocalMask]):
        self.frame = frame
        self.masks = masks

    @cached_property
    def bits(self) -> np.ndarray:
        bits = np.zeros(self.frame, dtype=bool)
        for mask in self.masks:
            mask.paint(bits)
        return bits

    @cached_property
    def complement_rle(self) -> dict[str, Any]:
        height, width = self.frame
        total = height * width
        # Each mask's ones as [start, end) intervals of the column-major frame index.
        starts, ends = [], []
        for mask in self.masks:
            edges = np.cumsum(mask.runs)  # (zeros, ones, zeros, ...) -> their end positions
            starts.append(edges[0:-1:2])
            ends.append(edges[1::2])
        starts, ends = np.concatenate([[total], *starts]), np.concatenate([[total], *ends])
        order = np.argsort(starts, kind="stable")
        starts, reach = starts[order], np.maximum.accumulate(ends[order])
        # An interval opens a new piece of the union where it starts past all earlier ones' ends.
        opens = np.flatnonzero(starts[1:] > reach[:-1]) + 1
        piece_starts = starts[np.concatenate(([0], opens))]
        piece_ends = reach[np.concatenate((opens - 1, [len(starts) - 1]))]
        # The complement's runs, zeros first: the union's pieces are its zeros, the gaps its ones
        # (the sentinel piece [total, total) closes the last gap).
        bounds = np.stack([piece_starts, piece_ends], axis=1).ravel()  # s0, e0, s1, e1, ...
        runs = np.diff(bounds, prepend=0)  # gap, piece, gap, piece, ...
        complement = runs.tolist()
        if complement[-1] == 0:
            complement.pop()  # the sentinel, when it is a piece of its own
        complement = complement[1:] if complement[0] == 0 else [0, *complement]  # zeros first
        return compress_runs(complement, height, width)


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
