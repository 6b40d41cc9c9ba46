"""Training pairs for a SiamFC tracker: two frames of one object track, cropped as SiamFC crops.

::

    from vvk.data.track_pairs import TrackPairs, collate_pairs

    data = TrackPairs("data/GOT-10k/train")   # or an OTB root, or a UCF101-24 root
    exemplar, search, info = data[0]          # (3, 127, 127), (3, 255, 255) float 0..1, a dict
    len(data.tracks), data.skipped            # the tracks read; the bad records left out, by kind

Tracks come from three layouts, recognised per root (``detect_layout``):

- OTB: ``<root>/<Seq>/img/NNNN.jpg`` + ``groundtruth_rect.txt``, read by ``vvk.data.otb.read_otb``
  with all its quirks; one track per target.
- GOT-10k, one split folder (``GOT-10k/train``): ``list.txt`` names the sequence folders, one per
  line; each holds ``00000001.jpg`` ... (frame ``i``, 0-based, is ``{i + 1:08d}.jpg``) and
  ``groundtruth.txt``, one comma-separated ``x,y,w,h`` line per frame, and optionally
  ``absence.label`` (1: the target is absent) and ``cover.label`` (0-8: visible eighths, 0 fully
  covered), one value per line. A frame is usable unless absent or fully covered, pytracking's
  ``target_visible = ~absence & (cover > 0)`` (``visionml/pytracking: ltr/dataset/got10k.py``,
  ``_read_target_visible`` and ``_get_frame_path``; ``got-10k/toolkit:
  got10k/datasets/got10k.py`` reads the same files: ``list.txt``, ``*.jpg``, ``np.loadtxt(
  groundtruth.txt, delimiter=',')``, ``<attribute>.label``).
- UCF101-24: ``pyannot_with_class_names.pkl`` (gurkirt/corrected-UCF101-Annots) beside the videos
  (``<root>/<Action>/<video>.<ext>`` or ``<root>/<video>.<ext>``); every action tube is a track,
  its frames decoded from the video. ``read_ucf24_annotations`` documents the pickle.

Boxes are ``x, y, w, h`` with 1-based pixel indices in all three (OTB's convention, which
siamfc-pytorch's ``_crop`` applies to GOT-10k too, and the UCF101-24 pickle's).

A pair: a track drawn with probability proportional to its usable frames; the exemplar frame
uniform among them, the search frame uniform among the others at most ``max_gap`` frames away
(the same frame when there is none). SiamFC pairs frames "at most T frames apart", T = 100 on
ILSVRC-VID; ``huanglianghua/siamfc-pytorch: siamfc/datasets.py`` (``Pair._sample_pair``) draws
them under 100 apart. Each frame is cropped as SiamFC crops it (``vvk.data.siamfc_crops``, the
crops the tracker takes too), with siamfc-pytorch's training augmentation (``siamfc/transforms.py``,
``SiamFCTransforms``: each crop ``RandomStretch(0.05)``, then a 239 random crop inside a 247 centre
crop, i.e. a shift of up to 4 pixels per axis), drawn separately for the two crops; no flip, no
colour change. Unlike there, the search crop stays 255 wide (siamfc-pytorch keeps 239; vvk's
SiamFC and label map take 255), ``info`` says where the target landed, and frames are not
filtered by box size or aspect (``Pair._filter``).

Bad records are left out and counted in ``TrackPairs.skipped`` (``SKIPPED`` lists the kinds),
never fatal. A frame that cannot be read when a pair is made is replaced by another pair, drawn
by the sample's own generator, and reported under ``info["skipped"]`` for the training loop, as
``vvk.data.detection`` does. Names a dataset gives never lead outside its root: a list line that
does (``..``, an absolute path, a link) is an error naming the line (``vvk.data.paths.inside``);
videos are looked up among the files under the root, so a pickle key cannot name another one.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from vvk.data.decoders import get_decoder
from vvk.data.images import ImageReadError, load_rgb
from vvk.data.media import VIDEO_EXTENSIONS, BadVideo, VideoMeta
from vvk.data.otb import read_boxes, read_otb
from vvk.data.paths import PathOutside, inside
from vvk.data.siamfc_crops import CONTEXT, EXEMPLAR_SIZE, MAX_STRETCH, MAX_TRANSLATE, SEARCH_SIZE, siamfc_crop
from vvk.errors import VvkError

logger = logging.getLogger("vvk.data")

MAX_GAP = 100  # SiamFC paper, ILSVRC-VID pairs; siamfc-pytorch datasets.py (rand_x - rand_z < 100)

GOT10K_FRAME = "{:08d}.jpg"  # of frame n + 1: pytracking ltr/dataset/got10k.py, _get_frame_path
UCF24_ANNOTATIONS = "pyannot_with_class_names.pkl"
# UCF101's frames are 320×240 and the tubes were drawn on them: gurkirt/3D-RetinaNet
# data/datasets.py, get_box, divides by 320 and 240. Copies resized since (the shared clips are
# 340×256) get their boxes scaled to the decoded frame.
UCF24_FRAME_SIZE = (240, 320)  # (height, width)

# What TrackPairs.skipped counts.
SKIPPED = {
    "bad_line": "a ground-truth or label line that does not parse (its frame is not used)",
    "bad_box": "a box with zero or negative width or height",
    "missing_frame": "a box whose frame file is missing",
    "missing_sequence": "a list.txt name without a folder or without groundtruth.txt",
    "bad_sequence": "an OTB folder that vvk.data.otb refuses (the error is logged)",
    "missing_video": "a UCF101-24 video without a file under the root",
    "bad_tube": "a UCF101-24 tube whose frame range or box count does not fit its video",
    "short_track": "a track with fewer than 2 usable frames (no pair to make)",
}


@dataclass(frozen=True, eq=False)
class Track:
    """One object through a sequence of frames.

    Attributes:
        name: ``Couple``, ``GOT-10k_Train_000001``, ``Basketball/v_Basketball_g01_c02#0`` (tube 0).
        source: the folder of its frames, or its video file.
        frame_files: the frame file of each row, in ``source`` (OTB); or empty, and then
        frame_format: the file name of frame number ``n`` is ``frame_format.format(n + 1)``
            (GOT-10k: no 1.4M names to keep in every loader worker); both empty for a video.
        frame_numbers: (N,) int64, each row's 0-based frame number in the sequence or video.
        boxes: (N, 4) float64 x, y, w, h in 1-based pixels; NaN where the line was bad.
        usable: (U,) int64, the rows a pair may use, in order.
        canvas: (height, width) of the frames the boxes were drawn on, when decoded frames may
            have another size (UCF101-24); None: the frames' own.
    """

    name: str
    source: Path
    frame_files: tuple[str, ...]
    frame_numbers: np.ndarray
    boxes: np.ndarray
    usable: np.ndarray
    canvas: tuple[int, int] | None = None
    frame_format: str = ""

    @property
    def is_video(self) -> bool:
        return not self.frame_files and not self.frame_format

    def frame_path(self, row: int) -> Path:
        """The image file of ``row`` (image tracks)."""
        if self.frame_files:
            return self.source / self.frame_files[row]
        return self.source / self.frame_format.format(int(self.frame_numbers[row]) + 1)


def detect_layout(root: str | os.PathLike) -> str:
    """``"got10k"``, ``"ucf24"`` or ``"otb"``: the layout of ``root`` (module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise VvkError(f"root={root}: no such folder", params=["root"])
    if (root / "list.txt").is_file():
        return "got10k"
    if (root / UCF24_ANNOTATIONS).is_file():
        return "ucf24"
    if any(_is_otb_folder(p) for p in root.iterdir()):
        return "otb"
    split = root / "train" / "list.txt"
    raise VvkError(
        f"root={root}: no tracking data (expected OTB folders <Seq>/img/ with groundtruth_rect.txt, "
        f"a GOT-10k split folder with list.txt, or UCF101-24's {UCF24_ANNOTATIONS})",
        hint=f"a GOT-10k download: give one split, root={split.parent}" if split.is_file() else None,
        params=["root"],
    )


def _is_otb_folder(path: Path) -> bool:
    try:
        names = os.listdir(path) if path.is_dir() else []
    except OSError:
        return False
    return "img" in names and any(n.startswith("groundtruth_rect") and n.endswith(".txt") for n in names)


def read_tracks(root: str | os.PathLike) -> tuple[str, list[Track], Counter[str]]:
    """The tracks under ``root``: (layout, tracks with at least 2 usable frames, counts).

    ``counts`` holds the ``SKIPPED`` kinds that occurred, and ``"absent"``: GOT-10k frames marked
    absent or fully covered (not bad, just not usable).
    """
    root = Path(root)
    layout = detect_layout(root)
    counts: Counter[str] = Counter()
    read = {"otb": _otb_tracks, "got10k": _got10k_tracks, "ucf24": _ucf24_tracks}[layout]
    tracks = []
    for track in read(root, counts):
        if len(track.usable) < 2:
            counts["short_track"] += 1
        else:
            tracks.append(track)
    return layout, tracks, counts


def _finish(
    name: str,
    source: Path,
    frame_files: tuple[str, ...],
    frame_numbers: np.ndarray,
    boxes: np.ndarray,
    available: np.ndarray,
    counts: Counter[str],
    canvas: tuple[int, int] | None = None,
    frame_format: str = "",
) -> Track:
    """A track whose usable rows are ``available`` ones with a positive box; counts the bad
    boxes of available rows (a missing or absent frame is counted as that, once)."""
    parsed = np.isfinite(boxes).all(axis=1)  # NaN rows: bad lines, already counted
    positive = parsed & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    counts["bad_box"] += int((parsed & ~positive & available).sum())
    usable = np.flatnonzero(positive & available).astype(np.int64)
    numbers = frame_numbers.astype(np.int64)
    return Track(name, source, frame_files, numbers, boxes, usable, canvas, frame_format)


def _otb_tracks(root: Path, counts: Counter[str]) -> list[Track]:
    try:
        sequences = read_otb(root)
    except VvkError:
        # read_otb refuses a whole root for one bad file; read folder by folder to skip only it
        # (each call scans the root again: quadratic, but only on this path)
        sequences = []
        for folder in sorted(p for p in root.iterdir() if _is_otb_folder(p)):
            try:
                sequences += read_otb(root, [folder.name])
            except VvkError as e:
                counts["bad_sequence"] += 1
                logger.warning("%s; sequence skipped", e)
    return [
        _finish(s.name, s.image_dir, s.frame_files, np.arange(len(s)), s.boxes, np.ones(len(s), bool), counts)
        for s in sequences
    ]


def _got10k_tracks(root: Path, counts: Counter[str]) -> list[Track]:
    list_file = root / "list.txt"
    lines = _lines(list_file)
    if lines is None:
        raise VvkError(f"{list_file}: cannot be read as text (expected one sequence folder per line)")
    tracks = []
    for k, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        try:
            folder = inside(root, name)
        except PathOutside as e:
            raise VvkError(f"{list_file}: line {k}: {e}") from None
        try:
            files = set(os.listdir(folder))
        except OSError:
            files = set()
        try:
            boxes = read_boxes(folder / "groundtruth.txt", skip_bad=True)
        except VvkError:  # missing or unreadable
            counts["missing_sequence"] += 1
            continue
        counts["bad_line"] += int((~np.isfinite(boxes).all(axis=1)).sum())
        present = np.array([GOT10K_FRAME.format(i + 1) in files for i in range(len(boxes))], dtype=bool)
        counts["missing_frame"] += int((~present).sum())
        visible = _visible(folder, files, len(boxes), counts)
        counts["absent"] += int((~visible).sum())
        numbers, available = np.arange(len(boxes)), present & visible
        tracks.append(_finish(name, folder, (), numbers, boxes, available, counts, frame_format=GOT10K_FRAME))
    return tracks


def _visible(folder: Path, files: set[str], n: int, counts: Counter[str]) -> np.ndarray:
    """(n,) bool: not absent and not fully covered; a bad label line hides its frame."""
    visible = np.ones(n, dtype=bool)
    for label, default, keep in (("absence.label", 0.0, np.equal), ("cover.label", 8.0, np.greater)):
        if label in files:
            values = _parse_values(_lines(folder / label), n, default, counts)
            visible &= keep(values, 0)  # NaN (bad line) compares False either way
    return visible


def _lines(path: Path) -> list[str] | None:
    """The file's lines without trailing blank ones; None when it cannot be read as text."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _parse_values(lines: list[str] | None, n: int, default: float, counts: Counter[str]) -> np.ndarray:
    """(n,) float64, one number per line; NaN for a bad line (counted) or an unreadable file;
    ``default`` past the file's end."""
    values = np.full(n, default)
    if lines is None:
        counts["bad_line"] += n
        return np.full(n, np.nan)
    for k, line in enumerate(lines[:n]):
        try:
            values[k] = float(line.replace(",", " ").split()[0])
        except (ValueError, IndexError):
            values[k] = np.nan
            counts["bad_line"] += 1
    return values


# What the UCF101-24 pickle may construct: numpy arrays, dtypes and scalars, nothing else (a
# pickle runs whatever callables it names; a dataset file should not be able to).
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which an annotation file has no use for")
        return super().find_class(module, name)


def read_ucf24_annotations(path: str | os.PathLike) -> dict[str, Any]:
    """The UCF101-24 annotations of ``pyannot_with_class_names.pkl`` (gurkirt/corrected-UCF101-
    Annots), loaded without running code (numpy arrays only). Its layout, as checked on the file::

        {"db": {"<Action>/<video>": {                # 3,194 videos, e.g. "Basketball/v_Basketball_g01_c02"
            "numf": frames in the video,             # numpy uint8 / uint16 scalar
            "label": class index,                    # into "classes"
            "annotations": [{                        # 1 to 10 tubes per video, 4,458 in all
                "sf": first frame (0-based), "ef": end frame (exclusive), "label": class index,
                "boxes": (ef - sf, 4) uint8 or uint16 array, one row per frame}]}},
         "trainvideos": ["<Action>/<video>", ...],   # 2,290; the others are the test split
         "classes": ["Basketball", ..., "WalkingWithDog"]}   # 24

    Box rows are x, y, w, h in 1-based pixels of the 320×240 UCF101 frames, not x1, y1, x2, y2:
    read as corners, 4,206 of the 4,458 tubes would have x2 < x1; as x, y, w, h every box fits
    the frame (x + w <= 320, y + h <= 240; w, h >= 8); and the authors' reader does ``box - 1``,
    then ``box[2] += box[0]``, ``box[3] += box[1]`` (gurkirt/3D-RetinaNet: data/datasets.py,
    ``get_box``). They are stored in the narrowest unsigned type: sum them in a wider one
    (uint8 189 + 95 is 28).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _ArraysOnly(f).load()
    except OSError as e:
        raise VvkError(f"{path}: {e.strerror or e}") from None
    except Exception as e:  # a damaged or foreign pickle raises anything from pickle or numpy
        raise VvkError(f"{path}: not a UCF101-24 annotation pickle ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("db"), dict):
        raise VvkError(f"{path}: expected a dict with 'db' (video name -> annotations)")
    return data


def ucf24_tubes(entry: Any, skipped: Counter[str]) -> list[tuple[int, Any, int, int, np.ndarray]]:
    """``(index, tube, start frame, end frame, boxes (N, 4) float64)`` of the tubes of one video
    of the UCF101-24 pickle (``db[video]``) that fit the video; the others counted as
    ``bad_tube``."""
    try:
        numf, tubes = int(entry["numf"]), list(entry["annotations"])
    except (KeyError, TypeError, ValueError):
        skipped["bad_tube"] += 1
        return []
    kept = []
    for index, tube in enumerate(tubes):
        try:
            sf, ef = int(tube["sf"]), int(tube["ef"])
            boxes = np.asarray(tube["boxes"], dtype=np.float64)  # before any sum: uint8 wraps
        except (KeyError, TypeError, ValueError):
            skipped["bad_tube"] += 1
            continue
        if not 0 <= sf < ef <= numf or boxes.shape != (ef - sf, 4):
            skipped["bad_tube"] += 1
            continue
        kept.append((index, tube, sf, ef, boxes))
    return kept


def _ucf24_tracks(root: Path, counts: Counter[str]) -> list[Track]:
    db = read_ucf24_annotations(root / UCF24_ANNOTATIONS)["db"]
    videos = _video_files(root)
    tracks = []
    for key in sorted(str(k) for k in db):
        video = videos.get(key) or videos.get(key.rsplit("/", 1)[-1])
        if video is None:
            counts["missing_video"] += 1
            continue
        for k, _, sf, ef, boxes in ucf24_tubes(db[key], counts):
            rows = np.arange(sf, ef)
            available = np.ones(len(rows), dtype=bool)
            tracks.append(_finish(f"{key}#{k}", video, (), rows, boxes, available, counts, UCF24_FRAME_SIZE))
    return tracks


def _video_files(root: Path) -> dict[str, Path]:
    """``{"<Action>/<stem>": path, "<stem>": path}`` for the videos in ``root`` and its folders."""
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir():
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                stem, ext = os.path.splitext(sub.name)
                if ext.lower() in VIDEO_EXTENSIONS and sub.is_file():
                    found.setdefault(f"{entry.name}/{stem}", Path(sub.path))
        else:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in VIDEO_EXTENSIONS and entry.is_file():
                found.setdefault(stem, Path(entry.path))
    return found


class _Unreadable(Exception):
    def __init__(self, path: Path, kind: str, detail: str = ""):
        super().__init__(f"{path}: {kind}")
        self.record = {"path": str(path), "problem": kind, "detail": detail}


class TrackPairs(Dataset):
    """SiamFC training pairs ``(exemplar (3, E, E), search (3, S, S), info)``, float 0..1, from the
    object tracks under ``root`` (module docstring).

    Args:
        root: an OTB root, a GOT-10k split folder or a UCF101-24 root.
        exemplar_size, search_size: crop sides in pixels.
        context: the exemplar region's margin: ``p = context·(w + h)`` (``vvk.data.siamfc_crops``).
        max_gap: at most this many frames between the exemplar and the search frame.
        pairs_per_epoch: the dataset's length; default the number of tracks.
        seed: with the sample key, seeds each sample's own generator.
        max_stretch: crop sides divided by ``1 + U(-max_stretch, max_stretch)`` (0: off).
        max_translate: crop windows moved by up to this many output pixels per axis (0: off).
        decoder: the video decoder for UCF101-24 (``vvk.data.decoders.get_decoder``).
        max_retries: pairs drawn to replace one with an unreadable frame, before a ``VvkError``.

    ``info``: ``"track"`` (name), ``"index"``, ``"frames"`` (2,) int64 frame numbers (0-based),
    ``"paths"`` (the two frame files, or the video twice), ``"boxes"`` ``BoundingBoxes`` (2, 4)
    XYWH in the frames' pixels, ``"exemplar_box"`` / ``"search_box"`` ``BoundingBoxes`` (1, 4)
    XYWH: where the target is in each crop (the crop centre, unless translated), and
    ``"skipped"``: records of unreadable files met on the way (``vvk.data.media.PROBLEMS`` kinds).

    Keys: an int ``i`` draws with ``seed, i``; ``(i, draw)`` (the training loop's sampler) with
    ``seed, draw``, as ``DetectionDataset`` does. ``i`` must be in range; the track is drawn, not
    indexed. Attributes: ``layout``, ``tracks``, ``skipped`` (a Counter of ``SKIPPED`` kinds) and
    ``absent`` (GOT-10k frames marked absent or fully covered).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        exemplar_size: int = EXEMPLAR_SIZE,
        search_size: int = SEARCH_SIZE,
        context: float = CONTEXT,
        max_gap: int = MAX_GAP,
        pairs_per_epoch: int | None = None,
        seed: int = 0,
        max_stretch: float = MAX_STRETCH,
        max_translate: int = MAX_TRANSLATE,
        decoder: str = "auto",
        max_retries: int = 10,
    ):
        if exemplar_size < 1 or search_size < exemplar_size or context < 0 or max_gap < 0:
            sizes = f"exemplar_size={exemplar_size}, search_size={search_size}"
            raise ValueError(f"{sizes}, context={context}, max_gap={max_gap}")
        if not 0 <= max_stretch < 1 or max_translate < 0:
            raise ValueError(f"max_stretch={max_stretch}, max_translate={max_translate}")
        self.root = Path(root)
        self.layout, self.tracks, counts = read_tracks(self.root)
        self.skipped = Counter({k: n for k, n in counts.items() if k in SKIPPED and n})
        self.absent = counts["absent"]
        if self.skipped:
            shown = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
            logger.warning("%s: skipped %d record(s): %s", self.root, sum(self.skipped.values()), shown)
        if not self.tracks:
            raise VvkError(f"root={self.root}: no track with 2 usable frames", params=["root"])
        if pairs_per_epoch is not None and pairs_per_epoch < 1:
            raise VvkError(f"pairs_per_epoch={pairs_per_epoch}: must be positive", params=["pairs_per_epoch"])
        self.exemplar_size, self.search_size, self.context = exemplar_size, search_size, context
        self.max_gap, self.seed, self.max_retries = max_gap, seed, max_retries
        self.max_stretch, self.max_translate = max_stretch, max_translate
        self.pairs_per_epoch = pairs_per_epoch or len(self.tracks)
        self.weights = np.array([len(t.usable) for t in self.tracks], dtype=np.float64)
        self.decoder = get_decoder(decoder) if self.layout == "ucf24" else None
        self._metas: dict[Path, VideoMeta] = {}  # per process: probed on first use

    def __len__(self) -> int:
        return self.pairs_per_epoch

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, dict[str, Any]]:
        index, draw = (key, key) if isinstance(key, int | np.integer) else key
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        rng = np.random.default_rng([self.seed, int(draw)])
        skipped: list[dict[str, str]] = []
        weights = self.weights.copy()
        for _ in range(self.max_retries + 1):
            t = int(rng.choice(len(weights), p=weights / weights.sum()))
            track = self.tracks[t]
            rows = self._rows(track, rng)
            try:
                frames, paths = self._read(track, rows)
            except _Unreadable as e:
                skipped.append(e.record)
                weights[t] = 0  # not this track again for this sample
                if not weights.any():
                    break
                continue
            return self._pair(track, rows, frames, paths, rng, index, skipped)
        shown = skipped[-1]["path"] if skipped else self.root
        raise VvkError(f"{len(skipped)} pair(s) in a row could not be read, last: {shown}")

    def _rows(self, track: Track, rng: np.random.Generator) -> np.ndarray:
        """(2,) rows: exemplar uniform over usable rows, search uniform over the others within
        ``max_gap`` frames of it (the exemplar's own row when there is none)."""
        numbers = track.frame_numbers[track.usable]
        i = int(rng.integers(len(numbers)))
        near = np.flatnonzero(np.abs(numbers - numbers[i]) <= self.max_gap)
        near = near[near != i]
        j = int(near[rng.integers(len(near))]) if len(near) else i
        return track.usable[[i, j]]

    def _read(self, track: Track, rows: np.ndarray) -> tuple[list[Tensor], list[str]]:
        """The two frames, (3, H, W) float 0..1, and their paths; ``_Unreadable`` if one fails."""
        if track.is_video:
            pixels = self._decode(track.source, track.frame_numbers[rows])
            paths = [str(track.source)] * 2
        else:
            paths = [str(track.frame_path(r)) for r in rows]
            first = _load(paths[0])
            pixels = [first, first if rows[0] == rows[1] else _load(paths[1])]
        return [torch.from_numpy(p).permute(2, 0, 1).float().div_(255) for p in pixels], paths

    def _decode(self, path: Path, numbers: np.ndarray) -> np.ndarray:
        try:
            meta = self._metas.get(path)
            if meta is None:
                meta = self._metas[path] = self.decoder.probe(path)
            last = int(numbers.max())
            if last >= meta.num_frames:
                raise BadVideo("too_short", f"frame {last + 1} of {meta.num_frames}")
            # the middle of each frame's time on screen: robust to rounding of the timestamps
            return self.decoder.frames(path, (numbers + 0.5) / meta.fps, meta=meta)  # (2, H, W, 3)
        except BadVideo as e:
            raise _Unreadable(path, e.kind, e.detail) from None

    def _pair(
        self,
        track: Track,
        rows: np.ndarray,
        frames: list[Tensor],
        paths: list[str],
        rng: np.random.Generator,
        index: int,
        skipped: list[dict[str, str]],
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        crops, targets, boxes = [], [], []
        for frame, row, size in zip(frames, rows, (self.exemplar_size, self.search_size), strict=True):
            box = _frame_box(track, int(row), tuple(frame.shape[-2:]))
            stretch = 1 + rng.uniform(-self.max_stretch, self.max_stretch)
            shift = rng.integers(-self.max_translate, self.max_translate + 1, size=2)
            crop, target = siamfc_crop(
                frame, box, out_size=size, exemplar_size=self.exemplar_size, context=self.context,
                stretch=stretch, shift=shift,
            )  # fmt: skip
            crops.append(crop)
            targets.append(target)
            boxes.append([box[0] - 1, box[1] - 1, box[2], box[3]])  # 1-based -> torchvision's
        e, s = self.exemplar_size, self.search_size
        info = {
            "track": track.name,
            "index": index,
            "frames": torch.from_numpy(track.frame_numbers[rows]),
            "paths": paths,
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYWH", canvas_size=tuple(frames[0].shape[-2:])),
            "exemplar_box": tv_tensors.BoundingBoxes(targets[0][None], format="XYWH", canvas_size=(e, e)),
            "search_box": tv_tensors.BoundingBoxes(targets[1][None], format="XYWH", canvas_size=(s, s)),
            "skipped": skipped,
        }
        return crops[0], crops[1], info


def _load(path: str) -> np.ndarray:
    try:
        return load_rgb(path)  # the stored pixels: the boxes were drawn on them
    except ImageReadError as e:
        reason = str(e)
        raise _Unreadable(Path(path), "missing" if reason == "missing" else "not_image", reason) from None


def _frame_box(track: Track, row: int, frame_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """The row's box (x, y, w, h, 1-based) on a frame of ``frame_hw``, scaled from the canvas
    it was drawn on: the pixel edges, x - 1 .. x - 1 + w, scale with the frame."""
    x, y, w, h = (float(v) for v in track.boxes[row])
    if track.canvas is None or track.canvas == frame_hw:
        return x, y, w, h
    sy, sx = frame_hw[0] / track.canvas[0], frame_hw[1] / track.canvas[1]
    return (x - 1) * sx + 1, (y - 1) * sy + 1, w * sx, h * sy


def collate_pairs(samples: Sequence[tuple[Tensor, Tensor, dict[str, Any]]]) -> dict[str, Any]:
    """A training batch: ``{"exemplar": (B, 3, E, E), "search": (B, 3, S, S), "info": [dict],
    "skipped": [record]}``; the skipped-file records of every sample are taken out of the infos."""
    exemplars = torch.stack([z for z, _, _ in samples])  # B x (3, E, E) -> (B, 3, E, E)
    searches = torch.stack([x for _, x, _ in samples])  # B x (3, S, S) -> (B, 3, S, S)
    infos, skipped = [], []
    for _, _, info in samples:
        info = dict(info)
        skipped.extend(info.pop("skipped", ()))
        infos.append(info)
    return {"exemplar": exemplars, "search": searches, "info": infos, "skipped": skipped}
