"""Compiled loops over masks held as spans of a frame's column-major pixel index.

A mask of an (H, W) frame is its *spans*: an (n, 2) int64 array of ``[start, end)`` intervals
of the column-major pixel index ``col * H + row`` (COCO's RLE order) that are ones, sorted,
disjoint and never touching. Its cost is the number of runs, not the frame, and every operation
a copy-paste needs (rasterising a polygon, union, subtraction, area, box, the RLE string, the
pixels of a window) is one compiled call (``vvk.augment.masks.RunMask`` is the mask built on it).

The kernels answer exactly as their references do: pycocotools (``rleFrPoly`` for polygons,
``rleToString`` for strings; cocoapi ``common/maskApi.c``) and numpy on full frames, which
``tests/augment/test_runs.py`` checks.

Compiled with numba on first use and cached in vvk's cache folder (``<cache>/numba``, see
``vvk.paths``), not beside this file: an installed package may be read-only, and compiled code
does not belong in a source tree. A ``NUMBA_CACHE_DIR`` of the user's (or numba's config file)
wins. Ctrl-C and SIGTERM wait while numba compiles or loads a kernel (``_CompilesHoldStopSignals``).
"""

from __future__ import annotations

import math
import os
import threading

import numba
import numba.core.config
import numba.core.event
import numpy as np

from vvk.interrupts import HeldStopSignals
from vvk.paths import cache_dir

if not numba.core.config.CACHE_DIR:
    # numba reads its environment when imported and again, if any NUMBA_ variable changed, on
    # reload_config(); each cached function picks its cache folder when decorated, below. The
    # variable (rather than the config attribute) also reaches Copy-Paste's spawned workers.
    os.environ["NUMBA_CACHE_DIR"] = str(cache_dir() / "numba")
    numba.core.config.reload_config()


class _CompilesHoldStopSignals(numba.core.event.Listener):
    """Holds SIGINT and SIGTERM while the main thread holds numba's compiler lock (compiling a
    kernel, or loading it from the cache), and delivers them once it lets go.

    Interrupted in there, the handler's ``KeyboardInterrupt`` lands in LLVM's callbacks into
    Python or in llvmlite's finalisers, which swallow it: the command went on with a half-built
    kernel ("no compiled object yet for <Library 'window_spans'>"; CI's one segmentation fault
    on an interrupted copy-paste is the same interruption, as far as found) and the interrupt
    was lost. The lock is re-entrant: only the outermost hold counts.
    """

    def __init__(self) -> None:
        self._hold = HeldStopSignals()
        self._depth = 0

    def on_start(self, _event: numba.core.event.Event) -> None:
        if threading.current_thread() is threading.main_thread():
            if self._depth == 0:
                self._hold.__enter__()
            self._depth += 1

    def on_end(self, _event: numba.core.event.Event) -> None:
        if threading.current_thread() is threading.main_thread() and self._depth:
            self._depth -= 1
            if self._depth == 0:
                self._hold.__exit__(None, None, None)  # a held signal's handler runs here


numba.core.event.register("numba:compiler_lock", _CompilesHoldStopSignals())

_kernel = numba.njit(cache=True, nogil=True)

_SCALE = 5.0  # rleFrPoly traces polygon edges on a 5x finer grid


@_kernel
def _append(spans: np.ndarray, n: int, start: int, end: int) -> int:
    """Add [start, end) after the last of ``spans[:n]`` (merging when they touch); the new n."""
    if start >= end:
        return n
    if n and spans[n - 1, 1] >= start:
        spans[n - 1, 1] = max(spans[n - 1, 1], end)
        return n
    spans[n, 0], spans[n, 1] = start, end
    return n + 1


