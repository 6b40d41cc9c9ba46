"""Captions from subtitle files: SubRip (``.srt``) and WebVTT (``.vtt``) next to the videos.

A video ``clips/cooking.mp4`` gets its captions from ``clips/cooking.srt`` or
``clips/cooking.vtt`` (same stem; ``cooking.en.srt`` also matches, the usual language suffix).
Each cue becomes one ``Caption`` (its lines joined by spaces, markup such as ``<i>``, ``<v Bob>``,
``<00:00:01.000>`` and ``{\\an8}`` removed); cues left empty are dropped.

``read_caption_source(path)`` is what a ``captions`` setting reads: an ActivityNet-style
caption table (``vvk.data.sources.read_captions``; it names videos by id, never a file) or a
folder searched for subtitle files. Malformed timestamps are a ``VvkError`` naming the file and
line. A folder is read as a video folder is: links to subtitle files are followed, links to
folders are not (so nothing outside the folder is reached but what it links to by name, as in
``vvk.data.paths`` with ``file_links``); a file that cannot be opened (a link loop, no
permission) is skipped with a warning on the ``vvk.data`` logger.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from pathlib import Path

from vvk.data.samplers import Caption
from vvk.data.sources import read_captions
from vvk.errors import VvkError

logger = logging.getLogger("vvk.data")

SUBTITLE_SUFFIXES = (".srt", ".vtt")
# hh:mm:ss,mmm (SRT) or [hh:]mm:ss.mmm (VTT); the fraction is optional in lenient files.
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")
_MARKUP = re.compile(r"<[^>]*>|\{\\[^}]*\}")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,4})?$")  # en, eng, en-US, pt_BR


def read_subtitles(path: str | os.PathLike) -> list[Caption]:
    """The cues of one ``.srt`` or ``.vtt`` file, in file order."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise VvkError(f"{path}: cannot read ({e})") from e
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    captions: list[Caption] = []
    i = 0
    while i < len(lines):
        if "-->" not in lines[i]:
            i += 1  # cue numbers, the WEBVTT header, NOTE/STYLE blocks, blank lines
            continue
        start, end = _timing(path, i + 1, lines[i])
        i += 1
        body = []
        while i < len(lines) and lines[i].strip():
            body.append(lines[i].strip())
            i += 1
        words = " ".join(_MARKUP.sub("", " ".join(body)).split())
        if words:
            captions.append(Caption(words, start, end))
    return captions


def subtitle_captions(folder: str | os.PathLike) -> dict[str, list[Caption]]:
    """``{video_id: [Caption]}`` from every subtitle file under ``folder`` (recursively); the
    video id is the file stem without a language suffix (``talk.en.vtt`` -> ``talk``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VvkError(f"{folder}: not a folder")
    table: dict[str, list[Caption]] = defaultdict(list)
    for path in sorted(folder.rglob("*")):  # links to folders are not followed
        if path.suffix.lower() not in SUBTITLE_SUFFIXES or path.is_dir():
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            logger.warning("%s: cannot be opened (%s); skipped", path, e.strerror or e)
            continue
        table[_video_id(path)].extend(read_subtitles(path))
    for cues in table.values():
        cues.sort(key=lambda c: (c.start, c.end))
    return dict(table)


def read_caption_source(path: str | os.PathLike) -> dict[str, list[Caption]]:
    """Captions from a caption table (``.tsv``/``.csv``) or a folder of subtitle files."""
    path = Path(path)
    if path.is_dir():
        found = subtitle_captions(path)
        if not found:
            raise VvkError(f"{path}: no .srt or .vtt subtitle files found")
        return found
    if not path.is_file():
        raise VvkError(f"{path}: no such caption file or folder")
    if path.suffix.lower() in SUBTITLE_SUFFIXES:
        raise VvkError(
            f"{path}: a single subtitle file names no video",
            hint="pass the folder that holds the videos and their subtitles",
        )
    return read_captions(path)


def _video_id(path: Path) -> str:
    stem, _, tag = path.stem.rpartition(".")
    return stem if stem and _LANGUAGE.match(tag) else path.stem


def _timing(path: Path, line: int, text: str) -> tuple[float, float]:
    match = _TIMING.match(text)
    if match is None:
        raise VvkError(f"{path}:{line}: malformed cue timing {text.strip()!r}")
    start, end = _seconds(match.groups()[:4]), _seconds(match.groups()[4:])
    if end < start:
        raise VvkError(f"{path}:{line}: cue ends ({end:g} s) before it starts ({start:g} s)")
    return start, end


def _seconds(parts: tuple[str | None, ...]) -> float:
    hours, minutes, seconds, fraction = parts
    millis = int((fraction or "0").ljust(3, "0"))
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + millis / 1000
