"""OTB (Object Tracking Benchmark) sequences: frames and ground-truth boxes, quirks applied.

::

    from vvk.data.otb import read_otb, read_sequence_list

    for seq in read_otb("data/otb"):                  # every sequence folder under the root
        seq.name, seq.frames[0], seq.boxes[0]         # "Basketball", .../img/0001.jpg, [198, 214, 34, 81]
    tb50 = read_otb("data/otb", read_sequence_list("data/otb/tb_50.txt"))

A sequence is a folder ``<root>/<Name>`` with ``img/NNNN.jpg`` and ``groundtruth_rect.txt`` (one
``x,y,w,h`` line per frame, 1-based pixels). Boxes come back as OTB writes them: an (N, 4)
float64 array of x, y, width, height. What the official download does that a naive reader gets
wrong, and what happens here:

- Separators: commas, tabs or spaces, mixed even within one file (BlurCar1 line 496).
- Two targets in one folder: Jogging and Skating2 have ``groundtruth_rect.1.txt`` and
  ``.2.txt``; each is a sequence, named ``Jogging.1`` / ``Jogging.2`` as got10k names them
  (``got10k/datasets/otb.py``, ``_rename_seqs``). Human4's ``.1`` file is empty, so it is one
  sequence, ``Human4``. The other spellings in use (``Jogging-1`` in the OTB lists and pysot,
  ``Jogging_1`` in pytracking) are accepted as aliases, and a folder name selects all its targets.
- Frames that start later: BlurCar1's images start at 0247, BlurCar3's at 0003, BlurCar4's at
  0018, Board's names have five digits, KiteSurf's are PNG. Frames are ordered by the number in
  their name, whatever its width.
- Ground truth for part of the frames only: ``FRAME_RANGES``. Any other sequence whose box count
  differs from its frame count is an error naming both, never a silent misalignment.

``cfg.json`` / ``cfg.mat`` files that some copies carry are not read: they were written by
toolkits that disagree about Diving and Tiger1.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from vvk.errors import VvkError

# Frames evaluated (inclusive, by the number in the file name) where the official protocol does
# not use all the images of the folder. Sources:
# - David 300-770, Football1 1-74, Freeman3 1-460, Freeman4 1-283: the OTB authors' toolkit,
#   jwlim/tracker_benchmark: matlab/util/MakeSequenceConfigVer10.m (annotation ranges '300:770',
#   '1:74', '1:460', '1:283') and butil/seq_config.py (get_format); got10k/datasets/otb.py slices
#   the same (img_files[300-1:770], [:74], [:460], [:283]).
# - Diving 1-215: got10k/datasets/otb.py (img_files[:215]); visionml/pytracking:
#   pytracking/evaluation/otbdataset.py (endFrame 215); a copy of the OTB-100 MATLAB toolkit's
#   configSeqs.m (Johnsonirene/tracker_benchmark_v1.1: util/configSeqs.m, seqOTB100: 'Diving'
#   1 to 215, and David 300 to 770, Football1 1 to 74, ...). 231 images, 215 boxes.
# - Tiger1 6-354: the MATLAB toolkit skips its first 5 frames (tracker_benchmark_v1.0
#   initOmit/tiger1.txt, cited in open-mmlab/mmtracking#401; "the actual frames used in the
#   original matlab toolkit version is 349 frames", StrangerZhang/pysot-toolkit#6); pytracking's
#   otbdataset.py has "initOmit": 5. Its ground truth has all 354 boxes, so the first 5 are
#   dropped too. got10k evaluates all 354 frames: its Tiger1 scores differ from these.
FRAME_RANGES: dict[str, tuple[int, int]] = {
    "david": (300, 770),
    "football1": (1, 74),
    "freeman3": (1, 460),
    "freeman4": (1, 283),
    "diving": (1, 215),
    "tiger1": (6, 354),
}
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
_GROUND_TRUTH = re.compile(r"groundtruth_rect(?:\.?(\d+))?\.txt")


@dataclass(frozen=True, eq=False)
class OtbSequence:
    """One target of one OTB folder, ready to evaluate.

    Attributes:
        name: got10k's name (``Couple``, ``Jogging.1``).
        image_dir: the folder of its frames.
        frame_files: the evaluated frames' file names, in order (``frames`` has their paths).
        boxes: (len(frame_files), 4) float64 ground truth, x, y, w, h, one row per frame.
        ground_truth: the file the boxes come from.
        aliases: other names a results file may carry (``Jogging-1``, ``Jogging_1``).
        folder_frames: images in the folder; a tracker run on all of them writes this many lines.
        offset: position of the first evaluated frame among the folder's images (299 for David).
    """

    name: str
    image_dir: Path
    frame_files: tuple[str, ...]
    boxes: np.ndarray
    ground_truth: Path
    aliases: tuple[str, ...] = ()
    folder_frames: int = 0
    offset: int = 0

    def __len__(self) -> int:
        return len(self.frame_files)

    @cached_property
    def frames(self) -> tuple[Path, ...]:
        """The evaluated frames' paths (made on first use: 60k paths take a good part of a second,
        and evaluation never needs them)."""
        return tuple(self.image_dir / name for name in self.frame_files)


def read_boxes(path: str | os.PathLike, *, missing_ok: bool = False, skip_bad: bool = False) -> np.ndarray:
    """The (N, 4) float64 boxes of a text file, one ``x,y,w,h`` line per frame.

    Separators may be commas, tabs or spaces. With ``missing_ok`` (tracker results), a blank line
    or one of NaNs is a frame without a prediction and reads as a row of NaN, trailing ones
    included (a tracker that lost the target in the last frames); otherwise (ground truth) blank
    lines at the end are ignored and every line must hold 4 finite numbers. A malformed line is a
    ``VvkError`` naming the file and the line number.
    """
    path = Path(path)
    lines = _text(path).splitlines()
    while lines and not lines[-1].strip() and not missing_ok:
        lines.pop()
    rows = [line.replace(",", " ").split() for line in lines]
    if all(len(row) == 4 for row in rows):
        try:
            boxes = np.array(rows, dtype=np.float64).reshape(len(rows), 4)  # (N, 4) even when N = 0
        except ValueError:
            pass  # a token that is not a number: found, and named, below
        else:
            if missing_ok or skip_bad or np.isfinite(boxes).all():
                return boxes
    return _read_rows(path, lines, rows, missing_ok=missing_ok, skip_bad=skip_bad)


def _read_rows(
    path: Path, lines: list[str], rows: list[list[str]], *, missing_ok: bool, skip_bad: bool
) -> np.ndarray:
    """The line-by-line reading behind ``read_boxes``' fast path, which names the first bad line."""
    boxes = np.full((len(rows), 4), np.nan)
    for k, tokens in enumerate(rows):
        values = _numbers(tokens)
        if values is not None and len(values) == 4 and (missing_ok or all(map(math.isfinite, values))):
            boxes[k] = values
            continue
        no_prediction = not tokens or (values is not None and all(map(math.isnan, values)))
        if not (missing_ok and no_prediction) and not skip_bad:
            shown = lines[k].strip()[:60] or "a blank line"
            raise VvkError(
                f"{path}: line {k + 1}: expected 4 finite numbers x,y,w,h separated by commas, tabs "
                f"or spaces, got {shown!r}"
            )
    return boxes


