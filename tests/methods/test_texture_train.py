"""SITT training and translation on real DTD textures at toy sizes: the fixed views, a run that
learns, resume bit for bit after a signal, the exported model, and translation that keeps each
image's size and does not depend on the other images or disturb the model."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vvk.errors import VvkError
from vvk.methods.texture import train as texture_train
from vvk.methods.texture.images import read_image, read_texture
from vvk.methods.texture.train import MODEL_FILE, resolve_preset, train_texture
from vvk.methods.texture.translate import batch_statistics, load_texture_model
from vvk.methods.texture.views import fixed_views, to_uint8, to_unit_range

TOY = ["size=32", "log_every=1", "checkpoint_every=0"]


@pytest.fixture(scope="module")
def dtd(shared_data) -> Path:
    return shared_data / "textures" / "dtd"


@pytest.fixture(scope="module")
def texture(dtd) -> Path:
    return dtd / "banded" / "banded_0002.jpg"


@pytest.fixture(scope="module")
def contents(dtd) -> list[Path]:
    return sorted((dtd / "bubbly").iterdir())[:3]


def test_views_are_fixed_by_the_seed_and_end_with_the_plain_resize():
    red = np.zeros((40, 60, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((50, 30, 3), np.uint8)
    blue[..., 2] = 255
    views = fixed_views([red, blue], 16, views=10, seed=3)  # (10, 3, 16, 16)
    assert views.shape == (10, 3, 16, 16) and views.min() >= -1 and views.max() <= 1
    # view k of image k % 2: red views have R = 1, B = -1; blue the reverse
    assert torch.allclose(views[0::2, 0], torch.ones(())) and torch.allclose(views[0::2, 2], -torch.ones(()))
    assert torch.allclose(views[1::2, 2], torch.ones(())) and torch.allclose(views[1::2, 0], -torch.ones(()))
    assert torch.equal(views, fixed_views([red, blue], 16, views=10, seed=3))

    ramp = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))  # left to right
    one = fixed_views([ramp], 32, views=10, seed=0)
    plain = F.interpolate(to_unit_range(ramp)[None], size=32, mode="bilinear", antialias=True)
    assert torch.allclose(one[-1], plain[0], atol=1e-5)  # the reference's last view: Resize([S, S])
    others = fixed_views([ramp], 32, views=10, seed=1)
    assert not torch.equal(one[:-1], others[:-1])  # the random kinds follow the seed


def test_pixels_round_trip_through_the_unit_range():
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    x = to_unit_range(image)
    assert x.shape == (3, 7, 5) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(x), image)


def test_presets_follow_the_reference_schedule():
    paper = resolve_preset("paper")
    config = paper.train_config(seed=0)
    lrs = [texture_train.lr_at(step, config) for step in (0, 999, 1000, 1999, 2000, 2999, 3000, 3009)]
    # StepLR(1000, 0.1) stepped per iteration: a third drop for the last 10 of the 3,010
    assert lrs == pytest.approx([5e-4, 5e-4, 5e-5, 5e-5, 5e-6, 5e-6, 5e-7, 5e-7])
    assert (paper.size, paper.views, paper.steps, paper.ngf, paper.ndf) == (288, 10, 3010, 32, 32)
    assert (paper.cycle_w, paper.idt_w, paper.vgg_w, paper.texture_w, paper.gan_w) == (10, 5, 1, 1, 1)
    with pytest.raises(VvkError, match="size=30"):
        resolve_preset("tiny", ["size=30"])


def test_a_run_learns_and_exports_what_translation_needs(texture, contents, tmp_path):
    run = train_texture(texture, contents, overrides=[*TOY, "steps=30"], out=tmp_path / "run", progress=False)
    assert run.status == "finished" and run.step == 30
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert set(first) >= {"loss", "d_loss", "adv", "cycle", "idt", "texture", "lr"}
    # reconstruction (identity, cycle) falls as the generators learn the two domains
    assert last["idt"] < 0.8 * first["idt"] and last["cycle"] < 0.8 * first["cycle"]

    tensors = load_file(str(run.model_path))
    assert run.model_path == tmp_path / "run" / MODEL_FILE
    assert tensors["texture_code"].shape == (64,)  # the tiny preset's ngf 16 -> 64-wide code
    assert any(k.startswith("g_a.") for k in tensors) and any(k.startswith("g_b.") for k in tensors)
    assert not any(k.startswith("d_") for k in tensors)  # the discriminators stay in the run

    model = load_texture_model(tmp_path / "run")
    image = read_image(contents[0])[:45, :70]
    out = model.translate(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    other = model.translate(read_image(contents[1]))
    assert np.array_equal(model.translate(image), out)  # one image at a time: no batch effects
    assert not np.array_equal(other[:45, :70], out)


def test_a_signal_saves_and_resume_continues_bit_for_bit(texture, contents, tmp_path, monkeypatch):
    six = [*TOY, "steps=6"]
    straight = train_texture(texture, contents, overrides=six, out=tmp_path / "a", progress=False)

    real_step = texture_train._Step.__call__
    calls = []

    def stop_after_three(self, *args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the step finishes, then the run saves and stops
        return real_step(self, *args)

    monkeypatch.setattr(texture_train._Step, "__call__", stop_after_three)
    stopped = train_texture(texture, contents, overrides=six, out=tmp_path / "b", progress=False)
    assert (stopped.status, stopped.step, stopped.model_path) == ("interrupted", 3, None)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    monkeypatch.undo()
    with pytest.raises(VvkError, match="keeps its texture"):
        train_texture(texture, contents, out=tmp_path / "b", resume=True, progress=False)
    resumed = train_texture(out=tmp_path / "b", resume=True, progress=False)
    assert (resumed.status, resumed.step) == ("finished", 6)
    a, b = load_file(str(straight.model_path)), load_file(str(resumed.model_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(VvkError, match="already holds a run"):
        train_texture(texture, contents, overrides=TOY, out=tmp_path / "b", progress=False)


def test_batch_statistics_leave_the_running_averages_alone():
    norm = torch.nn.BatchNorm2d(3).eval()
    norm.running_mean.fill_(5.0)
    x = torch.randn(1, 3, 4, 4)
    with batch_statistics(norm):
        y = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)  # the batch's own mean
    assert torch.all(norm.running_mean == 5.0) and not norm.training and norm.track_running_stats


def test_textures_are_checked(tmp_path, shared_data):
    from PIL import Image

    Image.new("L", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(VvkError, match=r"texture=.*dot.png: 1×1 px holds no texture"):
        read_texture(tmp_path / "dot.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(VvkError, match=r"texture=.*notes.jpg: cannot be read as an image"):
        read_texture(tmp_path / "notes.jpg")
    with pytest.raises(VvkError, match=r"texture=.*bikes.mp4: a video"):
        read_texture(shared_data / "video" / "misc" / "bikes.mp4")
    grey = np.asarray(read_texture(_skimage_brick(tmp_path)))  # greyscale: replicated to RGB
    assert grey.shape[2] == 3 and np.array_equal(grey[..., 0], grey[..., 2])


def _skimage_brick(folder: Path) -> Path:
    import skimage.data
    from PIL import Image

    path = folder / "brick.png"
    Image.fromarray(skimage.data.brick()).save(path)
    return path
