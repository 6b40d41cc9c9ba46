"""SiamFC network: cross-correlation against a loop, the backbone adapter on registered image and
video backbones (stride 8 natively or by dilation, normalised by backbone kind), the adjust
variants, the registry entry, the label map and balanced loss, and a few optimiser steps on a toy
pair. The crops: tests/data/test_siamfc_crops.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.data.siamfc_crops import siamfc_crop
from vvk.errors import VvkError
from vvk.methods import tracking
from vvk.methods.tracking import FeatureAdapter, SiamFCLoss, label_map, siamfc, xcorr
from vvk.models import build as build_model
from vvk.models.backbones import Backbone, FeatureSpec


class PoolFeatures(Backbone):
    """A parameter-free stand-in: 8×8 average pooling of the normalised image, stride 8."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"P3": F.avg_pool2d(x, 8)}

    def output_shape(self) -> dict[str, FeatureSpec]:
        return {"P3": FeatureSpec(3, 8)}


def pool_siamfc() -> tracking.SiamFC:
    # background 0.2 -> -0.6, target 0.9 -> +0.8: a mismatch costs, so the best overlap wins
    return siamfc(PoolFeatures(), mean=(0.5,) * 3, std=(0.5,) * 3, adjust="scale", out_scale=1.0)


def square_image(size: tuple[int, int], center: tuple[float, float], side: int) -> Tensor:
    """(3, H, W) dark background 0.2 with a bright 0.9 square of ``side`` centred on pixel ``center``."""
    h, w = size
    image = torch.full((3, h, w), 0.2)
    x0, y0 = round(center[0] - (side - 1) / 2), round(center[1] - (side - 1) / 2)
    image[:, max(0, y0) : max(0, y0 + side), max(0, x0) : max(0, x0 + side)] = 0.9
    return image


def test_xcorr_matches_a_hand_computed_correlation():
    torch.manual_seed(0)
    z, x = torch.randn(2, 3, 3, 2, dtype=torch.float64), torch.randn(6, 3, 7, 5, dtype=torch.float64)
    out = xcorr(z, x)  # three search maps per exemplar
    assert out.shape == (6, 1, 5, 4)
    for n in range(6):
        i = n // 3  # exemplar i owns search rows 3i .. 3i+2
        for u in range(5):
            for v in range(4):
                expected = (z[i] * x[n, :, u : u + 3, v : v + 2]).sum()
                assert torch.allclose(out[n, 0, u, v], expected)
    with pytest.raises(ValueError):
        xcorr(z, x[:5])


@pytest.mark.parametrize(
    ("name", "feature", "expected"),
    [
        ("r3d-tiny", "res3", "res3"),  # stride 8 as built
        ("r3d-tiny", None, "res5"),  # dilated from 32 to 8
        ("spinenet-tiny", None, "P3"),  # image backbone, inputs padded to multiples of 128
        ("vatt-video-tiny", None, "tokens"),  # 2×8×8 patches: a two-frame static clip
    ],
)
def test_adapter_gives_stride_8_maps_and_17x17_responses(name, feature, expected):
    model = siamfc(name, feature=feature).eval()
    assert model.features.feature == expected and model.total_stride == 8
    with torch.inference_mode():
        kernel = model.exemplar(torch.rand(1, 3, 127, 127))
        search = model.search(torch.rand(3, 3, 255, 255))
        responses = model.correlate(kernel, search)
    channels = model.features.channels
    assert kernel.shape == (1, channels, 16, 16) and search.shape == (3, channels, 32, 32)
    assert responses.shape == (3, 1, 17, 17) and torch.isfinite(responses).all()
    assert model.features.video == (name != "spinenet-tiny")


def test_dilation_keeps_the_undilated_features():
    torch.manual_seed(0)
    plain = build_model("r3d-tiny", se_ratio=None, self_gating=False).eval()  # no global pooling
    clip = torch.rand(1, 3, 2, 96, 96)
    with torch.inference_mode():
        reference = plain(clip)
        for feature, step in (("res4", 2), ("res5", 4)):
            dilated = copy.deepcopy(plain)
            FeatureAdapter(dilated, feature=feature)
            out = dilated(clip)[feature]
            assert out.shape[-1] == 96 // 8
            assert torch.allclose(out[..., ::step, ::step], reference[feature], atol=1e-5)
            assert not torch.allclose(out[..., 1::step, ::step], reference[feature], atol=1e-3)


def test_features_that_cannot_reach_stride_8_are_one_line_errors():
    cases = [
        (dict(backbone="r3d-tiny", feature="res2"), "feature=res2: stride 4"),
        (dict(backbone="r3d-tiny", feature="pooled"), "feature=pooled: the backbone returns"),
        (dict(backbone="spinenet-tiny", feature="P4"), "feature=P4: stride 16"),
        (dict(backbone="retinanet-spinenet-tiny"), "a detection model, not an image or video backbone"),
    ]
    for kwargs, message in cases:
        with pytest.raises(VvkError, match=message) as info:
            siamfc(**kwargs)
        assert "\n" not in str(info.value)


