"""Tracking as ``vvk track`` runs it: one video or folder of frames, every sequence of an OTB
folder, and the scores of result folders.

::

    from vvk.methods.tracking.run import track_otb, track_video
    from vvk.eval.tracking import evaluate_results

    result = track_video("bag.avi", "300,150,60,80", weights="runs/t1", out="boxes.txt", draw="bag.mp4")
    result.boxes, result.fps                     # (N, 4) x, y, w, h (OTB convention); tracker frames/s
    runs = track_otb("otb/", weights="runs/t1", out="results/t1")       # results/t1/<sequence>.txt
    reports = evaluate_results("otb/", ["results/t1", "results/kcf"])   # name -> evaluate_otb report

Boxes are written as got10k's experiments write them, one ``x,y,w,h`` line per frame with three
decimals, so any OTB toolkit reads them. Every file is written whole or not at all (``vvk.atomic``):
an interrupted run leaves the files it finished and no part of the one it was writing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vvk.atomic import atomic_path, atomic_write_text
from vvk.data.media import VideoMeta
from vvk.data.otb import read_otb, sequence_names
from vvk.errors import VvkError
from vvk.methods.tracking.io import load_tracker
from vvk.methods.tracking.tracker import SiamFCTracker, box_values, check_box
from vvk.models.trackers import SiamFC

Progress = Callable[[int, int], None]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FOLDER_FPS = 30.0  # frame rate of a drawing made from a folder of frames (OTB's sequences are 30 fps)
# Containers --draw writes, by suffix: each takes H.264 (or MPEG-4 part 2 where PyAV has no libx264).
DRAW_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
BOX_COLOUR = (255, 40, 40)
_NUMBER = re.compile(r"\d+")


def format_boxes(boxes: np.ndarray) -> str:
    """(N, 4) boxes as ``x,y,w,h`` lines (three decimals, as got10k writes results)."""
    return "".join(",".join(f"{v:.3f}" for v in box) + "\n" for box in boxes)


def parse_box(box: str | Sequence[float]) -> tuple[float, float, float, float]:
    """``"x,y,w,h"`` (or four numbers) as four floats; checked against a frame by ``check_box``."""
    if not isinstance(box, str):
        return box_values(box)
    try:
        values = [float(v) for v in box.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise VvkError(f"box={box}: expected four numbers x,y,w,h separated by commas", params=["box"])
    return values[0], values[1], values[2], values[3]


# ---------------------------------------------------------------------------------------------
# Frames: a video file or a folder of images


@dataclass(frozen=True)
class Frames:
    """A video file or a folder of frames, opened: what tracking needs before decoding.

    Attributes:
        path: the video file or the folder.
        count: the frames that will be read (all, or the first ``max_frames``).
        size: (height, width) of the first frame.
        fps: the video's frame rate (``FOLDER_FPS`` for a folder).
        meta: a video's metadata (None for a folder).
        files: a folder's frames, in order (empty for a video).
    """

    path: Path
    count: int
    size: tuple[int, int]
    fps: float
    meta: VideoMeta | None = None
    files: tuple[Path, ...] = ()


def open_frames(source: str | os.PathLike, *, max_frames: int | None = None) -> Frames:
    """Open ``source``: a video file any FFmpeg build decodes, or a folder of images ordered by
    the number in their names (``00000001.jpg``, ``frame_12.png``). Errors name the file."""
    from vvk.data.decode import probe
    from vvk.data.media import BadVideo

    path = Path(source)
    if path.is_dir():
        files = _numbered_images(path)
        frames = Frames(path, len(files), _image_size(files[0]), FOLDER_FPS, files=files)
    elif path.is_file():
        try:
            meta = probe(path)
        except BadVideo as e:
            raise VvkError(f"source={path}: unreadable video: {e}", params=["source"]) from None
        frames = Frames(path, meta.num_frames, (meta.height, meta.width), meta.fps, meta=meta)
    else:
        raise VvkError(f"source={path}: no such video file or folder of frames", params=["source"])
    return frames if max_frames is None else dataclasses.replace(frames, count=min(frames.count, max_frames))


def _numbered_images(folder: Path) -> tuple[Path, ...]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise VvkError(
            f"source={folder}: no images ({' '.join(IMAGE_SUFFIXES)}) in this folder", params=["source"]
        )
    numbered = []
    for image in images:
        found = _NUMBER.findall(image.stem)
        if not found:
            raise VvkError(
                f"source={folder}: {image.name} has no number in its name (frames are ordered by it)",
                params=["source"],
            )
        numbered.append((int(found[-1]), image))
    numbered.sort()
    for (a, first), (b, second) in zip(numbered, numbered[1:], strict=False):
        if a == b:
            raise VvkError(
                f"source={folder}: {first.name} and {second.name} are both frame {a}", params=["source"]
            )
    return tuple(image for _, image in numbered)


def _image_size(path: Path) -> tuple[int, int]:
    from vvk.data.images import ImageReadError, probe_image

    try:
        width, height = probe_image(path).size
    except ImageReadError as e:
        raise VvkError(f"{path}: cannot read this frame ({e})") from None
    return height, width


def iter_frames(frames: Frames) -> Iterator[np.ndarray]:
    """The ``frames.count`` frames of ``frames``, in order, as (H, W, 3) uint8 RGB arrays."""
    if frames.meta is None:
        from vvk.data.images import ImageReadError, load_rgb

        for path in frames.files[: frames.count]:
            try:
                yield load_rgb(path)
            except ImageReadError as e:
                raise VvkError(f"{path}: cannot read this frame ({e})") from None
        return
    import av

    from vvk.data.decode import every_frame
    from vvk.data.media import BadVideo, first_line

    done = 0
    try:
        for _, frame in every_frame(frames.path, meta=frames.meta):
            if done == frames.count:
                return
            done += 1
            yield frame
    except (av.FFmpegError, BadVideo) as e:
        raise VvkError(f"{frames.path}: decoding stopped after frame {done}: {first_line(e)}") from None


# ---------------------------------------------------------------------------------------------
# Tracking one video


@dataclass(frozen=True)
class TrackResult:
    """What ``track_video`` did. ``fps`` counts the tracker's own work (as got10k times it);
    ``seconds`` runs from the first frame read to the last file written, decoding included."""

    source: Path
    boxes: np.ndarray
    fps: float
    seconds: float
    device: str
    weights: str
    out: Path | None
    draw: Path | None

    def record(self) -> dict[str, Any]:
        """A JSON-ready record of the run, the boxes included."""
        return {
            "source": str(self.source),
            "frames": len(self.boxes),
            "boxes": [[round(float(v), 3) for v in box] for box in self.boxes],
            "fps": round(self.fps, 2),
            "seconds": round(self.seconds, 2),
            "device": self.device,
            "weights": self.weights,
            "out": None if self.out is None else str(self.out),
            "draw": None if self.draw is None else str(self.draw),
        }


def track_video(
    source: str | os.PathLike,
    box: str | Sequence[float],
    *,
    weights: str | os.PathLike,
    out: str | os.PathLike | None = None,
    draw: str | os.PathLike | None = None,
    device: str = "auto",
    max_frames: int | None = None,
    progress: Progress | None = None,
) -> TrackResult:
    """Track the target at ``box`` (x, y, w, h, OTB convention: 1-based pixels) in the first frame
    of ``source`` (see ``open_frames``) through its frames with the tracker ``weights`` names
    (``load_tracker``). Everything is checked before the first frame is decoded.

    Args:
        out: write the boxes there (``format_boxes``).
        draw: write the video with the box drawn there (``DRAW_FORMATS``), at the source's rate.
        max_frames: track the first frames only.
        progress: called with (frames done, frames in all) after each frame.
    """
    from vvk.methods.detection.predict import pick_device

    values = parse_box(box)
    frames = open_frames(source, max_frames=max_frames)
    try:
        check_box(values, frames.size)
    except VvkError as e:
        raise VvkError(f"{e.message} (the first frame of {frames.path})", params=e.params) from None
    out, draw = _check_outputs(frames, out, draw)
    where = pick_device(device)
    model, _ = load_tracker(weights, device=where)
    start = time.perf_counter()
    with ExitStack() as stack:
        on_frame = stack.enter_context(_drawing(draw, frames)) if draw is not None else None
        boxes, fps = _track(model, iter_frames(frames), values, frames.count, progress, on_frame)
    if out is not None:
        atomic_write_text(out, format_boxes(boxes))
    return TrackResult(
        frames.path, boxes, fps, time.perf_counter() - start, str(where), str(weights), out, draw
    )


def _check_outputs(frames: Frames, out, draw) -> tuple[Path | None, Path | None]:
    """``out`` and ``draw`` as paths, refused when they would overwrite the input or each other,
    land in the input folder, or (``draw``) have a suffix no container is written for."""
    out, draw = (None if p is None else Path(p) for p in (out, draw))
    if draw is not None and draw.suffix.lower() not in DRAW_FORMATS:
        raise VvkError(
            f"draw={draw}: write a video with one of the suffixes {', '.join(DRAW_FORMATS)}", params=["draw"]
        )
    source = os.path.realpath(frames.path)
    for name, path in (("out", out), ("draw", draw)):
        if path is None:
            continue
        if path.is_dir():
            raise VvkError(f"{name}={path}: is a folder, expected a file name", params=[name])
        real = os.path.realpath(path)
        if real == source or (frames.meta is None and real.startswith(source + os.sep)):
            raise VvkError(f"{name}={path}: would write into the input {frames.path}", params=[name])
    if out is not None and draw is not None and os.path.realpath(out) == os.path.realpath(draw):
        raise VvkError(f"out={out}, draw={draw}: the same file", params=["out", "draw"])
    return out, draw


def _track(
    model, frames: Iterator[np.ndarray], box, total: int, progress: Progress | None, on_frame=None
) -> tuple[np.ndarray, float]:
    """``tracker.track`` with a call per frame: (N, 4) boxes and the tracker's frames/s."""
    tracker = SiamFCTracker(model)
    boxes, busy = [], 0.0
    for i, frame in enumerate(frames):
        start = time.perf_counter()
        if i == 0:
            tracker.init(frame, box)
            boxes.append(np.asarray(box, dtype=np.float64))
        else:
            boxes.append(tracker.update(frame))
        busy += time.perf_counter() - start
        if on_frame is not None:
            on_frame(frame, boxes[-1])
        if progress is not None:
            progress(i + 1, max(total, i + 1))
    if not boxes:
        raise VvkError("frames: none decoded, nothing to track")
    return np.stack(boxes), len(boxes) / max(busy, 1e-9)


