"""Where the videos of a dataset are listed: a folder, a CSV/TSV list, video files, or several.

- A folder is flat (no labels) or ``class_name/video.ext`` (the Kinetics/UCF101 layout; class
  indices follow the sorted class names).
- A list file has one video per line: ``path[,label[,start,end]]``, comma- or tab-separated,
  an optional header line. Labels are integers or class names; ``start``/``end`` (seconds)
  restrict the clips to a segment.
- A caption file has ``video_id, caption, start, end`` columns (ActivityNet Captions style,
  tab-separated with a header, extra columns ignored).
- ``open_source`` also takes a video file, and a sequence of any of these (the paths a command
  reads from stdin with ``-``).

Where a list's paths may point. A list is its author's statement of which files to read; it
may come with a downloaded dataset, so:

- A relative path is relative to the list's folder (or to ``root`` when given) and must stay
  inside it: no ``..`` or linked folder may lead out (``vvk.data.paths.inside``), so a list
  shipped in a dataset reads only that dataset's files. A link to a file is that folder's
  file, as when the folder itself is scanned: a folder of links, with or without a list, is
  the usual way to make a subset of a large dataset without copying it.
- An absolute path is read as written: generated lists (``find "$PWD"/videos ...``, PySlowFast's
  CSVs) name files on other disks that way, and one written down in full is a deliberate choice,
  not an accident of where the list was unpacked.
- With ``root``, every path, absolute ones included, must resolve inside ``root``: pass it for a
  list you did not write, or when the videos live elsewhere than the list (UCF101's split files
  name ``class/video.avi`` relative to the video folder).

A path that breaks the rule is not an error: the line is skipped and kept in
``VideoSource.skipped`` (problem ``"outside"``), and datasets and ``vvk data check`` report it
with the other bad files. Malformed lines are a ``VvkError`` naming the file, line and field.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vvk.data.media import MEDIA_EXTENSIONS
from vvk.data.paths import PathOutside, inside
from vvk.data.samplers import Caption
from vvk.errors import VvkError

LIST_SUFFIXES = (".csv", ".tsv", ".txt")

Data = str | os.PathLike | Sequence[str | os.PathLike]
"""What a ``data`` parameter takes: a folder, a list file, a video file, or a sequence of those."""


@dataclass(frozen=True)
class VideoItem:
    """One entry of a dataset: a file, its class index (-1 without labels), an optional segment."""

    path: str
    label: int = -1
    start: float | None = None
    end: float | None = None

    @property
    def video_id(self) -> str:
        return Path(self.path).stem


@dataclass
class VideoSource:
    """The videos, the class names (by label) and the list lines skipped, as bad-file records
    (``{"path", "problem", "detail"}``, the form ``datasets.BadFiles`` reports)."""

    items: list[VideoItem]
    classes: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def find_media(root: str | os.PathLike) -> list[Path]:
    """Media files under ``root`` (recursively, sorted, by extension; hidden entries skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise VvkError(f"{root}: not a folder")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            Path(folder, f)
            for f in files
            if not f.startswith(".") and Path(f).suffix.lower() in MEDIA_EXTENSIONS
        ]
    return sorted(found)


def scan_folder(root: str | os.PathLike) -> VideoSource:
    """A flat folder (labels -1) or one subfolder per class (labels by sorted class name).

    Paths are absolute but keep the folder's own spelling: a folder that is a link is not
    replaced by its target in what vvk prints."""
    folder = Path(root).absolute()
    files = find_media(folder)
    if not files:
        raise VvkError(f"{root}: no video files found")
    top = [f for f in files if f.parent == folder]
    if top:  # any file at the top level: the folder is one unlabeled collection
        return VideoSource([VideoItem(str(f)) for f in files])
    classes = sorted({f.relative_to(folder).parts[0] for f in files})
    label_of = {name: i for i, name in enumerate(classes)}
    items = [VideoItem(str(f), label_of[f.relative_to(folder).parts[0]]) for f in files]
    return VideoSource(items, classes)


