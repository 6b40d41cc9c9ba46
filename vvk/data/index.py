"""The index of a dataset's videos: duration, fps, frame count, size, audio, or the problem.

Built in parallel (a thread pool: PyAV releases the GIL while it demuxes and decodes) with a
progress bar, and cached as JSON *outside* the input (the run folder, or the user cache
``~/.cache/vvk/index``): input folders are never written to. A rebuild re-probes only files
whose size or modification time changed.

Each file is probed (``decode.probe``: every packet demuxed, the first frames decoded) and then
a few frames across it are decoded by the chosen decoder, seeking as training will, so a file
that only one decoder cannot read is caught here rather than mid-run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vvk.atomic import atomic_write_text
from vvk.data.decoders import Decoder, get_decoder
from vvk.data.media import PROBLEMS, BadVideo, VideoMeta, first_line
from vvk.data.paths import real_path
from vvk.data.sources import Data, data_paths
from vvk.errors import VvkError

INDEX_FORMAT = "vvk-video-index"
INDEX_VERSION = 1
_CHECK_SIZE = 32  # short side of the frames decoded to verify a file: cheap, still a real decode


@dataclass(frozen=True)
class IndexEntry:
    """One file: its metadata, or the problem (a key of ``media.PROBLEMS``) and its detail."""

    path: str
    size: int
    mtime_ns: int
    meta: VideoMeta | None = None
    problem: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}
        if self.meta is not None:
            record["meta"] = self.meta.to_json()
        if self.problem is not None:
            record.update(problem=self.problem, detail=self.detail)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> IndexEntry:
        meta = VideoMeta.from_json(record["meta"]) if "meta" in record else None
        return cls(
            record["path"],
            record["size"],
            record["mtime_ns"],
            meta,
            record.get("problem"),
            record.get("detail", ""),
        )


class VideoIndex:
    """Entries by real path (``paths.real_path``: links resolved), in path order, and the
    decoder that verified them."""

    def __init__(self, entries: Sequence[IndexEntry], *, decoder: str = ""):
        self._entries = {e.path: e for e in sorted(entries, key=lambda e: e.path)}
        self.decoder = decoder

    def __getitem__(self, path: str | os.PathLike) -> IndexEntry:
        return self._entries[str(path)]

    def __contains__(self, path: object) -> bool:
        return str(path) in self._entries

    def __iter__(self) -> Iterator[IndexEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def problems(self) -> Counter[str]:
        return Counter(e.problem for e in self if e.problem is not None)

    def save(self, path: str | os.PathLike) -> None:
        record = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "decoder": self.decoder}
        record["entries"] = [e.to_json() for e in self]
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> VideoIndex:
        """An index file; an unreadable or foreign one is a ``VvkError``."""
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
            if record.get("format") != INDEX_FORMAT or record.get("version") != INDEX_VERSION:
                raise ValueError(f"not a version-{INDEX_VERSION} vvk video index")
            return cls(
                [IndexEntry.from_json(r) for r in record["entries"]], decoder=record.get("decoder", "")
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise VvkError(f"{path}: cannot read the video index ({first_line(e)})") from e


def cache_path(source: Data, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the index of ``source`` (a folder, a list or video file, or a sequence of those:
    ``sources.Data``) is cached: ``cache_dir`` (e.g. a run folder) or the user cache. Refuses a
    place inside an input folder."""
    sources = [real_path(p) for p in data_paths(source)]
    if cache_dir is None:
        from vvk.paths import cache_dir as user_cache

        cache_dir = user_cache() / "index"
    digest = hashlib.sha1("\n".join(sources).encode()).hexdigest()[:12]
    name = Path(sources[0]).name if len(sources) == 1 else f"{len(sources)}-paths"
    path = Path(cache_dir) / f"{name}-{digest}.index.json"
    for one in sources:
        path = ensure_outside(path, one)
    return path


