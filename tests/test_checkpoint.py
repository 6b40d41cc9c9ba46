"""Checkpoints: safetensors + sidecar, rebuilt from the files alone, atomic, strict."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

import vvk
from vvk.errors import VvkError
from vvk.models import build, load, register, save
from vvk.models.checkpoint import load_file, load_weights, sidecar_path
from vvk.models.registry import unregister


@pytest.fixture
def toy():
    name = "test-toy-convnet"

    @register(name, task="image-backbone", default_input=(3, 16, 16), source="tests")
    def convnet(width: int = 4, tied: bool = False):
        model = nn.Sequential(
            nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.Flatten(), nn.Linear(width * 196, 3)
        )
        if tied:  # shared tensors must survive safetensors' de-duplication
            model.extra = nn.Linear(3, 3)
            model.extra2 = nn.Linear(3, 3)
            model.extra2.weight = model.extra.weight
        return model

    yield name
    unregister(name)


def _trained(name, **kwargs):
    torch.manual_seed(0)
    model = build(name, **kwargs)
    model(torch.randn(2, 3, 16, 16))  # update BN running statistics so buffers are non-trivial
    return model.eval()


def test_roundtrip_rebuilds_from_files(toy, tmp_path):
    model = _trained(toy, width=5)
    path = save(model, tmp_path / "model.safetensors", step=7, metrics={"loss": 0.5})
    side = json.loads(sidecar_path(path).read_text())
    assert side["architecture"] == toy and side["kwargs"] == {"width": 5}
    assert side["step"] == 7 and side["metrics"] == {"loss": 0.5} and side["vvk_version"] == vvk.__version__
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(load(path).eval()(x), model(x), rtol=0, atol=0)


def test_file_alone_is_enough_but_is_loaded_with_a_warning(toy, tmp_path, caplog):
    model = _trained(toy)
    path = save(model, tmp_path / "m.safetensors")
    sidecar_path(path).unlink()
    x = torch.randn(1, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="vvk.models"):
        torch.testing.assert_close(load(path).eval()(x), model(x), rtol=0, atol=0)
    # Nothing vouches for the tensors any more: the user hears so, and how to write a new sidecar.
    (record,) = caplog.records
    assert f"{path}: no m.json sidecar beside it, so its sha256 cannot be checked" in record.getMessage()
    assert f"m.save(m.load('{path}'), '{path}')" in record.getMessage()
    caplog.clear()
    # A registry entry's file (its sha256 checked by the registry) or a checked Hub blob: no word.
    with caplog.at_level(logging.WARNING, logger="vvk.models"):
        load_file(path, architecture=toy)
        load_file(path, verified=True)
    assert not caplog.records


def test_shared_tensors_roundtrip(toy, tmp_path):
    model = _trained(toy, tied=True)
    loaded = load(save(model, tmp_path / "tied.safetensors"))
    assert loaded.extra2.weight is loaded.extra.weight
    torch.testing.assert_close(loaded.extra.weight, model.extra.weight)


def test_corrupted_file_is_detected(toy, tmp_path):
    path = save(_trained(toy), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(VvkError, match="sha256 mismatch"):
        load(path)


def test_key_mismatch_lists_keys(toy, tmp_path):
    path = save(_trained(toy), tmp_path / "m.safetensors")
    other = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(784, 3), nn.Linear(3, 3)
    )
    with pytest.raises(VvkError, match=r"2 missing key\(s\): 4.bias, 4.weight"):
        load_weights(other, path)
    smaller = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(VvkError, match=r"unexpected key\(s\): 1.bias, 1.num_batches_tracked"):
        load_weights(smaller, path)


def test_crash_during_save_keeps_previous_checkpoint(toy, tmp_path, monkeypatch):
    model = _trained(toy)
    path = save(model, tmp_path / "m.safetensors", step=1)
    before = path.read_bytes()

    def crash(model, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr("vvk.models.checkpoint._st_save_model", crash)
    with pytest.raises(OSError, match="disk full"):
        save(model, path, step=2)
    assert path.read_bytes() == before
    assert json.loads(sidecar_path(path).read_text())["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_unregistered_model_needs_arch(tmp_path):
    with pytest.raises(ValueError, match="arch="):
        save(nn.Linear(2, 2), tmp_path / "x.safetensors")


def test_malformed_sidecar_names_file(toy, tmp_path):
    path = save(_trained(toy), tmp_path / "m.safetensors")
    sidecar_path(path).write_text("{not json")
    with pytest.raises(VvkError, match=r"m.json: malformed JSON at line 1"):
        load(path)


def test_weights_verify_checks_a_checkpoint_against_its_sidecar(toy, tmp_path, cli):
    path = save(_trained(toy), tmp_path / "m.safetensors")
    ok = cli("weights", "verify", str(path), "--json")
    assert ok.code == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "ok"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # a changed last byte, always
    bad = cli("weights", "verify", str(path), "--json")
    assert bad.code == 1
    assert json.loads(bad.stdout)["status"].startswith("MISMATCH")
    assert "1 file(s) failed verification" in bad.stderr


def test_shape_mismatch_is_reported(toy, tmp_path):
    path = save(_trained(toy, width=4), tmp_path / "m.safetensors")
    with pytest.raises(VvkError, match="does not fit the model.*size mismatch"):
        load_weights(build(toy, width=6), path)
