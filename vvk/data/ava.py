"""Person-box action annotations on key frames: AVA's CSV files and UCF101-24's pickle, as one
structure (``Annotations``: per key frame, normalised boxes with their action ids).

::

    from vvk.data.ava import read_ava, read_ucf24

    ann = read_ava("ava_val_v2.2.csv", label_map="ava_action_list_v2.2.pbtxt",
                   excluded="ava_val_excluded_timestamps_v2.2.csv")
    ann.frames[0]         # KeyFrame(video_id, timestamp, boxes (N, 4), actions, person_ids)
    ann.skipped           # Counter of the rows and key frames left out, by reason (``SKIPPED``)
    ucf = read_ucf24("pyannot_with_class_names.pkl", fps={"v_Biking_g01_c01": 25.0})

AVA (https://research.google.com/ava/download.html) ships:

- annotations, one row per person box and action, no header:
  ``video_id, timestamp, x1, y1, x2, y2, action_id[, person_id]``; the timestamp in seconds on
  the video's clock (key frames at whole seconds, 902..1798 in AVA's movies), the box normalised
  to the frame. A person doing three actions is three rows with the same box; they become one box
  with three action ids (grouped by video, timestamp and box, as the AVA evaluator's ground
  truth counts one box per action, and SlowFast's ``ava_helper`` groups them);
- a label map, ``ava_action_list_v2.2.pbtxt`` (``item { name: "..." id: N }`` blocks; the 2018
  one spells them ``label { name: "..." label_id: N }``), or here a plain CSV ``id,name``;
- the excluded timestamps, ``video_id,timestamp`` rows: key frames left out of training and
  evaluation.

What is left out is counted, by reason, in ``Annotations.skipped`` (``SKIPPED``): rows whose
action the label map does not list (the AVA evaluator skips them too: ``class_whitelist`` in
ActivityNet's ``Evaluation/get_ava_performance.py::read_csv``), boxes outside 0..1 or empty,
negative timestamps, excluded key frames, and, once the videos are known (``match_videos``),
key frames of missing videos or past a video's end. A row that does not parse (a field missing,
a word where a number goes) is a ``VvkError`` naming the file, line and field.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vvk.errors import VvkError

# What Annotations.skipped counts: AVA rows (a box and one action) or UCF101-24 tube boxes for
# the first four reasons, tubes for bad_tube, key frames for missing_video and past_end.
SKIPPED = {
    "unknown_action": "an action id the label map does not list",
    "bad_box": "a box outside 0..1, or with x2 <= x1 or y2 <= y1",
    "bad_timestamp": "a negative timestamp",
    "excluded": "a key frame of the excluded-timestamps file",
    "bad_tube": "a UCF101-24 tube whose frame range or box count does not fit its video",
    "missing_video": "a key frame of a video that is not among the videos",
    "past_end": "a key frame at or past the end of its video",
}
AVA_COLUMNS = ("video_id", "timestamp", "x1", "y1", "x2", "y2", "action_id", "person_id")
# UCF101-24's tubes were drawn on the 320×240 UCF101 frames (vvk.data.track_pairs).
UCF24_WIDTH, UCF24_HEIGHT = 320, 240
_LABEL_BLOCK = re.compile(r"\w+\s*\{([^{}]*)\}")
_LABEL_NAME = re.compile(r"\bname\s*:\s*\"((?:[^\"\\]|\\.)*)\"")
_LABEL_ID = re.compile(r"\b(?:label_)?id\s*:\s*(-?\d+)")


@dataclass(frozen=True, eq=False)
class KeyFrame:
    """The annotated people of one key frame.

    Attributes:
        video_id: the video's file name without its extension.
        timestamp: seconds on the video's clock (0 at its first frame).
        boxes: (N, 4) float64 ``x1, y1, x2, y2`` normalised to the frame.
        actions: per box, its action ids (sorted; one for single-label annotations).
        person_ids: per box, the person (AVA's ``person_id``, UCF101-24's tube; -1 if not given).
    """

    video_id: str
    timestamp: float
    boxes: np.ndarray
    actions: tuple[tuple[int, ...], ...]
    person_ids: tuple[int, ...]

    @property
    def key(self) -> tuple[str, float]:
        return self.video_id, self.timestamp


@dataclass(frozen=True)
class Annotations:
    """Key frames with their boxes, and what they mean.

    Attributes:
        frames: sorted by video id and timestamp.
        classes: action id -> name, in id order.
        multi_label: a box may do several actions (AVA: sigmoid per action) or exactly one
            (UCF101-24: softmax over actions).
        source: the file(s) they came from, for messages.
        skipped: what was left out, by reason (``SKIPPED``).
    """

    frames: list[KeyFrame]
    classes: dict[int, str]
    multi_label: bool
    source: str
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def num_boxes(self) -> int:
        return sum(len(f.boxes) for f in self.frames)

    def split(self, *, fraction: float, seed: int) -> tuple[Annotations, Annotations]:
        """(first, second): each key frame drawn into ``first`` with probability ``fraction``
        (seeded), ``second`` the rest. Neighbouring frames of one video land on both sides,
        so this only checks the mechanics of a protocol, never a generalisation."""
        take = np.random.default_rng(seed).random(len(self.frames)) < fraction
        first = [f for f, t in zip(self.frames, take, strict=True) if t]
        second = [f for f, t in zip(self.frames, take, strict=True) if not t]
        return replace(self, frames=first), replace(self, frames=second)


def match_videos(annotations: Annotations, durations: Mapping[str, float]) -> Annotations:
    """The key frames whose video is known (``durations``: video id -> seconds) and that lie
    before its end; the others counted as ``missing_video`` or ``past_end``."""
    kept, skipped = [], Counter(annotations.skipped)
    for frame in annotations.frames:
        duration = durations.get(frame.video_id)
        if duration is None:
            skipped["missing_video"] += 1
        elif frame.timestamp >= duration:
            skipped["past_end"] += 1
        else:
            kept.append(frame)
    return replace(annotations, frames=kept, skipped=skipped)


# ---- AVA --------------------------------------------------------------------------------


def read_ava(
    path: str | os.PathLike,
    *,
    label_map: str | os.PathLike | None = None,
    excluded: str | os.PathLike | None = None,
) -> Annotations:
    """AVA annotations (module docstring). Without ``label_map`` every action id found is a
    class, named by its number. An optional header line is skipped."""
    path = Path(path)
    classes = read_label_map(label_map) if label_map is not None else None
    excluded_keys = read_excluded(excluded) if excluded is not None else set()
    skipped: Counter[str] = Counter()
    # (video, timestamp) -> box corners -> [action ids, person id]
    found: dict[tuple[str, float], dict[tuple[float, ...], tuple[set[int], int]]] = {}
    for row, (number, cells) in enumerate(csv_rows(path)):
        if len(cells) not in (7, 8):
            raise VvkError(f"{path}:{number}: expected {', '.join(AVA_COLUMNS)}, got {len(cells)} fields")
        if row == 0 and not is_number(cells[1]):
            continue  # a header line
        time, *box = (
            parse_number(path, number, name, cells[i]) for i, name in enumerate(AVA_COLUMNS[1:6], 1)
        )
        action = _integer(path, number, "action_id", cells[6])
        person = _integer(path, number, "person_id", cells[7]) if len(cells) == 8 else -1
        key = (cells[0], time)
        reason = _row_problem(time, box, action, classes, key in excluded_keys)
        if reason:
            skipped[reason] += 1
            continue
        actions, _ = found.setdefault(key, {}).setdefault(tuple(box), (set(), person))
        actions.add(action)
    if classes is None:
        ids = sorted({a for boxes in found.values() for actions, _ in boxes.values() for a in actions})
        classes = {i: str(i) for i in ids}
    frames = [
        KeyFrame(
            video_id=video,
            timestamp=time,
            boxes=np.array(list(boxes), dtype=np.float64).reshape(-1, 4),
            actions=tuple(tuple(sorted(a)) for a, _ in boxes.values()),
            person_ids=tuple(p for _, p in boxes.values()),
        )
        for (video, time), boxes in sorted(found.items())
    ]
    return Annotations(frames, classes, multi_label=True, source=str(path), skipped=skipped)


def _row_problem(
    time: float, box: list[float], action: int, classes: Mapping[int, str] | None, excluded: bool
) -> str | None:
    if classes is not None and action not in classes:
        return "unknown_action"
    if not valid_box(box):
        return "bad_box"
    if time < 0:
        return "bad_timestamp"
    return "excluded" if excluded else None


def valid_box(box: Iterable[float]) -> bool:
    """``x1, y1, x2, y2`` inside 0..1 with a positive width and height."""
    x1, y1, x2, y2 = box
    return 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1


def read_label_map(path: str | os.PathLike) -> dict[int, str]:
    """Action id -> name from a ``.pbtxt`` label map as AVA ships it, or a CSV of ``id,name``
    rows (an optional header line); in id order."""
    path = Path(path)
    text = _read_text(path, "label map")
    if "{" in text:
        classes = _pbtxt_labels(path, text)
    else:
        classes = {}
        for number, cells in csv_rows(path, text):
            if number == 1 and not is_number(cells[0]):
                continue  # a header line
            if len(cells) < 2 or not cells[1]:
                raise VvkError(f"{path}:{number}: expected id,name, got {len(cells)} field(s)")
            _add_label(path, number, classes, _integer(path, number, "id", cells[0]), cells[1])
    if not classes:
        raise VvkError(f"{path}: no labels in the label map")
    return dict(sorted(classes.items()))


def _pbtxt_labels(path: Path, text: str) -> dict[int, str]:
    classes: dict[int, str] = {}
    for block in _LABEL_BLOCK.finditer(text):
        number = text.count("\n", 0, block.start()) + 1
        name, ids = _LABEL_NAME.search(block.group(1)), _LABEL_ID.findall(block.group(1))
        if name is None or len(ids) != 1:
            raise VvkError(f'{path}:{number}: a label block needs one name: "..." and one id: N')
        _add_label(path, number, classes, int(ids[0]), name.group(1))
    return classes


def _add_label(path: Path, number: int, classes: dict[int, str], action: int, name: str) -> None:
    if action in classes:
        raise VvkError(f"{path}:{number}: action id {action} is listed twice")
    classes[action] = name


def read_excluded(path: str | os.PathLike) -> set[tuple[str, float]]:
    """The ``(video_id, timestamp)`` key frames of an excluded-timestamps file."""
    path = Path(path)
    keys = set()
    for number, cells in csv_rows(path):
        if len(cells) != 2:
            raise VvkError(f"{path}:{number}: expected video_id,timestamp, got {len(cells)} fields")
        keys.add((cells[0], parse_number(path, number, "timestamp", cells[1])))
    return keys


# ---- UCF101-24 ---------------------------------------------------------------------------


def read_ucf24(path: str | os.PathLike, *, fps: Mapping[str, float]) -> Annotations:
    """Every annotated frame of UCF101-24's ``pyannot_with_class_names.pkl`` as a key frame at
    its centre, ``(frame + 0.5) / fps`` seconds (robust to rounding of frame times), one box
    per tube through it, labelled with the tube's class (ids: indices into its ``classes``).

    Args:
        fps: video id -> frame rate, for the videos at hand (the pickle has no times); the
            others are counted as ``missing_video`` (key frames).
    """
    from vvk.data.track_pairs import read_ucf24_annotations

    data = read_ucf24_annotations(path)
    names = [str(c) for c in data.get("classes", [])]
    skipped: Counter[str] = Counter()
    found: dict[tuple[str, float], list[tuple[np.ndarray, int, int]]] = {}
    for key in sorted(str(k) for k in data["db"]):
        video_id = key.rsplit("/", 1)[-1]
        tubes = _ucf24_tubes(data["db"][key], skipped)
        if video_id not in fps:
            skipped["missing_video"] += len({f for sf, ef, _, _ in tubes for f in range(sf, ef)})
            continue
        for person, (sf, ef, label, boxes) in enumerate(tubes):
            if not 0 <= label < len(names):
                skipped["unknown_action"] += ef - sf
                continue
            for frame, box in zip(range(sf, ef), _ucf24_normalised(boxes), strict=True):
                if not valid_box(box):
                    skipped["bad_box"] += 1
                    continue
                found.setdefault((video_id, (frame + 0.5) / fps[video_id]), []).append((box, label, person))
    frames = [
        KeyFrame(
            video_id=video,
            timestamp=time,
            boxes=np.stack([b for b, _, _ in rows]),
            actions=tuple((label,) for _, label, _ in rows),
            person_ids=tuple(p for _, _, p in rows),
        )
        for (video, time), rows in sorted(found.items())
    ]
    classes = dict(enumerate(names))
    return Annotations(frames, classes, multi_label=False, source=str(path), skipped=skipped)


def _ucf24_tubes(entry, skipped: Counter[str]) -> list[tuple[int, int, int, np.ndarray]]:
    """(start frame, end frame, label, boxes) of a video's tubes that fit it."""
    from vvk.data.track_pairs import ucf24_tubes

    kept = []
    for _, tube, sf, ef, boxes in ucf24_tubes(entry, skipped):
        try:
            label = int(tube["label"])
        except (KeyError, TypeError, ValueError):
            skipped["bad_tube"] += 1
            continue
        kept.append((sf, ef, label, boxes))
    return kept


