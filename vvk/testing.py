"""Helpers for tests and examples that use the real data in ``../shared/data``.

The data lives beside the project, never inside it. It is found through one setting,
``VVK_TEST_DATA``; without it, ``../shared/data`` relative to the repository root is tried.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "VVK_TEST_DATA"
# `vvk train detector` arguments that keep a test's run short (tiny batches and canvas, no workers)
SHORT_DETECTOR_RUN = ("--batch-size", "2", "--set", "image_size=128", "--set", "train.num_workers=0",
                      "--set", "train.warmup_steps=0", "--set", "eval_batch_size=4")  # fmt: skip
_REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_root() -> Path | None:
    """The real-data folder, or None when it is not on this machine."""
    env = os.environ.get(ENV_VAR)
    candidate = Path(env).expanduser() if env else _REPO_ROOT.parent / "shared" / "data"
    return candidate.resolve() if candidate.is_dir() else None


def shared_data_reason() -> str:
    env = os.environ.get(ENV_VAR)
    where = env if env else str(_REPO_ROOT.parent / "shared" / "data")
    return f"real test data not found at {where} (set {ENV_VAR} to the shared data folder)"


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_vvk(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    """Run ``python -m vvk ARGS`` in a fresh process (for environment-dependent behaviour)."""
    proc = subprocess.run(
        [sys.executable, "-m", "vvk", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def link_videos(dest: str | os.PathLike, paths) -> Path:
    """A folder of symlinks to ``paths``: a dataset made of real files without copying them."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for path in paths:
        (dest / Path(path).name).symlink_to(path)
    return dest


def twelve_real_videos(data_root: str | os.PathLike) -> list[Path]:
    """The 9 UCF101-24 clips, the 2 ActivityNet videos and the Kinetics clip of the shared data:
    twelve videos, so an epoch of batches up to 12 never holds a video twice."""
    video = Path(data_root) / "video"
    return [
        *sorted((video / "ucf24").glob("*.mp4")),
        *sorted((video / "activitynet").glob("*.mp4")),
        video / "kinetics" / "arm_wrestling.mp4",
    ]