def _numbers(tokens: list[str]) -> list[float] | None:
    try:
        return [float(t) for t in tokens]
    except ValueError:
        return None


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a BOM from Windows editors is not a number
    except UnicodeDecodeError:
        raise VvkError(f"{path}: not a text file") from None
    except OSError as e:
        raise VvkError(f"{path}: {e.strerror or e}") from None


def read_sequence_list(path: str | os.PathLike) -> list[str]:
    """Sequence names from a list file such as the OTB ``tb_50.txt``, ``tb_100.txt`` or
    ``cvpr13.txt``: the first word of each line (the rest, the attributes, is ignored)."""
    path = Path(path)
    names = [line.split()[0] for line in _text(path).splitlines() if line.strip()]
    if not names:
        raise VvkError(f"{path}: no sequence names (expected one name per line)")
    return names


@dataclass(frozen=True)
class _Target:
    folder: Path
    name: str
    ground_truth: Path
    aliases: tuple[str, ...]


def read_otb(root: str | os.PathLike, sequences: Iterable[str] | None = None) -> list[OtbSequence]:
    """The OTB sequences under ``root``, quirks applied (see the module docstring).

    Args:
        root: the folder holding one folder per sequence (other files and folders are ignored).
        sequences: names to read, in this order (got10k's names, their aliases or folder
            names, any case); default every sequence found, sorted by name.
    """
    targets = _find_targets(root)
    chosen = sorted(targets, key=lambda t: t.name) if sequences is None else _choose(targets, sequences, root)
    return [_read_sequence(target) for target in chosen]


def _find_targets(root: str | os.PathLike) -> list[_Target]:
    root = Path(root)
    if not root.is_dir():
        raise VvkError(f"root={root}: no such folder", params=["root"])
    targets = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        found = []
        for path in folder.iterdir():
            match = _GROUND_TRUTH.fullmatch(path.name)
            if match and path.is_file() and path.read_bytes().strip():  # Human4's .1 file is empty
                found.append((int(match.group(1) or 0), path))
        found.sort()
        for k, path in found:
            name = folder.name if len(found) == 1 or not k else f"{folder.name}.{k}"
            spellings = (f"{folder.name}.{k}", f"{folder.name}-{k}", f"{folder.name}_{k}") if k else ()
            targets.append(_Target(folder, name, path, tuple(s for s in spellings if s != name)))
    if not targets:
        raise VvkError(
            f"root={root}: no OTB sequences (folders holding img/ and groundtruth_rect.txt)", params=["root"]
        )
    return targets


