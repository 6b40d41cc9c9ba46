"""`vvk translate-texture` end to end on DTD textures at toy sizes: train and translate, reuse a
model, the demo, every bad input a one-line error, and Ctrl-C leaving no partial output."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TOY = ("--steps", "3", "--size", "32", "--device", "cpu")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("VVK_OFFLINE", "1")  # no VGG-19 download attempt: the loss is off here


@pytest.fixture(scope="module")
def dtd(shared_data) -> Path:
    return shared_data / "textures" / "dtd"


@pytest.fixture
def photos(dtd, tmp_path) -> Path:
    """Three small images in a folder with a subfolder (outputs keep the path below it)."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for i, source in enumerate(sorted((dtd / "bubbly").iterdir())[:3]):
        image = Image.open(source).convert("RGB").resize((48 + 8 * i, 40))
        image.save(folder / ("more" if i == 2 else "") / f"photo{i}.jpg")
    return folder


def _error_line(result) -> str:
    assert result.code == 1, (result.code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vvk: error: "), result.stderr
    return lines[0]


def test_train_translate_and_reuse(cli, dtd, photos, tmp_path):
    texture, out, run = dtd / "banded" / "banded_0002.jpg", tmp_path / "out", tmp_path / "run"
    result = cli("translate-texture", "--texture", str(texture), str(photos), "--out", str(out),
                 "--save", str(run), *TOY, "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "finished" and record["images"] == 3 and record["training"]["step"] == 3
    assert record["training"]["perceptual"].startswith("perceptual loss off")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["more/photo2.png", "photo0.png", "photo1.png"]
    for name in written:  # each at its own size
        source = photos / Path(name).with_suffix(".jpg")
        assert Image.open(out / name).size == Image.open(source).size
    assert json.loads((run / "preset.json").read_text())["texture"] == str(texture)

    again = tmp_path / "again"
    reused = cli("translate-texture", "--weights", str(run), "-", "--out", str(again), "--device", "cpu",
                 stdin=f"{photos / 'photo0.jpg'}\n")  # fmt: skip
    assert reused.code == 0, reused.stderr
    assert np.array_equal(
        np.asarray(Image.open(again / "photo0.png")), np.asarray(Image.open(out / "photo0.png"))
    )

    refused = cli("translate-texture", "--weights", str(run), str(photos), "--out", str(out))
    assert "not empty" in _error_line(refused)
    inside = cli("translate-texture", "--weights", str(run), str(photos), "--out", str(photos / "x"))
    assert "inside" in _error_line(inside)
    both = cli(
        "translate-texture", "--weights", str(run), "--texture", str(texture), str(photos), "--out", "o"
    )
    assert "--weights" in (line := _error_line(both)) and "--texture, --save and --resume do not go" in line


def test_the_demo_puts_each_texture_on_each_photograph(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("translate-texture", *TOY, "--json")
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted({(r["texture"], r["photo"]) for r in rows}) == sorted(
        (t, p) for t in ("brick", "grass", "gravel") for p in ("astronaut", "chelsea", "coffee", "rocket")
    )
    for row in rows:
        translated = Image.open(row["out"])
        assert (
            translated.size == Image.open(tmp_path / "texture-demo" / "photos" / f"{row['photo']}.png").size
        )
    assert (tmp_path / "texture-demo" / "runs" / "brick" / "texture.safetensors").is_file()


def test_bad_inputs_are_one_line_errors_naming_the_file(cli, shared_data, photos, tmp_path):
    def translate(texture, *more):
        return cli("translate-texture", "--texture", str(texture), str(photos), "--out", str(tmp_path / "o"),
                   "--save", str(tmp_path / "r"), *TOY, *more)  # fmt: skip

    (tmp_path / "notes.jpg").write_text("not an image")
    assert "--texture" in (line := _error_line(translate(tmp_path / "notes.jpg"))) and "notes.jpg" in line
    video = shared_data / "video" / "misc" / "bikes.mp4"
    assert "a video" in _error_line(translate(video))
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    assert "1×1 px holds no texture" in _error_line(translate(tmp_path / "dot.png"))
    assert "no such file" in _error_line(translate(tmp_path / "missing.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _error_line(
        cli("translate-texture", "--texture", str(photos / "photo0.jpg"), str(empty), "--out", "o")
    )
    assert "empty" in line and "no images" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()  # nothing written
    usage = cli("translate-texture", "--texture", "t.png", "--steps", "0")
    assert usage.code == 2 and "'--steps': 0 is not in the range" in usage.stderr

    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(tmp_path / "grey.png")  # greyscale: fine
    assert translate(tmp_path / "grey.png").code == 0


def test_ctrl_c_in_training_saves_and_resume_finishes(cli, dtd, photos, tmp_path, monkeypatch):
    from vvk.methods.texture import train

    real_step = train._Step.__call__
    calls = []

    def stop_after_two(self, *args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args)

    monkeypatch.setattr(train._Step, "__call__", stop_after_two)
    run, out = tmp_path / "run", tmp_path / "out"
    texture = dtd / "banded" / "banded_0002.jpg"
    stopped = cli("translate-texture", "--texture", str(texture), str(photos), "--out", str(out),
                  "--save", str(run), *TOY)  # fmt: skip
    assert stopped.code == 130, stopped.stderr
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("vvk: error: interrupted after step 2") and f"--resume --save {run}" in last
    assert not out.exists() and (run / "checkpoints" / "step-00000002").is_dir()
    monkeypatch.undo()
    resumed = cli("translate-texture", "--resume", "--save", str(run), "--device", "cpu", "--json")
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["training"]["step"] == 3 and (run / "texture.safetensors").is_file()


def test_ctrl_c_while_translating_leaves_no_output(cli, dtd, photos, tmp_path, monkeypatch):
    from vvk.methods.texture import translate

    run = tmp_path / "run"
    trained = cli(
        "translate-texture", "--texture", str(dtd / "banded" / "banded_0002.jpg"), "--save", str(run), *TOY
    )
    assert trained.code == 0, trained.stderr
    real = translate.TextureModel.translate
    done = []

    def interrupted(self, image):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(1)
        return real(self, image)

    monkeypatch.setattr(translate.TextureModel, "translate", interrupted)
    out = tmp_path / "out"
    result = cli(
        "translate-texture", "--weights", str(run), str(photos), "--out", str(out), "--device", "cpu"
    )
    assert result.code == 130 and result.stderr.splitlines()[-1] == "vvk: error: interrupted"
    assert len(done) == 2 and not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no staging folder
