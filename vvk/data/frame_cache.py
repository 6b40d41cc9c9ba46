"""Frames decoded once per video and kept on disk, for datasets small enough to hold that way.

A small preset on a laptop spends most of each step decoding, not training: every clip seeks to
a keyframe and decodes up to its last frame, to show a network 64² pixels (figures in
docs/benchmarks.md). ``FrameCache`` decodes each video once, whole, at the dataset's frame
size, into a raw uint8 file beside a JSON record of the frames' times, and serves a clip by
indexing a memory map of that file. The frames are exactly ``PyAVDecoder.frames``'s: the frame on
screen at each time (``frames_on_screen`` over the same timestamps), converted by the same
scaler. Memory maps share one page cache, so loader workers hold no private copies.

The cache costs ``frames × height × width × 3`` bytes per video (the 16 clips of
``shared/data/video`` at a short side of 80: 95 MB; an hour of 4:3 video at 30 fps and 256:
28 GB), so it is for small datasets: ``check_space`` refuses a dataset that would not fit on the
cache's disk. An entry is keyed by the file's path, size and modification time and the frame
size, so an edited video gets a new entry; old entries are not removed (delete the folder to
reclaim the space). An entry whose frames file does not hold the shape its record states (cut
short by a full disk, a crash of the machine before the data reached it, a partial copy of the
folder) is decoded again, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from vvk.atomic import atomic_path, atomic_write_text
from vvk.data.decode import SizeArg, every_frame, frames_on_screen, output_size
from vvk.data.decoders import Decoder
from vvk.data.media import BadVideo, VideoMeta
from vvk.errors import VvkError

FORMAT_VERSION = 1
_OPEN_MAPS = 64  # memory maps kept open per process (each holds a file descriptor)
_SPARE_BYTES = 1 << 30  # free space left on the cache's disk after filling it


class FrameCache:
    """A decoder (``vvk.data.decoders.Decoder``) that serves frames from the on-disk cache.

    Args:
        inner: the decoder that probes and decodes audio; video frames are always decoded by
            PyAV's converter (see the module docstring), whatever ``inner`` is.
        root: the cache folder (``default_root()``: the user cache).
        threads: FFmpeg threads for the one-time decode of a video.
    """

    name = "frame-cache"

    def __init__(self, inner: Decoder, root: str | os.PathLike, *, threads: int = 1):
        self.inner = inner
        self.root = Path(root)
        self.threads = threads
        self._maps: OrderedDict[Path, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._failed: dict[Path, BadVideo] = {}  # a video that failed to decode fails fast after

    def __getstate__(self) -> dict[str, Any]:
        # Loader workers open their own memory maps.
        return {**self.__dict__, "_maps": OrderedDict(), "_failed": {}}

    def probe(self, path: str | os.PathLike, *, deep: bool = False) -> VideoMeta:
        return self.inner.probe(path, deep=deep)

    def audio(
        self, path: str | os.PathLike, start: float, end: float, *, meta: VideoMeta, sample_rate: int
    ) -> np.ndarray:
        return self.inner.audio(path, start, end, meta=meta, sample_rate=sample_rate)

    def frames(
        self, path: str | os.PathLike, times: np.ndarray, *, meta: VideoMeta, size: SizeArg = None
    ) -> np.ndarray:
        """Same contract as ``PyAVDecoder.frames``: (N, H, W, 3) uint8, a copy."""
        stamps, frames = self._open(path, meta, size)
        wanted = np.asarray(times, dtype=np.float64).reshape(-1)
        return np.asarray(np.take(frames, frames_on_screen(stamps, wanted), axis=0))

    def entry(self, path: str | os.PathLike, size: SizeArg) -> Path:
        """The cache entry's path without suffix (``.json`` record, ``.u8`` frames)."""
        resolved = Path(path).resolve()
        stat = resolved.stat()
        key = json.dumps([FORMAT_VERSION, str(resolved), stat.st_size, stat.st_mtime_ns, size])
        return self.root / f"{resolved.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def is_cached(self, path: str | os.PathLike, size: SizeArg) -> bool:
        return self.entry(path, size).with_suffix(".json").is_file()

    def _open(self, path: str | os.PathLike, meta: VideoMeta, size: SizeArg) -> tuple[np.ndarray, np.ndarray]:
        entry = self.entry(path, size)
        if entry in self._maps:
            self._maps.move_to_end(entry)
            return self._maps[entry]
        if entry in self._failed:
            raise self._failed[entry]
        record = entry.with_suffix(".json")
        info = _whole_entry(entry) if record.is_file() else None
        if info is None:
            try:
                self._write(path, meta, size, entry)
            except BadVideo as e:
                self._failed[entry] = e
                raise
            info = json.loads(record.read_text())
        stamps = np.asarray(info["times"], dtype=np.float64)  # (F,)
        frames = np.memmap(entry.with_suffix(".u8"), dtype=np.uint8, mode="r", shape=tuple(info["shape"]))
        self._maps[entry] = (stamps, frames)
        if len(self._maps) > _OPEN_MAPS:
            self._maps.popitem(last=False)
        return stamps, frames

    def _write(self, path: str | os.PathLike, meta: VideoMeta, size: SizeArg, entry: Path) -> None:
        # Frames stream to disk as they decode, so a long video never sits in memory whole. The
        # record is written last: a frames file without its record is an unfinished entry.
        # Two workers filling one entry at once each write a complete copy; the last rename wins.
        times: list[float] = []
        height, width = output_size(meta.height, meta.width, size)
        with atomic_path(entry.with_suffix(".u8")) as tmp:  # a failure leaves no file behind
            with open(tmp, "wb") as out:
                for t, frame in every_frame(path, meta=meta, size=size, threads=self.threads):
                    times.append(t)
                    out.write(np.ascontiguousarray(frame).data)  # (H, W, 3) uint8
            if not times:
                raise BadVideo("decode_error", "no frame could be decoded")
            if any(b < a for a, b in zip(times, times[1:], strict=False)):  # frames_on_screen needs order
                raise BadVideo("decode_error", "frame times decrease: the file's clock is unusable")
        record = {"source": str(Path(path).resolve()), "size": size, "shape": [len(times), height, width, 3],
                  "times": times}  # fmt: skip
        atomic_write_text(entry.with_suffix(".json"), json.dumps(record) + "\n")