def _choose(targets: list[_Target], sequences: Iterable[str], root: str | os.PathLike) -> list[_Target]:
    if isinstance(sequences, str | os.PathLike):
        raise VvkError(
            f"sequences={sequences}: expected a list of names (read a list file with read_sequence_list)",
            params=["sequences"],
        )
    by_key: dict[str, list[_Target]] = {}
    for target in targets:
        for key in (target.name, *target.aliases, target.folder.name):
            by_key.setdefault(key.lower(), [])
            if target not in by_key[key.lower()]:
                by_key[key.lower()].append(target)
    chosen: list[_Target] = []
    for name in sequences:
        if str(name).lower() not in by_key:
            known = ", ".join(t.name for t in targets[:5]) + (", ..." if len(targets) > 5 else "")
            raise VvkError(
                f"sequences: {name!r} is not a sequence under root={root} (found {len(targets)}: {known})",
                params=["sequences", "root"],
            )
        chosen += [t for t in by_key[str(name).lower()] if t not in chosen]
    if not chosen:
        raise VvkError("sequences=[]: nothing to read", params=["sequences"])
    return chosen


def _read_sequence(target: _Target) -> OtbSequence:
    image_dir = target.folder / "img"
    numbered = _frames(image_dir)
    boxes = read_boxes(target.ground_truth)
    first_last = FRAME_RANGES.get(target.folder.name.lower())
    if first_last is None:
        if len(boxes) != len(numbered):
            raise VvkError(
                f"{target.ground_truth}: {len(boxes)} boxes for {len(numbered)} frames in {image_dir}"
            )
        offset, count = 0, len(numbered)
    else:
        first, last = first_last
        inside = [i for i, (number, _) in enumerate(numbered) if first <= number <= last]
        count = last - first + 1
        if len(inside) != count:
            raise VvkError(
                f"{image_dir}: {target.name} is evaluated on frames {first}-{last}, "
                f"{len(inside)} of those {count} found"
            )
        offset = inside[0]
        if len(boxes) >= offset + count and len(boxes) != count:
            boxes = boxes[offset : offset + count]  # boxes for every image, as Tiger1 has
        elif len(boxes) != count:
            raise VvkError(
                f"{target.ground_truth}: {len(boxes)} boxes; {target.name} needs {count} (frames "
                f"{first}-{last}) or one per image of the folder ({len(numbered)})"
            )
    return OtbSequence(
        name=target.name,
        image_dir=image_dir,
        frame_files=tuple(file for _, file in numbered[offset : offset + count]),
        boxes=boxes,
        ground_truth=target.ground_truth,
        aliases=target.aliases,
        folder_frames=len(numbered),
        offset=offset,
    )


def _frames(img: Path) -> list[tuple[int, str]]:
    """(number, file name) of the frames in ``img``, by number: names are digits and an image
    suffix. Plain string work: this runs over every image of the benchmark."""
    try:
        names = os.listdir(img)
    except OSError:
        raise VvkError(f"{img}: no such folder (an OTB sequence keeps its frames in img/)") from None
    numbered = []
    for name in names:
        stem, _, suffix = name.rpartition(".")
        if stem.isdigit() and f".{suffix.lower()}" in FRAME_SUFFIXES:
            numbered.append((int(stem), name))
    if not numbered:
        raise VvkError(f"{img}: no frames (expected numbered images such as 0001.jpg)")
    numbered.sort()
    for (a, name_a), (b, name_b) in itertools.pairwise(numbered):
        if a == b:
            raise VvkError(f"{img}: {name_a} and {name_b} are both frame {a}")
    return numbered


def sequence_names(sequences: str | Sequence[str] | None, root: str | os.PathLike) -> list[str] | None:
    """The names ``sequences`` gives: a list file (``tb_50.txt``: the first word of each line;
    a path, or a name inside ``root``), names separated by commas, or names; None: every one."""
    if sequences is None or not isinstance(sequences, str):
        return None if sequences is None else list(sequences)
    for candidate in (Path(sequences), Path(root) / sequences):
        if candidate.is_file():
            return read_sequence_list(candidate)
    names = [name.strip() for name in sequences.split(",") if name.strip()]
    if not names:
        raise VvkError(f"sequences={sequences}: no sequence names", params=["sequences"])
    return names
