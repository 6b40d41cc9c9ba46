"""The compiled mask kernels are cached in vvk's cache folder, never inside the installed
package (which may be read-only), and a user's own NUMBA_CACHE_DIR wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import vvk.augment

PACKAGE = Path(vvk.augment.__file__).parent

# One kernel compiled and cached in a fresh process; `merge_spans` compiles `_append` with it.
COMPILE = (
    "import numpy as np\nfrom vvk.augment import runs\n"
    "spans = np.array([[3, 5], [0, 2], [4, 8]], dtype=np.int64)\n"
    "assert runs.merge_spans(spans).tolist() == [[0, 2], [3, 8]]\n"
)


def package_files() -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in PACKAGE.rglob("*") if p.is_file()}


def compile_in_a_fresh_process(**env: str) -> None:
    base = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE], env={**base, **env}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def cached(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.nbi"))


@pytest.mark.parametrize("user_dir", [False, True], ids=["vvk-cache", "users-NUMBA_CACHE_DIR"])
def test_kernels_are_cached_outside_the_package(tmp_path, user_dir):
    before = package_files()
    env = {"VVK_CACHE": str(tmp_path / "vvk")}
    if user_dir:
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    compile_in_a_fresh_process(**env)
    where, elsewhere = tmp_path / "vvk" / "numba", tmp_path / "mine"
    if user_dir:
        where, elsewhere = elsewhere, where
    assert any(name.startswith("runs.merge_spans-") for name in cached(where))
    assert not elsewhere.exists()
    assert package_files() == before  # nothing written, nothing rewritten under vvk/augment
