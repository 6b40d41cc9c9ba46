"""`vvk train detector` end to end: real runs on tiny_coco and on the built-in example, resume,
loading the result, interrupts, and the output it prints."""

from __future__ import annotations

import json
import os
import signal

import pytest

from vvk.models import load

# A fast real run: a small canvas, 2 images a step, 4 val images, no loader worker.
FAST = ["--batch-size", "2", "--set", "image_size=128", "--set", "eval_images=4",
        "--set", "train.num_workers=0", "--set", "eval_batch_size=4"]  # fmt: skip


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_resume_load_and_detect_on_tiny_coco(cli, shared_data, tmp_path):
    tiny = shared_data / "coco" / "tiny_coco"
    run = tmp_path / "run"
    first = cli("train", "detector", "--model", "retinanet-spinenet-mobile-tiny", "--data", str(tiny),
                "--val", str(tiny), "--steps", "2", "--out", str(run), "--json", *FAST)  # fmt: skip
    assert first.code == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["status"] == "finished" and record["step"] == 2 and record["preset"]["train"]["steps"] == 2
    assert record["evaluation"]["images"] == 4 and 0 <= record["evaluation"]["bbox_AP50"] <= 1
    assert [x["step"] for x in _lines(run) if x.get("hook") == "val"] == [2]  # at the end
    assert (run / "checkpoints" / "step-00000002" / "model.safetensors").is_file()
    model = load(record["detector"])
    assert model.categories[:2] == [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]
    assert len(model.categories) == 80 and model.image_size == 128

    again = cli("train", "detector", "--data", str(tiny), "--out", str(run))
    assert again.code == 1 and "--out" in again.stderr and "not empty" in again.stderr
    other = cli("train", "detector", "--out", str(run), "--resume", "--model", "maskrcnn-spinenet-tiny")
    assert other.code == 1 and "a resumed run keeps its model and data fields" in other.stderr

    resumed = cli("train", "detector", "--out", str(run), "--resume", "--steps", "3")
    assert resumed.code == 0, resumed.stderr
    assert f"resuming retinanet-spinenet-mobile-tiny in {run}" in resumed.stderr
    last = resumed.stderr.strip().splitlines()[-2]  # the summary, then the detector's path
    assert last.startswith("detector: finished after 3 steps") and "val (4 images): box AP" in last
    assert [x["step"] for x in _lines(run) if x.get("hook") == "val"] == [2, 3]

    image = tiny / "train2017" / "000000005802.jpg"
    detected = cli("detect", str(image), "--weights", str(run), "--min-score", "0", "--json")
    assert detected.code == 0, detected.stderr
    for line in detected.stdout.splitlines():  # the run's categories name what it finds
        assert json.loads(line)["category"] in {c["name"] for c in model.categories}


def test_the_demo_trains_on_the_builtin_example_and_scores_its_val_split(cli, tmp_path):
    run = tmp_path / "demo"
    result = cli("train", "detector", "--steps", "2", "--out", str(run), *FAST)
    assert result.code == 0, result.stderr
    assert "no --data: a demo on vvk's built-in example set" in result.stderr
    recorded = json.loads((run / "preset.json").read_text())
    assert recorded["data"].endswith("train") and recorded["val"].endswith("val")
    assert [c["name"] for c in recorded["categories"]] == [str(d) for d in range(10)]
    summary = [line for line in result.stderr.splitlines() if line.startswith("detector: finished")]
    assert summary and "val (4 images): box AP" in summary[0]


def test_without_val_nothing_is_scored(cli, shared_data, tmp_path):
    tiny = shared_data / "coco" / "tiny_coco"
    result = cli(
        "train", "detector", "--data", str(tiny), "--steps", "1", "--out", str(tmp_path / "r"), *FAST
    )
    assert result.code == 0, result.stderr
    assert "detector: finished after 1 steps" in result.stderr and "(no --val: not scored)" in result.stderr
    assert not any("hook" in line for line in _lines(tmp_path / "r"))


def test_an_interrupt_saves_a_checkpoint_and_exits_130(cli, shared_data, tmp_path, monkeypatch):
    from vvk.methods.detection import train as detection_train

    step = detection_train.detection_step

    def interrupted(model, batch):
        os.kill(os.getpid(), signal.SIGINT)  # the step finishes, then the loop saves and stops
        return step(model, batch)

    monkeypatch.setattr(detection_train, "detection_step", interrupted)
    run = tmp_path / "run"
    tiny = shared_data / "coco" / "tiny_coco"
    result = cli(
        "train", "detector", "--data", str(tiny), "--val", str(tiny), "--steps", "5", "--out", str(run), *FAST
    )
    assert result.code == 130
    assert result.stderr.strip().splitlines()[-1] == (
        f"vvk: error: interrupted after step 1; its checkpoint is in {run} "
        f"(continue with: vvk train detector --resume --out {run})"
    )
    assert (run / "checkpoints" / "step-00000001").is_dir()
    assert not any("hook" in line for line in _lines(run))  # an interrupted step is not evaluated


def test_errors_name_the_flags(cli, shared_data, tmp_path):
    tiny = shared_data / "coco" / "tiny_coco"
    missing_val = cli("train", "detector", "--data", str(tiny), "--val", str(tmp_path / "nope"))
    assert missing_val.code == 1
    assert missing_val.stderr.strip() == f"vvk: error: --val {tmp_path / 'nope'}: no such folder or file"
    bad_set = cli("train", "detector", "--data", str(tiny), "--set", "flip_prob=2")
    assert bad_set.code == 1 and "--set flip_prob=2.0: must be in [0, 1]" in bad_set.stderr
    no_run = cli("train", "detector", "--out", str(tmp_path / "empty"), "--resume")
    assert no_run.code == 1 and "holds no run" in no_run.stderr
    assert not (tmp_path / "empty").exists()


@pytest.mark.slow
def test_mask_rcnn_with_copy_paste_on_the_builtin_example(cli, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "detector", "--model", "maskrcnn-spinenet-tiny", "--copy-paste", "--steps", "4",
                 "--batch-size", "4", "--set", "eval_images=20", "--out", str(run), "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["preset"]["copy_paste"] and record["preset"]["image_size"] == 256
    assert {"bbox_AP50", "segm_AP50"} <= set(record["evaluation"]) and record["evaluation"]["images"] == 20
    assert set(record["losses"]) >= {"loss", "loss_mask", "loss_classifier"}
    model = load(record["detector"])
    assert [c["name"] for c in model.categories] == [str(d) for d in range(10)]
