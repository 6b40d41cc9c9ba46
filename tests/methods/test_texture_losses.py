"""SITT's losses (Boyiliee/SITTA models.py, train.py): LSGAN and the texture-code loss on
hand-computed cases, the VGG-19 perceptual loss against a manual computation on a random VGG, and
its weights through the weights registry: missing offline is "off", a wrong file is an error."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from vvk.errors import VvkError
from vvk.methods.texture.losses import (
    VGGPerceptualLoss,
    load_perceptual_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    texture_code_loss,
)
from vvk.paths import torch_hub_checkpoints
from vvk.weights import Source, WeightsEntry, load_registry, sha256_file

# ---------------------------------------------------------------------------------------------
# LSGAN


def test_lsgan_discriminator_loss_by_hand():
    fake = torch.tensor([[0.5, -1.0]])
    real = torch.tensor([[1.0, 0.0]])
    # mean(fake²) = (0.25 + 1) / 2 = 0.625; mean((real - 1)²) = (0 + 1) / 2 = 0.5; half their sum.
    assert lsgan_discriminator_loss(fake, real).item() == pytest.approx(0.5625)


def test_lsgan_generator_loss_by_hand():
    out = torch.tensor([0.5, -1.0, 3.0])
    # (0.25 + 4 + 4) / 3
    assert lsgan_generator_loss(out).item() == pytest.approx(2.75)


# ---------------------------------------------------------------------------------------------
# Texture-code loss


def _reference(a: Tensor, b: Tensor) -> Tensor:
    """train.py, verbatim: F.kl_div with its default reduction='mean' (which warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return -0.5 * (F.kl_div(a, b) + F.kl_div(b, a))


def test_texture_code_loss_by_hand():
    a = torch.tensor([0.0, 1.0, 2.0])
    b = torch.tensor([math.e, 1.0, 0.0])
    # kl_div(a, b) = mean(b (log b - a)) = (e·(1 - 0) + 1·(0 - 1) + 0) / 3 = (e - 1) / 3
    # kl_div(b, a) = mean(a (log a - b)) = (0 + 1·(0 - 1) + 2·(log 2 - 0)) / 3 = (2 log 2 - 1) / 3
    # loss = -(e + 2 log 2 - 2) / 6; the zero targets add 0 (0 log 0 = 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no reduction='mean' deprecation warning
        value = texture_code_loss(a, b)
    assert value.item() == pytest.approx(-0.3507627, abs=1e-6)
    assert value.item() == pytest.approx(_reference(a, b).item(), abs=1e-6)


def test_texture_code_loss_equals_the_reference_expression_with_its_gradients():
    g = torch.Generator().manual_seed(0)
    a0 = F.relu(torch.randn(2, 16, 3, 3, generator=g))  # ReLU codes: about half are exactly 0
    b0 = F.relu(torch.randn(2, 16, 3, 3, generator=g))
    assert (a0 == 0).any() and (b0 == 0).any()
    grads = []
    for fn in (texture_code_loss, _reference):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
        value = fn(a, b)
        value.backward()
        grads.append((value.detach(), a.grad, b.grad))
    for mine, ref in zip(*grads, strict=True):
        torch.testing.assert_close(mine, ref, equal_nan=True)  # NaN at zero entries (log 0), as there


def test_texture_code_loss_closed_form():
    # kl_div(x, t) is elementwise t log t - t x, so the loss is mean(ab) - 0.5 mean(a log a + b log b)
    g = torch.Generator().manual_seed(1)
    a, b = F.relu(torch.randn(4, 8, generator=g)), F.relu(torch.randn(4, 8, generator=g))
    expected = (a * b).mean() - 0.5 * (torch.xlogy(a, a) + torch.xlogy(b, b)).mean()
    torch.testing.assert_close(texture_code_loss(a, b), expected)


def test_texture_code_loss_gradients_through_the_texture_encoder_are_finite():
    from vvk.models.texture import SITTGenerator, orthogonal_init_

    torch.manual_seed(0)
    g = orthogonal_init_(SITTGenerator())
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    codes = g.encode_texture(images)
    assert (codes == 0).any()  # zero entries, whose target gradient is NaN before the ReLU
    texture_code_loss(codes[:1], codes[1:]).backward()
    grads = [p.grad for p in g.texture_encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)


# ---------------------------------------------------------------------------------------------
# Perceptual loss on a random VGG-19


@pytest.fixture(scope="module")
def vgg19() -> torchvision.models.VGG:
    torch.manual_seed(0)
    return torchvision.models.vgg19(weights=None).eval()


@pytest.fixture
def loss(vgg19) -> VGGPerceptualLoss:
    return VGGPerceptualLoss(vgg19.features)


def _pair(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


def test_slices_end_at_relu1_1_to_relu5_1(loss):
    x, _ = _pair(0)
    with torch.no_grad():
        feats = loss.features(x)
    assert [f.shape[1:] for f in feats] == [
        (64, 32, 32),
        (128, 16, 16),
        (256, 8, 8),
        (512, 4, 4),
        (512, 2, 2),
    ]
    assert all(isinstance(block[-1], torch.nn.ReLU) for block in loss.slices)
    assert sum(len(block) for block in loss.slices) == 30


def test_perceptual_loss_is_the_weighted_l1_of_the_five_layers(loss, vgg19):
    def relus(h: Tensor) -> list[Tensor]:
        kept = []
        for i, layer in enumerate(vgg19.features[:30]):
            h = layer(h)
            if i in (1, 6, 11, 20, 29):  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
                kept.append(h.clone())
        return kept

    x, y = _pair(1)
    with torch.no_grad():
        distances = [(fx - fy).abs().mean() for fx, fy in zip(relus(x), relus(y), strict=True)]
        expected = sum(w * d for w, d in zip([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0], distances, strict=True))
        value = loss(x, y)
    torch.testing.assert_close(value, expected)
    assert not torch.allclose(value, sum(distances))  # the weights matter on this pair


def test_perceptual_loss_is_zero_for_identical_inputs(loss):
    x, _ = _pair(2)
    assert loss(x, x.clone()).item() == 0


def test_vgg_is_frozen_and_gradients_reach_the_input(loss):
    x, y = _pair(3)
    x.requires_grad_()
    y.requires_grad_()
    loss.train()  # a trainer's .train() leaves the feature extractor alone
    assert not loss.training and not any(m.training for m in loss.modules())
    assert not any(p.requires_grad for p in loss.parameters())
    loss(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert y.grad is None  # the target's features are detached
    assert all(p.grad is None for p in loss.parameters())


def test_too_short_features_are_refused(vgg19):
    with pytest.raises(ValueError, match="VGG-19"):
        VGGPerceptualLoss(vgg19.features[:20])


# ---------------------------------------------------------------------------------------------
# Weights through the registry (local caches, downloads off)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty vvk and torch hub caches, downloads off (as tests/models/test_pretrained_loading.py)."""
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "vvk-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VVK_OFFLINE", "1")
    return tmp_path


def _entry(file_name: str, sha256: str) -> WeightsEntry:
    """A copy of the real vgg19.tv_in1k entry for a file made here."""
    real = load_registry()["vgg19.tv_in1k"]
    return WeightsEntry(
        name="vgg19.test",
        architecture=real.architecture,
        task=real.task,
        source=Source(kind="torchvision", torchvision="VGG19_Weights.IMAGENET1K_V1"),
        file=file_name,
        sha256=sha256,
        license=real.license,
        paper=real.paper,
        metrics=real.metrics,
    )


def _place(state: dict[str, Tensor]) -> WeightsEntry:
    """Save ``state`` in torch hub's cache, named as torchvision names its files."""
    staged = torch_hub_checkpoints() / "staged.pth"
    staged.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, staged)
    sha = sha256_file(staged)[:8]
    staged.rename(staged.with_name(f"vgg19-{sha}.pth"))
    return _entry(f"vgg19-{sha}.pth", sha)


def test_missing_weights_offline_turn_the_loss_off(caches):
    loss, note = load_perceptual_loss()  # the real registry's vgg19.tv_in1k, in no cache here
    assert loss is None
    assert note == "perceptual loss off: no VGG-19 weights here (`vvk weights pull vgg19.tv_in1k`)"
    with pytest.raises(VvkError, match="vgg19.tv_in1k.*downloads are off"):
        VGGPerceptualLoss.from_registry()


def test_unknown_name_is_an_error_not_off(caches):
    with pytest.raises(VvkError, match="unknown weights 'vgg19.nope'"):
        load_perceptual_loss("vgg19.nope")


def test_cached_weights_load_through_the_registry(caches, vgg19):
    entry = _place(vgg19.state_dict())
    loss, note = load_perceptual_loss(entry.name, registry={entry.name: entry})
    assert note == "perceptual loss on: VGG-19 weights vgg19.test"
    assert isinstance(loss, VGGPerceptualLoss) and not any(p.requires_grad for p in loss.parameters())
    assert loss.slices[0][0].weight is not vgg19.features[0].weight  # loaded from the file
    x, y = _pair(4)
    with torch.no_grad():
        torch.testing.assert_close(loss(x, y), VGGPerceptualLoss(vgg19.features)(x, y), rtol=0, atol=0)


def test_a_corrupt_file_is_an_error(caches):
    entry = _place({"features.0.weight": torch.zeros(64, 3, 3, 3)})
    path = torch_hub_checkpoints() / entry.file
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # no longer the sha256 the entry names
    with pytest.raises(VvkError, match="sha256 mismatch for weights 'vgg19.test'"):
        load_perceptual_loss(entry.name, registry={entry.name: entry})


def test_a_file_that_is_not_vgg19_is_an_error(caches):
    entry = _place({"features.0.weight": torch.zeros(64, 3, 3, 3)})  # right hash, wrong content
    with pytest.raises(VvkError, match="missing"):
        load_perceptual_loss(entry.name, registry={entry.name: entry})
