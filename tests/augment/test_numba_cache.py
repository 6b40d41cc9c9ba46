"""The compiled mask kernels are cached in vvk's cache folder, never inside the installed
package (which may be read-only), and a user's own NUMBA_CACHE_DIR wins; a stop signal that
arrives while numba compiles waits until the kernel is whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numba
import numba.core.event
import numpy as np
import pytest

import vvk.augment
import vvk.augment.runs  # noqa: F401  (registers the hold on numba's compiler lock)

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


class InterruptOnce(numba.core.event.Listener):
    """Sends SIGINT to this process the first time numba takes its compiler lock: the moment a
    Ctrl-C that used to leave a half-built kernel arrived."""

    def __init__(self) -> None:
        self.sent = False

    def on_start(self, _event) -> None:
        if not self.sent:
            self.sent = True
            signal.raise_signal(signal.SIGINT)

    def on_end(self, _event) -> None:
        pass


def test_an_interrupt_during_a_compile_arrives_once_the_kernel_is_whole():
    @numba.njit
    def double(x):
        return 2 * x

    seen: list[int] = []  # the compiled signatures when the handler ran
    before = signal.signal(signal.SIGINT, lambda *_: seen.append(len(double.signatures)))
    try:
        with numba.core.event.install_listener("numba:compiler_lock", InterruptOnce()):
            assert double(np.int64(21)) == 42
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen == [1]  # delivered once, after the compile (without the hold: [0], inside it)
