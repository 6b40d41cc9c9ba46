"""The RetinaNet head, the contrastive projection head, the shared layers, and MAC counting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vvk.models.heads import RetinaNetHead, build_retinanet
from vvk.models.heads.projection import ProjectionMLP
from vvk.models.layers import ConvNormAct, MBConv, SqueezeExcitation, fold_batch_norms
from vvk.models.profile import count_macs, human_count


def test_retinanet_head_outputs_and_flatten_order():
    torch.manual_seed(0)
    head = RetinaNetHead(
        in_channels=8, num_classes=3, num_anchors=2, levels=("P3", "P4"), num_convs=1, num_filters=8
    ).eval()
    feats = {"P3": torch.randn(2, 8, 4, 6), "P4": torch.randn(2, 8, 2, 3)}
    out = head(feats)
    assert out["cls_logits"]["P3"].shape == (2, 2 * 3, 4, 6) and out["bbox_deltas"]["P4"].shape == (
        2,
        2 * 4,
        2,
        3,
    )
    # Encode (anchor, class, y, x) in the values and check where flatten puts them.
    maps = {lvl: torch.zeros(2, 6, h, w) for lvl, (h, w) in {"P3": (4, 6), "P4": (2, 3)}.items()}
    for m in maps.values():
        a, k, y, x = torch.meshgrid(*(torch.arange(s) for s in (2, 3, *m.shape[2:])), indexing="ij")
        m[:] = (1000 * a + 100 * k + 10 * y + x).reshape(6, *m.shape[2:]).float()
    logits, deltas = head.flatten({"cls_logits": maps, "bbox_deltas": out["bbox_deltas"]})
    assert logits.shape == (2, 4 * 6 * 2 + 2 * 3 * 2, 3) and deltas.shape == (2, 60, 4)
    n = (2 * 6 + 5) * 2 + 1  # P3, y=2, x=5, anchor 1
    assert logits[0, n].tolist() == [1000 + 25, 1100 + 25, 1200 + 25]
    assert logits[1, 48 + (1 * 3 + 2) * 2].tolist() == [12, 112, 212]  # P4, y=1, x=2, anchor 0


def test_classifier_starts_at_the_focal_loss_prior():
    head = RetinaNetHead(in_channels=8, num_classes=5, num_anchors=1, num_convs=1, num_filters=8)
    assert torch.allclose(head.classifier.bias, torch.full((5,), -math.log(99.0)))
    sep = RetinaNetHead(
        in_channels=8, num_classes=5, num_anchors=1, num_convs=1, num_filters=8, separable=True
    )
    assert torch.allclose(sep.classifier[-1].bias, torch.full((5,), -math.log(99.0)))
    assert sep.classifier[0].groups == 8  # depthwise 3x3, then the biased pointwise conv


def test_retinanet_end_to_end_on_a_tiny_backbone():
    model = build_retinanet("spinenet-mobile-tiny", num_classes=4).train()
    out = model(torch.randn(2, 3, 128, 128))
    logits, deltas = model.head.flatten(out)
    anchors = 9 * sum((128 // 2**lvl) ** 2 for lvl in range(3, 8))
    assert logits.shape == (2, anchors, 4) and deltas.shape == (2, anchors, 4)
    (logits.sigmoid().mean() + deltas.abs().mean()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_retinanet_needs_a_known_backbone():
    with pytest.raises(ValueError, match="no reference RetinaNet head for 'r3d-50'"):
        build_retinanet("r3d-50")


@pytest.mark.parametrize("momentum", [0.003, 0.1])
def test_projection_batch_norm_moves_its_running_mean_by_the_given_momentum(momentum):
    torch.manual_seed(0)
    head = ProjectionMLP(in_dim=6, hidden_dim=5, out_dim=3, layers=1, norm_momentum=momentum, norm_eps=1e-3)
    norm = head.net[1]
    assert (norm.momentum, norm.eps) == (momentum, 1e-3)
    with torch.no_grad():
        norm.running_mean.fill_(2.0)
    x = torch.randn(8, 2, 6)  # leading axes folded: BN sees 16 rows
    batch_mean = head.net[0](x.reshape(16, 6)).mean(dim=0).detach()
    head.train()(x)
    # PyTorch's convention: running <- (1 - m) * running + m * batch (Keras: m_keras = 1 - m).
    torch.testing.assert_close(norm.running_mean, (1 - momentum) * 2.0 + momentum * batch_mean)


def test_mbconv_residual_only_when_shapes_match():
    same = MBConv(8, 8, expand_ratio=2, se_ratio=0.25)
    assert same.has_residual and isinstance(same.se, SqueezeExcitation)
    assert same.se.reduce.out_channels == 2  # int(8 * 0.25) on the input width, not the expanded 16
    assert not MBConv(8, 8, stride=2).has_residual and not MBConv(8, 16).has_residual
    assert MBConv(8, 16, stride=2)(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)


def test_squeeze_excitation_gates_channels_in_2d_and_3d():
    se = SqueezeExcitation(4, 2, dims=3)
    x = torch.randn(2, 4, 3, 5, 5)
    y = se(x)
    gate = y / x  # one factor per (sample, channel), in (0, 1)
    assert torch.allclose(gate, gate[:, :, :1, :1, :1].expand_as(gate), atol=1e-5)
    assert ((gate > 0) & (gate < 1)).all()


def test_count_macs_counts_multiply_adds():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.zeros(1, 3, 10, 10)) == 8 * 3 * 9 * 100
    assert count_macs(nn.Linear(5, 7), torch.zeros(4, 5)) == 4 * 5 * 7
    with torch.device("meta"):
        assert count_macs(nn.Conv2d(4, 4, 3, groups=4, padding=1), torch.zeros(1, 4, 8, 8)) == 4 * 9 * 64


def test_human_count():
    assert [human_count(v) for v in (12, 1_500, 1_073_280, 88_023_531_520, 1_881_660_000_000)] == [
        "12",
        "1.50K",
        "1.07M",
        "88.02G",
        "1.88T",
    ]


def _with_learnt_statistics(model: nn.Module) -> nn.Module:
    """Batch norms with the non-trivial statistics and affines a trained model has."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


