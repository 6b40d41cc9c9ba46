"""`vvk pretrain` end to end on real clips: train, resume, export, evaluate; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vvk.commands.pretrain import app
from vvk.methods.registry import load, methods_for
from vvk.testing import link_videos, twelve_real_videos


def test_every_registered_method_is_a_command_with_presets():
    commands = {command.name for command in app.registered_commands}
    assert commands == {m.name for m in methods_for("pretrain")} == {"constcl", "teg", "vatt", "cvrl"}
    for method in methods_for("pretrain"):
        package = load(method.name)
        assert {"tiny", "paper"} <= set(package.PRESETS), method.name
        assert callable(package.build) and callable(package.sampler), method.name


def test_the_method_registry_does_not_import_torch():
    probe = "import sys, vvk.methods.registry, vvk.commands.pretrain; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pretrain_resume_and_evaluate_on_real_clips(cli, shared_data, tmp_path):
    videos = link_videos(tmp_path / "videos", twelve_real_videos(shared_data))
    run = tmp_path / "run"
    first = cli("pretrain", "cvrl", "--data", str(videos), "--steps", "2", "--out", str(run), "--json")
    assert first.code == 0, first.stderr
    record = json.loads(first.stdout)
    assert record["status"] == "finished" and record["step"] == 2 and record["preset"]["train"]["steps"] == 2
    assert json.loads((run / "preset.json").read_text())["resolved"] == record["preset"]

    again = cli("pretrain", "cvrl", "--data", str(videos), "--steps", "3", "--out", str(run), "--json")
    assert again.code == 1 and "--out" in again.stderr and "not empty" in again.stderr

    resumed = cli(
        "pretrain", "cvrl", "--data", str(videos), "--steps", "4", "--out", str(run), "--resume", "--json"
    )
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["step"] == 4

    other = cli("pretrain", "teg", "--data", str(videos), "--out", str(run), "--resume")
    assert other.code == 1 and "trained by 'cvrl', not 'teg'" in other.stderr
    assert json.loads((run / "preset.json").read_text())["method"] == "cvrl"  # the refusal wrote nothing

    evaluated = cli(
        "eval", "retrieval", "--data", str(videos), "--weights", str(run), "--compare-random", "--json"
    )
    assert evaluated.code == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert result["videos"] == 12 and {"recall@1", "random_recall@1"} <= set(result)
    assert result["clips"]["crop"] == record["preset"]["crop"]  # the clip shape comes from the run


def test_no_decodable_videos_is_an_error_before_training(cli, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "notes.mp4").write_text("not a video")
    run = tmp_path / "run"
    result = cli("pretrain", "cvrl", "--data", str(folder), "--out", str(run))
    assert result.code == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == "vvk: error: no usable videos: all 1 were skipped (1 not_media)"
    )
    assert not run.exists()  # nothing trained, no run folder left behind


def test_missing_paths_in_a_list_are_reported_and_skipped(cli, shared_data, tmp_path):
    real = shared_data / "video" / "kinetics" / "arm_wrestling.mp4"
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,label\n{real},wrestling\n{tmp_path / 'gone.mp4'},gone\n")
    run = tmp_path / "run"
    result = cli(
        "pretrain", "cvrl", "--data", str(listing), "--steps", "1", "--batch-size", "2", "--out", str(run)
    )
    assert result.code == 0, result.stderr
    assert f"{tmp_path / 'gone.mp4'}:" in result.stderr and "skipped" in result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert [f["path"] for f in summary["bad_files"]["files"]] == [str(tmp_path / "gone.mp4")]


def test_demo_on_the_built_in_example_set(cli, tmp_path, monkeypatch):
    import vvk.methods.pretrain

    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(vvk.methods.pretrain, "DEMO_STEPS", 2)  # the demo's own default, kept short
    result = cli("pretrain", "cvrl", "--batch-size", "4", "--out", str(tmp_path / "run"), "--json")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["step"] == 2 and Path(record["data"]).is_relative_to(tmp_path / "cache")
    assert (Path(record["data"]) / "manifest.json").is_file()  # synthesised into the user cache
    retrieval = record["demo_retrieval"]
    assert retrieval["videos"] == 32
    assert all(0 <= retrieval[k] <= 1 for k in ("recall@1", "random_recall@1"))
    assert "random initialisation" in result.stderr and "pretrained" in result.stderr

    # An explicit step count wins over the demo's default.
    again = cli("pretrain", "cvrl", "--batch-size", "4", "--set", "train.steps=1",
                "--out", str(tmp_path / "run1"), "--json")  # fmt: skip
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["step"] == 1