@_kernel
def _polygon_counts(xs: np.ndarray, ys: np.ndarray, height: int, width: int) -> np.ndarray:
    """Column-major run lengths, zeros first, of one polygon in an (height, width) frame.

    The same steps and integer/float conversions as pycocotools' ``rleFrPoly``: trace the edges on
    the 5x grid, keep the points where the traced x changes at a pixel centre, and toggle each
    column there at the first pixel centre below the edge.
    """
    k = xs.size
    x = np.empty(k + 1, np.int64)
    y = np.empty(k + 1, np.int64)
    for j in range(k):
        x[j] = int(_SCALE * xs[j] + 0.5)  # int() truncates toward zero, as C's (int) does
        y[j] = int(_SCALE * ys[j] + 0.5)
    x[k], y[k] = x[0], y[0]
    m = 0
    for j in range(k):
        m += max(abs(x[j] - x[j + 1]), abs(y[j] - y[j + 1])) + 1
    # No bounds checks in compiled code: the writes below stay inside these m points and the
    # m + 1 toggles because the loops count exactly as the sum above does.
    u = np.empty(m, np.int64)
    v = np.empty(m, np.int64)
    m = 0
    for j in range(k):
        x0, x1, y0, y1 = x[j], x[j + 1], y[j], y[j + 1]
        dx, dy = abs(x1 - x0), abs(y0 - y1)
        flip = (dx >= dy and x0 > x1) or (dx < dy and y0 > y1)
        if flip:
            x0, x1, y0, y1 = x1, x0, y1, y0
        if dx >= dy:
            # a repeated vertex (dx = dy = 0) makes 0/0 in C; its one point is never read there
            s = (y1 - y0) / dx if dx else 0.0
            for d in range(dx + 1):
                t = dx - d if flip else d
                u[m], v[m] = t + x0, int(y0 + s * t + 0.5)
                m += 1
        else:
            s = (x1 - x0) / dy
            for d in range(dy + 1):
                t = dy - d if flip else d
                v[m], u[m] = t + y0, int(x0 + s * t + 0.5)
                m += 1
    toggles = np.empty(m + 1, np.int64)  # column-major index of each y-boundary point
    n = 0
    for j in range(1, m):
        if u[j] == u[j - 1]:
            continue
        xd = (float(u[j] if u[j] < u[j - 1] else u[j] - 1) + 0.5) / _SCALE - 0.5
        if math.floor(xd) != xd or xd < 0 or xd > width - 1:
            continue
        yd = (float(v[j] if v[j] < v[j - 1] else v[j - 1]) + 0.5) / _SCALE - 0.5
        yd = math.ceil(min(max(yd, 0.0), float(height)))
        toggles[n] = int(xd) * height + int(yd)
        n += 1
    toggles[n] = height * width
    toggles = np.sort(toggles[: n + 1])
    # Differences between toggles are the runs; a zero difference (two toggles on one pixel)
    # cancels both, joining the runs either side.
    counts = np.empty(toggles.size, np.int64)
    previous = 0
    c = 0
    j = 0
    while j < toggles.size:
        step = toggles[j] - previous
        previous = toggles[j]
        j += 1
        if step > 0 or c == 0:
            counts[c] = step
            c += 1
        elif j < toggles.size:
            counts[c - 1] += toggles[j] - previous
            previous = toggles[j]
            j += 1
    return counts[:c]


@_kernel
def merge_spans(spans: np.ndarray) -> np.ndarray:
    """The union of intervals in any order (they may overlap): sorted, disjoint, not touching."""
    order = np.argsort(spans[:, 0], kind="mergesort")
    out = np.empty_like(spans)
    n = 0
    for i in order:
        n = _append(out, n, spans[i, 0], spans[i, 1])
    return out[:n].copy()


