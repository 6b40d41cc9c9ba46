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
