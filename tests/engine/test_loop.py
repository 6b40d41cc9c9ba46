"""The training loop in one process: learning, accumulation, signals, non-finite losses, the run folder,
metrics lines, device reads."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

import vvk.models
from vvk.engine import NonFiniteLoss, RunDir, TrainConfig, train
from vvk.engine.host_reads import HostReads
from vvk.errors import VvkError
from vvk.models.registry import register, unregister


class Regression(Dataset):
    """y = x · w_true; items keyed like ClipDataset ((index, draw) or index)."""

    def __init__(self, size: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 6, generator=g)
        self.y = self.x @ torch.arange(1.0, 7.0)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return {"x": self.x[index], "y": self.y[index], "skipped": []}


def mse_step(model, batch):
    return {"loss": (model(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()}


def _linear():
    torch.manual_seed(0)
    return nn.Linear(6, 1)


def run(run_dir, *, model=None, step_fn=mse_step, method="t", resume=False, **config):
    """``train`` on the regression set with small defaults; ``config`` overrides TrainConfig fields."""
    defaults = {"steps": 40, "batch_size": 4, "lr": 0.02, "num_workers": 0, "progress": False, "log_every": 5}
    return train(
        model=_linear() if model is None else model,
        step_fn=step_fn,
        data=Regression(),
        config=TrainConfig(**{**defaults, **config}),
        run_dir=run_dir,
        method=method,
        resume=resume,
    )


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _ema_weights(run_dir):
    tensors = load_file(str(RunDir(run_dir).latest() / "ema.safetensors"))
    return torch.cat([tensors[k].flatten() for k in sorted(tensors)])


def test_it_learns_and_writes_the_run_folder(tmp_path):
    result = run(tmp_path, method="toy")
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert lines[-1]["loss"] < 0.05 * lines[0]["loss"]
    assert {"lr", "steps_per_s", "clips_per_s", "time"} <= set(lines[0])
    assert json.loads((tmp_path / "run.json").read_text())["method"] == "toy"
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 40
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 40 and summary["bad_files"]["count"] == 0
    assert result.status == "finished" and RunDir(tmp_path).latest().name == "step-00000040"


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big, small = _linear(), _linear()
    run(tmp_path / "a", model=big, steps=6, batch_size=4)
    run(tmp_path / "b", model=small, steps=6, batch_size=2, grad_accum=2)
    torch.testing.assert_close(_weights(big), _weights(small), rtol=0, atol=1e-6)


def test_without_a_loss_key_the_total_is_the_sum_and_extras_are_logged(tmp_path):
    def parts(model, batch):
        err = model(batch["x"]).squeeze(1) - batch["y"]
        return {"l1": err.abs().mean(), "l2": err.pow(2).mean()}

    run(tmp_path, step_fn=parts, steps=5)
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["loss"] == pytest.approx(line["l1"] + line["l2"], rel=1e-5)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_resuming_matches_an_uninterrupted_run(tmp_path, signum):
    calls = []

    def step_then_signal(model, batch):
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signum)  # arrives mid-step; the step still completes
        return mse_step(model, batch)

    settings = {"steps": 12, "checkpoint_every": 0, "ema_decay": 0.8}
    result = run(tmp_path / "r", step_fn=step_then_signal, **settings)
    assert result.status == "interrupted" and result.step == 7
    assert RunDir(tmp_path / "r").latest().name == "step-00000007"
    resumed = run(tmp_path / "r", resume=True, **settings)
    assert resumed.status == "finished" and resumed.summary["steps_this_session"] == 5
    run(tmp_path / "s", **settings)
    torch.testing.assert_close(_ema_weights(tmp_path / "r"), _ema_weights(tmp_path / "s"), rtol=0, atol=1e-6)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = []

    def goes_nan(model, batch):
        calls.append(1)
        loss = mse_step(model, batch)["loss"]
        return {"loss": loss * float("nan") if len(calls) == 5 else loss}

    model = _linear()
    with pytest.raises(NonFiniteLoss) as e:
        run(tmp_path, model=model, step_fn=goes_nan, checkpoint_every=3)
    assert "non-finite loss at step 5 (loss=nan)" in str(e.value)
    assert "step-00000003" in str(e.value)
    assert torch.isfinite(_weights(model)).all()  # the bad step was never applied
    assert RunDir(tmp_path).latest().name == "step-00000003"


def test_resume_is_refused_for_another_method_and_a_used_folder_needs_resume(tmp_path):
    run(tmp_path, method="teg", steps=2)
    with pytest.raises(VvkError, match="was trained by 'teg', not 'vatt'"):
        run(tmp_path, method="vatt", resume=True, steps=4)
    with pytest.raises(VvkError, match="already holds a run"):
        run(tmp_path, method="teg", steps=4)
    with pytest.raises(VvkError, match="holds no run"):
        run(tmp_path / "new", method="teg", resume=True)


def test_checkpoints_are_pruned_and_loadable_with_vvk_models(tmp_path):
    register("engine-test-linear", task="test", default_input=(6,))(lambda **kw: nn.Linear(6, 1, **kw))
    try:
        torch.manual_seed(0)
        model = vvk.models.build("engine-test-linear")
        run(tmp_path, model=model, steps=10, checkpoint_every=2, keep_checkpoints=2)
        kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
        assert kept == ["step-00000008", "step-00000010"]
        loaded = vvk.models.load(tmp_path / "checkpoints" / "step-00000010" / "model.safetensors")
        torch.testing.assert_close(_weights(loaded), _weights(model))
        assert (
            json.loads((tmp_path / "checkpoints" / "step-00000010" / "model.json").read_text())["step"] == 10
        )
    finally:
        unregister("engine-test-linear")


def test_precision_choices_on_the_cpu(tmp_path):
    assert run(tmp_path / "a", steps=3, precision="bf16").status == "finished"
    with pytest.raises(VvkError, match="fp16 needs a GPU"):
        run(tmp_path / "b", steps=3, precision="fp16")


def test_tensorboard_is_optional(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(VvkError, match="pip install tensorboard"):
            run(tmp_path, steps=2, tensorboard=True)
        return
    run(tmp_path, steps=2, tensorboard=True)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def _bad_at(step: int, spoil):
    """mse_step, with ``spoil(model, out) -> out`` applied at optimizer step ``step``."""
    calls = []

    def spoiled(model, batch):
        calls.append(1)
        out = mse_step(model, batch)
        return spoil(model, out) if len(calls) == step else out

    return spoiled


def _trained(run_dir, steps: int):
    model = _linear()
    run(run_dir, model=model, steps=steps, schedule="constant")  # the rate of each step whatever `steps`
    return _weights(model)


@pytest.mark.parametrize(
    "spoil,message",
    [
        # A NaN the loss's own gradients do not carry: multiplied into the gradients, it stops the step.
        (lambda model, out: {"loss": out["loss"] + torch.tensor(float("nan"))}, "non-finite loss at step 3"),
        # A finite loss with a NaN gradient (d sqrt(|0 w|) = inf * 0).
        (
            lambda model, out: {"loss": out["loss"] + (model.weight * 0).abs().sqrt().sum()},
            "non-finite gradient at step 3 (loss=",
        ),
    ],
)
def test_a_non_finite_step_is_refused_whatever_carries_the_nan(tmp_path, spoil, message):
    model = _linear()
    with pytest.raises(NonFiniteLoss, match=message.replace("(", r"\(")):
        run(tmp_path / "bad", model=model, step_fn=_bad_at(3, spoil), schedule="constant")
    torch.testing.assert_close(_weights(model), _trained(tmp_path / "two", steps=2), rtol=0, atol=0)


def test_a_non_finite_logged_value_stops_the_run_at_the_next_line_before_its_checkpoint(tmp_path):
    calls = []

    def logged(model, batch):
        calls.append(1)
        return {**mse_step(model, batch), "logged": torch.tensor(float("nan") if len(calls) == 3 else 1.0)}

    model = _linear()
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss in steps 3-4 \(logged=nan.*step-00000002"):
        run(tmp_path, model=model, step_fn=logged, log_every=5, checkpoint_every=2)
    assert RunDir(tmp_path).latest().name == "step-00000002"
    assert torch.isfinite(_weights(model)).all()  # the logged value never reached the gradients
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2]  # no line with a NaN in it


def test_a_line_holds_the_means_since_the_previous_line(tmp_path):
    calls = []

    def numbered(model, batch):
        calls.append(1)
        return {**mse_step(model, batch), "call": torch.tensor(float(len(calls)))}

    result = run(tmp_path, step_fn=numbered, steps=8, log_every=4, checkpoint_every=6)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Lines every 4 steps, at the checkpoint of step 6, and at the end.
    assert [(line["step"], line["call"]) for line in lines] == [(4, 2.5), (6, 5.5), (8, 7.5)]
    assert result.losses["call"] == 7.5


def test_one_device_read_per_step_and_one_more_per_metrics_line(tmp_path):
    # Accumulation, clipping and EMA on. The previous loop read the losses (.tolist()) and the
    # gradient norm (.item()) every step: two reads; now only the guard's flag is read.
    calls = []

    def counted(model, batch):
        calls.append(1)
        return mse_step(model, batch)

    reads = Counter()
    settings = {"grad_accum": 2, "grad_clip": 1.0, "ema_decay": 0.9, "log_every": 4, "checkpoint_every": 0}
    with HostReads("cpu", on_read=lambda: reads.update([(len(calls) + 1) // 2])):  # by optimizer step
        run(tmp_path, step_fn=counted, steps=10, **settings)
    assert {s: reads[s] for s in range(1, 10)} == {s: 2 if s % 4 == 0 else 1 for s in range(1, 10)}
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4, 8, 10] and all(line["grad_norm"] > 0 for line in lines)