@contextmanager
def _drawing(path: Path, frames: Frames) -> Iterator[Callable[[np.ndarray, np.ndarray], None]]:
    """A ``write(frame, box)`` that encodes each frame with its box into ``path``: H.264 if PyAV
    has libx264, else MPEG-4 part 2; written whole or not at all."""
    import av

    rate = Fraction(frames.fps).limit_denominator(1000)
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format=DRAW_FORMATS[path.suffix.lower()]) as video:
        stream, count, shape = None, 0, None

        def write(frame: np.ndarray, box: np.ndarray) -> None:
            nonlocal stream, count, shape
            if stream is None:
                shape = frame.shape
                stream = _video_stream(video, rate, *_even(frame.shape[:2]))
            elif frame.shape != shape:
                raise VvkError(
                    f"{frames.path}: frame {count + 1} is {frame.shape[1]}×{frame.shape[0]}, the first "
                    f"{shape[1]}×{shape[0]}: a drawn video needs frames of one size"
                )
            image = draw_box(frame, box)
            height, width = _even(image.shape[:2])
            image = np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)))
            picture = av.VideoFrame.from_ndarray(image, format="rgb24")
            picture.pts, count = count, count + 1
            video.mux(stream.encode(picture))

        yield write
        if stream is not None:
            video.mux(stream.encode())  # flush the encoder's delayed frames