@_kernel
def polygon_spans(
    xy: np.ndarray,
    ends: np.ndarray,
    size: int,
    content_rows: int,
    content_cols: int,
    flip: bool,
    in_width: float,
    sx: float,
    sy: float,
    ox: float,
    oy: float,
) -> np.ndarray:
    """Polygons of an input image as the spans of their union in a jittered (size, size) frame.

    ``xy`` (n, 2) holds every polygon's vertices end to end, ``ends`` where each polygon ends.
    A vertex maps to ``((in_width - x) if flip else x) * sx - ox, y * sy - oy`` (the float steps of
    ``Jitter.map_xy``); each polygon is rasterised as ``rleFrPoly`` does and the union is cut to
    the top-left content_rows x content_cols pixels that hold the image (the rest is padding).
    """
    pieces = []
    total = 0
    begin = 0
    for end in ends:
        xs = (in_width - xy[begin:end, 0]) if flip else xy[begin:end, 0].copy()
        xs = xs * sx - ox
        ys = xy[begin:end, 1] * sy - oy
        begin = end
        counts = _polygon_counts(xs, ys, size, size)
        ones = np.empty((counts.size // 2, 2), np.int64)
        n = 0
        position = 0
        for i in range(counts.size):
            if i % 2:
                n = _append(ones, n, position, position + counts[i])
            position += counts[i]
        pieces.append(ones[:n])
        total += n
    spans = np.empty((total, 2), np.int64)
    n = 0
    for piece in pieces:
        spans[n : n + piece.shape[0]] = piece
        n += piece.shape[0]
    if len(pieces) > 1:
        spans = merge_spans(spans)
    if content_rows == size and content_cols == size:
        return spans
    return _clip(spans, size, content_rows, content_cols)


@_kernel
def _clip(spans: np.ndarray, height: int, rows: int, cols: int) -> np.ndarray:
    """Spans cut to the top-left rows x cols pixels of a frame of ``height`` rows."""
    count = 0
    for i in range(spans.shape[0]):  # an upper bound: one piece per column a span reaches
        count += (spans[i, 1] - 1) // height - spans[i, 0] // height + 1
    out = np.empty((count, 2), np.int64)
    n = 0
    for i in range(spans.shape[0]):
        start, end = spans[i, 0], spans[i, 1]
        for col in range(start // height, min((end - 1) // height + 1, cols)):
            base = col * height
            n = _append(out, n, max(start, base), min(end, base + rows))
    return out[:n].copy()


@_kernel
def minus_spans(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The spans of ``a`` less those of ``b``."""
    out = np.empty((a.shape[0] + b.shape[0], 2), np.int64)
    n = 0
    j = 0
    for i in range(a.shape[0]):
        start, end = a[i, 0], a[i, 1]
        while j < b.shape[0] and b[j, 1] <= start:
            j += 1
        k = j
        while k < b.shape[0] and b[k, 0] < end:
            n = _append(out, n, start, b[k, 0])
            start = max(start, b[k, 1])
            k += 1
        n = _append(out, n, start, end)
    return out[:n].copy()


@_kernel
def span_stats(spans: np.ndarray, height: int) -> tuple[int, int, int, int, int]:
    """(area, x0, y0, x1, y1) of the tight box, x1 and y1 exclusive; all zero when empty."""
    if spans.shape[0] == 0:
        return 0, 0, 0, 0, 0
    area = 0
    y0, y1 = height, 0
    for i in range(spans.shape[0]):
        start, last = spans[i, 0], spans[i, 1] - 1
        area += last + 1 - start
        if start // height != last // height:  # reaches from one column's bottom to the next's top
            y0, y1 = 0, height
        else:
            y0, y1 = min(y0, start % height), max(y1, last % height + 1)
    return area, spans[0, 0] // height, y0, (spans[-1, 1] - 1) // height + 1, y1


@_kernel
def window_spans(bits: np.ndarray, top: int, left: int, height: int) -> np.ndarray:
    """Spans of an (h, w) bool window placed at (top, left) in a frame of ``height`` rows."""
    h, w = bits.shape
    count = 0
    for c in range(w):  # runs of ones start where a one follows a zero (or the column top)
        for r in range(h):
            if bits[r, c] and (r == 0 or not bits[r - 1, c]):
                count += 1
    out = np.empty((count, 2), np.int64)
    n = 0
    for c in range(w):
        base = (left + c) * height + top
        r = 0
        while r < h:
            if bits[r, c]:
                start = r
                while r < h and bits[r, c]:
                    r += 1
                n = _append(out, n, base + start, base + r)
            else:
                r += 1
    return out[:n].copy()


@_kernel
def decode_window(spans: np.ndarray, height: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """(y1 - y0, x1 - x0) bool pixels of the window at (x0, y0) of the frame."""
    out = np.zeros((y1 - y0, x1 - x0), np.bool_)
    for i in range(spans.shape[0]):
        start, end = spans[i, 0], spans[i, 1]
        for col in range(max(start // height, x0), min((end - 1) // height + 1, x1)):
            base = col * height
            for row in range(max(start - base, y0), min(end - base, y1)):
                out[row - y0, col - x0] = True
    return out


@_kernel
def encode_spans(spans: np.ndarray, height: int, width: int) -> np.ndarray:
    """COCO's compressed RLE string of the mask, as uint8 characters (``rleToString``)."""
    total = height * width
    counts = np.empty(2 * spans.shape[0] + 1, np.int64)  # zeros first, alternating
    m = 0
    position = 0
    for i in range(spans.shape[0]):
        counts[m], counts[m + 1] = spans[i, 0] - position, spans[i, 1] - spans[i, 0]
        m += 2
        position = spans[i, 1]
    if position < total or m == 0:
        counts[m] = total - position
        m += 1
    out = np.empty(7 * m, np.uint8)  # a 32-bit delta takes at most 7 characters of 5 bits
    p = 0
    for i in range(m):
        x = counts[i] - (counts[i - 2] if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end in a run of sign bits
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out[p] = c + 48
            p += 1
    return out[:p].copy()
