"""SITT networks (Boyiliee/SITTA models.py): exact parameter counts, shapes at the training size,
PONO and the decoder's re-injection of its moments, the texture code, orthogonal init, the
registry entry and which generator does what in a translation; one translation of real images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from vvk.models import build, count_params, get_entry
from vvk.models.profile import count_macs_by_name, count_params_by_name
from vvk.models.texture import PONO, SITT, PatchDiscriminator, SITTGenerator, orthogonal_init_


def _images(n: int, size: int, seed: int) -> Tensor:
    """(n, 3, size, size) in [-1, 1], as the reference's Normalize(0.5, 0.5) makes them."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def generator() -> SITTGenerator:
    torch.manual_seed(0)
    return orthogonal_init_(SITTGenerator()).eval()


# ---------------------------------------------------------------------------------------------
# Size and shapes


def test_parameter_counts_match_the_reference():
    with torch.device("meta"):
        assert count_params(SITTGenerator()) == 1_052_355
        assert count_params(PatchDiscriminator()) == 391_169
    assert count_params_by_name("sitt") == 2_887_048  # 2 generators + 2 discriminators


def test_registry_entry():
    entry = get_entry("sitt")
    assert entry.task == "texture"
    assert entry.default_input == (3, 288, 288)
    assert "Boyiliee/SITTA" in entry.source
    # `vvk models list --flops` counts one translation (profile_forward) on the meta device.
    assert count_macs_by_name("sitt") > count_macs_by_name("sitt", (3, 144, 144)) > 0


def test_shapes_at_the_training_size():
    torch.manual_seed(0)
    model = build("sitt").eval()
    x = _images(1, 288, seed=1)
    with torch.no_grad():
        shape, stats = model.g_a.encode_shape(x)
        texture = model.g_a.encode_texture(x)
        out = model.g_a(x, x)
        scores = model.d_a(x)
    assert shape.shape == texture.shape == (1, 128, 72, 72)
    assert [(m.shape, s.shape) for m, s in stats] == [((1, 1, 72, 72),) * 2, ((1, 1, 144, 144),) * 2]
    assert scores.shape == (1, 1, 288, 288)
    assert out.shape == (1, 3, 288, 288)
    assert out.abs().max() <= 1 and out.std() > 0


# ---------------------------------------------------------------------------------------------
# PONO and its moments in the decoder


def test_pono_normalises_each_position_over_channels():
    # Three channels: an unbiased std differs from the biased one by sqrt(3/2).
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0)) * 4 + 7
    y, mean, std = PONO()(x)
    assert mean.shape == std.shape == (2, 1, 5, 6)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(2, 5, 6), atol=1e-5, rtol=0)
    var = x.var(dim=1)  # unbiased; the biased std would come out as sqrt(2/3) = 0.82 here
    torch.testing.assert_close(y.std(dim=1), torch.ones(2, 5, 6), atol=1e-3, rtol=0)
    torch.testing.assert_close(y.std(dim=1), (var / (var + 1e-5)).sqrt(), atol=1e-6, rtol=0)
    torch.testing.assert_close(y * std + mean, x)
    assert not list(PONO().parameters())  # no affine


def test_decoder_reinjects_the_moments_before_each_transposed_conv(generator):
    x, t = _images(2, 32, seed=1), _images(2, 32, seed=2)
    with torch.no_grad():
        shape, stats = generator.encode_shape(x)
        texture = generator.encode_texture(t)
        seen = []
        hooks = [up.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for up in generator.up]
        out = generator.decode(shape, texture, stats)
        for h in hooks:
            h.remove()
        fused = generator.fuse(torch.cat([shape, texture], 1))  # (2, 128, 8, 8)
        (mean0, std0), (mean1, std1) = stats  # deepest (8x8) first, then 16x16
        torch.testing.assert_close(seen[0], fused * std0 + mean0)
        torch.testing.assert_close(seen[1], generator.up[0](seen[0]) * std1 + mean1)
        torch.testing.assert_close(out, generator(x, t))
        other = generator.decode(shape, texture, [(m + 0.5, s * 2) for m, s in stats])
    assert (other - out).abs().max() > 1e-3
    with pytest.raises(ValueError, match="2 upsampling steps"):
        generator.decode(shape, texture, stats[:1])


# ---------------------------------------------------------------------------------------------
# The texture code


