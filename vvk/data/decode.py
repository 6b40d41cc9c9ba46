"""Decoding video clips and audio windows with PyAV, and probing files for the index.

Why it is fast (see benchmarks/video_input.py): a clip seeks to the keyframe before it and
decodes only up to its last frame; only the frames a clip shows are converted, and colour
conversion and resizing happen in one libswscale call through one ``VideoReformatter`` per
stream (``frame.to_ndarray(format="rgb24")`` builds a new converter per frame and converts at
full size: about 3× slower than decoding itself).

Why it is robust: frames are picked by timestamp (the frame on screen at the requested time),
so variable-frame-rate files give the right frames; the display rotation of phone videos is
applied; a seek that lands after its target (containers without a usable index, raw
elementary streams) falls back to decoding from the start.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vvk.data.media import BadVideo, VideoMeta, first_line

SizeArg = int | tuple[int, int] | None

# First bytes of containers FFmpeg reads: a file that starts like one but does not open has lost
# its end (an mp4 whose index, the `moov` box, was at the end) rather than never being a video.
_SEEK_BACKOFF = 3.0  # seconds to seek further back when a seek lands after its target
_LATE = 1e-6  # a seek that lands on a frame later than this after its target missed it
_CLOCK_CHECK_FRAMES = 16  # frames decoded by `probe` to check that timestamps increase
_CONTAINER_MAGIC = (
    (4, b"ftyp"),
    (0, b"RIFF"),
    (0, b"\x1a\x45\xdf\xa3"),
    (0, b"\x00\x00\x01\xba"),
    (0, b"FLV"),
)


def output_size(height: int, width: int, size: SizeArg) -> tuple[int, int]:
    """(height, width) of decoded frames: native for None, short side = ``size`` for an int
    (aspect kept), exactly ``size`` for an (h, w) pair."""
    if size is None:
        return height, width
    if isinstance(size, int):
        scale = size / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return int(size[0]), int(size[1])


def frames_on_screen(frame_times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted time, the index of the frame on screen then: the last frame whose time is
    <= it (the first frame for times before it). The streaming decoder below must agree."""
    return np.clip(np.searchsorted(frame_times, wanted, side="right") - 1, 0, len(frame_times) - 1)