@pytest.mark.parametrize("dims", [2, 3])
def test_folded_batch_norms_give_the_same_outputs_and_leave_training_blocks(dims):
    blocks = nn.Sequential(
        ConvNormAct(3, 8, 3, dims=dims, activation="swish"),
        ConvNormAct(8, 8, 3, groups=8, dims=dims),  # depthwise
        ConvNormAct(8, 4, 1, dims=dims),
    )
    blocks = _with_learnt_statistics(blocks).eval()
    x = torch.randn(2, 3, *(6,) * dims)
    expected = blocks(x)
    blocks[2].train()  # a block still learning keeps its norm
    assert fold_batch_norms(blocks) == 2
    assert isinstance(blocks[0].bn, nn.Identity) and isinstance(blocks[2].bn, nn.BatchNorm2d | nn.BatchNorm3d)
    assert not any(k.startswith(("0.bn", "1.bn")) for k in blocks.state_dict())
    blocks[2].eval()
    torch.testing.assert_close(blocks(x), expected, rtol=1e-5, atol=1e-5)


def test_a_folded_detector_backbone_gives_the_same_features():
    """The backbone and FPN of RetinaNet SpineNet-Mobile-49 (MBConv blocks, SE, swish), folded as
    ``vvk detect`` folds it: every level's features as before, up to float rounding."""
    import vvk.models

    model = _with_learnt_statistics(vvk.models.build("retinanet-spinenet-mobile-49")).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected = model.backbone(x)
        assert fold_batch_norms(model) > 100
        folded = model.backbone(x)
    assert list(folded) == list(expected)
    for level in expected:
        torch.testing.assert_close(folded[level], expected[level], rtol=1e-4, atol=1e-4)
