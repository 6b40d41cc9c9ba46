"""DualAdapt's networks: a vvk image backbone under DigitNet's head (``BackboneNet``)."""

import pytest
import torch

from vvk.errors import VvkError
from vvk.methods.federate import client_adapt
from vvk.methods.federate.models import BackboneNet, DigitNet, build_model


def test_build_model_wraps_an_image_backbone_with_the_digit_head():
    torch.manual_seed(0)
    model = build_model("eff-spinenet-tiny", 7, feature_dim=24)
    assert isinstance(model, BackboneNet)
    x = torch.rand(4, 3, 64, 64)
    assert model.features(x).shape == (4, 24)  # what the clients' statistics are fitted on
    assert model(x).shape == (4, 7)
    assert model.classifier.in_features == 24 and model.classifier.out_features == 7
    assert isinstance(build_model("digit-cnn", 10), DigitNet)


def test_adapting_the_features_adapts_the_backbone_and_not_the_classifier():
    torch.manual_seed(0)
    model = build_model("eff-spinenet-tiny", 3, feature_dim=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    update = client_adapt(model, torch.rand(12, 3, 64, 64), method="entropy", trains="features",
                          steps=2, batch_size=6, lr=0.1, seed=0, stats=False)  # fmt: skip
    sent = set(update.state)
    assert any(k.startswith("features.0.backbone.") for k in sent)  # the backbone is part of `features`
    assert not any(k.startswith("classifier") for k in update.state)
    changed = [k for k, v in update.state.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("features.0.backbone.") for k in changed)


@pytest.mark.parametrize(
    "name,message",
    [
        ("r3d-tiny", "a video-backbone model, not an image backbone"),
        ("eff-spinenet-tny", "backbone=eff-spinenet-tny: unknown model"),
    ],
)
def test_build_model_refuses_what_is_not_an_image_backbone(name, message):
    with pytest.raises(VvkError, match=message):
        build_model(name, 10)


def test_backbone_batch_norm_statistics_follow_a_short_run():
    """The zoo's SpineNets keep TF's 0.003 momentum: after a few hundred steps their running
    statistics were still near the initial ones and eval-mode predictions collapsed (Office-
    Caltech amazon, 200 steps: 0.11 held-out accuracy at 0.003, 0.60 at 0.1)."""
    torch.manual_seed(0)
    model = build_model("eff-spinenet-tiny", 3, feature_dim=8).train()
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        for _ in range(30):  # inputs far from the initial running mean (0)
            model(torch.rand(4, 3, 64, 64) * 0.1 + 5.0)
    # what the first convolution's outputs (the first BN's inputs) average to on the same data
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        batch_mean = conv(torch.rand(4, 3, 64, 64) * 0.1 + 5.0).mean(dim=(0, 2, 3))
    # momentum 0.1: 1 - 0.9**30 = 96% of the way; 0.003 would be 9%
    assert torch.allclose(first_bn.running_mean, batch_mean, rtol=0.1, atol=0.05)
