"""Interrupted and killed commands, with real processes and real signals: they exit 130 with one
line, leave no half-written output and no process behind, and a killed run's leftovers are
cleared by the next one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from vvk.testing import link_videos, twelve_real_videos

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="reads processes from /proc (Linux)"
)


def _terminal_sigint() -> None:
    """SIGINT as a terminal gives it: a test run in the background of a non-interactive shell
    (``pytest ... &``) inherits SIGINT ignored, and Python keeps an inherited SIG_IGN."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def vvk_process(*args: str, cwd: Path) -> Iterator[subprocess.Popen]:
    """``python -m vvk ARGS`` in a session of its own (a terminal's Ctrl-C reaches the whole
    group: ``os.killpg``); whatever is left of the group is killed afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vvk", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, preexec_fn=_terminal_sigint,
    )  # fmt: skip
    try:
        yield proc
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def wait_for(condition: Callable[[], object], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split()]


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead process its new parent, init, has not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stderr


def wait_for_first_step(run: Path) -> None:
    """Until the training run in ``run`` (logging every step) has written its first metrics line."""
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, timeout=300,
             what="the first training step")  # fmt: skip


def checkpointed_interrupt(code: int, stderr: str, run: Path) -> int:
    """The step a training command stopped at: it exited 130 with the one line that names the
    step and ``--resume``, and ``run``'s latest checkpoint is that step."""
    assert code == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("vvk: error: interrupted after step ") and "--resume" in last
    step = int(last.split("step ")[1].split(";")[0])
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step-{step:08d}"
    return step


# --------------------------------------------------------------------------------------------
# vvk augment copy-paste


def copy_paste(src: Path, dst: Path, cwd: Path):
    # Three copies of 50 images at 512 px in two workers: seconds of rendering to interrupt.
    return vvk_process("augment", "copy-paste", str(src), str(dst), "--size", "512", "--copies", "3",
                       "--workers", "2", cwd=cwd)  # fmt: skip


def rendering(parent: Path) -> Callable[[], bool]:
    """True once a worker has written an image into a staging folder in ``parent``."""
    return lambda: any(parent.glob(".*.partial/*/*.jpg"))


@pytest.mark.parametrize(
    "signum,group", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigint", "sigterm", "ctrl-c-to-the-group"],
)  # fmt: skip
def test_interrupted_copy_paste_exits_130_and_cleans_up(shared_data, tmp_path, signum, group):
    out = tmp_path / "out"
    out.mkdir()
    with copy_paste(shared_data / "coco" / "tiny_coco", out / "dst", tmp_path) as proc:
        wait_for(rendering(out), timeout=180, what="the first rendered image")
        workers = children(proc.pid)
        assert workers
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        code, stderr = finish(proc)
    assert code == 130
    assert stderr.splitlines()[-1] == "vvk: error: interrupted"
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []  # no DST, no staging folder
    # The workers were joined; multiprocessing's resource tracker ends once it reads our exit.
    wait_for(lambda: not any(running(pid) for pid in workers), timeout=10, what="the child processes to end")


def test_killed_copy_paste_takes_its_workers_along_and_the_next_run_clears_its_folder(shared_data, tmp_path):
    src, out = shared_data / "coco" / "tiny_coco", tmp_path / "out"
    out.mkdir()
    with copy_paste(src, out / "dst", tmp_path) as proc:
        wait_for(rendering(out), timeout=180, what="the first rendered image")
        workers = children(proc.pid)
        assert workers
        proc.kill()  # SIGKILL: no clean-up can run in the parent
        proc.wait(timeout=30)
        wait_for(lambda: not any(running(pid) for pid in workers), timeout=10, what="the workers to end")
        stages = [p.name for p in out.iterdir()]
        assert len(stages) == 1 and stages[0].endswith(".partial")  # the dead run's staging folder
        (out / "keep").mkdir()  # a neighbour that is not vvk's
        with vvk_process("augment", "copy-paste", str(src), str(out / "next"), "--size", "32",
                         "--max-objects", "0", cwd=tmp_path) as after:  # fmt: skip
            code, stderr = finish(after, timeout=300)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep", "next"]


# --------------------------------------------------------------------------------------------
# vvk data check --deep


