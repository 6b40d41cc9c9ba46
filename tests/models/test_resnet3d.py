"""3D ResNets: reference shapes, where SE / self-gating / stochastic depth sit, temporal-stride options."""

from __future__ import annotations

import pytest
import torch

from vvk.errors import VvkError
from vvk.models import build, load, save
from vvk.models.backbones.resnet3d import Bottleneck3D, SelfGating
from vvk.models.checkpoint import load_weights
from vvk.models.layers import SqueezeExcitation, StochasticDepth


def test_rs50_res5_is_2048x16x7x7_on_32x224():
    with torch.device("meta"):
        model = build("r3d-rs-50").eval()
        out = model(torch.zeros(1, 3, 32, 224, 224))
    assert tuple(out["res5"].shape) == (1, 2048, 16, 7, 7)
    assert tuple(out["stem"].shape) == (1, 64, 16, 112, 112)
    assert tuple(out["res2"].shape) == (1, 256, 16, 56, 56)


def test_rs_blocks_follow_the_reference_code():
    with torch.device("meta"):
        model = build("r3d-rs-50")
    for name, stage, rate in zip(
        ("res2", "res3", "res4", "res5"), model.stages.values(), (0.04, 0.06, 0.08, 0.10), strict=True
    ):
        blocks = list(stage)
        assert all(isinstance(b.se, SqueezeExcitation) for b in blocks), name
        # Self-gating only in the last block of the stage (reference code, not the paper's prose).
        assert [isinstance(b.gating, SelfGating) for b in blocks] == [False] * (len(blocks) - 1) + [True], (
            name
        )
        assert [b.drop.rate for b in blocks] == pytest.approx([rate] * len(blocks)), name
    # SE width int(4f * 0.25) on the block output: res2 has 256 outputs -> 64.
    assert model.stages["res2"][0].se.reduce.out_channels == 64
    # ResNet-D stem: three convs 32, 32, 64 with the temporal kernel 5 in the first.
    assert [s.conv.weight.shape[:3] for s in model.stem] == [(32, 3, 5), (32, 32, 1), (64, 32, 1)]


def test_cvrl_r3d50_has_no_se_gating_or_drop():
    with torch.device("meta"):
        model = build("r3d-50")
    blocks = [b for stage in model.stages.values() for b in stage]
    assert not any(isinstance(m, SqueezeExcitation | SelfGating) for m in model.modules())
    assert {b.drop.rate for b in blocks} == {0.0}
    assert [b.temporal.conv.kernel_size[0] for b in model.stages["res4"]] == [3] * 6
    assert [b.temporal.conv.kernel_size[0] for b in model.stages["res3"]] == [1] * 4


@pytest.mark.parametrize(
    "kwargs,expected_t",
    [
        ({}, {"res2": 2, "res5": 2}),
        ({"stem_temporal_stride": 1}, {"res2": 4, "res5": 4}),
        ({"stem_temporal_stride": 1, "stage_temporal_strides": (1, 1, 1, 2)}, {"res2": 4, "res5": 2}),
    ],
)
def test_temporal_stride_options(kwargs, expected_t):
    """TeG keeps res5 temporally dense: the spec and the real output agree on the frame count."""
    model = build("r3d-tiny", **kwargs).eval()
    out = model(torch.randn(1, 3, 4, 32, 32))
    specs = model.output_shape()
    for key, frames in expected_t.items():
        assert out[key].shape[2] == frames
        assert specs[key].temporal_stride == 4 // frames


def test_y_shaped_branches_have_their_own_weights():
    torch.manual_seed(0)
    model = build("r3d-y-tiny").eval()
    out = model(torch.randn(2, 3, 4, 32, 32))
    assert out["res5"].shape == out["res5_1"].shape
    assert not torch.allclose(out["res5"], out["res5_1"])
    assert model.stages["res5"][0].expand.conv.weight is not model.stages["res5_1"][0].expand.conv.weight


def test_bottleneck_shortcut_subsamples_when_only_the_stride_changes():
    norm = {"norm_momentum": 0.1, "norm_eps": 1e-5}
    block = Bottleneck3D(
        32,
        8,
        temporal_kernel=1,
        temporal_stride=2,
        spatial_stride=2,
        se_ratio=None,
        self_gating=False,
        drop_rate=0.0,
        activation="relu",
        norm=norm,
    )
    assert block.shortcut is None  # 32 == 4 * 8: the reference's 1x1 max pool, no conv
    assert block(torch.randn(1, 32, 4, 8, 8)).shape == (1, 32, 2, 4, 4)


def test_stochastic_depth_drops_whole_samples_only_in_training():
    torch.manual_seed(0)
    drop = StochasticDepth(0.5)
    x = torch.ones(64, 3, 2, 2)
    y = drop.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}  # survivors scaled by 1 / keep
    assert (per_sample == per_sample[:, :1]).all()  # one decision per sample
    assert 10 < (per_sample[:, 0] == 0).sum() < 54
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(StochasticDepth(1.0).train()(x), torch.zeros_like(x))


def test_checkpoint_roundtrip_and_key_mismatch_is_an_error(tmp_path):
    torch.manual_seed(0)
    y_model = build("r3d-y-tiny").eval()
    x = torch.randn(1, 3, 4, 32, 32)
    path = save(y_model, tmp_path / "y.safetensors")
    torch.testing.assert_close(load(path).eval()(x)["res5_1"], y_model(x)["res5_1"], rtol=0, atol=0)
    plain = build("r3d-tiny")
    with pytest.raises(VvkError, match=r"unexpected key\(s\): stages\.res5_1\.0\.") as err:
        load_weights(build("r3d-50", width=0.125, depths=(1, 1, 1, 1)), path)
    assert "missing" not in str(err.value)
    with pytest.raises(VvkError, match=r"does not fit the model"):
        load_weights(plain, path)  # v1 stem and SE in r3d-tiny: missing and unexpected keys
