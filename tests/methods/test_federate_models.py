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
