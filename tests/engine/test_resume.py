"""Deterministic resume: kill a real training process with SIGKILL, resume it, get the same weights;
a run folder whose newest checkpoint is gone or whose writes were killed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from vvk.engine import RunDir, TrainConfig, train


def _wait_for(path, process, timeout=180.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, toy_command):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.Popen(
        toy_command(tmp_path / "straight", tmp_path / "straight_out", "--steps", "8"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # Checkpoints at steps 3 and 6; this one blocks inside step 6 (with loader workers running)
    # and is killed there: steps 4 and 5 are lost and must be redone identically.
    killed = subprocess.Popen(
        toy_command(tmp_path / "run", tmp_path / "out", "--steps", "8", "--hang-at", "6"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    _wait_for(tmp_path / "out" / "hanging", killed)
    os.killpg(killed.pid, signal.SIGKILL)  # the process and its loader workers, no chance to clean up
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000003"

    resumed = subprocess.run(
        toy_command(tmp_path / "run", tmp_path / "out", "--steps", "8", "--resume"),
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err[-3000:]

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps_this_session"] == 5
    ours = torch.load(tmp_path / "out" / "final-rank0.pt")
    theirs = torch.load(tmp_path / "straight_out" / "final-rank0.pt")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=name)
    ema_ours = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000008" / "ema.safetensors"))
    ema_theirs = load_file(str(tmp_path / "straight" / "checkpoints" / "step-00000008" / "ema.safetensors"))
    for name in ema_ours:
        torch.testing.assert_close(ema_ours[name], ema_theirs[name], rtol=0, atol=1e-6, msg=name)

    # The metrics are the uninterrupted run's, step by step (steps 4-5 logged before the kill
    # were dropped on resume and logged again).
    def losses(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["align"]) for r in lines]

    assert losses(tmp_path / "run") == losses(tmp_path / "straight")


class _Pairs(TensorDataset):
    def __getitem__(self, key):  # the loop asks for (index, draw) keys
        x, y = super().__getitem__(key[0] if isinstance(key, tuple) else key)
        return {"x": x, "y": y}


def _train(run_dir, steps: int, *, resume: bool = False):
    torch.manual_seed(0)
    data = _Pairs(torch.randn(16, 3), torch.randn(16))
    config = TrainConfig(steps=steps, batch_size=4, lr=0.01, num_workers=0, progress=False,
                         checkpoint_every=2, keep_checkpoints=3)  # fmt: skip
    step = lambda model, batch: {"loss": (model(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()}  # noqa: E731
    return train(model=nn.Linear(3, 1), step_fn=step, data=data, config=config, run_dir=run_dir,
                 method="toy", resume=resume)  # fmt: skip


def test_a_latest_naming_a_missing_checkpoint_resumes_from_the_newest_complete_one(tmp_path, caplog):
    run = RunDir(tmp_path / "run")
    _train(run.path, 6)
    assert (run.checkpoints / "latest").read_text().strip() == "step-00000006"
    shutil.rmtree(run.checkpoints / "step-00000006")  # deleted by hand, or a disk restored in part
    (run.checkpoints / "step-00000004" / "trainer.pt").unlink()  # an incomplete one is no candidate
    with caplog.at_level(logging.WARNING, logger="vvk.engine"):
        resumed = _train(run.path, 8, resume=True)
    assert resumed.summary["steps_this_session"] == 6  # from step 2, not from 0
    assert "names step-00000006, which is missing or incomplete" in caplog.text
    assert "newest complete checkpoint, step-00000002" in caplog.text


def test_the_next_save_removes_the_folders_of_killed_checkpoint_writes(tmp_path):
    run = RunDir(tmp_path / "run")
    stale = run.checkpoints / ".step-00000004.tmp-4242"  # a save killed half-way, by another process
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half a checkpoint")
    run.save(2, model=nn.Linear(2, 2), trainer={"step": 2})
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["latest", "step-00000002"]
