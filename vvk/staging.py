"""Writing a folder whole or not at all: a hidden staging folder beside the destination,
renamed into place at the end, removed on any failure; a killed run's staging folder is
removed by the next run that writes beside it (its owner, host and pid, is in its name).

::

    from vvk.staging import check_destination, staged_folder

    out = check_destination(Path("out"), [Path("data")], overwrite=False)
    with staged_folder(out) as stage:     # write everything into stage
        ...
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vvk.errors import VvkError


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_destination(dst: Path, src_roots: list[Path], *, overwrite: bool) -> Path:
    dst = dst.resolve()
    for root in (r.resolve() for r in src_roots):
        root_dir = root if root.is_dir() else root.parent
        if _inside(dst, root_dir) or _inside(root_dir, dst):
            raise VvkError(f"{dst}: the output may not be inside, or contain, the input folder {root_dir}")
    if dst.exists():
        if not dst.is_dir():
            raise VvkError(f"{dst}: exists and is not a folder")
        if any(dst.iterdir()) and not overwrite:
            raise VvkError(f"{dst}: folder is not empty", hint="pass --overwrite to replace it")
    return dst


# Staging folders are named after their owner, ``.<dst name>.vvk-<host>-<pid>.<random>.partial``
# (``.old`` for a replaced output on its way out), so a later run can tell a dead run's from a
# live one's, also when several machines write into one shared parent folder.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())
_OWNED = re.compile(r"\..*\.vvk-(?P<host>[A-Za-z0-9-]*)-(?P<pid>\d+)\.[^.]+\.(?:partial|old)")


def _owned_temp(dst: Path, suffix: str) -> Path:
    prefix = f".{dst.name}.vvk-{_HOST}-{os.getpid()}."
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dst.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _remove_dead_stages(parent: Path) -> None:
    """Remove the staging folders in ``parent`` whose run, on this machine, is gone (killed:
    SIGKILL, a power cut). A reused pid keeps a folder for a while, never removes a live one."""
    if os.name != "posix":  # os.kill(pid, 0) terminates a process on Windows
        return
    for path in parent.iterdir():
        owner = _OWNED.fullmatch(path.name)
        if owner and owner["host"] == _HOST and not _alive(int(owner["pid"])) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def staged_folder(dst: Path) -> Iterator[Path]:
    """A hidden folder beside ``dst``; renamed to ``dst`` on success, removed on any failure."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_stages(dst.parent)
        stage = _owned_temp(dst, ".partial")
    except OSError as e:  # a read-only place, a file where a folder should be, ...
        raise VvkError(f"{dst}: cannot write the output there ({e.strerror or e})") from e
    try:
        yield stage
        if dst.exists():
            old = _owned_temp(dst, ".old")
            os.replace(dst, old / "replaced")  # only reached when dst is empty or --overwrite
            os.replace(stage, dst)
            shutil.rmtree(old)
        else:
            os.replace(stage, dst)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
