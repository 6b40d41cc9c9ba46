"""ConST-CL: contextualized spatio-temporal contrastive learning (Yuan et al., CVPR 2022), as
implemented in ``tensorflow/models: official/projects/const_cl`` (reference/video_ssl.md §5)::

    clip a, clip b ─ CVRL views ─ R3D-50-Y (2B clips) ─┬─ res5 ─ GAP ─ MLP ─ NT-Xent (τ 0.1): global
                                                       └─ res5_1 ─ reconstructor ─ InfoNCE (τ 0.2): local
    total = global + 0.001 · local   (the reference's L2 of 1e-6 is ``train.weight_decay``)

The global branch is CVRL's (``vvk.methods.cvrl``). The local branch (``constcl_local``) pools
N region instances per view (random boxes, or detected people from a file: ``constcl_boxes``)
on the key frame of ``res5_1`` (or as tubes over the context frames), translates each view's
instances into the other view's context with a shared transformer decoder, and contrasts them
with the other view's instances (positive: the feature argmax; negatives: other videos only).

Decisions where the reference is ambiguous:

- Learning rate. ``const_cl_pretrain_k400_200k.yaml`` prints SGD (momentum 0.9, no Nesterov)
  with a cosine from 40.96, where CVRL's ``cvrl_pretrain_k600_200ep.yaml`` prints 0.32 with the
  same optimizer, the same loss form and the same ``train_step``. In the Model Garden optimizer
  factory ``sgd`` is Keras SGD at exactly the configured rate: there is no LARS (the yaml picks
  ``sgd``) and no per-sample or batch-size scaling, so 40.96 (= 0.04 × 1024 = 128 × 0.32) is
  the step size the reference ran with. Two facts bound what it means: (1) both tasks skip the
  usual ``loss / num_replicas`` while Keras sums gradients across TPU replicas, so in the
  reference every step is R times larger than the same rate on the DDP-averaged gradients
  here (R, the replica count, is not recorded); (2) the local branch's gradient carries the
  0.001 weight, so the rate the reconstructor and ``res5_1`` see is 40.96 × 0.001 ≈ 0.04,
  while the globally trained weights feed batch norm or an L2-normalised output and are
  therefore invariant to their scale, which is what tolerates a rate this large. The ``paper``
  preset keeps 40.96 as printed (with the reference's 2.5k warm-up); ``--set train.lr=0.32``
  gives CVRL's rate. Measured on the tiny model with the reference's optimizer (SGD, L2 1e-6,
  150 steps on cached real clips): 40.96 stays finite and the local loss falls from 3.3 to 1.45,
  while at 0.32 it stays at 3.3 (the local branch barely moves), which supports reading 40.96
  as intended rather than as a typo.
- Random boxes. The reference draws xmin, ymin, width and aspect with four ``tf.random.uniform``
  calls that share ``seed=1234``; in a traced ``tf.data`` function ops with the same seed pair
  give the same stream, which would make the four values equal per box (boxes on the
  diagonal). We draw them independently, as the code plainly intends.
- Sync batch norm (``use_sync_bn`` in the yaml) is a property of the multi-GPU run, not of the
  method: it is not applied here (BN statistics are per process).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch import Tensor

from vvk.data.augment import VideoAugment
from vvk.data.samplers import ClipPlan, TwoViews
from vvk.engine import TrainConfig
from vvk.errors import VvkError
from vvk.methods.constcl_boxes import BoxTable, FileBoxes, RandomBoxes
from vvk.methods.constcl_local import InstanceReconstructor, context_steps, instance_loss
from vvk.methods.cvrl import (
    TINY_HEAD,
    TINY_VIEWS,
    CvrlModel,
    CvrlPreset,
    build_backbone,
    contrastive_accuracy,
    global_head,
    global_loss,
    tiny_train,
    view_augments,
)
from vvk.methods.heads import ProjectionMLP

NAME = "constcl"
GLOBAL_FEATURE, LOCAL_FEATURE = "res5", "res5_1"


@dataclass(frozen=True)
class ConstclPreset(CvrlPreset):
    """ConST-CL hyperparameters: CVRL's fields (the global branch, clips and views) plus the
    local branch. Defaults are the ``paper`` preset, from ``tensorflow/models: official/projects/
    const_cl/configs/{const_cl.py, head.py, yaml/const_cl_pretrain_k400_200k.yaml}``."""

    backbone: str = "r3d-50-y"  # ResNet3DY: CVRL's R3D-50 with res5 built twice
    local_temperature: float = 0.2  # ConstCLLosses
    local_weight: float = 0.001
    num_boxes: int = 8  # DataConfig.num_instances
    # "random" (the reference's region generator), or the path of an AVA-style CSV of detected
    # boxes: video_id, timestamp (s), x1, y1, x2, y2 normalised to the frame, extra columns ignored.
    boxes: str = "random"
    box_max_gap: float = 0.5  # s between a frame and the detections used for it (AVA: 1 Hz)
    # keyframe: RoIAlign on the key frame T'//2, as the reference; tube: pooled over the context
    # frames (the instance followed through the detections of each frame, with a boxes file).
    pooling: Literal["keyframe", "tube"] = "keyframe"
    roi_size: int = 4  # MultilevelROIAligner crop_size, averaged
    context_frames: int = 5  # README: context_length = 5
    decoder_dim: int = 128  # InstanceReconstructor: 3 layers x 3 heads of 128
    decoder_layers: int = 3
    decoder_heads: int = 3
    # The 200k yaml: global batch 1024 (16 ranks x 64), bf16, SGD momentum 0.9 without
    # Nesterov, cosine from 40.96 (see the module docstring) after 2500 linear warm-up steps,
    # 200k steps, L2 1e-6 on kernels.
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            steps=200_000,
            batch_size=64,
            lr=40.96,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=1e-6,
            warmup_steps=2500,
            schedule="cosine",
            precision="bf16",
        )
    )


PRESETS: dict[str, ConstclPreset] = {
    "paper": ConstclPreset(),
    # A laptop CPU: CVRL's tiny clips, views and head on the 1/8-width Y-shaped test ResNet
    # (res5_1: 256 channels, 4 steps x 2 x 2 at 8 x 64²), 3 context frames, 4 boxes per view, a
    # one-layer two-head decoder. AdamW normalises each parameter's step, so the local head
    # trains despite its 0.001 weight.
    "tiny": ConstclPreset(
        backbone="r3d-y-tiny",
        **TINY_VIEWS,
        **TINY_HEAD,
        num_boxes=4,
        context_frames=3,
        decoder_dim=64,
        decoder_layers=1,
        decoder_heads=2,
        train=tiny_train(),
    ),
}


@dataclass(frozen=True)
class PositionedTwoViews(TwoViews):
    """``TwoViews`` that also returns the views' grid positions, ``"positions"`` (2, T), so that
    boxes can be looked up at the time of each frame."""

    def __call__(self, num_frames: int, rng: np.random.Generator) -> ClipPlan:
        plan = super().__call__(num_frames, rng)
        positions = np.stack([plan.views["video"], plan.views["video_b"]])  # 2 x (T,) -> (2, T)
        return ClipPlan(views=plan.views, extras={**plan.extras, "positions": positions})


def sampler(preset: ConstclPreset) -> PositionedTwoViews:
    return PositionedTwoViews(
        frames=preset.frames, stride=preset.stride, max_gap=preset.max_gap, fps=preset.fps
    )


def dataset_options(preset: ConstclPreset) -> dict[str, Any]:
    return {}


def build(preset: ConstclPreset) -> ConstclModel:
    backbone = build_backbone(preset, needs=(GLOBAL_FEATURE, LOCAL_FEATURE))
    shapes = backbone.output_shape()
    time_stride = shapes[LOCAL_FEATURE].temporal_stride
    try:
        context_steps(-(-preset.frames // time_stride), preset.context_frames)
    except ValueError as e:
        raise VvkError(f"context_frames={preset.context_frames}, frames={preset.frames}: {e}") from None
    augment_a, augment_b = view_augments(preset)
    if preset.boxes == "random":
        boxes: RandomBoxes | FileBoxes = RandomBoxes(num=preset.num_boxes)
    else:
        table = BoxTable.read(preset.boxes)
        boxes = FileBoxes(table, num=preset.num_boxes, max_gap=preset.box_max_gap, view_size=preset.crop)
    reconstructor = InstanceReconstructor(
        channels=shapes[LOCAL_FEATURE].channels,
        decoder_dim=preset.decoder_dim,
        decoder_layers=preset.decoder_layers,
        decoder_heads=preset.decoder_heads,
        context_frames=preset.context_frames,
        roi_size=preset.roi_size,
        tube=preset.pooling == "tube",
    )
    return ConstclModel(
        backbone=backbone,
        head=global_head(preset, shapes[GLOBAL_FEATURE].channels),
        reconstructor=reconstructor,
        boxes=boxes,
        augment_a=augment_a,
        augment_b=augment_b,
        temperature=preset.temperature,
        local_temperature=preset.local_temperature,
        local_weight=preset.local_weight,
    )


class ConstclModel(CvrlModel):
    """The training module: ``forward(batch)`` -> {"loss", "global", "local", "accuracy"}, with
    ``loss = global + local_weight · local`` (the two parts logged unweighted).

    Args:
        backbone: a Y-shaped 3D ResNet (``res5`` and ``res5_1``).
        head: the global MLP; reconstructor: the local head.
        boxes: where the region instances come from (``RandomBoxes`` or ``FileBoxes``).
        augment_a, augment_b, temperature: the global branch, as in ``CvrlModel``.
        local_temperature, local_weight: the local loss's τ and weight.
    """

    def __init__(
        self,
        *,
        backbone,
        head: ProjectionMLP,
        reconstructor: InstanceReconstructor,
        boxes: RandomBoxes | FileBoxes,
        augment_a: VideoAugment,
        augment_b: VideoAugment,
        temperature: float,
        local_temperature: float,
        local_weight: float,
    ):
        super().__init__(backbone=backbone, head=head, augment_a=augment_a, augment_b=augment_b,
                         temperature=temperature)  # fmt: skip
        self.reconstructor = reconstructor
        self.boxes = boxes
        self.local_temperature, self.local_weight = local_temperature, local_weight
        self.time_stride = self.backbone.output_shape()[LOCAL_FEATURE].temporal_stride

    def outputs(self, views: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """Backbone and both heads on 2B views (view a first) with their boxes (2B, N, S, 4):
        the backbone's maps, ``embedding`` (2B, embed_dim) and the reconstructor's outputs."""
        features = self.backbone(views)
        local = self.reconstructor(features[LOCAL_FEATURE], boxes)
        return {**features, **local, "embedding": self.embed(features)}

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        views = self.views(batch)
        steps = self.reconstructor.pooled_steps(-(-views.shape[2] // self.time_stride))
        # Feature step k stands for input frame stride · k (centred temporal kernels).
        boxes = self.boxes(batch, (self.augment_a, self.augment_b), [self.time_stride * k for k in steps])
        out = self.outputs(views, boxes)
        z_a, z_b = out["embedding"].chunk(2)
        global_part = global_loss(z_a, z_b, self.temperature)
        local_part = instance_loss(out["regions"], out["translated"], self.local_temperature)
        return {
            "loss": global_part + self.local_weight * local_part,
            "global": global_part,
            "local": local_part,
            "accuracy": contrastive_accuracy(z_a, z_b),
        }
