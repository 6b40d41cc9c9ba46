"""``vvk augment copy-paste``: options reach the library, output is a summary, errors are one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def test_options_reach_the_library(cli, monkeypatch, tmp_path):
    seen = {}

    def fake(src, dst, **kwargs):
        seen.update(kwargs, src=src, dst=dst)
        kwargs["progress"](1, 1)
        return {"dst": str(dst), "images_written": 1, "seconds": 0.1, "warnings": {"image_missing": 2}}

    monkeypatch.setattr("vvk.augment.augment_coco", fake)
    result = cli(
        "augment", "copy-paste", "in", str(tmp_path / "out"),
        "-k", "3", "--max-objects", "7", "--scale-jitter", "ssj", "--size", "512", "--source", "other",
        "--categories", "dog, cat", "--blend", "2.5", "--format", "polygon", "--seed", "9", "--workers", "2",
        "--occluded-box-px", "5", "--occluded-area-px", "100", "--overwrite", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    options = seen["options"]
    assert (options.copies, options.max_objects, options.size, options.seed) == (3, 7, 512, 9)
    assert options.scale_range == (0.8, 1.25) and options.categories == ("dog", "cat")
    assert (options.blend_sigma, options.mask_format, options.box_px, options.area_px) == (
        2.5,
        "polygon",
        5,
        100,
    )
    assert seen["workers"] == 2 and seen["overwrite"] is True and str(seen["source"]) == "other"
    assert json.loads(result.stdout)["images_written"] == 1
    assert "image missing: 2" in result.stderr


def test_real_run_prints_a_table_or_json(cli, shared_data, tmp_path):
    src = shared_data / "coco" / "tiny_coco"
    result = cli("augment", "copy-paste", str(src), str(tmp_path / "a"), "--size", "64", "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images_written"] == 50 and summary["objects_written"] > 0
    assert set(summary) >= {"objects_pasted", "objects_dropped", "seconds", "warnings"}
    table = cli("augment", "copy-paste", str(src), str(tmp_path / "b"), "--size", "64", "--max-objects", "0")
    assert table.code == 0 and "images_written" in table.stdout and "50" in table.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scale-jitter", "2,1"], "--scale-jitter: need 0 < MIN <= MAX"),
        (["--categories", ","], "--categories: give at least one category name"),
        (["--categories", "persn"], "did you mean 'person'"),
        (["--format", "mask"], "Invalid value for '--format'"),
    ],
)
def test_bad_options_are_one_line_errors(cli, shared_data, tmp_path, args, message):
    result = cli("augment", "copy-paste", str(shared_data / "coco" / "tiny_coco"), str(tmp_path / "o"), *args)
    assert result.code != 0
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "o").exists()


def test_non_empty_destination_is_refused(cli, shared_data, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    result = cli("augment", "copy-paste", str(shared_data / "coco" / "tiny_coco"), str(tmp_path / "o"))
    assert result.code == 1
    assert (
        result.stderr.strip()
        == f"vvk: error: {tmp_path / 'o'}: folder is not empty (pass --overwrite to replace it)"
    )


def read_only_folder(tmp_path):
    """A folder this process cannot create anything in: a 0o555 one, or for root, who may write
    there anyway, sysfs (Linux)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("running as root without sysfs: no folder here is read-only for root")
    return Path("/sys/kernel")


@pytest.mark.parametrize("where", ["in", "below"])
def test_destination_in_a_read_only_place_is_a_one_line_error(cli, shared_data, tmp_path, where):
    parent = read_only_folder(tmp_path)
    dst = parent / "out" if where == "in" else parent / "missing" / "out"
    result = cli("augment", "copy-paste", str(shared_data / "coco" / "tiny_coco"), str(dst), "--size", "32")
    assert result.code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vvk: error: {dst}: cannot write the output there (")
    assert "internal error" not in result.stderr and not os.path.exists(dst)