def _ucf24_normalised(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) ``x, y, w, h`` in 1-based pixels of 320×240 -> normalised ``x1, y1, x2, y2``:
    pixel x (1-based) covers [x - 1, x), so a box spans [x - 1, x - 1 + w)."""
    x, y, w, h = (boxes[:, i] for i in range(4))
    scale = np.array([UCF24_WIDTH, UCF24_HEIGHT] * 2, dtype=np.float64)
    return np.stack([x - 1, y - 1, x - 1 + w, y - 1 + h], axis=1) / scale


# ---- reading ----------------------------------------------------------------------------


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise VvkError(f"{what} {path}: cannot read ({reason})") from None


def csv_rows(
    path: Path, text: str | None = None, *, what: str = "annotations"
) -> Iterable[tuple[int, list[str]]]:
    """(line number, stripped cells) of the CSV rows that are not blank or ``#`` comments; a file
    that cannot be read is an error naming it as ``what``."""
    text = _read_text(path, what) if text is None else text
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [cell.strip() for cell in row]
        if any(cells) and not cells[0].startswith("#"):
            yield number, cells


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def parse_number(path: Path, line: int, name: str, cell: str) -> float:
    """``cell`` as a finite float, or an error naming the file, line and field."""
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise VvkError(f"{path}:{line}: field '{name}' is not a number: {cell!r}")
    return value


def _integer(path: Path, line: int, name: str, cell: str) -> int:
    try:
        return int(cell)
    except ValueError:
        raise VvkError(f"{path}:{line}: field '{name}' is not an integer: {cell!r}") from None
