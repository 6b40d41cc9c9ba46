"""Two processes under torchrun (gloo on the CPU): different samples per rank, identical weights."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch


def _toy_module():
    spec = importlib.util.spec_from_file_location("toy_train", Path(__file__).with_name("toy_train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchrun() -> tuple[str, ...]:
    found = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    return (found,) if found else (sys.executable, "-m", "torch.distributed.run")


def test_two_gloo_processes_see_different_samples_and_end_identical(tmp_path, toy_command):
    # --standalone: a private rendezvous on a free port, so parallel test runs do not collide.
    launcher = (*_torchrun(), "--standalone", "--nproc_per_node=2")
    command = toy_command(
        tmp_path / "run", tmp_path / "out", "--steps", "4", "--workers", "1", launcher=launcher
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    seen = [json.loads((tmp_path / "out" / f"seen-rank{r}.json").read_text())["seen"] for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4 * 2 * 2  # steps x batch x accumulation
    per_rank = 3  # 6 videos over 2 ranks
    for epoch in range(len(seen[0]) // per_rank):
        a, b = (set(s[epoch * per_rank : (epoch + 1) * per_rank]) for s in seen)
        assert not a & b and a | b == set(range(6)), (epoch, a, b)  # disjoint halves of the epoch

    weights = [torch.load(tmp_path / "out" / f"final-rank{r}.pt") for r in (0, 1)]
    params = [k for k in weights[0] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for name in params:  # BatchNorm statistics stay per rank (DDP broadcasts them only before forward)
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0, msg=name)
    torch.manual_seed(0)  # what toy_train.py starts from: training moved every weight
    initial = _toy_module().Toy().state_dict()
    assert all(not torch.equal(weights[0][name], initial[name]) for name in params)

    # Only rank 0 writes: one metrics line per step, one run record, one set of checkpoints.
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3, 4]
    assert json.loads(metrics[-1])["clips_per_s"] > 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
