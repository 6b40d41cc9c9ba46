"""Periodic hooks of the training loop (``Every``) and the step learning-rate schedule."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from vvk.engine import Every, TrainConfig, train
from vvk.engine.optim import lr_at
from vvk.errors import VvkError


class Regression(Dataset):
    """y = x · w_true, keyed as the loop's sampler keys items."""

    def __init__(self, size: int = 32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 6, generator=g)
        self.y = self.x @ torch.arange(1.0, 7.0)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        return {"x": self.x[key[0]], "y": self.y[key[0]], "skipped": []}


def mse_step(model, batch):
    return {"loss": (model(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()}


def run(run_dir, *, model=None, step_fn=mse_step, resume=False, every=(), **config):
    defaults = {"steps": 40, "batch_size": 4, "lr": 0.02, "num_workers": 0, "progress": False, "log_every": 5}
    if model is None:
        torch.manual_seed(0)
        model = nn.Linear(6, 1)
    return train(
        model=model, step_fn=step_fn, data=Regression(), config=TrainConfig(**{**defaults, **config}),
        run_dir=run_dir, method="t", resume=resume, every=every,
    )  # fmt: skip


def _dropout_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 1))


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_hook_runs_every_n_steps_and_at_the_end_with_lines_of_its_own(tmp_path):
    seen = []

    def evaluate(model, step):
        seen.append((step, model.training))
        with torch.no_grad():
            data = Regression()
            error = (model(data.x).squeeze(1) - data.y).pow(2).mean().item()
        return {"val_mse": error}

    result = run(tmp_path, steps=10, every=[Every(steps=4, fn=evaluate, name="val")])
    assert [step for step, _ in seen] == [4, 8, 10] and all(training for _, training in seen)
    hooked = [line for line in _lines(tmp_path) if line.get("hook") == "val"]
    assert [line["step"] for line in hooked] == [4, 8, 10]
    assert hooked[-1]["val_mse"] < hooked[0]["val_mse"]  # the model it sees is the one training
    assert {"seconds", "time"} <= set(hooked[0]) and "steps_per_s" not in hooked[0]
    assert result.hooks == {"val": {"val_mse": hooked[-1]["val_mse"]}}
    assert json.loads((tmp_path / "summary.json").read_text())["hooks"]["val"] == result.hooks["val"]


def test_a_hook_that_draws_random_numbers_and_switches_to_eval_changes_nothing(tmp_path):
    def noisy(model, step):
        model.eval()  # the loop puts it back in train mode: dropout must stay on
        torch.rand(100)
        np.random.rand(10)
        return None  # no line

    plain, hooked = _dropout_model(), _dropout_model()
    run(tmp_path / "a", model=plain, steps=9)
    result = run(tmp_path / "b", model=hooked, steps=9, every=[Every(steps=2, fn=noisy)])
    torch.testing.assert_close(_weights(plain), _weights(hooked), rtol=0, atol=0)
    assert result.hooks == {} and not any("hook" in line for line in _lines(tmp_path / "b"))


def test_an_interrupted_run_skips_the_hook_and_resuming_evaluates_each_step_once(tmp_path):
    calls = []

    def step_then_signal(model, batch):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return mse_step(model, batch)

    every = [Every(steps=3, fn=lambda model, step: {"at": step})]
    first = run(tmp_path, step_fn=step_then_signal, steps=12, checkpoint_every=0, every=every)
    assert first.status == "interrupted" and first.step == 6
    resumed = run(tmp_path, resume=True, steps=12, checkpoint_every=0, every=every)
    assert resumed.status == "finished"
    # Step 6 was interrupted: no evaluation then; a resumed run goes on from its checkpoint.
    assert [line["at"] for line in _lines(tmp_path) if "hook" in line] == [3, 9, 12]


def test_hook_steps_are_checked():
    with pytest.raises(ValueError, match="Every.steps"):
        Every(steps=-1, fn=lambda model, step: None)


def test_the_step_schedule_drops_at_fractions_of_the_run():
    config = TrainConfig(
        steps=1000, lr=0.28, warmup_steps=20, schedule="step", decay_at=(0.94, 0.98), decay_rate=0.1
    )
    assert lr_at(0, config) == pytest.approx(0.28 / 20)
    assert lr_at(19, config) == pytest.approx(0.28)
    assert lr_at(939, config) == pytest.approx(0.28)
    assert lr_at(940, config) == pytest.approx(0.028)
    assert lr_at(979, config) == pytest.approx(0.028)
    assert lr_at(980, config) == pytest.approx(0.0028)
    with pytest.raises(VvkError, match="decay_at"):
        TrainConfig(schedule="step", decay_at=(1.5,))
