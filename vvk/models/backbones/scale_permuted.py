"""The scale-permuted network shared by SpineNet, SpineNet-Mobile and Eff-SpineNet.

The three families differ only in their stem, block function and resampling; the wiring is the
same (``tensorflow/tpu: models/official/detection/modeling/architecture/spinenet.py``,
``spinenetv2.py``; ``tensorflow/models: official/vision/modeling/backbones/spinenet_mobile.py``):

- features are nodes ``[stem0, stem1, block0, block1, ...]``; block *i* reads two earlier nodes,
  resamples each to its own level and width, sums them, applies the activation, then runs;
- an *output* block also sums every earlier node that nobody has consumed yet (out-degree 0)
  and that already has the block's level and input width. The two parents' out-degrees are
  incremented *before* this check (all three reference files do this; the PyTorch port
  lucifer443/SpineNet-Pytorch increments after, so a parent can be merged twice there);
- endpoints: a 1×1 conv + BN + activation on each output block of levels min..max.

Endpoint keys are ``"P3"``..``"P7"`` (detectron2's pyramid naming); spatial stride ``2**level``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from vvk.models.backbones.base import Backbone, FeatureSpec
from vvk.models.layers import ConvNormAct, activation_layer, drop_rate_for_block, init_conv_weights


@dataclass(frozen=True)
class Node:
    """A feature in the graph: its level (stride ``2**level``), channels, and the block that made it."""

    level: int
    channels: int
    kind: str = ""


@dataclass(frozen=True)
class BlockSpec:
    """One block of a searched spec: ``(level, kind or learned filters, (input0, input1), is_output)``."""

    level: int
    inputs: tuple[int, int]
    is_output: bool
    kind: str = ""
    filters: int = 0


# make_block(index, spec, stochastic-depth rate) -> (block module, its input channels, its output node)
BlockFactory = Callable[[int, BlockSpec, float], tuple[nn.Module, int, Node]]
# make_resample(parent node, target level, target input channels) -> module
ResampleFactory = Callable[[Node, int, int], nn.Module]


class ScalePermutedBackbone(Backbone):
    """Stem, scale-permuted blocks, endpoints.

    Args:
        stem: maps the image to one feature per entry of ``stem_nodes`` (a tuple).
        stem_nodes: level and channels of the stem's features.
        specs: the searched block specs.
        make_block, make_resample: the family's block function and resampling.
        endpoint_channels: width of every returned level.
        activation: applied after each merge and in the endpoints.
        stochastic_depth_rate: block *i* of *n* drops its residual branch with ``rate · (i+1) / n``.
    """

    def __init__(
        self,
        *,
        stem: nn.Module,
        stem_nodes: Sequence[Node],
        specs: Sequence[BlockSpec],
        make_block: BlockFactory,
        make_resample: ResampleFactory,
        endpoint_channels: int,
        min_level: int = 3,
        max_level: int = 7,
        activation: str = "swish",
        stochastic_depth_rate: float = 0.0,
        norm: dict[str, float] | None = None,
    ):
        super().__init__()
        self.stem = stem
        built = [
            make_block(i, spec, drop_rate_for_block(stochastic_depth_rate, i + 1, len(specs)))
            for i, spec in enumerate(specs)
        ]
        self.blocks = nn.ModuleList(block for block, _, _ in built)
        in_widths = [width for _, width, _ in built]
        nodes = [*stem_nodes, *(node for _, _, node in built)]
        self.parents = [tuple(spec.inputs) for spec in specs]  # per block: nodes read through a resampler
        # per block: unconsumed nodes summed as they are; and the node of each output level
        self.extras, outputs = merge_plan(nodes, specs, in_widths, first_block=len(stem_nodes))
        self.resamplers = nn.ModuleList(
            nn.ModuleList(make_resample(nodes[p], spec.level, width) for p in spec.inputs)
            for spec, width in zip(specs, in_widths, strict=True)
        )
        missing = [lvl for lvl in range(min_level, max_level + 1) if lvl not in outputs]
        if missing:
            raise ValueError(f"no output block at level(s) {missing}")
        self.levels = tuple(range(min_level, max_level + 1))
        self.output_node = {f"P{lvl}": outputs[lvl] for lvl in self.levels}
        self.max_block_level = max(n.level for n in nodes)
        self.act = activation_layer(activation)
        self.endpoints = nn.ModuleDict(
            {
                key: ConvNormAct(
                    nodes[idx].channels, endpoint_channels, 1, activation=activation, **(norm or {})
                )
                for key, idx in self.output_node.items()
            }
        )
        self.endpoint_channels = endpoint_channels
        init_conv_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: (B, 3, H, W), H and W multiples of ``2**7`` -> {"P3": (B, C, H/8, W/8), ...}."""
        step = 2**self.max_block_level
        if x.shape[-2] % step or x.shape[-1] % step:
            raise ValueError(f"input height and width must be multiples of {step}, got {tuple(x.shape[-2:])}")
        feats = list(self.stem(x))
        for block, resamplers, parents, extras in zip(
            self.blocks, self.resamplers, self.parents, self.extras, strict=True
        ):
            merged = sum(resample(feats[p]) for resample, p in zip(resamplers, parents, strict=True))
            for j in extras:
                merged = merged + feats[j]
            feats.append(block(self.act(merged)))
        return {key: self.endpoints[key](feats[idx]) for key, idx in self.output_node.items()}

    def output_shape(self) -> dict[str, FeatureSpec]:
        return {f"P{lvl}": FeatureSpec(self.endpoint_channels, 2**lvl) for lvl in self.levels}


def merge_plan(
    nodes: Sequence[Node], specs: Sequence[BlockSpec], in_widths: Sequence[int], *, first_block: int
) -> tuple[list[tuple[int, ...]], dict[int, int]]:
    """The output-block merge rule, as pure bookkeeping.

    Returns, per block, the earlier nodes it sums besides its two parents (unconsumed, same level,
    same width as the block's input), and the node id of the output block of each level.
    ``nodes`` lists every node (stem first, block *i* is node ``first_block + i``).
    """
    out_degree = [0] * len(nodes)
    extras: list[tuple[int, ...]] = []
    outputs: dict[int, int] = {}
    for i, (spec, width) in enumerate(zip(specs, in_widths, strict=True)):
        here = first_block + i  # only nodes[:here] exist when block i is built
        for p in spec.inputs:
            if p >= here:
                raise ValueError(f"block {i} reads node {p}, but only {here} exist")
            out_degree[p] += 1  # parents count as consumed before the search (all references)
        merged: tuple[int, ...] = ()
        if spec.is_output:
            merged = tuple(
                j
                for j in range(here)
                if out_degree[j] == 0 and nodes[j].level == spec.level and nodes[j].channels == width
            )
            for j in merged:
                out_degree[j] += 1
            if spec.level in outputs:
                raise ValueError(f"two output blocks at level {spec.level}")
            outputs[spec.level] = here
        extras.append(merged)
    return extras, outputs
