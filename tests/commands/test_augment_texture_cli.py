"""``vvk augment texture``: flags reach the library, a table or one JSON record comes out, errors
are one line that names the flag or file, Ctrl-C leaves nothing and exits 130."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

SHORT = ("--set", "steps=3", "--set", "size=32", "--device", "cpu")
COUNTS = {"banded": 4, "blotchy": 4, "bubbly": 1}  # the mean is 3: bubbly is the tail


@pytest.fixture(scope="module")
def dataset(shared_data, tmp_path_factory) -> Path:
    """A small long-tailed ImageFolder of real DTD images, downscaled to 48 px."""
    root = tmp_path_factory.mktemp("lt") / "data"
    for name, n in COUNTS.items():
        (root / name).mkdir(parents=True)
        for path in sorted((shared_data / "textures" / "dtd" / name).iterdir())[:n]:
            Image.open(path).convert("RGB").resize((48, 48)).save(root / name / f"{path.stem}.png")
    return root


def test_flags_reach_the_library(cli, monkeypatch, tmp_path):
    seen = {}

    def fake(dataset, out, **kwargs):
        seen.update(kwargs, dataset=dataset, out=out)
        if kwargs["progress"] is not None:
            kwargs["progress"](1, 1)
        kwargs["notes"]("training a model")
        return {"out": str(out), "manifest": str(out / "manifest.jsonl"),
                "classes": [{"class": "a", "images": 1, "new": 2, "models": 1}], "images_written": 2,
                "models_trained": 1, "perceptual": "perceptual loss off", "seconds": 0.5,
                "warnings": {"images unreadable": 3}}  # fmt: skip

    monkeypatch.setattr("vvk.augment.texture.augment_texture", fake)
    result = cli(
        "augment", "texture", "data", "--out", str(tmp_path / "o"), "--textures", "tex", "--per-class", "7",
        "--max-textures", "2", "--classes", "a,b", "--preset", "paper", "--set", "steps=9", "--set", "lr=0.1",
        "--seed", "4", "--device", "cpu", "--overwrite", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert (seen["dataset"], seen["out"], seen["textures"]) == (Path("data"), tmp_path / "o", Path("tex"))
    assert (seen["per_class"], seen["max_textures"], seen["classes"], seen["preset"]) == (
        7,
        2,
        "a,b",
        "paper",
    )
    assert (seen["overrides"], seen["seed"], seen["device"], seen["overwrite"]) == (
        ["steps=9", "lr=0.1"],
        4,
        "cpu",
        True,
    )
    assert seen["train_progress"] is False and seen["progress"] is None  # --json: no bars
    assert json.loads(result.stdout)["images_written"] == 2 and result.stdout.count("\n") == 1
    assert "training a model" in result.stderr
    assert f"images unreadable: 3 (listed in {tmp_path / 'o' / 'augment.json'})" in result.stderr

    defaults = cli("augment", "texture", "data", "--out", str(tmp_path / "o"))
    assert defaults.code == 0, defaults.stderr
    assert (seen["per_class"], seen["max_textures"], seen["classes"], seen["preset"]) == (
        None,
        None,
        "tail",
        "tiny",
    )
    assert (seen["textures"], seen["overrides"], seen["seed"], seen["overwrite"]) == (None, [], 0, False)
    assert seen["train_progress"] is True and callable(seen["progress"])


def test_real_run_json_then_table(cli, dataset, tmp_path):
    result = cli("augment", "texture", str(dataset), "--out", str(tmp_path / "a"), *SHORT, "--json")
    assert result.code == 0, result.stderr
    (summary,) = map(json.loads, result.stdout.splitlines())
    assert summary["classes"] == [{"class": "bubbly", "images": 1, "new": 3, "models": 1}]
    assert (summary["images_written"], summary["models_trained"]) == (3, 1)
    assert summary["manifest"] == str(tmp_path / "a" / "manifest.jsonl")
    records = [json.loads(line) for line in (tmp_path / "a" / "manifest.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == [f"images/bubbly/sitt-{i:05d}.png" for i in range(3)]
    assert all(r["source_class"] in ("banded", "blotchy") for r in records)
    assert "texture model 1/1: class bubbly" in result.stderr

    table = cli("augment", "texture", str(dataset), "--out", str(tmp_path / "b"), *SHORT, "--per-class", "2")
    assert table.code == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if "bubbly" in line)
    assert [cell for cell in row if cell != "│"] == ["bubbly", "1", "2", "1"]
    assert f"2 new image(s) in {tmp_path / 'b'}, 1 texture model(s)" in table.stderr
    assert sorted(os.listdir(tmp_path / "b" / "images" / "bubbly")) == ["sitt-00000.png", "sitt-00001.png"]


def test_overwrite_replaces_a_non_empty_out(cli, dataset, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("x")
    refused = cli("augment", "texture", str(dataset), "--out", str(out), *SHORT)
    assert refused.code == 1 and refused.stderr == (
        f"vvk: error: {out}: folder is not empty (pass --overwrite to replace it)\n"
    )
    assert os.listdir(out) == ["old.txt"]
    replaced = cli(
        "augment", "texture", str(dataset), "--out", str(out), *SHORT, "--per-class", "1", "--overwrite"
    )
    assert replaced.code == 0, replaced.stderr
    assert sorted(os.listdir(out)) == ["augment.json", "images", "manifest.jsonl", "models"]


def _bad_texture(tmp_path: Path, name: str, content: bytes | None) -> Path:
    path = tmp_path / "tex" / "bubbly" / name
    path.parent.mkdir(parents=True)
    if content is None:
        Image.new("RGB", (1, 1)).save(path)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--classes", "zebra"],
            "--classes zebra: no such class in the dataset (classes: banded, blotchy, bubbly)",
        ),
        (["--classes", "banded"], "nothing to add (give --per-class N)"),
        (["--set", "size=30"], "size=30: must be a multiple of 4"),
        (["--per-class", "0"], "Invalid value for '--per-class'"),
        (["--preset", "huge"], "Invalid value for '--preset'"),
    ],
)
def test_bad_options_are_one_line_errors(cli, dataset, tmp_path, args, message):
    result = cli("augment", "texture", str(dataset), "--out", str(tmp_path / "o"), *SHORT, *args)
    assert result.code in (1, 2) and result.stderr.count("\n") == 1 and message in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("notes.jpg", b"a text file, renamed", "cannot be read as an image"),
        ("clip.mp4", b"\x00\x00\x00\x18ftypmp42", "a video; expected an image"),
        ("dot.png", None, "1×1 px holds no texture"),
    ],
)
def test_bad_textures_name_the_flag_and_file(cli, dataset, tmp_path, name, content, reason):
    path = _bad_texture(tmp_path, name, content)
    result = cli(
        "augment", "texture", str(dataset), "--out", str(tmp_path / "o"), "--textures", str(path.parents[1])
    )
    assert result.code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"vvk: error: --textures {path}: {reason}")
    assert not (tmp_path / "o").exists()


def test_inputs_are_never_outputs(cli, dataset, tmp_path):
    for out in (dataset, dataset / "more", dataset.parent):
        result = cli("augment", "texture", str(dataset), "--out", str(out), *SHORT)
        assert (
            result.code == 1 and "the output may not be inside, or contain, the input folder" in result.stderr
        )
    assert not (dataset / "more").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("augment", "texture", str(empty), "--out", str(tmp_path / "o"))
    assert result.stderr == (
        f"vvk: error: {empty}: no class folders with images (expected {empty}/<class>/<image>)\n"
    )


def test_ctrl_c_leaves_no_out_and_exits_130(cli, dataset, tmp_path, monkeypatch):
    import vvk.methods.texture.run as run

    real, written = run.write_png, []

    def interrupted(path, image):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real(path, image)

    monkeypatch.setattr(run, "write_png", interrupted)
    parent = tmp_path / "runs"
    result = cli("augment", "texture", str(dataset), "--out", str(parent / "o"), *SHORT, "--per-class", "5")
    assert result.code == 130 and result.stderr.splitlines()[-1] == "vvk: error: interrupted"
    assert len(written) == 2 and ".partial" in str(written[0])  # it was writing, in the staging folder
    assert os.listdir(parent) == []  # neither OUT nor its staging folder
