"""Atomic writes: the file a crash never leaves half-written gets the mode any new file gets."""

from __future__ import annotations

import os
import stat

import pytest

from vvk.atomic import atomic_path, atomic_write_text


@pytest.mark.parametrize("umask", (0o022, 0o077, 0o002))
def test_written_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "preset.json", "{}\n")
        with atomic_path(tmp_path / "model.safetensors") as tmp:
            tmp.write_bytes(b"tensors")
        (tmp_path / "plain.txt").write_text("made by open()")  # what the user would expect
    finally:
        os.umask(previous)
    expected = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("preset.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "plain.txt", "preset.json"]