def _whole_entry(entry: Path) -> dict[str, Any] | None:
    """The entry's record when its frames file is whole, else None (and a warning)."""
    frames = entry.with_suffix(".u8")
    try:
        info = json.loads(entry.with_suffix(".json").read_text())
        expected = math.prod(info["shape"])
        found = frames.stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"{type(e).__name__}: {e}"
    else:
        if found == expected:
            return info
        problem = f"{found} bytes where its shape needs {expected}"
    warnings.warn(f"frame cache: {frames} is damaged ({problem}); decoding the video again", stacklevel=4)
    return None


def default_root() -> Path:
    from vvk.paths import cache_dir

    return cache_dir() / "frames"


def cache_bytes(metas: Iterable[VideoMeta], size: SizeArg) -> int:
    """Bytes the cache needs for these videos at frame ``size``."""
    total = 0
    for meta in metas:
        height, width = output_size(meta.height, meta.width, size)
        total += meta.num_frames * height * width * 3
    return total


def check_space(cache: FrameCache, videos: Iterable[tuple[str, VideoMeta]], size: SizeArg) -> int:
    """Bytes still to write for ``videos`` ((path, meta) pairs); a ``VvkError`` when they would
    not fit on the cache's disk with a gigabyte to spare."""
    missing = [meta for path, meta in videos if not cache.is_cached(path, size)]
    needed = cache_bytes(missing, size)
    cache.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache.root).free
    if needed > free - _SPARE_BYTES:
        raise VvkError(
            f"frame cache: {len(missing)} videos need {needed / 1e9:.1f} GB in {cache.root}, "
            f"{free / 1e9:.1f} GB are free",
            hint="turn the cache off (--set train.frame_cache=false) or set VVK_CACHE to a larger disk",
        )
    return needed