def _even(size: tuple[int, int]) -> tuple[int, int]:
    return size[0] + size[0] % 2, size[1] + size[1] % 2  # yuv420p halves both axes


def _video_stream(container, rate: Fraction, height: int, width: int):
    import av

    try:
        stream = container.add_stream("libx264", rate=rate)
        stream.codec_context.options = {"crf": "20", "preset": "veryfast"}
    except (av.codec.codec.UnknownCodecError, av.FFmpegError):
        stream = container.add_stream("mpeg4", rate=rate)
        stream.codec_context.options = {"qscale": "3"}
    stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
    stream.codec_context.time_base = Fraction(1) / rate  # frame i at pts i
    return stream


def draw_box(image: np.ndarray, box: np.ndarray, *, colour: tuple[int, int, int] = BOX_COLOUR) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 with the outline of ``box`` (x, y, w, h, 1-based) drawn
    inside its edges; a box without finite values draws nothing."""
    out = np.array(image, copy=True)
    if not np.isfinite(box).all():
        return out
    height, width = out.shape[:2]
    thick = max(2, round(min(height, width) / 180))
    x0, y0 = round(box[0] - 1), round(box[1] - 1)  # 1-based corner -> 0-based pixel
    x1, y1 = round(box[0] - 1 + box[2]), round(box[1] - 1 + box[3])  # end, exclusive
    for top, bottom, left, right in (
        (y0, y0 + thick, x0, x1), (y1 - thick, y1, x0, x1),  # top and bottom edges
        (y0, y1, x0, x0 + thick), (y0, y1, x1 - thick, x1),  # left and right edges
    ):  # fmt: skip
        top, bottom = max(top, 0), min(bottom, height)
        left, right = max(left, 0), min(right, width)
        if top < bottom and left < right:
            out[top:bottom, left:right] = colour
    return out


# ---------------------------------------------------------------------------------------------
# OTB: every sequence, and the scores of result folders


@dataclass(frozen=True)
class SequenceRun:
    """One sequence of ``track_otb``: ``status`` is ``tracked`` or ``skipped`` (its results file
    was there already); ``fps`` the tracker's frames/s (None when skipped)."""

    name: str
    frames: int
    status: str
    results: Path
    fps: float | None = None

    def record(self) -> dict[str, Any]:
        fps = None if self.fps is None else round(self.fps, 2)
        return {"sequence": self.name, "frames": self.frames, "status": self.status,
                "results": str(self.results), "fps": fps}  # fmt: skip


