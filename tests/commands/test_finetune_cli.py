"""`vvk finetune` end to end: a tiny run that learns an easy split, resumes and exports; a frozen
backbone from a pretrain run; label errors; the rs recipe on real clips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from vvk.examples.synthetic import write_mp4
from vvk.methods.pretrain import pretrain
from vvk.models import load

TINTS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}
QUICK = ("--set", "train.num_workers=0")


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    """An easy split: noise videos tinted red, green or blue (the class), 6 to train and 2 to
    test per class, in train/CLASS/ and val/CLASS/ (48², 16 frames at 8 fps)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for name, tint in TINTS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                noise = rng.integers(0, 120, (16, 48, 48, 3))
                write_mp4(
                    root / split / name / f"{name}_{i}.mp4",
                    (noise + np.array(tint) * 120).astype(np.uint8),
                    fps=8,
                )
    return root


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_learns_an_easy_split_resumes_and_exports(cli, colours, tmp_path):
    run = tmp_path / "run"
    args = ("finetune", "--data", str(colours / "train"), "--val", str(colours / "val"), "--out", str(run))
    result = cli(*args, "--steps", "20", "--seed", "0", *QUICK, "--set", "train.log_every=5", "--json")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["status"], record["step"]) == ("finished", 20)
    losses = [line["loss"] for line in _metrics(run) if "loss" in line]
    assert losses[-1] < 0.7 * losses[0]  # the loss falls
    evaluation = record["evaluation"]
    assert evaluation["chance"] == pytest.approx(1 / 3) and evaluation["videos"] == 6
    assert evaluation["main"] == "2x3" and set(evaluation["schemes"]) == {"1x1", "2x3"}
    assert evaluation["schemes"]["2x3"]["top1"] >= 2 / 3  # held-out videos, well above chance
    assert evaluation["weights"] == "model"  # tiny keeps no EMA
    assert "tested 2x3" in result.stderr and "finetune: finished after 20 steps" not in result.stdout
    files = ("run.json", "config.json", "preset.json", "metrics.jsonl", "summary.json", "checkpoints/latest",
             "backbone.safetensors", "backbone.json", "classifier.safetensors", "evaluation.json",
             "predictions.jsonl", "confusion.csv", "confusion.png")  # fmt: skip
    assert [name for name in files if not (run / name).is_file()] == []
    preset = json.loads((run / "preset.json").read_text())
    assert preset["classes"] == ["blue", "green", "red"] and preset["resolved"]["train"]["seed"] == 0
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 6
    assert load(run / "backbone.safetensors").vvk_arch["name"] == "r3d-tiny"  # usable as --weights

    resumed = cli("finetune", "--out", str(run), "--resume", "--steps", "24", *QUICK, "--json")
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["step"] == 24 and _metrics(run)[-1]["step"] == 24
    assert json.loads(resumed.stdout)["evaluation"]["videos"] == 6  # tested again, on the run's own --val
    again = cli(*args, "--steps", "2")
    assert again.code == 1 and "not empty" in again.stderr


def test_a_frozen_backbone_from_a_pretrain_run_stays_as_pretrained(cli, colours, tmp_path):
    pre = tmp_path / "pre"
    train, val = str(colours / "train"), str(colours / "val")
    pretrain(
        "cvrl", data=train, steps=1, batch_size=2, overrides=["train.num_workers=0"], out=pre, progress=False
    )
    run = tmp_path / "run"
    result = cli("finetune", "--data", train, "--val", val, "--weights", str(pre), "--freeze", "--steps", "3",
                 "--out", str(run), *QUICK, "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    assert f"from {pre}" in result.stderr and "frozen" in result.stderr
    record = json.loads(result.stdout)
    assert record["preset"]["freeze"] is True and record["evaluation"]["videos"] == 6
    pretrained, tuned = load_file(pre / "backbone.safetensors"), load_file(run / "backbone.safetensors")
    assert pretrained.keys() == tuned.keys() and any("running_mean" in k for k in tuned)
    assert all((pretrained[k] == tuned[k]).all() for k in tuned)  # weights and batch-norm statistics
    classifier = load_file(run / "classifier.safetensors")
    assert all((classifier[f"backbone.{k}"] == tuned[k]).all() for k in tuned)

    mismatch = cli("finetune", "--data", train, "--weights", str(pre), "--backbone", "r3d-50",
                   "--out", str(tmp_path / "other"))  # fmt: skip
    assert mismatch.code == 1
    assert f"--backbone r3d-50: --weights {pre} holds a 'r3d-tiny' backbone" in mismatch.stderr


def test_labels_that_cannot_train_a_classifier_are_one_line_errors(cli, colours, tmp_path):
    one = tmp_path / "one"
    (one / "red").mkdir(parents=True)
    (one / "red" / "a.mp4").symlink_to(next((colours / "train" / "red").iterdir()))
    other = tmp_path / "other"
    (other / "purple").mkdir(parents=True)
    (other / "purple" / "a.mp4").symlink_to(next((colours / "val" / "red").iterdir()))
    unlabelled = tmp_path / "list.csv"
    unlabelled.write_text("".join(f"{p}\n" for p in sorted((colours / "train" / "red").iterdir())[:2]))
    train = str(colours / "train")
    cases = {
        ("--data", str(one)): f"--data {one}: one class (red); a classifier needs two or more",
        (
            "--data",
            train,
            "--val",
            str(other),
        ): f"--val {other}: class(es) purple are not classes of the training",
        ("--data", str(unlabelled)): f"--data {unlabelled}: 2 of 2 videos have no label",
        ("--data", "-", "--val", "-"): "'-' (paths on stdin) may stand for --data or --val, not both",
    }
    for argv, message in cases.items():
        result = cli("finetune", *argv, "--out", str(tmp_path / "run"))
        assert result.code == 1, argv
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("vvk: error: ") and message in line, line
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_rs_recipe_runs_end_to_end_on_real_clips(cli, shared_data, full_scale, tmp_path):
    """The rs preset (RS-50, SGD, L2, label smoothing, stochastic depth, EMA, bf16) for two steps
    on the shared clips' four folders; small clips unless VVK_TEST_FULL=1 (32 x 224², tested 1 x 3
    at 256²: minutes on a CPU)."""
    videos, run = shared_data / "video", tmp_path / "run"
    small = ["frames=8", "size=40", "crop=32", "eval_size=40", "eval_crop=40", "eval_batch_size=16"]
    sets = [arg for value in ([] if full_scale else small) for arg in ("--set", value)]
    views = "1,3" if full_scale else "2,3"
    result = cli("finetune", "--preset", "rs", "--data", str(videos), "--val", str(videos), "--steps", "2",
                 "--batch-size", "2", "--views", views, "--out", str(run), *QUICK, *sets,
                 "--set", "train.log_every=1", "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["status"], record["step"]) == ("finished", 2)
    assert all(math.isfinite(line["loss"]) for line in _metrics(run) if "loss" in line)
    resolved = record["preset"]
    assert (resolved["backbone"], resolved["label_smoothing"], resolved["train"]["ema_decay"]) == (
        "r3d-rs-50",
        0.1,
        0.9999,
    )
    assert resolved["train"]["warmup_steps"] == 0  # 1,050 steps of warm-up do not fit in 2
    evaluation = record["evaluation"]
    assert evaluation["weights"] == "ema" and evaluation["classes"] == 4
    assert (evaluation["videos"], evaluation["skipped"]) == (16, 1)  # the audio-only test.wav is skipped
    assert evaluation["main"] == ("1x3" if full_scale else "2x3") and "1x1" in evaluation["schemes"]
