"""Clip samplers: pure index maths on a frame grid, testable without decoding anything.

A video (or the segment of it a list file names) is a grid of ``num_frames`` positions at
``fps`` (the video's average rate, or a fixed sampling rate such as VATT's 10 fps). Position
``i`` covers ``[i / fps, (i + 1) / fps)`` seconds; the decoder shows the frame on screen at
the middle of that interval, so variable-frame-rate files are sampled by time, not by frame
number. A clip of ``frames`` frames with ``stride`` covers ``(frames - 1) * stride + 1``
positions.

A video shorter than that is looped, as the reference's samplers tile the frame sequence
(``tensorflow/models: official/vision/ops/preprocess_ops_3d.py::_sample_or_pad_sequence_indices``):
a clip may start at any of its positions and runs past the end, and ``ClipDataset`` reads
position p as ``p mod num_frames``. Plans therefore hold positions that may exceed the grid.

A sampler is a callable ``sampler(num_frames, rng) -> ClipPlan`` with a ``fps`` attribute (None
for the video's own rate). ``ClipDataset`` decodes its plan; writing a new sampler is writing
one small class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Caption:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class ClipPlan:
    """What to decode for one sample.

    Attributes:
        views: view name -> grid positions, (T,) for one clip or (N, T) for N clips.
        extras: arrays returned beside the views (e.g. ``index_map``, ``gap``).
        window: (first, last + 1) grid positions whose time span gets the aligned audio and
            captions; None when the sampler asks for neither.
    """

    views: dict[str, np.ndarray]
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    window: tuple[int, int] | None = None


class ClipSampler(Protocol):
    fps: float | None

    def __call__(self, num_frames: int, rng: np.random.Generator) -> ClipPlan: ...


# ---- index maths --------------------------------------------------------------------------


def clip_span(frames: int, stride: int) -> int:
    """Grid positions a clip covers, first to last inclusive."""
    if frames < 1 or stride < 1:
        raise ValueError(f"a clip needs frames >= 1 and stride >= 1, got {frames} and {stride}")
    return (frames - 1) * stride + 1


def clip_positions(start: int, frames: int, stride: int) -> np.ndarray:
    """(frames,) grid positions of a clip starting at ``start``."""
    return start + stride * np.arange(frames, dtype=np.int64)


def valid_starts(num_frames: int, span: int) -> int:
    """Number of clip starts: ``num_frames - span + 1`` when the clip fits, else every position
    (the clip is looped; ``sample_sequence``'s ``max_offset``)."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame position, got {num_frames}")
    return num_frames - span + 1 if num_frames >= span else num_frames


def uniform_starts(num_frames: int, span: int, num_clips: int) -> np.ndarray:
    """Evenly spaced starts from the first to the last one that fits (one clip: the centre),
    the usual multi-view test protocol; all at 0 when the clip does not fit (the reference's
    ``max(0, ...)`` offsets of ``sample_linspace_sequence``)."""
    last = num_frames - span if num_frames >= span else 0
    if num_clips == 1:
        return np.array([last // 2], dtype=np.int64)
    return np.round(np.linspace(0, last, num_clips)).astype(np.int64)


def random_start(num_frames: int, span: int, rng: np.random.Generator) -> int:
    """A start drawn uniformly from the valid ones (``valid_starts``)."""
    return int(rng.integers(0, valid_starts(num_frames, span)))


def cvrl_gap_cdf(k: np.ndarray | float, starts: int) -> np.ndarray | float:
    """P(gap < k) for the CVRL/ConST-CL gap between the two views' starts: a density falling
    linearly from 2/M at 0 to 0 at M, F(k) = 2k/M - k^2/M^2, with M = ``starts``, the number
    of valid starts (video_ssl_preprocess_ops.sample_ssl_sequence)."""
    k = np.asarray(k, dtype=np.float64) / starts
    return 2 * k - k * k


def sample_cvrl_gap(starts: int, rng: np.random.Generator) -> int:
    """A gap in [0, starts - 1] by inverting ``cvrl_gap_cdf`` (the reference does a binary
    search for the same integer: the largest k with F(k) <= u)."""
    u = rng.random()
    return min(int(starts * (1.0 - np.sqrt(1.0 - u))), starts - 1)


def two_view_starts(
    num_frames: int, span: int, rng: np.random.Generator, *, max_gap: int | None = None
) -> tuple[int, int, int]:
    """(start_a, start_b, gap) for two views: gap ~ ``sample_cvrl_gap``, the earlier start
    uniform among those that leave room for the later one, then the order shuffled. When the
    clip does not fit, both starts are uniform over the video (``sample_ssl_sequence``)."""
    if num_frames < span:
        a, b = (int(v) for v in rng.integers(0, num_frames, size=2))
        return a, b, abs(a - b)
    starts = valid_starts(num_frames, span)
    limit = starts if max_gap is None else min(starts, max_gap + 1)
    gap = sample_cvrl_gap(limit, rng)
    first = int(rng.integers(0, starts - gap))
    second = first + gap
    return (second, first, gap) if rng.random() < 0.5 else (first, second, gap)


def long_short_positions(
    num_frames: int,
    rng: np.random.Generator,
    *,
    long: tuple[int, int],
    short: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TeG: a long clip and a short clip inside it, each (frames, stride). The short clip starts
    on one of the long clip's frames, so with equal strides every short frame is a long one.

    Returns (long positions, short positions, index map), where ``index_map[j]`` is where short
    frame j falls on the long clip's frame axis (fractional when it falls between two long
    frames), i.e. ``(short[j] - long[0]) / long_stride``.
    """
    long_span, short_span = clip_span(*long), clip_span(*short)
    if short_span > long_span:
        raise ValueError(
            f"the short clip ({short_span} positions) does not fit in the long one ({long_span})"
        )
    long_start = random_start(num_frames, long_span, rng)
    short_start = long_start + long[1] * int(rng.integers(0, (long_span - short_span) // long[1] + 1))
    long_pos = clip_positions(long_start, *long)
    short_pos = clip_positions(short_start, *short)
    index_map = (short_pos - long_start) / long[1]
    return long_pos, short_pos, index_map.astype(np.float32)


def window_seconds(window: tuple[int, int], fps: float) -> tuple[float, float]:
    """The time span of grid positions [first, last + 1)."""
    return window[0] / fps, window[1] / fps


def overlapping_captions(captions: Sequence[Caption], start: float, end: float) -> list[Caption]:
    """Captions whose [start, end] overlaps the window for a positive length, in time order."""
    hits = [c for c in captions if min(c.end, end) - max(c.start, start) > 0]
    return sorted(hits, key=lambda c: (c.start, c.end))


# ---- samplers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomClip:
    """One clip at a uniformly random start: {"video"}."""

    frames: int = 16
    stride: int = 2
    fps: float | None = None

    def __call__(self, num_frames: int, rng: np.random.Generator) -> ClipPlan:
        start = random_start(num_frames, clip_span(self.frames, self.stride), rng)
        return ClipPlan(views={"video": clip_positions(start, self.frames, self.stride)})


@dataclass(frozen=True)
class UniformClips:
    """``num_clips`` evenly spaced clips, for evaluation: {"video": (num_clips, frames)}."""

    frames: int = 16
    stride: int = 2
    num_clips: int = 1
    fps: float | None = None

    def __call__(self, num_frames: int, rng: np.random.Generator) -> ClipPlan:
        starts = uniform_starts(num_frames, clip_span(self.frames, self.stride), self.num_clips)
        # (num_clips,) + (frames,) -> (num_clips, frames)
        positions = starts[:, None] + self.stride * np.arange(self.frames)[None, :]
        return ClipPlan(views={"video": positions})


@dataclass(frozen=True)
class TwoViews:
    """CVRL / ConST-CL: two clips of one video, the gap between their starts drawn from the
    linearly decreasing density: {"video", "video_b"}, extras {"gap"} in grid positions."""

    frames: int = 16
    stride: int = 2
    max_gap: int | None = None
    fps: float | None = None

    def __call__(self, num_frames: int, rng: np.random.Generator) -> ClipPlan:
        span = clip_span(self.frames, self.stride)
        a, b, gap = two_view_starts(num_frames, span, rng, max_gap=self.max_gap)
        views = {
            "video": clip_positions(a, self.frames, self.stride),
            "video_b": clip_positions(b, self.frames, self.stride),
        }
        return ClipPlan(views=views, extras={"gap": np.array(gap, dtype=np.int64)})


@dataclass(frozen=True)
class LongShortClips:
    """TeG: a long clip and a short clip inside it: {"video", "video_short"}, extras
    {"index_map"} (see ``long_short_positions``)."""

    long_frames: int = 16
    long_stride: int = 4
    short_frames: int = 16
    short_stride: int = 1
    fps: float | None = None

    def __call__(self, num_frames: int, rng: np.random.Generator) -> ClipPlan:
        long_pos, short_pos, index_map = long_short_positions(
            num_frames,
            rng,
            long=(self.long_frames, self.long_stride),
            short=(self.short_frames, self.short_stride),
        )
        return ClipPlan(views={"video": long_pos, "video_short": short_pos}, extras={"index_map": index_map})


@dataclass(frozen=True)
class AudioVisualClip:
    """VATT: one clip plus the audio of its time span and the captions overlapping it
    (32 frames at a reference 10 fps = 3.2 s): {"video", "audio", "audio_mask", "text"}."""

    frames: int = 32
    stride: int = 1
    fps: float | None = 10.0

    def __call__(self, num_frames: int, rng: np.random.Generator) -> ClipPlan:
        start = random_start(num_frames, clip_span(self.frames, self.stride), rng)
        positions = clip_positions(start, self.frames, self.stride)
        # The clip's time span: from its first position to the end of the stride after its last.
        window = (int(positions[0]), int(positions[-1]) + self.stride)
        return ClipPlan(views={"video": positions}, window=window)
