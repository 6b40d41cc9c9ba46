"""`vvk train tracker` end to end on the shared OTB sequences: a short run scored on val, its
tracker used by `vvk track`, resume, a pretrained frozen backbone, Ctrl-C keeping the checkpoint,
and every bad input a one-line error naming the flag that writes nothing."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

# A fast real run: 2 pairs a step, no loader worker, small epochs, val on one sequence.
FAST = ["--batch-size", "2", "--set", "train.num_workers=0", "--set", "pairs_per_epoch=8",
        "--set", "val_sequences=Crossing"]  # fmt: skip
CROSSING_BOX = "205,151,17,50"


@pytest.fixture(scope="module")
def otb(shared_data) -> Path:
    return shared_data / "tracking" / "otb"


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _error_line(result) -> str:
    assert result.code == 1, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vvk: error: "), result.stderr
    return lines[0]


def test_train_track_and_resume_on_otb(cli, otb, tmp_path):
    run = tmp_path / "run"
    first = cli("train", "tracker", "--data", str(otb), "--val", str(otb), "--steps", "2", "--out", str(run),
                "--json", *FAST)  # fmt: skip
    assert first.code == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["status"] == "finished" and record["step"] == 2 and record["preset"]["train"]["steps"] == 2
    assert record["tracker"] == str(run / "tracker.safetensors") and record["val"] == str(otb)
    assert record["evaluation"]["sequences"] == 1 and 0 <= record["evaluation"]["success"] <= 1
    assert set(record["losses"]) >= {"loss", "hit"} and record["skipped_files"] == 0
    assert [x["step"] for x in _lines(run) if x.get("hook") == "val"] == [2]  # tiny: every 100, and the end
    assert (run / "checkpoints" / "step-00000002" / "model.safetensors").is_file()

    tracked = cli("track", str(otb / "Crossing" / "img"), "--box", CROSSING_BOX, "--weights", str(run),
                  "--max-frames", "5")  # fmt: skip
    assert tracked.code == 0, tracked.stderr
    boxes = np.array([line.split(",") for line in tracked.stdout.splitlines()], dtype=np.float64)
    assert boxes.shape == (5, 4) and boxes[0].tolist() == [205, 151, 17, 50] and np.isfinite(boxes).all()

    again = cli("train", "tracker", "--data", str(otb), "--out", str(run))
    assert "--out" in _error_line(again) and "not empty" in again.stderr
    other = cli("train", "tracker", "--out", str(run), "--resume", "--backbone", "spinenet-tiny")
    assert "a resumed run keeps its model and data fields" in _error_line(other)

    resumed = cli("train", "tracker", "--out", str(run), "--resume", "--steps", "3")
    assert resumed.code == 0, resumed.stderr
    assert f"resuming the r3d-tiny tracker in {run} (preset tiny) up to step 3, on {otb}" in resumed.stderr
    summary = resumed.stderr.strip().splitlines()[-2]  # the summary, then the tracker's path
    assert summary.startswith("tracker: finished after 3 steps")
    assert "val (1 sequences, 120 frames): success" in summary
    assert [x["step"] for x in _lines(run) if x.get("hook") == "val"] == [2, 3]
    assert resumed.stderr.strip().splitlines()[-1] == f"tracker: {run / 'tracker.safetensors'}"


def test_a_pretraining_run_as_a_frozen_backbone(cli, otb, tmp_path):
    import torch

    from vvk.methods.tracking.io import load_tracker
    from vvk.models import build, save

    torch.manual_seed(3)
    backbone = build("r3d-tiny")
    save(backbone, tmp_path / "pretrain" / "backbone.safetensors")  # what `vvk pretrain` exports
    run = tmp_path / "run"
    result = cli("train", "tracker", "--data", str(otb), "--weights", str(tmp_path / "pretrain"),
                 "--freeze-backbone", "--steps", "2", "--out", str(run), *FAST)  # fmt: skip
    assert result.code == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"training a SiamFC tracker on r3d-tiny (from {tmp_path / 'pretrain'}, head only")
    assert "(no --val: not scored)" in result.stderr
    model, _ = load_tracker(run)
    trained = model.features.backbone.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in backbone.state_dict().items())


def test_ctrl_c_keeps_the_checkpoint_and_exits_130(cli, otb, tmp_path, monkeypatch):
    from vvk.methods.tracking import train as tracking_train

    step = tracking_train.tracking_step

    def interrupted(model, batch, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the step finishes, then the loop saves and stops
        return step(model, batch, **kwargs)

    monkeypatch.setattr(tracking_train, "tracking_step", interrupted)
    run = tmp_path / "run"
    result = cli(
        "train", "tracker", "--data", str(otb), "--val", str(otb), "--steps", "5", "--out", str(run), *FAST
    )
    assert result.code == 130
    assert result.stderr.strip().splitlines()[-1] == (
        f"vvk: error: interrupted after step 1; its checkpoint is in {run} "
        f"(continue with: vvk train tracker --resume --out {run})"
    )
    assert (run / "checkpoints" / "step-00000001" / "model.safetensors").is_file()
    assert not any("hook" in line for line in _lines(run))  # an interrupted step is not scored
    monkeypatch.setattr(tracking_train, "tracking_step", step)
    resumed = cli("train", "tracker", "--out", str(run), "--resume", "--steps", "2", "--set", "eval_every=0")
    assert resumed.code == 0, resumed.stderr
    assert [x["step"] for x in _lines(run) if "loss" in x][-2:] == [1, 2]


def test_bad_inputs_are_one_line_errors_naming_the_flag(cli, otb, tmp_path):
    from vvk.models import build, save

    save(build("r3d-tiny"), tmp_path / "pretrain" / "backbone.safetensors")
    (tmp_path / "empty").mkdir()
    run, data = tmp_path / "run", ["--data", str(otb)]
    gone, empty, pretrain = tmp_path / "gone", tmp_path / "empty", tmp_path / "pretrain"
    cases = [
        ([], "vvk: error: --data: give the training tracks"),
        (["--data", str(gone)], f"vvk: error: --data {gone}: no such folder"),
        (["--data", str(empty)], f"vvk: error: --data {empty}: no tracking data"),
        ([*data, "--val", str(empty)], f"--val {empty}: no OTB sequences"),
        ([*data, "--backbone", "retinanet-spinenet-tiny"],
         "--backbone retinanet-spinenet-tiny: a detection model, not an image or video backbone"),
        ([*data, "--weights", str(pretrain), "--backbone", "r3d-50"],
         f"--backbone r3d-50: --weights {pretrain} holds a 'r3d-tiny' backbone (leave --backbone"),
        ([*data, "--weights", str(gone)], f"--weights {gone}: no such file or folder"),
        ([*data, "--set", "model.adjust=sum"], "--set model.adjust=sum: expected one of conv, bn, scale"),
        ([*data, "--preset", "huge"], "--preset huge: not a tracker preset (one of paper, tiny)"),
        (["--resume"], "holds no run"),
    ]  # fmt: skip
    for args, message in cases:
        result = cli("train", "tracker", "--out", str(run), *args)
        line = _error_line(result)
        assert message in line, line
        assert not run.exists()
