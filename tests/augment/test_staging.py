"""Copy-Paste's staging folders and workers: a dead run's folder is removed by the next run, a
live run's or another machine's never is; a worker outlives no parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import suppress
from pathlib import Path

import pytest

from vvk.augment import CopyPasteOptions, augment_coco
from vvk.staging import _HOST


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(os.name != "posix", reason="staging folders of dead runs are recognised on POSIX")
def test_only_dead_runs_staging_folders_are_removed(shared_data, tmp_path):
    dead = dead_pid()
    leftovers = {
        f".old-run.vvk-{_HOST}-{dead}.abc123.partial": False,  # killed: removed
        f".old-run.vvk-{_HOST}-{dead}.def456.old": False,  # killed while replacing: removed
        f".live-run.vvk-{_HOST}-{os.getpid()}.abc123.partial": True,  # running: kept
        f".other.vvk-elsewhere-{dead}.abc123.partial": True,  # another machine's: kept
        ".older-vvk.x1y2z3.partial": True,  # no owner in its name: kept
    }
    for name in leftovers:
        (tmp_path / name / "train2017").mkdir(parents=True)
    augment_coco(shared_data / "coco" / "tiny_coco", tmp_path / "dst", options=CopyPasteOptions(size=32))
    kept = {name for name, keep in leftovers.items() if keep}
    assert {p.name for p in tmp_path.iterdir()} == kept | {"dst"}


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")
def test_the_watchdog_ends_a_worker_whose_parent_died(tmp_path):
    """The fallback where PR_SET_PDEATHSIG does not exist: a parent started a worker with the
    watchdog, then was SIGKILLed; the worker ends by itself."""
    pid_file = tmp_path / "worker.pid"
    worker = textwrap.dedent(f"""
        import os, pathlib, threading, time
        from vvk.augment.dataset_writer import _watch_parent
        threading.Thread(target=_watch_parent, args=(os.getppid(), 0.05), daemon=True).start()
        pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))
        time.sleep(120)
    """)
    start = (
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {worker!r}])\ntime.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", start], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _running(pid):
            assert time.monotonic() < deadline, "the worker outlived its parent"
            time.sleep(0.05)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)  # the worker too, should the test fail


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
