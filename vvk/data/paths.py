"""Paths that a dataset file names: they stay inside the dataset.

An annotation file, a list or a tracking sequence names other files. Those names come with the
dataset, often from someone else, so a name may not reach outside the folder it is relative to:
``../../home/me/secret.jpg``, ``/etc/passwd`` and a link that points elsewhere are all refused,
whatever the reader then does with them (COCO and lists skip and count the record, a tracking
sequence reader refuses the sequence). ``inside`` is the one check every reader uses.

Paths are compared after every link and ``..`` is resolved, so a name is judged by the file it
opens, not by its spelling; the folder itself may be a link (a dataset kept on another disk).
Where the files read only feed training (video lists), a name may instead be judged as a scan
of the folder would find it (``file_links=True``): a link to a file is then the folder's file,
wherever it points, as ``os.walk`` and ``vvk data check FOLDER`` treat it, since a folder of
links is the usual way to make a subset of a large dataset without copying it.
"""

from __future__ import annotations

import os
from pathlib import Path

from vvk.errors import VvkError


class PathOutside(VvkError):
    """A name in a dataset that leads outside the folder it must stay in.

    Attributes:
        root: the folder, as given.
        name: the name, as the dataset wrote it.
    """

    def __init__(self, root: str | os.PathLike, name: str | os.PathLike, reason: str):
        super().__init__(f"{name}: {reason}, outside {root}")
        self.root, self.name = Path(root), str(name)
        self.reason = reason


def real_path(path: str | os.PathLike) -> str:
    """``path`` absolute, with every link and ``..`` resolved as far as they go; never raises.

    ``Path.resolve`` raises ``RuntimeError`` on a symlink loop (Python < 3.13), so one looping
    link would stop a whole dataset; this returns the loop's path, and opening it then fails
    with the OS's own error (``ELOOP``) for that file alone.
    """
    return os.path.realpath(os.path.abspath(path))


def inside(root: str | os.PathLike, name: str | os.PathLike, *, file_links: bool = False) -> Path:
    """The file ``name`` (relative to ``root``) names, resolved, when it is inside ``root``.

    Args:
        file_links: judge the folder ``name`` is in, not the file: a final link to a file
            elsewhere is accepted (and left unresolved), a linked folder on the way is not.

    Raises:
        PathOutside: ``name`` is absolute, or climbs out of ``root`` with ``..``, or reaches a
            file outside ``root`` through a link (the file need not exist).
    """
    if os.path.isabs(name):
        raise PathOutside(root, name, "an absolute path")
    folder = real_path(root)
    head, tail = os.path.split(name)
    if file_links and tail not in ("", ".", ".."):
        target = os.path.join(real_path(os.path.join(folder, head)), tail)
    else:
        target = real_path(os.path.join(folder, name))
    if os.path.commonpath([folder, target]) != folder:
        via = "through a link" if ".." not in Path(name).parts else "with '..'"
        raise PathOutside(root, name, f"leads {via} to {target}")
    return Path(target)