def test_deep_check_stops_on_sigint(shared_data, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    real = videos / "bikes.mp4"
    real.write_bytes((shared_data / "video" / "misc" / "bikes.mp4").read_bytes())
    for i in range(400):  # hard links: distinct files to check (links to one are one file)
        os.link(real, videos / f"bikes-{i:03d}.mp4")
    with vvk_process("data", "check", str(videos), "--deep", "--workers", "1", cwd=tmp_path) as proc:
        time.sleep(5)  # importing, then checking: a deep check of 400 videos takes minutes here
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        code, stderr = finish(proc)
    assert code == 130 and stderr.splitlines()[-1] == "vvk: error: interrupted"
    assert time.monotonic() - started < 15  # one file's check at most, not the rest of the queue


# --------------------------------------------------------------------------------------------
# vvk pretrain


@pytest.mark.parametrize(
    "signum,group", [(signal.SIGINT, False), (signal.SIGTERM, True)], ids=["sigint", "sigterm-to-the-group"]
)
def test_interrupted_pretrain_saves_a_checkpoint_and_exits_130(shared_data, tmp_path, signum, group):
    # SIGTERM to the whole group is what `timeout` and batch schedulers send: the loader's
    # worker processes get it too.
    videos = link_videos(tmp_path / "videos", twelve_real_videos(shared_data))
    run = tmp_path / "run"
    with vvk_process("pretrain", "cvrl", "--data", str(videos), "--steps", "1000", "--out", str(run),
                     "--set", "train.log_every=1", cwd=tmp_path) as proc:  # fmt: skip
        wait_for_first_step(run)
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        code, stderr = finish(proc, timeout=120)
    assert 1 <= checkpointed_interrupt(code, stderr, run) < 1000
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


# --------------------------------------------------------------------------------------------
# vvk track run, vvk train tracker


def test_track_run_stopped_by_sigterm_keeps_the_finished_sequences_whole(shared_data, tmp_path):
    otb, results = shared_data / "tracking" / "otb", tmp_path / "results"
    with vvk_process("track", "run", "--data", str(otb), "--weights", "random:tiny", "--out", str(results),
                     cwd=tmp_path) as proc:  # fmt: skip
        wait_for(lambda: (results / "Couple.txt").is_file(), timeout=300, what="the first sequence's results")
        os.killpg(proc.pid, signal.SIGTERM)
        code, stderr = finish(proc)
    assert code == 130, stderr
    assert stderr.splitlines()[-1] == "vvk: error: interrupted" and "Traceback" not in stderr
    # Couple is whole; Crossing (120 frames at tens of frames/s) was cut short and left no file
    assert sorted(os.listdir(results)) == ["Couple.txt"]
    assert len((results / "Couple.txt").read_text().splitlines()) == 140


def test_train_tracker_stopped_by_sigterm_saves_a_checkpoint_and_takes_its_workers(shared_data, tmp_path):
    otb, run = shared_data / "tracking" / "otb", tmp_path / "run"
    with vvk_process("train", "tracker", "--data", str(otb), "--steps", "1000", "--batch-size", "2",
                     "--out", str(run), "--set", "train.num_workers=1", "--set", "train.log_every=1",
                     cwd=tmp_path) as proc:  # fmt: skip
        wait_for_first_step(run)
        workers = children(proc.pid)
        assert workers  # the loader's worker
        os.killpg(proc.pid, signal.SIGTERM)
        code, stderr = finish(proc, timeout=120)
    checkpointed_interrupt(code, stderr, run)
    wait_for(lambda: not any(running(pid) for pid in workers), timeout=10, what="the loader worker to end")


# --------------------------------------------------------------------------------------------
# vvk finetune, vvk eval action-localization


def test_finetune_stopped_by_sigterm_saves_a_checkpoint_and_tests_nothing(shared_data, tmp_path):
    videos = twelve_real_videos(shared_data)
    data = tmp_path / "videos"
    link_videos(data / "ucf", videos[:9])  # two labelled classes of real clips
    link_videos(data / "other", videos[9:])
    run = tmp_path / "run"
    with vvk_process("finetune", "--data", str(data), "--val", str(data), "--steps", "1000",
                     "--out", str(run), "--set", "train.log_every=1", cwd=tmp_path) as proc:  # fmt: skip
        wait_for_first_step(run)
        os.killpg(proc.pid, signal.SIGTERM)
        code, stderr = finish(proc, timeout=120)
    checkpointed_interrupt(code, stderr, run)
    assert not (run / "evaluation.json").exists() and not (run / "predictions.jsonl").exists()
    assert "Traceback" not in stderr


def test_interrupted_action_localization_writes_no_result(shared_data, tmp_path):
    ucf24, out = shared_data / "video" / "ucf24", tmp_path / "result.json"
    annotations = ucf24 / "pyannot_with_class_names.pkl"
    with vvk_process("eval", "action-localization", "--data", str(ucf24), "--annotations", str(annotations),
                     "--backbone", "r3d-tiny", "--preset", "tiny", "--steps", "100000", "--out", str(out),
                     cwd=tmp_path) as proc:  # fmt: skip
        time.sleep(15)  # indexing and decoding the clips, then training: 100,000 steps outlast it
        assert proc.poll() is None, "finished before the interrupt"
        os.killpg(proc.pid, signal.SIGINT)
        code, stderr = finish(proc)
    assert code == 130, stderr
    assert stderr.splitlines()[-1] == "vvk: error: interrupted" and "Traceback" not in stderr
    assert sorted(os.listdir(tmp_path)) == []  # neither the result nor a temporary file of it


def test_an_interrupt_inside_a_finaliser_prints_no_traceback(monkeypatch):
    """While a command runs, a KeyboardInterrupt raised in a ``__del__`` (the unraisable hook's
    case) is not reported; other unraisable exceptions still reach the hook before it."""
    import gc

    from vvk.cli import _quiet_interrupted_finalisers

    reported = []

    def record(unraisable):
        reported.append(unraisable.exc_type)

    monkeypatch.setattr(sys, "unraisablehook", record)

    class Interrupted:
        def __del__(self):
            raise KeyboardInterrupt

    class Broken:
        def __del__(self):
            raise ValueError("a real problem")

    with _quiet_interrupted_finalisers():
        Interrupted()
        Broken()
        gc.collect()
    assert reported == [ValueError]
    assert sys.unraisablehook is record  # the previous hook is back afterwards