def test_adjust_variants_scale_the_correlation():
    torch.manual_seed(0)
    z, x = torch.rand(2, 3, 127, 127), torch.rand(2, 3, 255, 255)
    plain = pool_siamfc()
    raw = xcorr(plain.exemplar(z), plain.search(x))
    conv = siamfc(PoolFeatures(), mean=(0.5,) * 3, std=(0.5,) * 3)  # learned gain 1e-3, bias 0 at init
    assert sum(p.numel() for p in conv.parameters()) == 2
    assert torch.allclose(conv(z, x), raw * 1e-3, atol=1e-6)
    fixed = siamfc(PoolFeatures(), mean=(0.5,) * 3, std=(0.5,) * 3, adjust="scale")
    assert list(fixed.parameters()) == [] and torch.allclose(fixed(z, x), raw * 1e-3, atol=1e-6)
    bn = siamfc(PoolFeatures(), mean=(0.5,) * 3, std=(0.5,) * 3, adjust="bn").eval()
    assert isinstance(bn.adjust, torch.nn.BatchNorm2d)
    assert torch.allclose(bn(z, x), raw / (1 + bn.adjust.eps) ** 0.5, rtol=1e-5)
    with pytest.raises(VvkError, match="adjust=sum"):
        siamfc(PoolFeatures(), adjust="sum")


def test_response_peak_lands_on_the_shifted_target():
    model = pool_siamfc()
    z = square_image((127, 127), (63, 63), 24)[None]
    x = square_image((255, 255), (127 + 16, 127 - 8), 24)[None]  # 2 cells right, 1 up
    response = model(z, x)[0, 0]
    row, col = divmod(int(response.argmax()), response.shape[-1])
    assert (row, col) == (8 - 1, 8 + 2)


def test_pretrained_state_loads_strictly_and_freezing_keeps_batch_norm_still():
    torch.manual_seed(0)
    source = build_model("r3d-tiny")
    model = siamfc("r3d-tiny", feature="res3", pretrained_state=source.state_dict(), freeze_backbone=True)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.features.backbone.state_dict()[name], tensor)
    bad = {**source.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(VvkError, match="pretrained_state: does not fit the model: 1 unexpected key"):
        siamfc("r3d-tiny", pretrained_state=bad)
    frozen = siamfc("r3d-tiny", feature="res3", freeze_backbone=True, branch_channels=8).train()
    assert not any(p.requires_grad for p in frozen.features.backbone.parameters())
    assert all(p.requires_grad for p in frozen.exemplar_conv.parameters())
    assert not any(m.training for m in frozen.features.backbone.modules())
    before = copy.deepcopy(frozen.features.backbone.state_dict())
    frozen(torch.rand(2, 3, 127, 127), torch.rand(2, 3, 255, 255))
    assert all(torch.equal(before[k], v) for k, v in frozen.features.backbone.state_dict().items())


def test_label_map_has_the_reference_positives_and_balanced_weights():
    labels, weights = label_map(17)  # r_pos 16 px / stride 8 = 2 cells, block distance
    offsets = np.arange(17) - 8
    expected = (np.abs(offsets)[:, None] + np.abs(offsets)[None, :] <= 2).astype(np.float32)
    assert np.array_equal(labels.numpy(), expected) and int(labels.sum()) == 13
    assert weights[labels == 1].sum().item() == pytest.approx(0.5)
    assert weights[labels == 0].sum().item() == pytest.approx(0.5)
    assert weights[labels == 1].unique().numel() == 1 and weights[labels == 0].unique().numel() == 1
    banded, band_weights = label_map(17, r_neg=48)  # neutral (0.5, weight 0) for 2 < d < 6
    assert int((banded == 0.5).sum()) == sum(4 * d for d in range(3, 6))
    assert band_weights[banded == 0.5].abs().sum() == 0


def test_loss_is_the_balanced_logistic_loss():
    torch.manual_seed(0)
    responses = torch.randn(3, 1, 17, 17)
    labels, _ = label_map(17)
    pos, neg = labels == 1, labels == 0
    expected = 0
    for r in responses[:, 0]:
        expected += 0.5 * F.softplus(-r[pos]).mean() + 0.5 * F.softplus(r[neg]).mean()
    assert SiamFCLoss()(responses).item() == pytest.approx(expected.item() / 3, rel=1e-5)
    good = torch.where(pos, 5.0, -5.0).expand(2, 1, 17, 17)
    assert SiamFCLoss()(good) < 0.01 < SiamFCLoss()(-good)


def test_loss_decreases_on_a_toy_pair():
    torch.manual_seed(0)
    # the tiny preset as it is: branch convs and batch norm on the response (1.59 -> 0.38 here)
    model = tracking.build(tracking.PRESETS["tiny"]).train()
    frame_a = square_image((180, 240), (100, 90), 30)
    frame_b = square_image((180, 240), (112, 84), 30)
    shifts = [((1, -2), (0, 2)), ((-2, 0), (2, 1))]  # crop translations, as training draws them
    z = torch.stack([siamfc_crop(frame_a, (86, 76, 30, 30), out_size=127, shift=a)[0] for a, _ in shifts])
    x = torch.stack([siamfc_crop(frame_b, (98, 70, 30, 30), out_size=255, shift=b)[0] for _, b in shifts])
    loss_fn = SiamFCLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = loss_fn(model(z, x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
