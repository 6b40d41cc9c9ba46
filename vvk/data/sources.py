"""Where the videos of a dataset are listed: a folder, a CSV/TSV list, an ActivityNet caption file.

- A folder is flat (no labels) or ``class_name/video.ext`` (the Kinetics/UCF101 layout; class
  indices follow the sorted class names).
- A list file has one video per line: ``path[,label[,start,end]]``, comma- or tab-separated,
  an optional header line, paths relative to the list file's folder. Labels are integers or
  class names; ``start``/``end`` (seconds) restrict the clips to a segment.
- A caption file has ``video_id, caption, start, end`` columns (ActivityNet Captions style,
  tab-separated with a header, extra columns ignored).

Malformed lines are a ``VvkError`` naming the file, line and field.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from vvk.data.media import MEDIA_EXTENSIONS
from vvk.data.samplers import Caption
from vvk.errors import VvkError

LIST_SUFFIXES = (".csv", ".tsv", ".txt")


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
    items: list[VideoItem]
    classes: list[str] = field(default_factory=list)


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
    """A flat folder (labels -1) or one subfolder per class (labels by sorted class name)."""
    root = Path(root).resolve()
    files = find_media(root)
    if not files:
        raise VvkError(f"{root}: no video files found")
    top = [f for f in files if f.parent == root]
    if top:  # any file at the top level: the folder is one unlabeled collection
        return VideoSource([VideoItem(str(f)) for f in files])
    classes = sorted({f.relative_to(root).parts[0] for f in files})
    label_of = {name: i for i, name in enumerate(classes)}
    items = [VideoItem(str(f), label_of[f.relative_to(root).parts[0]]) for f in files]
    return VideoSource(items, classes)


def read_list(path: str | os.PathLike) -> VideoSource:
    """A CSV/TSV list of ``path[,label[,start,end]]`` lines (see the module docstring)."""
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
    labels, classes = _label_indices(path, [(line, label) for line, _, label, _, _ in parsed])
    base = path.resolve().parent
    items = [
        VideoItem(str((base / video).resolve()), label, start, end)
        for (_, video, _, start, end), label in zip(parsed, labels, strict=True)
    ]
    return VideoSource(items, classes)


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


def open_source(spec: str | os.PathLike) -> VideoSource:
    """A folder or a list file, whichever ``spec`` is."""
    spec = Path(spec)
    if spec.is_dir():
        return scan_folder(spec)
    if spec.is_file() and spec.suffix.lower() in LIST_SUFFIXES:
        return read_list(spec)
    if spec.is_file():
        raise VvkError(f"{spec}: not a folder or a list file ({', '.join(LIST_SUFFIXES)})")
    raise VvkError(f"{spec}: no such folder or file")


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
