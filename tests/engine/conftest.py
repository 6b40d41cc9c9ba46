"""Fixtures for the engine tests: a folder of small real video files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vvk.data.synth import write_video

TOY_TRAIN = Path(__file__).with_name("toy_train.py")


@pytest.fixture(scope="session")
def toy_videos(tmp_path_factory) -> Path:
    """Six short mpeg4 videos (32x48, 30-45 frames) in a flat folder."""
    folder = tmp_path_factory.mktemp("toy_videos")
    for i in range(6):
        write_video(folder / f"clip{i}.mp4", num_frames=30 + 3 * i, size=(32, 48))
    return folder


@pytest.fixture(scope="session")
def toy_command(toy_videos):
    """``toy_command(run, out, *args)``: the argv of a toy_train.py run on ``toy_videos``."""

    def command(
        run: Path, out: Path, *extra: str, launcher: tuple[str, ...] = (sys.executable,)
    ) -> list[str]:
        return [
            *launcher,
            str(TOY_TRAIN),
            "--videos",
            str(toy_videos),
            "--run-dir",
            str(run),
            "--out-dir",
            str(out),
            *extra,
        ]

    return command
