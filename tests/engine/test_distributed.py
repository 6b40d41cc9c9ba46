"""Two processes under torchrun (gloo on the CPU): different samples per rank, identical weights;
how replica gradients combine; non-finite values, signals and device reads on one rank of two."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vvk.engine import train


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy_module():
    return _load("toy_train", Path(__file__).with_name("toy_train.py"))


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


REPLICAS = Path(__file__).with_name("replicas.py")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Every case of replicas.py, run once under torchrun: ``(module, out, outcomes, weights)``,
    the last two by case, then rank."""
    out = tmp_path_factory.mktemp("replicas")
    command = [*_torchrun(), "--standalone", "--nproc_per_node=2", str(REPLICAS), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A rank that stopped alone would leave the other waiting in a collective: the timeout fails it.
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    module = _load("replicas", REPLICAS)
    cases = module.CASES
    outcomes = {c: [json.loads((out / f"{c}-rank{r}.json").read_text()) for r in (0, 1)] for c in cases}
    weights = {c: [torch.load(out / f"{c}-rank{r}.pt") for r in (0, 1)] for c in cases}
    return module, out, outcomes, weights


def _single_process(module, tmp_path, **changes) -> dict[str, torch.Tensor]:
    """replicas.py's mean/sum case in this process, one batch of all the samples per step."""
    model = module.make_model()
    config = module.config(batch_size=module.SAMPLES, **changes)
    train(model=model, step_fn=module.contrastive_step, data=module.Points(), config=config,
          run_dir=tmp_path, method="replicas")  # fmt: skip
    return model.state_dict()


def test_summed_replica_gradients_step_like_one_process_at_world_size_times_the_rate(replicas, tmp_path):
    # The reference (tf.distribute + Keras, docs/notes/constcl.md) sums every replica's gradient
    # of its own loss plus L2: sum_r grad(L_r) + R wd w. One process on the whole batch takes
    # the mean of the L_r (NT-Xent with keys gathered across ranks), so its step at R x lr is
    # the same; DDP's default, mean, is the step at lr.
    module, _, outcomes, weights = replicas
    lr = module.config().lr
    expected = {
        "mean": _single_process(module, tmp_path / "mean", lr=lr),
        "sum": _single_process(module, tmp_path / "sum", lr=2 * lr),
    }
    for case, single in expected.items():
        assert [o["status"] for o in outcomes[case]] == ["finished"] * 2
        for name, value in single.items():
            torch.testing.assert_close(weights[case][0][name], weights[case][1][name], rtol=0, atol=0)
            torch.testing.assert_close(weights[case][0][name], value, rtol=0, atol=2e-6, msg=f"{case} {name}")
    summed, averaged = (weights[case][0]["embed.weight"] for case in ("sum", "mean"))
    assert not torch.allclose(summed, averaged, atol=1e-3)


def test_two_processes_read_the_device_once_per_step(replicas):
    # Steps 1 and 2 neither log nor checkpoint: one flag read each (finite gradients, stop vote).
    _, _, outcomes, _ = replicas
    for case in ("mean", "sum"):
        for outcome in outcomes[case]:
            assert outcome["reads"]["1"] == outcome["reads"]["2"] == 1, (case, outcome["reads"])


def test_a_nan_loss_on_one_rank_stops_both_before_the_update(replicas):
    _, out, outcomes, weights = replicas
    errors = [o["error"] for o in outcomes["nan-loss"]]
    assert errors[0] == errors[1] and "non-finite loss at step 3 (loss=nan)" in errors[0]
    assert "step-00000002" in errors[0]
    saved = load_file(str(out / "nan-loss" / "checkpoints" / "step-00000002" / "model.safetensors"))
    for rank in (0, 1):  # as the step-2 checkpoint left them: step 3 was never applied
        assert outcomes["nan-loss"][rank]["finite"]
        for name, value in saved.items():
            torch.testing.assert_close(weights["nan-loss"][rank][name], value, rtol=0, atol=0)


def test_a_nan_logged_value_on_one_rank_stops_both_at_the_next_line_before_its_checkpoint(replicas):
    _, out, outcomes, _ = replicas
    errors = [o["error"] for o in outcomes["nan-logged"]]
    assert errors[0] == errors[1] and "non-finite loss in steps 3-4 (logged=nan" in errors[0]
    assert all(o["finite"] for o in outcomes["nan-logged"])
    assert (out / "nan-logged" / "checkpoints" / "latest").read_text().strip() == "step-00000002"


def test_a_signal_on_one_rank_stops_both_after_the_same_step(replicas):
    _, out, outcomes, _ = replicas
    assert [(o["status"], o["step"]) for o in outcomes["signal"]] == [("interrupted", 3)] * 2
    assert (out / "signal" / "checkpoints" / "latest").read_text().strip() == "step-00000003"
