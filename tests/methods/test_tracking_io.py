"""Tracker weights (vvk.methods.tracking.io): a saved tracker rebuilds and tracks exactly as the
original on real OTB frames; backbones (a checkpoint, a pretraining run folder) get a fresh
SiamFC head; random:PRESET is seeded; anything else is a one-line error naming the path."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vvk.data.images import load_rgb
from vvk.errors import VvkError
from vvk.methods.tracking import PRESETS, build, siamfc, track
from vvk.methods.tracking.io import ARCH_NAME, TRACKER_FILE, load_tracker, save_tracker, tracker_arch
from vvk.models import build as build_model
from vvk.models import count_params, get_entry, list_models
from vvk.models import load as load_model
from vvk.models import save as save_model
from vvk.models.profile import count_macs_by_name, count_params_by_name, human_count

BOX = (205, 151, 17, 50)  # Crossing's first ground-truth box


@pytest.fixture(scope="module")
def crossing_frames(shared_data):
    img = shared_data / "tracking" / "otb" / "Crossing" / "img"
    return [load_rgb(img / f"{i:04d}.jpg") for i in range(1, 7)]  # (240, 360, 3) uint8


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = error.value.one_line()
    assert "\n" not in text
    return text


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_saved_tracker_tracks_exactly_as_the_original(crossing_frames, tmp_path):
    model, info = load_tracker("random:tiny", seed=7)
    assert info == {"source": "random:tiny", "kind": "random", "preset": "tiny", "backbone": "r3d-tiny"}
    path = save_tracker(
        model, tmp_path / "run" / TRACKER_FILE, preset="tiny", metadata={"data": "otb"}, step=3
    )
    assert path == tmp_path / "run" / TRACKER_FILE
    sidecar = json.loads((tmp_path / "run" / "tracker.json").read_text())
    assert sidecar["architecture"] == ARCH_NAME and sidecar["step"] == 3
    assert sidecar["kwargs"]["backbone"] == "r3d-tiny" and sidecar["kwargs"]["feature"] == "res3"
    assert sidecar["tracker"] == {"preset": "tiny", "data": "otb"}

    for weights in (path, tmp_path / "run"):  # the file, or its run folder
        loaded, info = load_tracker(weights)
        assert info["kind"] == "tracker" and info["preset"] == "tiny" and info["source"] == str(weights)
        assert not loaded.training and _same_state(model, loaded)
        assert tracker_arch(loaded) == tracker_arch(model)
    expected, _ = track(model, crossing_frames, BOX)
    boxes, _ = track(loaded, crossing_frames, BOX)
    assert np.array_equal(boxes, expected) and len(boxes) == 6
    assert not np.array_equal(boxes[1:], np.tile(boxes[:1], (5, 1)))  # it moved: a real comparison


def test_the_paper_preset_round_trips_its_branch_convs_and_frozen_backbone(tmp_path):
    # The paper preset's R3D-50 is big; the same head settings on r3d-tiny check the record.
    model = build(dataclasses.replace(PRESETS["paper"], backbone="r3d-tiny"))
    loaded, _ = load_tracker(save_tracker(model, tmp_path / TRACKER_FILE))
    kwargs = tracker_arch(loaded)["kwargs"]
    assert kwargs["branch_channels"] == 512 and kwargs["freeze_backbone"] and kwargs["feature"] == "res5"
    assert not any(p.requires_grad for p in loaded.features.backbone.parameters())
    assert _same_state(model, loaded)


def test_random_trackers_are_seeded_and_leave_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, _ = load_tracker("random:tiny")
    after = torch.rand(3)
    b, _ = load_tracker("random:tiny", seed=0)
    c, _ = load_tracker("random:tiny", seed=1)
    assert torch.equal(before, after)
    assert _same_state(a, b) and not _same_state(a, c)


def test_a_video_backbone_checkpoint_gets_a_fresh_frozen_head(crossing_frames, tmp_path):
    torch.manual_seed(0)
    backbone = build_model("r3d-tiny")
    save_model(backbone, tmp_path / "run" / "backbone.safetensors")  # as a `vvk pretrain` run exports it
    model, info = load_tracker(tmp_path / "run")
    assert info == {
        "source": str(tmp_path / "run"),
        "kind": "backbone",
        "preset": None,
        "backbone": "r3d-tiny",
    }
    assert _same_state(backbone, model.features.backbone)
    assert model.exemplar_conv is None and model.adjust_kind == "conv"
    assert model.features.feature == PRESETS["tiny"].feature  # the tiny preset's level of r3d-tiny
    # vvk's pretraining feeds video backbones [-1, 1]: (x - 0.5) / 0.5
    assert model.features.mean.flatten().tolist() == [0.5] * 3 == model.features.std.flatten().tolist()
    assert not any(p.requires_grad for p in model.features.backbone.parameters())
    boxes, _ = track(model, crossing_frames[:3], BOX)
    assert boxes.shape == (3, 4) and np.isfinite(boxes).all()
    # once saved, it is a tracker like any other
    again, info = load_tracker(save_tracker(model, tmp_path / "t" / TRACKER_FILE))
    assert info["kind"] == "tracker" and _same_state(model, again)
    assert np.array_equal(track(again, crossing_frames[:3], BOX)[0], boxes)


def test_an_image_backbone_keeps_imagenet_statistics(tmp_path):
    save_model(build_model("spinenet-tiny"), tmp_path / "spine.safetensors")
    model, info = load_tracker(tmp_path / "spine.safetensors")
    assert info["backbone"] == "spinenet-tiny" and model.features.feature == "P3"
    assert model.features.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_weights_that_are_not_a_tracker_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not weights")
    save_model(build_model("vatt-text-tiny"), tmp_path / "text.safetensors")
    cases = [
        ("random:huge", r"weights=random:huge: no tracker preset 'huge' \(one of paper, tiny\)"),
        (tmp_path / "gone", rf"weights={re.escape(str(tmp_path / 'gone'))}: no such file or folder"),
        (tmp_path / "empty", r"weights=.*empty: a folder without tracker.safetensors or backbone.safe"),
        (tmp_path / "notes.txt", r".*notes.txt: not a safetensors file"),
        (tmp_path / "text.safetensors", r"weights=.*text.safetensors: holds a 'vatt-text-tiny' model \("),
    ]  # fmt: skip
    for weights, message in cases:
        with pytest.raises(VvkError) as error:
            load_tracker(weights)
        assert re.match(message, _one_line(error)), _one_line(error)


def test_a_tampered_tracker_file_is_refused(tmp_path):
    model, _ = load_tracker("random:tiny")
    path = save_tracker(model, tmp_path / TRACKER_FILE)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one bit of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(VvkError, match="sha256 mismatch for tracker"):
        load_tracker(path)


def test_a_backbone_is_fed_alike_pretrained_or_random(tmp_path):
    """One normalisation per backbone kind, whatever the weights: the pretrained-vs-random
    comparison differs only in the weights."""
    save_model(build_model("r3d-tiny"), tmp_path / "run" / "backbone.safetensors")
    pretrained, _ = load_tracker(tmp_path / "run")
    random, _ = load_tracker("random:tiny")
    for model in (pretrained, random, build(PRESETS["tiny"]), siamfc("r3d-tiny", feature="res3")):
        # vvk's pretraining feeds video backbones [-1, 1]: (x - 0.5) / 0.5
        assert model.features.mean.flatten().tolist() == [0.5] * 3 == model.features.std.flatten().tolist()
    image = siamfc("spinenet-tiny")
    assert image.features.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    assert tracker_arch(pretrained)["kwargs"]["mean"] == tracker_arch(random)["kwargs"]["mean"]


def test_siamfc_is_a_registry_model_that_vvk_models_load_reads(crossing_frames, tmp_path):
    entry = get_entry("siamfc")
    assert entry.task == "tracking" and entry.default_input == (3, 255, 255) and entry.source
    assert "siamfc" in list_models(task="tracking")
    torch.manual_seed(0)
    model = build_model("siamfc", backbone="r3d-tiny", feature="res3")
    path = save_tracker(model, tmp_path / TRACKER_FILE, preset="tiny")
    loaded = load_model(path)  # vvk.models.load: the registry rebuilds it from the sidecar
    assert type(loaded).__name__ == "SiamFC" and _same_state(model, loaded)
    assert tracker_arch(loaded) == tracker_arch(model)
    boxes, _ = track(model, crossing_frames[:3], BOX)
    assert np.array_equal(track(loaded.eval(), crossing_frames[:3], BOX)[0], boxes)
    # sizes for `vvk models list --flops`: one exemplar (the crop's centre) and one search crop
    assert count_params_by_name("siamfc") == count_params(build_model("siamfc"))
    assert count_macs_by_name("siamfc") > count_macs_by_name("siamfc", (3, 127, 127)) > 0


def test_the_docs_list_the_tracker_with_its_size():
    text = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text(encoding="utf-8")
    row = r"^\| `([a-z0-9-]+)` \| tracking \| ([0-9.]+M) \| ([0-9.]+[KMGT]) \| "
    rows = re.findall(row, text, flags=re.M)
    expected = [
        (name, f"{count_params_by_name(name) / 1e6:.2f}M", human_count(count_macs_by_name(name)))
        for name in list_models(task="tracking")
    ]
    assert rows == expected, "docs/models.md rows of the trackers are out of date"
