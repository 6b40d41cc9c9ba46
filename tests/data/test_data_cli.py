"""`vvk data check` and `vvk data index` on the real videos."""

from __future__ import annotations

import json

from vvk.data.index import VideoIndex


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
    assert result.code == 0, result.stderr
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