def track_otb(
    root: str | os.PathLike,
    *,
    weights: str | os.PathLike | SiamFC,
    out: str | os.PathLike,
    sequences: str | Sequence[str] | None = None,
    overwrite: bool = False,
    device: str = "auto",
    progress: Progress | None = None,
    on_sequence: Callable[[SequenceRun], None] | None = None,
) -> list[SequenceRun]:
    """Track every sequence of the OTB folder ``root`` from its first ground-truth box over its
    evaluated frames, and write ``<out>/<sequence>.txt`` (one line per frame, the first the
    ground truth) as each sequence ends. A sequence whose file exists is skipped unless
    ``overwrite``: an interrupted run continues where it stopped.

    Args:
        weights: what ``load_tracker`` reads, or a network to track with as it is (on its own
            device, ``device`` unused; the in-training evaluation of ``vvk.methods.tracking.train``).
        sequences: see ``sequence_names``; default every sequence under ``root``.
        progress: called with (frames done, frames in all) after each frame.
        on_sequence: called with each sequence's ``SequenceRun`` as it ends (or is skipped).
    """
    from vvk.methods.detection.predict import pick_device

    seqs = read_otb(root, sequence_names(sequences, root))
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise VvkError(f"out={folder}: is a file, expected a folder", params=["out"])
    real_root = os.path.realpath(root)
    if os.path.realpath(folder) == real_root or os.path.realpath(folder).startswith(real_root + os.sep):
        raise VvkError(f"out={folder}: inside the data folder root={root}", params=["out", "root"])
    if isinstance(weights, str | os.PathLike):
        model, _ = load_tracker(weights, device=pick_device(device))
    else:
        model = weights
    todo = [seq for seq in seqs if overwrite or not (folder / f"{seq.name}.txt").is_file()]
    total, done, runs = sum(len(seq) for seq in todo), 0, []
    for seq in seqs:
        results = folder / f"{seq.name}.txt"
        if seq not in todo:
            run = SequenceRun(seq.name, len(seq), "skipped", results)
        else:
            # (0, 0): the frame size only serves to check a given box; the ground truth's is fine
            frames = Frames(seq.image_dir, len(seq), (0, 0), FOLDER_FPS, files=seq.frames)
            step = None if progress is None else (lambda i, _n, base=done: progress(base + i, total))
            boxes, fps = _track(model, iter_frames(frames), seq.boxes[0], len(seq), step)
            atomic_write_text(results, format_boxes(boxes))
            done += len(seq)
            run = SequenceRun(seq.name, len(seq), "tracked", results, fps)
        runs.append(run)
        if on_sequence is not None:
            on_sequence(run)
    return runs
