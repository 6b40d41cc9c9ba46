"""``vvk eval`` shows how far the embedding has got on stderr, and stays quiet with --json."""

from __future__ import annotations

import json

from vvk.testing import link_videos, twelve_real_videos


def test_retrieval_shows_progress_on_stderr_but_not_with_json(cli, shared_data, tmp_path, monkeypatch):
    # A terminal, as rich sees one: a bar is drawn only where someone watches.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    videos = link_videos(tmp_path / "videos", twelve_real_videos(shared_data))
    args = ("eval", "retrieval", "--data", str(videos), "--backbone", "r3d-tiny", "--frames", "4",
            "--size", "40", "--crop", "32")  # fmt: skip
    shown = cli(*args)
    assert shown.code == 0, shown.stderr
    assert "retrieval" in shown.stderr and "12/12" in shown.stderr  # every video, counted
    quiet = cli(*args, "--json")
    assert quiet.code == 0, quiet.stderr
    assert "12/12" not in quiet.stderr and json.loads(quiet.stdout)["videos"] == 12