def ensure_outside(path: str | os.PathLike, source: str | os.PathLike) -> Path:
    """``path``, resolved, after checking that it is neither inside an input folder nor an
    input list file: vvk never writes into its input."""
    path, source = Path(real_path(path)), Path(real_path(source))  # a looping link is no error here
    if source.is_dir() and source in path.parents or path == source:
        raise VvkError(f"{path} is inside the input {source}: vvk never writes into its input")
    return path


def probe_file(path: str | os.PathLike, decoder: Decoder, *, deep: bool = False) -> IndexEntry:
    """Probe one file and decode its first, middle and last frames with ``decoder``. A file the
    OS will not open (missing, a link loop, no permission) is ``unreadable``, its OS error the
    detail."""
    path = real_path(path)
    try:
        stat = os.stat(path)
        with open(path, "rb"):
            pass
    except OSError as e:
        return IndexEntry(path, 0, 0, problem="unreadable", detail=first_line(e))
    try:
        meta = decoder.probe(path, deep=deep)
        times = (np.array([0, meta.num_frames // 2, meta.num_frames - 1]) + 0.5) / meta.fps
        decoder.frames(path, times, meta=meta, size=_CHECK_SIZE)
    except BadVideo as e:
        return IndexEntry(path, stat.st_size, stat.st_mtime_ns, problem=e.kind, detail=e.detail)
    return IndexEntry(path, stat.st_size, stat.st_mtime_ns, meta=meta)


def build_index(
    paths: Sequence[str | os.PathLike],
    *,
    cache: str | os.PathLike | None = None,
    decoder: str = "auto",
    deep: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> VideoIndex:
    """Index ``paths``, reusing the entries of ``cache`` (an index file) for unchanged files,
    and write the result back to ``cache``.

    Args:
        decoder: the decoder that verifies each file (auto, pyav, torchcodec).
        deep: decode every frame of every file (``vvk data check --deep``).
        workers: probing threads (default: two per CPU, at most 16).
        progress: show a progress bar on stderr.
    """
    if cache is not None and Path(cache).is_dir():  # found before the probing, not after it
        example = Path(cache) / "index.json"
        raise VvkError(f"{cache}: a folder, not an index file", hint=f"give a file path, e.g. {example}")
    paths = sorted({real_path(p) for p in paths})
    dec = get_decoder(decoder)
    reusable = _cached_entries(cache, dec.name) if cache is not None and not deep else {}
    todo, entries = [], []
    for path in paths:
        old = reusable.get(path)
        if old is not None and _unchanged(old):
            entries.append(old)
        else:
            todo.append(path)
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with _Progress(progress, len(todo)) as advance:
            for entry in pool.map(lambda p: probe_file(p, dec, deep=deep), todo):
                entries.append(entry)
                advance()
    except BaseException:
        # Interrupted (Ctrl-C): the files not started are dropped, only those being probed
        # finish. Leaving a `with pool` block would wait for every queued file instead.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    index = VideoIndex(entries, decoder=dec.name)
    if cache is not None:
        try:
            index.save(cache)
        except OSError as e:  # a read-only place, a file where a folder should be, ...
            raise VvkError(f"{cache}: cannot write the index there ({e.strerror or e})") from e
    return index


def describe(entry: IndexEntry) -> str:
    """One line for a warning: what is wrong with the file."""
    return f"{entry.path}: {PROBLEMS[entry.problem]}" + (f" ({entry.detail})" if entry.detail else "")


def _cached_entries(cache: str | os.PathLike, decoder: str) -> dict[str, IndexEntry]:
    """Entries of a previous build with the same decoder (another one may read other files)."""
    if not Path(cache).is_file():
        return {}
    try:
        old = VideoIndex.load(cache)
    except VvkError:
        return {}  # a stale or foreign cache is rebuilt, not an error
    return {e.path: e for e in old} if old.decoder == decoder else {}


def _unchanged(entry: IndexEntry) -> bool:
    try:
        stat = os.stat(entry.path)
    except OSError:
        return False
    return stat.st_size == entry.size and stat.st_mtime_ns == entry.mtime_ns


class _Progress:
    """A rich progress bar on stderr (or nothing); the context value advances it by one."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled and total > 0
        self.total = total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        task = self._bar.add_task("index", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._bar.stop()