def seek_runs(wanted: np.ndarray, gap: float) -> list[tuple[int, int]]:
    """Split sorted times into runs ``[lo, hi)`` separated by more than ``gap`` seconds: each run
    is decoded after one seek, and decoding straight through a shorter gap is cheaper."""
    if len(wanted) == 0:
        return []
    cuts = np.flatnonzero(np.diff(wanted) > gap) + 1
    bounds = [0, *cuts.tolist(), len(wanted)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def open_media(path: str | os.PathLike) -> av.container.InputContainer:
    """``av.open`` with failures classified as a ``BadVideo`` (empty, not media, truncated)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadVideo("empty", "0 bytes")
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError) as e:
        raise BadVideo(_unopenable_kind(path), first_line(e)) from e


def _unopenable_kind(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return "not_media"
    looks_like_container = any(head[at : at + len(magic)] == magic for at, magic in _CONTAINER_MAGIC)
    return "truncated" if looks_like_container else "not_media"


def probe(path: str | os.PathLike, *, deep: bool = False) -> VideoMeta:
    """Read a file's metadata by demuxing every video packet (no decoding) and decoding the first
    frame (every frame with ``deep``). Raises ``BadVideo`` naming what is wrong."""
    with open_media(path) as container:
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
            raise BadVideo("no_video", f"streams: {kinds}")
        stream = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        try:
            stamps = [(p.pts, p.dts) for p in container.demux(stream) if p.size]
        except av.FFmpegError as e:
            raise BadVideo("decode_error", first_line(e)) from e
        if not stamps:
            raise BadVideo("decode_error", "the video stream has no frames")
        if stream.frames and len(stamps) < stream.frames:
            raise BadVideo("truncated", f"{len(stamps)} of {stream.frames} frames present")
        codec = stream.codec_context.name
        audio_rate = int(audio.rate) if audio is not None and audio.rate else None
        first, clock = _decode_check(path, deep=deep)
        duration = _duration([p if clock == "pts" else d for p, d in stamps], stream)
        # The clock starts at the first frame the decoder emits (a decoder's delay shifts dts).
        stamp = first.pts if clock == "pts" else first.dts
        start = float(stamp * stream.time_base) if stamp is not None else 0.0
    rotation = _rotation(first)
    stored_h, stored_w = first.height, first.width
    height, width = (stored_w, stored_h) if rotation in (90, 270) else (stored_h, stored_w)
    return VideoMeta(
        duration=duration,
        fps=len(stamps) / duration,
        num_frames=len(stamps),
        width=width,
        height=height,
        rotation=rotation,
        start=start,
        has_audio=audio is not None,
        audio_rate=audio_rate,
        codec=codec,
        clock=clock,
    )


def _duration(stamps: list[int | None], stream) -> float:
    """Seconds from the first frame's start to the last one's end, from packet timestamps; a
    stream without them (rare raw streams) falls back to its nominal rate."""
    if any(p is None for p in stamps) or len(stamps) < 2:
        return len(stamps) / float(stream.average_rate or stream.guessed_rate or 25)
    times = np.sort(np.asarray(stamps, dtype=np.float64)) * float(stream.time_base)
    step = float(np.median(np.diff(times)))  # the last frame lasts as long as a typical one
    return float(times[-1] - times[0] + step)


def _decode_check(path: str | os.PathLike, *, deep: bool) -> tuple[object, str]:
    """Decode the first frames (all with ``deep``): (the first frame, the clock to trust).

    Decoders emit frames in display order, so their timestamps must increase. Some AVI files
    (XVID "packed B-frames") label them out of order while their decoding timestamps are
    right; for those the clock is "dts" (FFmpeg's best-effort timestamp makes the same call).
    """
    pts: list[int | None] = []
    dts: list[int | None] = []
    with open_media(path) as container:
        try:
            for frame in container.decode(video=0):
                if not pts:
                    first = frame
                pts.append(frame.pts)
                dts.append(frame.dts)
                if not deep and len(pts) >= _CLOCK_CHECK_FRAMES:
                    break
        except av.FFmpegError as e:
            raise BadVideo("decode_error", first_line(e)) from e
    if not pts:
        raise BadVideo("decode_error", "no frame could be decoded")
    clock = "dts" if not _increasing(pts) and _increasing(dts) else "pts"
    return first, clock


def _increasing(stamps: list[int | None]) -> bool:
    return None not in stamps and all(a < b for a, b in zip(stamps, stamps[1:], strict=False))


def _rotation(frame) -> int:
    # PyAV reports the display matrix angle counter-clockwise; older PyAV has no attribute.
    angle = getattr(frame, "rotation", 0) or 0
    return int(round(angle / 90.0)) % 4 * 90


class _Converter:
    """One reformatter per stream: colour conversion + resize in one libswscale call, then the
    display rotation on the (already small) result. A frame picked twice is converted once."""

    def __init__(self, out_hw: tuple[int, int], rotation: int):
        self.rotation = rotation
        # The scaler works on stored frames: for a quarter turn, the stored size is transposed.
        self.stored_hw = out_hw[::-1] if rotation in (90, 270) else out_hw
        self.reformatter = VideoReformatter()
        self._last: tuple[object, np.ndarray] | None = None

    def __call__(self, frame) -> np.ndarray:
        if self._last is not None and self._last[0] is frame:
            return self._last[1]
        h, w = self.stored_hw
        rgb = self.reformatter.reformat(
            frame, width=w, height=h, format="rgb24", interpolation="BILINEAR", threads=1
        )
        array = rgb.to_ndarray()  # (h, w, 3) uint8
        if self.rotation:
            array = np.ascontiguousarray(np.rot90(array, k=self.rotation // 90))
        self._last = (frame, array)
        return array


class PyAVDecoder:
    """Clip and audio decoding with PyAV (FFmpeg bundled in the wheel).

    Args:
        seek_gap: seconds between requested frames above which the decoder seeks instead of
            decoding through the gap.
        threads: FFmpeg decoding threads per stream; 1 suits data-loader workers, which are
            the parallelism.
    """

    name = "pyav"

    def __init__(self, *, seek_gap: float = 1.0, threads: int = 1):
        self.seek_gap = seek_gap
        self.threads = threads

    probe = staticmethod(probe)

    def frames(
        self, path: str | os.PathLike, times: np.ndarray, *, meta: VideoMeta, size: SizeArg = None
    ) -> np.ndarray:
        """The frames on screen at ``times`` (seconds from the first frame), any order or
        repeats: (N, H, W, 3) uint8, upright, resized per ``size`` (see ``output_size``)."""
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        wanted, inverse = np.unique(times, return_inverse=True)
        out_hw = output_size(meta.height, meta.width, size)
        out = np.empty((len(wanted), *out_hw, 3), dtype=np.uint8)
        convert = _Converter(out_hw, meta.rotation)

        def put(k: int, frame) -> None:
            out[k] = convert(frame)

        with open_media(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = self.threads
            for lo, hi in seek_runs(wanted, self.seek_gap):
                if wanted[lo] <= self.seek_gap:  # near the start: no seek needed
                    _fill(_timed_frames(container, stream, meta), wanted, lo, hi, put, overshoot=None)
                    continue
                for back in (0.0, _SEEK_BACKOFF):  # a seek may land late (sparse index): retry earlier
                    _seek(container, stream, meta.start + max(0.0, wanted[lo] - back))
                    if _fill(_timed_frames(container, stream, meta), wanted, lo, hi, put, overshoot=_LATE):
                        break
                else:  # no usable index: decode everything left in one pass from the start
                    _seek(container, stream, None)
                    _fill(
                        _timed_frames(container, stream, meta), wanted, lo, len(wanted), put, overshoot=None
                    )
                    break
        return out[inverse]

    def audio(
        self, path: str | os.PathLike, start: float, end: float, *, meta: VideoMeta, sample_rate: int
    ) -> np.ndarray:
        """Mono float32 waveform of ``[start, end)`` (seconds on the video's clock) at
        ``sample_rate``; zeros where the file has no audio."""
        n = max(0, round((end - start) * sample_rate))
        out = np.zeros(n, dtype=np.float32)
        if not meta.has_audio or n == 0:
            return out
        t0, t1 = meta.start + start, meta.start + end
        with open_media(path) as container:
            stream = container.streams.audio[0]
            if t0 > self.seek_gap:
                _seek(container, stream, t0)
            first, wave = _decode_audio(container, stream, t0, t1, sample_rate)
        return out if first is None else place_window(wave, first - t0, n, sample_rate)


def every_frame(
    path: str | os.PathLike, *, meta: VideoMeta, size: SizeArg = None, threads: int = 1
) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame in display order with its time (seconds from the first frame), converted as
    ``PyAVDecoder.frames`` converts it: ``frames_on_screen`` over these times picks what it picks."""
    convert = _Converter(output_size(meta.height, meta.width, size), meta.rotation)
    with open_media(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        for t, frame in _timed_frames(container, stream, meta):
            yield t, convert(frame)


def place_window(wave: np.ndarray, lead: float, n: int, sample_rate: int) -> np.ndarray:
    """The ``n`` samples of a window from decoded ``wave``, whose first sample is ``lead``
    seconds after the window starts (negative: before it); zeros where ``wave`` has none."""
    out = np.zeros(n, dtype=np.float32)
    offset = round(-lead * sample_rate)  # samples of `wave` before the window (< 0: a gap)
    src, dst = max(offset, 0), max(-offset, 0)
    count = max(0, min(n - dst, len(wave) - src))
    out[dst : dst + count] = wave[src : src + count]
    return out


def _seek(container, stream, seconds: float | None) -> None:
    """Seek to the keyframe at or before ``seconds`` on the container timeline (None: the start)."""
    target = 0 if seconds is None else int(seconds / stream.time_base)
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError as e:
        raise BadVideo("decode_error", f"seek failed: {first_line(e)}") from e


def _timed_frames(container, stream, meta: VideoMeta) -> Iterator[tuple[float, object]]:
    """Decoded frames with their time in seconds from the first frame."""
    step = 1.0 / meta.fps
    last = -step
    try:
        for frame in container.decode(stream):
            stamp = frame.dts if meta.clock == "dts" else frame.pts
            last = last + step if stamp is None else float(stamp * stream.time_base) - meta.start
            yield last, frame
    except av.FFmpegError as e:
        raise BadVideo("decode_error", first_line(e)) from e


def _fill(
    timed: Iterator[tuple[float, object]],
    wanted: np.ndarray,
    lo: int,
    hi: int,
    put: Callable[[int, object], None],
    *,
    overshoot: float | None,
) -> bool:
    """Give each ``wanted[lo:hi]`` the frame on screen at that time (``frames_on_screen``,
    streamed). Returns False, having put nothing, when the first frame comes more than
    ``overshoot`` seconds after the first wanted time, or none comes (a seek past the end)."""
    k, previous = lo, None
    for t, frame in timed:
        if previous is None and overshoot is not None and t > wanted[lo] + overshoot:
            return False
        while k < hi and t > wanted[k]:
            put(k, previous if previous is not None else frame)
            k += 1
        if k == hi:
            return True
        previous = frame
    if previous is None:
        if overshoot is not None:
            return False
        raise BadVideo("decode_error", "no frame could be decoded")
    for j in range(k, hi):  # past the last frame: it stays on screen
        put(j, previous)
    return True


def _decode_audio(container, stream, t0: float, t1: float, sample_rate: int):
    """(time of the first kept sample, mono float32 samples from there to past t1)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    first = None
    try:
        for frame in container.decode(stream):
            begin = float(frame.time) if frame.time is not None else (first or 0.0)
            end = begin + frame.samples / frame.sample_rate
            if end <= t0:
                continue
            first = begin if first is None else first
            chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))
            if end >= t1:
                break
        chunks.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(None))
    except av.FFmpegError as e:
        raise BadVideo("decode_error", f"audio: {first_line(e)}") from e
    return first, (np.concatenate(chunks) if chunks else np.zeros(0, np.float32))
