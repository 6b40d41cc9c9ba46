"""`vvk track`, `vvk track run`, `vvk track eval` end to end on the shared tracking data (the VOT
bag video and its frames, OTB's Crossing and Couple) with a random tiny tracker: output formats,
every bad input as a one-line error naming the file, Ctrl-C leaving no partial file, and
trackers made from saved files and from a `vvk pretrain` run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vvk.testing import link_videos, twelve_real_videos

BAG_BOX = "292,125,150,139"  # the bag in frame 1: the bounds of the VOT polygon
FRAMES = 12
RUN = ("--weights", "random:tiny", "--device", "cpu")


@pytest.fixture(scope="module")
def tracking(shared_data) -> Path:
    return shared_data / "tracking"


@pytest.fixture(scope="module")
def bag(tracking) -> Path:
    return tracking / "vot" / "bag" / "bag.avi"


def _boxes(text: str) -> np.ndarray:
    rows = [line.split(",") for line in text.splitlines()]
    assert all(len(row) == 4 for row in rows), text[:200]
    return np.array(rows, dtype=np.float64)


def _error_line(result) -> str:
    assert result.code == 1, (result.code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vvk: error: "), result.stderr
    return lines[0]


def test_track_prints_one_box_per_frame(cli, bag):
    result = cli("track", str(bag), "--box", BAG_BOX, *RUN, "--max-frames", str(FRAMES))
    assert result.code == 0, result.stderr
    boxes = _boxes(result.stdout)
    assert boxes.shape == (FRAMES, 4) and boxes[0].tolist() == [292, 125, 150, 139]
    assert np.isfinite(boxes).all() and (boxes[1:, :2] != boxes[:1, :2]).any()  # it moved
    assert f"{FRAMES} frames of {bag}" in result.stderr and "frames/s on cpu" in result.stderr


def test_track_json_out_and_draw(cli, bag, tmp_path):
    from vvk.data.decode import probe

    out, drawn = tmp_path / "o" / "boxes.txt", tmp_path / "o" / "bag.mp4"
    result = cli("track", str(bag), "--box", BAG_BOX, *RUN, "--max-frames", str(FRAMES), "--out", str(out),
                 "--draw", str(drawn), "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)  # one record, nothing else on stdout
    assert set(record) == {"source", "frames", "boxes", "fps", "seconds", "device", "weights", "out", "draw"}
    assert record["frames"] == FRAMES and record["fps"] > 0 and record["device"] == "cpu"
    assert (record["source"], record["out"], record["draw"]) == (str(bag), str(out), str(drawn))
    lines = out.read_text().splitlines()
    assert len(lines) == FRAMES and lines[0] == "292.000,125.000,150.000,139.000"
    assert np.allclose(_boxes(out.read_text()), record["boxes"], atol=1e-3)
    meta = probe(drawn)
    assert (meta.num_frames, meta.width, meta.height, meta.fps) == (FRAMES, 480, 360, pytest.approx(25.0))
    assert sorted(os.listdir(out.parent)) == ["bag.mp4", "boxes.txt"]  # no temporary left
    assert "━" not in result.stderr  # no progress bar with --json


def test_a_folder_of_frames_is_ordered_by_number(cli, tracking, tmp_path):
    img = tracking / "otb" / "Crossing" / "img"
    unpadded = tmp_path / "frames"  # 1.jpg 10.jpg 11.jpg 12.jpg 2.jpg ... as text sorts them
    unpadded.mkdir()
    for i in range(1, FRAMES + 1):
        (unpadded / f"frame_{i}.jpg").symlink_to(img / f"{i:04d}.jpg")
    (unpadded / "notes.txt").write_text("not a frame")
    box = "205,151,17,50"
    padded = cli("track", str(img), "--box", box, *RUN, "--max-frames", str(FRAMES))
    linked = cli("track", str(unpadded), "--box", box, *RUN, "--draw", str(tmp_path / "crossing.mkv"))
    assert padded.code == 0 and linked.code == 0, (padded.stderr, linked.stderr)
    assert padded.stdout == linked.stdout and len(linked.stdout.splitlines()) == FRAMES
    assert (tmp_path / "crossing.mkv").stat().st_size > 0


def test_bad_inputs_are_one_line_errors_naming_the_file(cli, bag, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    empty = tmp_path / "empty"
    empty.mkdir()
    unnumbered = tmp_path / "unnumbered"
    unnumbered.mkdir()
    shutil.copy(bag.parent / "imgs" / "00000001.jpg", unnumbered / "first.jpg")
    frames = bag.parent / "imgs"
    outside, first = "lies outside the 480×360 frame (the first frame of", f"(the first frame of {bag})"
    cases = [
        ((junk, BAG_BOX), f"{junk}: unreadable video: not a video file FFmpeg can read"),
        ((empty, BAG_BOX), f"{empty}: no images"),
        ((tmp_path / "gone.avi", BAG_BOX), f"{tmp_path / 'gone.avi'}: no such video file or folder"),
        ((unnumbered, BAG_BOX), f"{unnumbered}: first.jpg has no number in its name"),
        ((bag, "500,10,20,20"), f"--box (500, 10, 20, 20): {outside} {bag})"),
        ((frames, "10,400,20,20"), f"--box (10, 400, 20, 20): {outside} {frames})"),
        ((bag, "10,10,0,20"), f"--box (10, 10, 0, 20): width and height must be positive {first}"),
        ((bag, "10,10,20"), "--box 10,10,20: expected four numbers x,y,w,h separated by commas"),
        ((bag, "a,b,c,d"), "--box a,b,c,d: expected four numbers x,y,w,h"),
    ]  # fmt: skip
    for (source, box), message in cases:
        out = tmp_path / "out" / "boxes.txt"
        result = cli("track", str(source), "--box", box, *RUN, "--out", str(out))
        assert message in _error_line(result)
        assert not out.parent.exists()  # checked before anything is written


def test_bad_weights_and_outputs_are_one_line_errors(cli, bag, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    frames = bag.parent / "imgs"
    cases = [
        (("--weights", "random:big"), "--weights random:big: no tracker preset 'big' (one of paper, tiny)"),
        (("--weights", str(tmp_path / "gone")), f"--weights {tmp_path / 'gone'}: no such file or folder"),
        (("--weights", str(folder)), f"--weights {folder}: a folder without tracker.safetensors or backbone"),
        (("--weights", str(bag)), f"{bag}: not a safetensors file"),
        ((*RUN, "--draw", str(tmp_path / "bag.gif")), f"--draw {tmp_path / 'bag.gif'}: write a video with"),
        ((*RUN, "--draw", str(bag)), f"--draw {bag}: would write into the input {bag}"),
        ((*RUN, "--out", str(folder)), f"--out {folder}: is a folder, expected a file name"),
    ]  # fmt: skip
    for options, message in cases:
        result = cli("track", str(bag), "--box", BAG_BOX, *options)
        assert message in _error_line(result), result.stderr
    inside = cli("track", str(frames), "--box", BAG_BOX, *RUN, "--out", str(frames / "boxes.txt"))
    assert f"--out {frames / 'boxes.txt'}: would write into the input {frames}" in _error_line(inside)
    assert not (frames / "boxes.txt").exists()


def _interrupt_after(monkeypatch, frames: int) -> list[int]:
    """Make the frame reader raise KeyboardInterrupt (Ctrl-C) before frame ``frames + 1``, on
    every video or sequence it reads; returns the list of frames read, one entry each."""
    import vvk.methods.tracking.run as run

    real, seen = run.iter_frames, []

    def interrupted(*args, **kwargs):
        for frame in real(*args, **kwargs):
            if len(seen) == frames:
                raise KeyboardInterrupt
            seen.append(1)
            yield frame

    monkeypatch.setattr(run, "iter_frames", interrupted)
    return seen


def test_ctrl_c_leaves_no_half_written_file(cli, bag, tmp_path, monkeypatch):
    seen = _interrupt_after(monkeypatch, 5)
    out = tmp_path / "o"
    result = cli(
        "track", str(bag), "--box", BAG_BOX, *RUN, "--out", str(out / "b.txt"), "--draw", str(out / "b.mp4")
    )
    assert result.code == 130 and result.stderr.splitlines()[-1] == "vvk: error: interrupted"
    assert len(seen) == 5 and os.listdir(out) == []  # neither file, nor a temporary


def test_run_then_eval_on_otb(cli, tracking, tmp_path, monkeypatch):
    otb, results = tracking / "otb", tmp_path / "results" / "random"
    run = cli(
        "track", "run", "--data", str(otb), *RUN, "--out", str(results), "--sequences", "Crossing", "--json"
    )
    assert run.code == 0, run.stderr
    record = json.loads(run.stdout)
    assert (record["sequence"], record["frames"], record["status"]) == ("Crossing", 120, "tracked")
    assert record["fps"] > 0 and record["results"] == str(results / "Crossing.txt")
    crossing = _boxes((results / "Crossing.txt").read_text())
    assert crossing.shape == (120, 4) and crossing[0].tolist() == [205, 151, 17, 50]  # the first GT box

    # Done sequences are skipped; an interrupted one leaves no file, the finished ones stay whole
    before = (results / "Crossing.txt").read_bytes()
    seen = _interrupt_after(monkeypatch, 30)
    stopped = cli("track", "run", "--data", str(otb), *RUN, "--out", str(results))
    assert stopped.code == 130 and len(seen) == 30  # in Couple: Crossing was skipped
    assert os.listdir(results) == ["Crossing.txt"] and (results / "Crossing.txt").read_bytes() == before
    monkeypatch.undo()
    again = cli("track", "run", "--data", str(otb), *RUN, "--out", str(results))
    assert again.code == 0, again.stderr
    rows = [line.split() for line in again.stdout.splitlines() if "│" in line]
    assert [(r[0], r[2], r[6]) for r in rows] == [
        ("Couple", "140", "tracked"),
        ("Crossing", "120", "skipped"),
    ]
    assert float(rows[0][4]) > 0 and rows[1][4] == "-"  # fps of the tracked sequence
    assert len((results / "Couple.txt").read_text().splitlines()) == 140
    assert "1 sequence(s) tracked, 1 skipped" in again.stderr

    # Ground truth copied as results (as OTB ships it, tab-separated): precision 1, success 20/21
    truth = tmp_path / "results" / "truth"
    truth.mkdir()
    for name in ("Crossing", "Couple"):
        shutil.copy(otb / name / "groundtruth_rect.txt", truth / f"{name}.txt")
    plot = tmp_path / "plots" / "otb.png"
    scored = cli("track", "eval", "--data", str(otb), "--results", str(results), "--results", str(truth),
                 "--plot", str(plot), "--json")  # fmt: skip
    assert scored.code == 0, scored.stderr
    reports = {r["name"]: r for r in map(json.loads, scored.stdout.splitlines())}
    assert list(reports) == ["random", "truth"]
    assert reports["truth"]["success"] == pytest.approx(20 / 21) and reports["truth"]["precision"] == 1.0
    assert reports["truth"]["frames"] == 260 and reports["truth"]["num_sequences"] == 2
    assert set(reports["random"]["sequences"]) == {"Crossing", "Couple"}
    assert 0 <= reports["random"]["success"] <= 1 and reports["random"]["results"] == str(results)
    assert len(reports["random"]["success_curve"]) == 21 and len(reports["random"]["precision_curve"]) == 51
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    named = cli("track", "eval", "--data", str(otb), "--results", str(truth), "--name", "GT", "-v",
                "--sequences", "Crossing")  # fmt: skip
    assert named.code == 0, named.stderr
    assert "GT" in named.stdout and "0.952" in named.stdout and "1.000" in named.stdout
    assert "Crossing" in named.stdout and "Couple" not in named.stdout  # --verbose: a row per sequence


def test_eval_errors_name_the_file_and_the_flag(cli, tracking, tmp_path):
    otb, results = tracking / "otb", tmp_path / "results"
    results.mkdir()
    (results / "Crossing.txt").write_text("1,2,3,4\n" * 7)
    short = cli("track", "eval", "--data", str(otb), "--results", str(results), "--sequences", "Crossing")
    assert _error_line(short) == (
        f"vvk: error: {results / 'Crossing.txt'}: 7 lines, expected 120 (one per frame of Crossing)"
    )
    (results / "Crossing.txt").write_text("1,2,3,4\n" * 5 + "1,2,x,4\n" + "1,2,3,4\n" * 114)
    bad = cli("track", "eval", "--data", str(otb), "--results", str(results), "--sequences", "Crossing")
    assert f"{results / 'Crossing.txt'}: line 6: expected 4 finite numbers" in _error_line(bad)
    (results / "Crossing.txt").write_text("1,2,3,4\n" * 120)
    missing = cli("track", "eval", "--data", str(otb), "--results", str(results))
    assert f"--results {results}: no results for 1 of 2 sequences (Couple)" in _error_line(missing)
    names = cli("track", "eval", "--data", str(otb), "--results", str(results), "--name", "a", "--name", "b")
    assert "--name a,b: 2 names for 1 folders of --results" in _error_line(names)
    plot = cli("track", "eval", "--data", str(otb), "--results", str(results), "--sequences", "Crossing",
               "--missing", "fail", "--plot", str(tmp_path / "otb.xyz"))  # fmt: skip
    assert f"--plot {tmp_path / 'otb.xyz'}: unknown image format '.xyz'" in _error_line(plot)
    inside = cli("track", "run", "--data", str(otb), *RUN, "--out", str(otb / "results"))
    assert f"--out {otb / 'results'}: inside the data folder --data {otb}" in _error_line(inside)
    assert not (otb / "results").exists()


def test_saved_and_pretrained_trackers_as_weights(cli, shared_data, bag, tmp_path):
    from vvk.methods.tracking.io import load_tracker, save_tracker

    args = ("track", str(bag), "--box", BAG_BOX, "--device", "cpu", "--max-frames", "6")
    random = cli(*args, "--weights", "random:tiny")
    save_tracker(load_tracker("random:tiny")[0], tmp_path / "t" / "tracker.safetensors", preset="tiny")
    saved = cli(*args, "--weights", str(tmp_path / "t"))
    assert random.code == saved.code == 0 and random.stdout == saved.stdout  # same seed, same boxes

    videos = link_videos(tmp_path / "videos", twelve_real_videos(shared_data)[:4])
    pretrain = tmp_path / "pretrain"
    trained = cli("pretrain", "cvrl", "--data", str(videos), "--steps", "1", "--out", str(pretrain), "--json")
    assert trained.code == 0, trained.stderr
    tracked = cli(*args, "--weights", str(pretrain), "--json")
    assert tracked.code == 0, tracked.stderr
    record = json.loads(tracked.stdout)
    assert record["weights"] == str(pretrain) and len(record["boxes"]) == 6
    assert record["boxes"] != json.loads(cli(*args, "--weights", "random:tiny", "--json").stdout)["boxes"]
    # the pretrained backbone in a saved tracker tracks the same
    save_tracker(load_tracker(pretrain)[0], tmp_path / "p" / "tracker.safetensors")
    resaved = cli(*args, "--weights", str(tmp_path / "p" / "tracker.safetensors"), "--json")
    assert json.loads(resaved.stdout)["boxes"] == record["boxes"]


def test_help_and_imports(cli):
    helped = cli("track", "--help")
    assert helped.code == 0 and "vvk track run" in helped.stdout and "vvk track eval" in helped.stdout
    for sub in ("run", "eval"):
        result = cli("track", sub, "--help")
        assert result.code == 0 and f"Usage: vvk track {sub}" in " ".join(result.stdout.split())
    probe = "import sys, vvk.cli, vvk.commands.track; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