def test_texture_code_is_one_non_negative_vector_per_image(generator):
    with torch.no_grad():
        codes = generator.encode_texture(torch.cat([_images(1, 64, seed=3), _images(1, 64, seed=4) * 0.2]))
    assert codes.shape == (2, 128, 16, 16)
    assert torch.equal(codes, codes[:, :, :1, :1].expand_as(codes))  # constant over space
    assert (codes >= 0).all() and (codes > 0).any()
    assert (codes[0] - codes[1]).abs().max() > 1e-4  # another texture image, another code


def test_translate_uses_g_a_encoders_and_g_b_decoder():
    torch.manual_seed(0)
    model = orthogonal_init_(SITT()).eval()
    x, t = _images(1, 32, seed=5), _images(1, 32, seed=6)
    with torch.no_grad():
        shape, stats = model.g_a.encode_shape(x)
        expected = model.g_b.decode(shape, model.g_a.encode_texture(t), stats)
        torch.testing.assert_close(model.translate(x, t), expected, rtol=0, atol=0)

        def changed(perturb) -> bool:
            other = copy.deepcopy(model)
            for p in perturb(other).parameters():
                p.add_(0.5)
            return not torch.equal(other.translate(x, t), expected)

        assert changed(lambda m: m.g_a.shape_stem) and changed(lambda m: m.g_a.texture_encoder)
        assert changed(lambda m: m.g_b.up)
        assert not changed(lambda m: m.g_b.shape_stem) and not changed(lambda m: m.g_b.texture_encoder)
        assert not changed(lambda m: m.g_a.up) and not changed(lambda m: m.d_a)


# ---------------------------------------------------------------------------------------------
# Orthogonal initialisation


def _weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kinds)]


def test_orthogonal_init_of_every_conv_and_linear():
    torch.manual_seed(0)
    model = SITT()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        nn.init.constant_(m.weight, 0.5)
    assert orthogonal_init_(model) is model
    layers = _weights(model)
    kinds = {type(m) for _, m in layers}
    assert kinds == {nn.Conv2d, nn.ConvTranspose2d, nn.Linear}
    for name, m in layers:
        w = m.weight.detach().reshape(m.weight.shape[0], -1)  # as init.orthogonal_ flattens it
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-4, rtol=0, msg=name)
        assert m.bias is None or not m.bias.any(), name
    assert all((m.weight == 0.5).all() for m in norms)  # norms untouched


def test_the_builder_initialises_as_a_fresh_run_unless_told_not_to():
    torch.manual_seed(0)
    first = build("sitt").g_a.shape_stem[0][0]  # the 5x5 stem conv: (32, 75) rows
    w = first.weight.detach().reshape(32, -1)
    torch.testing.assert_close(w @ w.T, torch.eye(32), atol=1e-4, rtol=0)
    w = build("sitt", init=False).g_a.shape_stem[0][0].weight.detach().reshape(32, -1)
    assert not torch.allclose(w @ w.T, torch.eye(32), atol=1e-2)


def test_discriminator_layers():
    layers = list(PatchDiscriminator().net)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3, 32),
        (32, 64),
        (64, 128),
        (128, 256),
        (256, 1),
    ]
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in layers) == 3
    assert all(m.negative_slope == 0.2 for m in layers if isinstance(m, nn.LeakyReLU))


# ---------------------------------------------------------------------------------------------
# Real images: a COCO photo rendered with DTD textures


def test_translates_a_real_photo_with_real_textures(shared_data):
    def read(path) -> Tensor:
        with Image.open(path) as im:
            pixels = torch.from_numpy(np.array(im.convert("RGB").resize((64, 64), Image.BILINEAR)))
        return pixels.permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, 64, 64) in [-1, 1]

    content = read(sorted((shared_data / "coco" / "tiny_coco" / "train2017").glob("*.jpg"))[0])
    textures = torch.cat(
        [read(sorted((shared_data / "textures" / "dtd" / c).glob("*.jpg"))[0]) for c in ("banded", "bubbly")]
    )
    torch.manual_seed(0)
    model = build("sitt").eval()
    with torch.no_grad():
        codes = model.g_a.encode_texture(textures)
        out = model.translate(content.expand(2, -1, -1, -1), textures)
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all() and out.abs().max() <= 1
    assert (codes[0] - codes[1]).abs().max() > 1e-4
    # Same photo, two textures: two renderings (untrained, the texture code moves them little).
    assert not torch.equal(out[0], out[1])
