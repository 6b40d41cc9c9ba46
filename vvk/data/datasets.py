"""Clip datasets: items + index + a sampler -> dicts of tensors, skipping bad files.

A sample is a dict:

- one uint8 tensor per view of the sampler's plan, (C, T, H, W) (``UniformClips``: (N, C, T, H, W)),
  e.g. ``"video"``, ``"video_b"`` (TwoViews), ``"video_short"`` (LongShortClips);
- the plan's extras as tensors, e.g. ``"index_map"`` (float32, (T_short,)), ``"gap"``;
- with a window (AudioVisualClip): ``"audio"`` (float32, (samples,)), ``"audio_mask"`` (bool:
  the file has audio) and ``"text"`` (list of the captions overlapping the clip);
- ``"frame_size"`` (int64 ``[height, width]``): the decoded frames' size. Frames of every video
  are padded with zeros at the bottom and right to the dataset's ``canvas`` so that clips of
  any aspect batch together; ``VideoAugment`` crops only inside ``frame_size``;
- ``"frame_grid"`` (float32 ``[start, fps, width, height]``: grid position p is the frame at
  ``start + (p + 0.5) / fps`` seconds of a width × height video, e.g. to look up boxes);
- ``"label"`` (int64, -1 without labels), ``"index"`` (int64), ``"path"`` (str), and
  ``"skipped"``: the bad files met (and replaced) while making this sample.

A video shorter than a clip is looped, as the reference samplers do
(``preprocess_ops_3d._sample_or_pad_sequence_indices``): grid position p reads frame
``p mod num_frames``.

Bad files are skipped, never fatal: those the index knows are dropped when the dataset is built,
those that fail while loading are replaced by another video (chosen by the sample's own random
generator, so it stays deterministic). Each is warned about once, counted in ``bad_files``, and
the training loop reports them in its summary. The warnings go to the ``vvk.data`` logger (on
rank 0 only), where a Python user can filter or capture them; the CLI prints them as one line.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vvk.data.decode import SizeArg, output_size
from vvk.data.decoders import Decoder, get_decoder
from vvk.data.index import VideoIndex, build_index, cache_path, ensure_outside
from vvk.data.media import PROBLEMS, BadVideo, VideoMeta
from vvk.data.paths import real_path
from vvk.data.samplers import Caption, ClipSampler, overlapping_captions, window_seconds
from vvk.data.sources import Data, VideoItem, data_paths, open_source
from vvk.data.subtitles import read_caption_source
from vvk.errors import VvkError

logger = logging.getLogger("vvk.data")


def _warn_on_rank0(line: str) -> None:
    # Every rank builds the same dataset; only the first one speaks (torchrun sets RANK).
    if os.environ.get("RANK", "0") == "0":
        logger.warning(line)


class BadFiles:
    """The files a dataset skipped: each warned about once (one line), counted by problem.

    Args:
        warn: where the warning lines go (default: the ``vvk.data`` logger, on rank 0 only).
    """

    def __init__(self, warn: Callable[[str], None] | None = None):
        self.warn = warn or _warn_on_rank0
        self.files: dict[str, tuple[str, str]] = {}

    def add(self, path: str, problem: str, detail: str = "") -> None:
        if path in self.files:
            return
        self.files[path] = (problem, detail)
        self.warn(f"{path}: {PROBLEMS[problem]}" + (f" ({detail})" if detail else "") + "; skipped")

    def merge(self, records: Sequence[Mapping[str, str]]) -> None:
        for r in records:
            self.add(r["path"], r["problem"], r.get("detail", ""))

    def __len__(self) -> int:
        return len(self.files)

    def summary(self) -> dict[str, Any]:
        """``{"count", "by_problem", "files": [{"path", "problem", "detail"}]}`` for run summaries."""
        return {
            "count": len(self.files),
            "by_problem": dict(Counter(problem for problem, _ in self.files.values())),
            "files": [{"path": p, "problem": k, "detail": d} for p, (k, d) in sorted(self.files.items())],
        }


class ClipTable:
    """The usable videos as numpy arrays: ``table[i] -> (VideoItem, VideoMeta, grid frames)``.

    Forked loader workers read numpy arrays without touching reference counts, so these pages
    stay shared; a list of Python objects is copied into every worker page by page as it is
    read, the usual "leak" of PyTorch datasets (pytorch/pytorch#13246) on 100k-video sets.
    """

    # VideoMeta's fields as columns; None (no audio rate, open segment end) is stored as 0 / NaN.
    META = [("duration", "f8"), ("fps", "f8"), ("num_frames", "i8"), ("width", "i8"), ("height", "i8"),
            ("rotation", "i8"), ("start", "f8"), ("has_audio", "?"), ("audio_rate", "i8"),
            ("codec", "U16"), ("clock", "U4")]  # fmt: skip
    ITEM = [("label", "i8"), ("start", "f8"), ("end", "f8")]

    def __init__(self, rows: Sequence[tuple[VideoItem, VideoMeta, int]]):
        nan = float("nan")
        self.paths = np.array([item.path for item, _, _ in rows])  # fixed-width unicode
        self.items = np.array(
            [
                (i.label, nan if i.start is None else i.start, nan if i.end is None else i.end)
                for i, _, _ in rows
            ],
            dtype=self.ITEM,
        )
        metas = [{**m.to_json(), "audio_rate": m.audio_rate or 0} for _, m, _ in rows]
        self.metas = np.array([tuple(m[name] for name, _ in self.META) for m in metas], dtype=self.META)
        self.grid = np.array([g for _, _, g in rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.grid)

    def __getitem__(self, i: int) -> tuple[VideoItem, VideoMeta, int]:
        label, start, end = self.items[i].tolist()
        item = VideoItem(str(self.paths[i]), label, _none_if_nan(start), _none_if_nan(end))
        meta = dict(zip([name for name, _ in self.META], self.metas[i].tolist(), strict=True))
        meta["audio_rate"] = meta["audio_rate"] or None
        return item, VideoMeta(**meta), int(self.grid[i])


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


class ClipDataset(Dataset):
    """Clips of indexed videos, as the sampler plans them.

    Args:
        items: the videos (from ``vvk.data.sources``).
        index: their metadata (``build_index``); files it marks bad are skipped.
        sampler: a ``ClipSampler`` (RandomClip, UniformClips, TwoViews, LongShortClips,
            AudioVisualClip, or your own).
        decoder: a decoder or its name (auto, pyav, torchcodec).
        size: frame size: an int resizes the short side to it (the reference's
            ``min_resize``), (h, w) resizes exactly, None keeps the native size.
        frame: "full" keeps the whole resized frame, which the training augmentation crops
            from as the reference does; "square" keeps its central square, the centre crop
            of the evaluation protocols (``preprocess_ops_3d.crop_image``).
        audio_rate: sample rate of the audio window, when the sampler asks for one.
        captions: ``{video_id: [Caption]}`` (``read_captions``); the video id is the file stem.
        seed: with the sample key, seeds each sample's own generator.
        max_retries: consecutive failing replacements before giving up with a ``VvkError``.
        bad_files: where skipped files are recorded (a new ``BadFiles`` by default).
        classes: class names, by label (from ``VideoSource.classes``).

    Indexing with an int ``i`` draws with ``seed, i``; with a key ``(i, draw)`` (what
    ``ShardedSampler`` yields) with ``seed, draw``, so every epoch sees new clips and a resumed
    run sees the same ones.
    """

    def __init__(
        self,
        items: Sequence[VideoItem],
        index: VideoIndex,
        *,
        sampler: ClipSampler,
        decoder: str | Decoder = "auto",
        size: SizeArg = 128,
        frame: Literal["full", "square"] = "full",
        audio_rate: int = 16000,
        captions: Mapping[str, Sequence[Caption]] | None = None,
        seed: int = 0,
        max_retries: int = 10,
        bad_files: BadFiles | None = None,
        classes: Sequence[str] = (),
    ):
        self.sampler = sampler
        self.decoder = get_decoder(decoder) if isinstance(decoder, str) else decoder
        if frame not in ("full", "square"):
            raise ValueError(f"frame must be 'full' or 'square', not {frame!r}")
        self.size, self.frame = size, frame
        self.audio_rate = audio_rate
        self.captions = dict(captions or {})
        self.seed = seed
        self.max_retries = max_retries
        self.bad_files = BadFiles() if bad_files is None else bad_files
        self.classes = list(classes)
        usable: list[tuple[VideoItem, VideoMeta, int]] = []
        for item in items:
            entry = index[real_path(item.path)]
            if not entry.ok:
                self.bad_files.add(entry.path, entry.problem, entry.detail)
                continue
            grid = self._grid_frames(item, entry.meta)
            if grid < 1:  # shorter clips are looped, but a segment must hold a frame
                fps = sampler.fps or entry.meta.fps
                self.bad_files.add(entry.path, "too_short", f"no frame at {fps:.4g} fps")
                continue
            usable.append((item, entry.meta, grid))
        if not usable:
            raise VvkError(f"no usable videos: all {len(items)} were skipped ({_counts(self.bad_files)})")
        self.clips = ClipTable(usable)
        sizes = np.array([self.frame_size(meta) for _, meta, _ in usable])  # (N, 2)
        self.canvas: tuple[int, int] = tuple(int(v) for v in sizes.max(axis=0))  # type: ignore[assignment]

    def frame_size(self, meta: VideoMeta) -> tuple[int, int]:
        """(height, width) of a video's frames as samples hold them, before padding."""
        height, width = output_size(meta.height, meta.width, self.size)
        if self.frame == "square":
            side = min(height, width)
            return side, side
        return height, width

    def _grid_frames(self, item: VideoItem, meta: VideoMeta) -> int:
        start = item.start or 0.0
        end = meta.duration if item.end is None else min(item.end, meta.duration)
        # A small epsilon keeps 10.0 s at 30 fps at 300 positions despite float error.
        return max(0, math.floor((end - start) * (self.sampler.fps or meta.fps) + 1e-6))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, draw = (key, key) if isinstance(key, int | np.integer) else key
        rng = np.random.default_rng([self.seed, int(draw)])
        skipped: list[dict[str, str]] = []
        for _ in range(self.max_retries + 1):
            item = self.clips[index][0]
            try:
                sample = self.load(int(index), rng)
            except BadVideo as e:
                skipped.append({"path": real_path(item.path), "problem": e.kind, "detail": e.detail})
                index = int(rng.integers(len(self.clips)))
                continue
            sample["skipped"] = skipped
            return sample
        raise VvkError(
            f"{self.max_retries + 1} videos in a row failed to decode, last: {skipped[-1]['path']}"
        )

    def load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """One sample of video ``index`` (raises ``BadVideo``)."""
        item, meta, grid = self.clips[index]
        fps = self.sampler.fps or meta.fps
        offset = item.start or 0.0
        plan = self.sampler(grid, rng)
        # All views are decoded in one pass: overlapping views share their frames.
        flat = np.concatenate([positions.reshape(-1) for positions in plan.views.values()]) % grid
        frames = self.decoder.frames(item.path, offset + (flat + 0.5) / fps, meta=meta, size=self.size)
        if self.frame == "square":
            frames = _center_square(frames)
        frame_size = frames.shape[1:3]
        frames = _pad_to(frames, self.canvas)
        sample: dict[str, Any] = {}
        first = 0
        for name, positions in plan.views.items():
            chunk = torch.from_numpy(frames[first : first + positions.size])
            first += positions.size
            # (N*T, H, W, C) -> (N, T, H, W, C) -> (N, C, T, H, W); one clip: (C, T, H, W). A strided
            # view: ``collate`` makes it contiguous in the same copy that stacks the batch.
            sample[name] = chunk.reshape(*positions.shape, *chunk.shape[1:]).movedim(-1, -4)
        sample.update({name: torch.as_tensor(value) for name, value in plan.extras.items()})
        if plan.window is not None:
            t0, t1 = (offset + t for t in window_seconds(plan.window, fps))
            wave = self.decoder.audio(item.path, t0, t1, meta=meta, sample_rate=self.audio_rate)
            sample["audio"] = torch.from_numpy(wave)
            sample["audio_mask"] = torch.tensor(meta.has_audio)
            sample["text"] = [
                c.text for c in overlapping_captions(self.captions.get(item.video_id, ()), t0, t1)
            ]
        sample.update(label=torch.tensor(item.label), index=torch.tensor(index), path=item.path)
        sample["frame_grid"] = torch.tensor([offset, fps, meta.width, meta.height], dtype=torch.float32)
        sample["frame_size"] = torch.tensor(frame_size, dtype=torch.int64)
        return sample


def _center_square(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, S, S, C) with S = min(H, W), the centre kept."""
    h, w = frames.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return frames[:, top : top + side, left : left + side]


def _pad_to(frames: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """(N, h, w, C) -> (N, H, W, C) with zeros below and to the right (no copy when it fits)."""
    h, w = frames.shape[1:3]
    if (h, w) == canvas:
        return frames
    if h > canvas[0] or w > canvas[1]:  # the index promised another size: the file changed
        raise BadVideo("decode_error", f"frames of {h}x{w}, the index says at most {canvas[0]}x{canvas[1]}")
    padded = np.zeros((frames.shape[0], *canvas, frames.shape[3]), dtype=frames.dtype)
    padded[:, :h, :w] = frames
    return padded


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch axis; keep other values as lists; merge ``skipped``.

    Tensors go through ``default_collate``, which in a loader worker stacks straight into
    shared memory: one copy per batch, and no 10 MB heap blocks churning in the worker.
    """
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key == "skipped":
            batch[key] = [record for v in values for record in v]
        elif isinstance(values[0], torch.Tensor):
            batch[key] = default_collate(values)
        else:
            batch[key] = values
    return batch


def open_video_dataset(
    source: Data,
    *,
    sampler: ClipSampler,
    root: str | os.PathLike | None = None,
    captions: str | os.PathLike | Mapping[str, Sequence[Caption]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    decoder: str = "auto",
    frame_cache: bool | str | os.PathLike = False,
    progress: bool = False,
    **dataset_kwargs: Any,
) -> ClipDataset:
    """A ``ClipDataset`` over a folder, a list or video file, or a sequence of those
    (``sources.open_source``, with ``root`` for list files), with its index cached in
    ``cache_dir`` (e.g. the run folder; default the user cache). ``dataset_kwargs`` go to
    ``ClipDataset``; list lines that name a file outside their folder are bad files too.

    ``frame_cache``: True (the user cache) or a folder: decode each video once, whole, and serve
    clips from the decoded frames (``vvk.data.frame_cache``; for small datasets).
    """
    found = open_source(source, root=root)
    if dataset_kwargs.get("bad_files") is None:
        dataset_kwargs["bad_files"] = BadFiles()
    bad_files = dataset_kwargs["bad_files"]
    bad_files.merge(found.skipped)
    if not found.items:
        raise VvkError(f"no usable videos: all {len(found.skipped)} were skipped ({_counts(bad_files)})")
    cache = cache_path(source, cache_dir)
    index = build_index([item.path for item in found.items], cache=cache, decoder=decoder, progress=progress)
    if captions is not None and not isinstance(captions, Mapping):
        captions = read_caption_source(captions)  # a caption table or a folder of subtitles
    reader: str | Decoder = decoder
    if frame_cache:
        from vvk.data.frame_cache import FrameCache, default_root

        cache_root = default_root() if frame_cache is True else Path(frame_cache)
        for given in data_paths(source):
            cache_root = ensure_outside(cache_root, given)
        reader = FrameCache(get_decoder(decoder), cache_root)
    dataset = ClipDataset(
        found.items,
        index,
        sampler=sampler,
        decoder=reader,
        captions=captions,
        classes=found.classes,
        **dataset_kwargs,
    )
    if frame_cache:
        from vvk.data.frame_cache import check_space

        rows = [dataset.clips[i] for i in range(len(dataset.clips))]
        videos = {item.path: meta for item, meta, _ in rows}  # segments of one file share an entry
        check_space(reader, videos.items(), dataset.size)
    return dataset


def _counts(bad: BadFiles) -> str:
    return ", ".join(f"{n} {problem}" for problem, n in sorted(bad.summary()["by_problem"].items())) or "none"
