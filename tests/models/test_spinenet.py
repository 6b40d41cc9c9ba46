"""SpineNet family: endpoint shapes for inputs 128..640 (the reference's spinenet_test.py), the
output-block merge rule, input-size checks."""

from __future__ import annotations

import pytest
import torch

from vvk.models import build
from vvk.models.backbones.eff_spinenet import round_filters
from vvk.models.backbones.scale_permuted import BlockSpec, Node, merge_plan
from vvk.models.backbones.spinenet import spinenet

SIZES = (128, 256, 384, 512, 640)


def _meta_forward(model, size: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return model.eval()(torch.zeros(1, 3, size, size))


# tensorflow/models spinenet_test.py::test_network_creation parameters:
# (input size, filter scale, block repeats, alpha, endpoint filters, min level, max level).
@pytest.mark.parametrize(
    "size,scale,repeats,alpha,endpoints,min_level,max_level",
    [
        (128, 0.65, 1, 0.5, 128, 4, 6),
        (256, 1.0, 1, 0.5, 256, 3, 6),
        (384, 1.0, 2, 0.5, 256, 4, 7),
        (512, 1.0, 3, 1.0, 256, 3, 7),
        (640, 1.3, 4, 1.0, 384, 3, 7),
    ],
)
def test_reference_network_creation_shapes(size, scale, repeats, alpha, endpoints, min_level, max_level):
    with torch.device("meta"):
        model = spinenet(
            endpoint_channels=endpoints,
            filter_size_scale=scale,
            resample_alpha=alpha,
            block_repeats=repeats,
            min_level=min_level,
            max_level=max_level,
            stochastic_depth_rate=0.2,
        )
    out = _meta_forward(model, size)
    assert set(out) == {f"P{lvl}" for lvl in range(min_level, max_level + 1)}
    for lvl in range(min_level, max_level + 1):
        assert tuple(out[f"P{lvl}"].shape) == (1, endpoints, size // 2**lvl, size // 2**lvl)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "name", ["spinenet-49", "spinenet-mobile-49", "eff-spinenet-d0", "eff-spinenet-tiny"]
)
def test_every_family_gives_levels_3_to_7(name, size):
    with torch.device("meta"):
        model = build(name)
    out = _meta_forward(model, size)
    channels = model.output_shape()["P3"].channels
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"P{lvl}": (1, channels, size // 2**lvl, size // 2**lvl) for lvl in range(3, 8)
    }


def test_real_forward_on_a_non_square_input():
    model = build("spinenet-tiny").eval()
    out = model(torch.randn(1, 3, 128, 256))
    assert out["P3"].shape == (1, 16, 16, 32) and out["P7"].shape == (1, 16, 1, 2)


@pytest.mark.parametrize("name", ["spinenet-tiny", "spinenet-mobile-tiny", "eff-spinenet-tiny"])
def test_input_must_be_a_multiple_of_128(name):
    with pytest.raises(ValueError, match="multiples of 128"):
        build(name)(torch.zeros(1, 3, 128, 200))


def test_output_blocks_merge_unconsumed_nodes_once():
    """The 15-block spec: only block 12 (level 5) finds an unconsumed node of its level and width
    (node 11, block 9's output); the parents count as consumed before the search."""
    with torch.device("meta"):
        model = build("spinenet-49")
    assert model.extras == [()] * 12 + [(11,), (), ()]


@pytest.mark.parametrize("name", ["spinenet-49", "spinenet-mobile-49", "eff-spinenet-d0"])
def test_merge_rule_never_reuses_a_node(name):
    with torch.device("meta"):
        model = build(name)
    merged = [j for extras in model.extras for j in extras]
    assert len(merged) == len(set(merged))
    for parents, extras in zip(model.parents, model.extras, strict=True):
        assert not set(parents) & set(extras)


def test_round_filters_matches_the_tpu_helper():
    # nn_ops.round_filters: multiples of 8, at least 8, never more than 10% below the target.
    assert [round_filters(f, 1.0) for f in (16, 104, 168)] == [16, 104, 168]
    assert round_filters(104, 0.4) == 40  # 41.6 -> 40
    assert round_filters(40, 0.4) == 16  # 16.0
    assert round_filters(16, 0.4) == 8  # 6.4 -> minimum 8
    assert round_filters(168, 1.1) == 184  # 184.8 -> 184
    assert round_filters(136, 1.4) == 192  # 190.4 -> 192


def test_merge_plan_counts_parents_as_consumed_first():
    nodes = [Node(3, 8), Node(3, 8), Node(4, 8), Node(3, 8)]  # 3 stem nodes, then block 0's output
    extras, outputs = merge_plan(nodes, [BlockSpec(3, (0, 2), True)], [8], first_block=3)
    # node 1 is unconsumed at level 3 and width 8: summed in; parent 0 is not summed a second time
    assert extras == [(1,)] and outputs == {3: 3}
    extras, _ = merge_plan(nodes, [BlockSpec(3, (0, 2), True)], [16], first_block=3)
    assert extras == [()]  # width differs: nothing to merge
    with pytest.raises(ValueError, match="reads node 3"):
        merge_plan(nodes, [BlockSpec(3, (0, 3), True)], [8], first_block=3)
