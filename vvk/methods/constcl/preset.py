"""ConST-CL presets and the assembly of its training module from a preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vvk.data.samplers import ClipPlan, TwoViews
from vvk.engine import TrainConfig
from vvk.engine.config import check, check_ranges
from vvk.errors import VvkError
from vvk.methods.constcl.boxes import BoxTable, FileBoxes, RandomBoxes
from vvk.methods.constcl.local import InstanceReconstructor, context_steps
from vvk.methods.constcl.model import GLOBAL_FEATURE, LOCAL_FEATURE, ConstclModel
from vvk.methods.cvrl.preset import (
    TINY_HEAD,
    TINY_VIEWS,
    CvrlPreset,
    build_backbone,
    global_head,
    paper_train,
    tiny_train,
    view_augments,
)


@dataclass(frozen=True)
class ConstclPreset(CvrlPreset):
    """ConST-CL hyperparameters: CVRL's fields (the global branch, clips and views) plus the
    local branch. Defaults are the ``paper`` preset, from ``tensorflow/models: official/projects/
    const_cl/configs/{const_cl.py, head.py, yaml/const_cl_pretrain_k400_200k.yaml}``."""

    backbone: str = "r3d-50-y"  # ResNet3DY: CVRL's R3D-50 with res5 built twice
    # Global-head batch norm: const_cl.py::ConstCLModel.global_head sets Keras momentum 0.9
    # (0.1 here), not CVRL's 0.997; eps 1e-5 as CVRL.
    head_bn_momentum: float = 0.1
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
    # Nesterov, cosine from 40.96 (docs/notes/constcl.md) after 2500 linear warm-up steps,
    # 200k steps, L2 1e-6 on kernels. Replica gradients are summed, as in the reference:
    # tasks/const_cl.py::ConstCLPretrainTask.train_step does not divide the loss (its L2
    # included) by num_replicas, and the Keras optimizer sums the replicas' gradients.
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: paper_train(steps=200_000, lr=40.96, warmup_steps=2500)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(
            self,
            {
                "> 0": ("local_temperature",),
                ">= 0": ("local_weight", "box_max_gap"),
                ">= 1": ("num_boxes", "roi_size", "context_frames", "decoder_dim", "decoder_layers",
                         "decoder_heads"),
            },
        )  # fmt: skip
        check(self, "pooling", self.pooling in ("keyframe", "tube"), "one of keyframe, tube")


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
        boxes = FileBoxes(table, num=preset.num_boxes, max_gap=preset.box_max_gap)
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
