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
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    result = cli("pretrain", "cvrl", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "run"),
                 "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["step"] == 2 and Path(record["data"]).is_relative_to(tmp_path / "cache")
    assert (Path(record["data"]) / "manifest.json").is_file()  # synthesised into the user cache
    retrieval = record["demo_retrieval"]
    assert retrieval["videos"] == 32
    assert all(0 <= retrieval[k] <= 1 for k in ("recall@1", "random_recall@1"))
    assert "random initialisation" in result.stderr and "pretrained" in result.stderr

    # The same figure from a set made again in a fresh cache: the same bytes, the same training
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache2"))
    fresh = cli("pretrain", "cvrl", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path / "run2"),
                "--json")  # fmt: skip
    assert fresh.code == 0, fresh.stderr
    assert json.loads(fresh.stdout)["demo_retrieval"] == retrieval
    again_data = Path(json.loads(fresh.stdout)["data"])
    videos = sorted(p.relative_to(record["data"]) for p in Path(record["data"]).rglob("*.mp4"))
    assert len(videos) == 32
    assert all((Path(record["data"]) / v).read_bytes() == (again_data / v).read_bytes() for v in videos)

    # An explicit step count wins over the demo's default.
    again = cli("pretrain", "cvrl", "--batch-size", "4", "--set", "train.steps=1",
                "--out", str(tmp_path / "run1"), "--json")  # fmt: skip
    assert again.code == 0, again.stderr
    assert json.loads(again.stdout)["step"] == 1


def test_each_method_takes_only_the_options_it_reads(cli, tmp_path):
    for method, option in (("cvrl", "--captions"), ("constcl", "--captions"), ("teg", "--shared-backbone")):
        extra = [str(tmp_path / "captions.tsv")] if option == "--captions" else []
        result = cli("pretrain", method, option, *extra, "--out", str(tmp_path / method))
        assert result.code == 2, (method, result.stderr)  # a usage error: nothing trained, nothing written
        assert "No such option" in result.stderr and option in result.stderr
        assert not (tmp_path / method).exists()
    helps = {m: cli("pretrain", m, "--help").stdout for m in ("vatt", "cvrl")}
    assert "--captions" in helps["vatt"] and "--shared-backbone" in helps["vatt"]
    assert "--captions" not in helps["cvrl"] and "--shared-backbone" not in helps["cvrl"]


def test_a_failed_start_leaves_no_run_folder(cli, shared_data, tmp_path):
    videos = link_videos(tmp_path / "videos", twelve_real_videos(shared_data))
    run = tmp_path / "run"
    common = ("--data", str(videos), "--out", str(run), "--steps", "1")
    refusals = {
        ("cvrl", "--backbone", "nosuch"): "unknown model 'nosuch'",
        ("cvrl", "--set", "temperature=0"): "--set temperature=0.0: must be > 0",
        ("teg", "--set", "crop=300"): "--set crop=300: must be <= size = 64",
        ("cvrl", "--batch-size", "1"): "--batch-size 1: cvrl contrasts each clip with the other clips",
        ("cvrl", "--set", "train.batch_size=1"): "--batch-size 1: cvrl contrasts",
        ("vatt", "--captions", str(tmp_path / "gone.tsv")): "gone.tsv: no such caption file or folder",
        ("constcl", "--set", "boxes=" + str(tmp_path / "gone.csv")): "gone.csv",
    }
    for (method, *args), message in refusals.items():
        result = cli("pretrain", method, *common, *args)
        assert result.code == 1, (args, result.stderr)
        (line,) = result.stderr.strip().splitlines()  # one line, and no "internal error"
        assert line.startswith("vvk: error: ") and message in line, line
        assert not run.exists(), args  # validated before the folder was made
    # So the same --out is free for the corrected command.
    fixed = cli("pretrain", "cvrl", *common, "--batch-size", "2", "--json")
    assert fixed.code == 0, fixed.stderr
    assert json.loads(fixed.stdout)["step"] == 1


def test_resume_goes_on_with_the_runs_data_and_preset(cli, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))  # where the example set would go
    real = twelve_real_videos(shared_data)
    videos, other = link_videos(tmp_path / "videos", real), link_videos(tmp_path / "other", real[:6])
    run = tmp_path / "run"
    first = cli("pretrain", "cvrl", "--data", str(videos), "--steps", "2", "--batch-size", "4",
                "--set", "temperature=0.3", "--out", str(run), "--json")  # fmt: skip
    assert first.code == 0, first.stderr
    # The first line says what the run does; the resolved preset is in preset.json, not on screen.
    assert first.stderr.splitlines()[0] == (
        f"pretraining cvrl (preset tiny) for 2 steps of 4 clips on {videos}, into {run}"
    )
    assert "resolved preset" not in first.stderr
    recorded = json.loads((run / "preset.json").read_text())
    assert recorded["data"] == str(videos) and recorded["resolved"]["temperature"] == 0.3

    # The README's form: no --data, no --preset, no --set; the run's own are used.
    resumed = cli("pretrain", "cvrl", "--out", str(run), "--resume", "--steps", "3", "--verbose", "--json")
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["step"] == 3 and json.loads(resumed.stdout)["data"] == str(videos)
    assert resumed.stderr.splitlines()[0] == f"resuming cvrl in {run} (preset tiny) up to step 3, on {videos}"
    assert "resolved preset: {" in resumed.stderr  # --verbose
    after = json.loads((run / "preset.json").read_text())
    assert after["data"] == str(videos) and after["resolved"]["train"]["steps"] == 3
    assert {**after["resolved"], "train": None} == {**recorded["resolved"], "train": None}
    assert not (tmp_path / "cache" / "examples").exists()  # the built-in example set was never made

    refusals = {
        ("--data", str(other)): f"--data {other}: {run} was trained on {videos}",
        ("--preset", "paper"): f"--preset paper: {run} was trained with preset tiny",
        ("--set", "temperature=0.5"): "was trained with temperature=0.3; a resumed run keeps its model",
        ("--allow-new-data",): None,  # without --resume, below
    }
    for args, message in refusals.items():
        resume = ("--resume",) if message else ()
        result = cli("pretrain", "cvrl", "--out", str(run), *resume, "--steps", "4", *args)
        assert result.code == 1, (args, result.stderr)
        assert message is None or message in result.stderr, result.stderr
        assert json.loads((run / "preset.json").read_text()) == after  # a refusal changes nothing
    refused = cli("pretrain", "cvrl", "--out", str(run), "--resume", "--data", str(other))
    assert "or pass --allow-new-data to switch" in refused.stderr

    switched = cli("pretrain", "cvrl", "--out", str(run), "--resume", "--steps", "4", "--data", str(other),
                   "--allow-new-data", "--json")  # fmt: skip
    assert switched.code == 0, switched.stderr
    assert json.loads((run / "preset.json").read_text())["data"] == str(other)
