"""Every command that takes videos takes folders, list files, video files and ``-`` (paths on
stdin), and shows the library's parameter errors as its own flags."""

from __future__ import annotations

import json

import pytest

from vvk.testing import link_videos


@pytest.fixture
def videos(shared_data, tmp_path):
    """Three real clips (links in one folder) and the paths of two of them, one a line."""
    folder = link_videos(tmp_path / "videos", sorted((shared_data / "video" / "ucf24").glob("*.mp4"))[:3])
    return sorted(folder.iterdir())


def test_data_check_reads_paths_from_stdin_and_takes_files(cli, videos, tmp_path):
    piped = "".join(f"{p}\n" for p in videos[:2]) + "# a comment\n\n" + f"{tmp_path / 'gone.mp4'}\n"
    result = cli("data", "check", "-", "--json", "--decoder", "pyav", stdin=piped)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    # The paths as given, in order; a missing one is a bad file like a missing list entry.
    assert [(r["path"], r["status"]) for r in rows] == [
        (str(videos[0]), "ok"), (str(videos[1]), "ok"), (str(tmp_path / "gone.mp4"), "unreadable"),
    ]  # fmt: skip
    assert result.code == 1 and "No such file or directory" in rows[2]["detail"]
    one = cli("data", "check", str(videos[0]), "--json", "--decoder", "pyav")
    assert one.code == 0 and [json.loads(row)["path"] for row in one.stdout.splitlines()] == [str(videos[0])]
    several = cli("data", "check", str(videos[0]), str(videos[2]), "--json", "--decoder", "pyav")
    assert several.code == 0 and len(several.stdout.splitlines()) == 2


def test_data_index_reads_paths_from_stdin(cli, videos, tmp_path):
    out = tmp_path / "index.json"
    piped = "".join(f"{p}\n" for p in videos)
    result = cli("data", "index", "-", "--out", str(out), "--json", "--decoder", "pyav", stdin=piped)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == {"index": str(out), "files": 3, "usable": 3, "bad": {}}
    empty = cli("data", "index", "-", stdin="\n# nothing\n")
    assert empty.code == 1 and empty.stderr.startswith("vvk: error: -: no paths on stdin")


def test_eval_retrieval_reads_its_videos_from_stdin(cli, videos, tmp_path, monkeypatch):
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    common = ["--backbone", "r3d-tiny", "--frames", "4", "--size", "40", "--crop", "32", "--json"]
    piped = "".join(f"{p}\n" for p in videos)
    result = cli("eval", "retrieval", "--data", "-", *common, "--decoder", "pyav", stdin=piped)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["videos"] == 3


def test_pretrain_reads_its_videos_from_stdin(cli, videos, tmp_path):
    run = tmp_path / "run"
    piped = "".join(f"{p}\n" for p in videos)
    result = cli("pretrain", "cvrl", "--data", "-", "--steps", "1", "--batch-size", "2", "--out", str(run),
                 "--decoder", "pyav", "--json", stdin=piped)  # fmt: skip
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["data"] == [str(p) for p in videos]  # recorded for --resume
    # The loop's end-of-run line comes through logging, printed by the CLI as it always was.
    assert "vvk: finished at step 1 (" in result.stderr and f"; run folder {run}\n" in result.stderr


@pytest.mark.parametrize(
    "args,line",
    [
        # a positional argument: the value alone; an option: its flag, never the library's data=
        (["data", "check", "/no/such"], "vvk: error: /no/such: no such folder or file"),
        (["data", "index", "/no/such.csv"], "vvk: error: /no/such.csv: no such folder or file"),
        (
            ["eval", "retrieval", "--data", "/no/such", "--backbone", "r3d-tiny"],
            "vvk: error: --data /no/such: no such folder or file",
        ),
        (
            ["eval", "linear-probe", "--data", "/no/such"],
            "vvk: error: give --weights PATH (a run folder or checkpoint) or --backbone NAME",
        ),
        (
            ["eval", "retrieval", "--data", "/no/such", "--weights", "runs/no-such-run"],
            "vvk: error: --weights runs/no-such-run: no such run folder\n",  # not "file not found"
        ),
    ],
)
def test_library_errors_show_the_commands_flags(cli, args, line):
    result = cli(*args)
    assert result.code == 1 and result.stderr.startswith(line), result.stderr
    assert "data=" not in result.stderr and "weights=" not in result.stderr
