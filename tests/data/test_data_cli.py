"""`vvk data check` and `vvk data index` on the real videos."""

from __future__ import annotations

import json

import pytest

from vvk.data.index import VideoIndex
from vvk.testing import link_videos, twelve_real_videos


def test_check_real_videos_as_json(cli, shared_data):
    result = cli(
        "data",
        "check",
        str(shared_data / "video"),
        "--frames",
        "16",
        "--stride",
        "8",
        "--json",
        "--decoder",
        "pyav",
    )
    assert result.code == 1, result.stderr  # test.wav is bad
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 17
    status = {r["path"].rsplit("/", 1)[1]: r["status"] for r in rows}
    assert status["test.wav"] == "no_video"
    assert status["v_HorseRiding_g01_c03.mp4"] == "short"  # 98 frames < 121 = 15 * 8 + 1: looped
    assert sum(s == "ok" for s in status.values()) == 13  # also CliffDiving (92), Basketball_g07 (101)
    bunny = next(r for r in rows if r["path"].endswith("bigbuckbunny.mp4"))
    assert bunny["size"] == [1280, 720] and bunny["frames"] == 132 and bunny["audio"] is True
    assert "17 file(s): 16 ok (3 short, looped), 1 bad (1 no_video)" in result.stderr


def test_index_writes_outside_the_input_and_reports(cli, shared_data, tmp_path, monkeypatch):
    out = tmp_path / "k.index.json"
    result = cli("data", "index", str(shared_data / "video" / "ucf24"), "--out", str(out), "--json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == {"index": str(out), "files": 9, "usable": 9, "bad": {}}
    assert len(VideoIndex.load(out)) == 9
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    default = cli("data", "index", str(shared_data / "video" / "misc"), "--json")
    record = json.loads(default.stdout)
    assert record["index"].startswith(str(tmp_path / "cache" / "index")) and record["bad"] == {"no_video": 1}


def test_an_unusable_torchcodec_is_a_one_line_error(cli, tmp_path, monkeypatch):
    from vvk.data import decoders

    monkeypatch.setattr(decoders, "torchcodec_status", lambda: (False, "torchcodec is not installed"))
    result = cli("data", "check", str(tmp_path), "--decoder", "torchcodec")
    assert result.code == 1
    assert result.stderr.startswith(
        "vvk: error: --decoder torchcodec: torchcodec is not installed (pip install"
    )


@pytest.fixture
def looping_folder(tmp_path, shared_data):
    """Four real videos (links to the shared data), a link to itself and two links to each other."""
    folder = link_videos(tmp_path / "videos", twelve_real_videos(shared_data)[:4])
    (folder / "self.mp4").symlink_to("self.mp4")
    (folder / "ping.mp4").symlink_to("pong.mp4")
    (folder / "pong.mp4").symlink_to("ping.mp4")
    return folder


LOOPS = ("ping.mp4", "pong.mp4", "self.mp4")


def test_a_link_loop_is_one_unreadable_file_in_check_and_index(cli, looping_folder, tmp_path):
    result = cli("data", "check", str(looping_folder), "--json", "--decoder", "pyav")
    assert result.code == 1, result.stderr  # bad files, not an internal error (70)
    rows = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(rows) == 7 and sum(r["status"] == "ok" for r in rows.values()) == 4
    for name in LOOPS:  # the paths as found under the folder as typed, the OS error as detail
        row = rows[str(looping_folder / name)]
        assert row["status"] == "unreadable" and "Too many levels of symbolic links" in row["detail"]
    out = tmp_path / "index.json"
    built = cli("data", "index", str(looping_folder), "--out", str(out), "--json", "--decoder", "pyav")
    assert built.code == 0, built.stderr
    assert json.loads(built.stdout) == {"index": str(out), "files": 7, "usable": 4, "bad": {"unreadable": 3}}


def test_pretrain_skips_a_link_loop_and_trains_on_the_rest(cli, looping_folder, tmp_path):
    run = tmp_path / "run"
    result = cli("pretrain", "cvrl", "--data", str(looping_folder), "--steps", "1", "--batch-size", "2",
                 "--out", str(run), "--decoder", "pyav")  # fmt: skip
    assert result.code == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["bad_files"]["by_problem"] == {"unreadable": 3}
    for name in LOOPS:  # each warned about on one line, through the logging handler of the CLI
        assert f"vvk: warning: {looping_folder / name}: the file cannot be opened" in result.stderr


def test_check_exits_0_when_every_file_is_ok_or_short_and_says_so_in_help(cli, shared_data):
    ucf = shared_data / "video" / "ucf24"
    result = cli("data", "check", str(ucf), "--frames", "16", "--stride", "8", "--decoder", "pyav")
    assert result.code == 0, result.stderr
    assert "short, looped" in result.stderr and "0 bad" in result.stderr
    help_text = " ".join(cli("data", "check", "--help").stdout.split())
    assert "Exits 1 when any file is bad" in help_text


def test_check_reports_list_lines_that_leave_the_lists_folder(cli, shared_data, tmp_path):
    real = sorted((shared_data / "video" / "ucf24").glob("*.mp4"))[:2]
    folder = link_videos(tmp_path / "videos", real[:1])
    (tmp_path / "private.mp4").symlink_to(real[1])
    (folder / "list.csv").write_text(f"{real[0].name}\n../private.mp4\n")
    result = cli("data", "check", str(folder / "list.csv"), "--json", "--decoder", "pyav")
    assert result.code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["path"], r["status"]) for r in rows] == [(str(folder / real[0].name), "ok"),
                                                        ("../private.mp4", "outside")]  # fmt: skip
    assert rows[1]["detail"].startswith("list.csv line 2: leads with '..' to") and rows[1]["frames"] is None