def read_list(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> VideoSource:
    """A CSV/TSV list of ``path[,label[,start,end]]`` lines.

    Relative paths resolve against ``root`` (default: the list's folder) and must stay inside
    it; absolute ones are read as written unless ``root`` is given. Lines that break this are
    skipped, in ``VideoSource.skipped`` (see the module docstring for why).
    """
    path = Path(path)
    rows = _read_rows(path)
    if rows and rows[0] and rows[0][0].strip().lower() in ("path", "video", "file", "filename"):
        rows = rows[1:]
    parsed: list[tuple[int, str, str | None, float | None, float | None]] = []
    for line, row in enumerate(rows, start=1):
        row = [cell.strip() for cell in row]
        if not row or not row[0] or row[0].startswith("#"):
            continue
        if len(row) not in (1, 2, 4):
            raise VvkError(f"{path}:{line}: expected path[,label[,start,end]], got {len(row)} fields")
        label = row[1] if len(row) > 1 and row[1] != "" else None
        start, end = (
            (_seconds(path, line, "start", row[2]), _seconds(path, line, "end", row[3]))
            if len(row) == 4
            else (None, None)
        )
        if start is not None and end is not None and end <= start:
            raise VvkError(f"{path}:{line}: field 'end' ({end}) must be after 'start' ({start})")
        parsed.append((line, row[0], label, start, end))
    if not parsed:
        raise VvkError(f"{path}: no videos listed")
    # Labels come from every line, skipped ones too: a class keeps its index whatever is skipped.
    labels, classes = _label_indices(path, [(line, label) for line, _, label, _, _ in parsed])
    base = Path(root).absolute() if root is not None else path.absolute().parent
    source = VideoSource([], classes)
    for (line, video, _, start, end), label in zip(parsed, labels, strict=True):
        try:
            if root is not None or not os.path.isabs(video):  # absolute under root: relative to it
                name = os.path.relpath(video, base) if os.path.isabs(video) else video
                inside(base, name, file_links=True)
        except PathOutside as e:
            detail = f"{path.name} line {line}: {e.reason}, outside {base}"
            source.skipped.append({"path": video, "problem": "outside", "detail": detail})
            continue
        source.items.append(VideoItem(os.path.normpath(base / video), label, start, end))
    return source


def read_captions(path: str | os.PathLike) -> dict[str, list[Caption]]:
    """``{video_id: [Caption, ...]}`` from an ActivityNet-style caption file."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise VvkError(f"{path}: empty caption file")
    header = [cell.strip().lower() for cell in rows[0]]
    missing = [name for name in ("video_id", "caption", "start", "end") if name not in header]
    if missing:
        raise VvkError(
            f"{path}: header lacks column(s) {', '.join(missing)} (need video_id, caption, start, end)"
        )
    col = {name: header.index(name) for name in ("video_id", "caption", "start", "end")}
    table: dict[str, list[Caption]] = defaultdict(list)
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise VvkError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        start = _seconds(path, line, "start", row[col["start"]])
        end = _seconds(path, line, "end", row[col["end"]])
        table[row[col["video_id"]].strip()].append(Caption(row[col["caption"]].strip(), start, end))
    return dict(table)


def open_source(data: Data, *, root: str | os.PathLike | None = None) -> VideoSource:
    """The videos of ``data``: a folder, a list file (``.csv``, ``.tsv``, ``.txt``), one video
    file, or a sequence of those, e.g. the paths a command read from stdin.

    A single path must exist. In a sequence, a missing path is kept as an item, as in a list
    file: the index reports it (unreadable) and datasets skip it. Several sources keep their
    labels when they agree: class names are merged by name (sorted), integer labels kept as
    they are; mixing the two is an error. ``root`` applies to list files (``read_list``).
    """
    if isinstance(data, str | os.PathLike):
        if not os.path.lexists(data):
            raise VvkError(f"data={os.fspath(data)}: no such folder or file", params=("data",))
        return _open_one(Path(data), root)
    if not data:
        raise VvkError("data=[]: no paths given", params=("data",))
    return _merge([_open_one(Path(p), root) for p in data])


def data_paths(data: Data) -> list[str]:
    """The paths ``data`` names, as given: one for a path, each of a sequence's."""
    return [os.fspath(data)] if isinstance(data, str | os.PathLike) else [os.fspath(p) for p in data]


def describe(data: Data) -> str:
    """``data`` for a message: the path as given, or how many paths a sequence holds."""
    paths = data_paths(data)
    return paths[0] if isinstance(data, str | os.PathLike) else f"[{len(paths)} paths]"


def _open_one(path: Path, root: str | os.PathLike | None) -> VideoSource:
    if path.is_dir():
        return scan_folder(path)
    if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        return read_list(path, root=root)
    return VideoSource([VideoItem(str(path.absolute()))])  # a video (the index says if it is one)


def _merge(parts: list[VideoSource]) -> VideoSource:
    """One source from several, labels kept (class names merged by name)."""
    classes = sorted({name for part in parts for name in part.classes})
    merged = VideoSource([], classes, [record for part in parts for record in part.skipped])
    index = {name: i for i, name in enumerate(classes)}
    for part in parts:
        if classes and not part.classes and any(item.label >= 0 for item in part.items):
            example = next(item for item in part.items if item.label >= 0)
            raise VvkError(
                f"{example.path}: integer label {example.label}, while other sources name their "
                f"classes ({', '.join(classes[:3])}, ...): the labels cannot be matched"
            )
        for item in part.items:
            label = index[part.classes[item.label]] if part.classes and item.label >= 0 else item.label
            merged.items.append(VideoItem(item.path, label, item.start, item.end))
    return merged


def _read_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VvkError(f"{path}: cannot read ({e})") from e
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    return list(csv.reader(text.splitlines(), delimiter=delimiter))


def _seconds(path: Path, line: int, name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise VvkError(f"{path}:{line}: field '{name}' is not a number of seconds: {value!r}") from None
    if seconds < 0:
        raise VvkError(f"{path}:{line}: field '{name}' is negative: {value}")
    return seconds


def _label_indices(path: Path, labels: list[tuple[int, str | None]]) -> tuple[list[int], list[str]]:
    """Integer labels stay as they are; class names become indices of the sorted names."""
    given = [label for _, label in labels if label is not None]
    if all(label.lstrip("-").isdigit() for label in given):
        return [int(label) if label is not None else -1 for _, label in labels], []
    numeric = [(line, label) for line, label in labels if label is not None and label.lstrip("-").isdigit()]
    if numeric:
        line, label = numeric[0]
        raise VvkError(f"{path}:{line}: field 'label' mixes class names and numbers ({label!r})")
    classes = sorted(set(given))
    index = {name: i for i, name in enumerate(classes)}
    return [index[label] if label is not None else -1 for _, label in labels], classes
