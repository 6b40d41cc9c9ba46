"""CVRL presets and the assembly of its training module from a preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from vvk.data.samplers import TwoViews
from vvk.data.video_transforms import VideoAugment
from vvk.engine import TrainConfig
from vvk.engine.config import check, check_ranges
from vvk.errors import VvkError
from vvk.methods.base import laptop_train
from vvk.methods.cvrl.model import FEATURE, CvrlModel
from vvk.models import build as build_model
from vvk.models.heads.projection import ProjectionMLP


def paper_train(**changes: Any) -> TrainConfig:
    """The reference's optimisation recipe (CVRL's K600 yaml; see ``CvrlPreset.train``), which
    ConST-CL and TeG share; ``changes`` replace single settings."""
    recipe: dict[str, Any] = dict(
        steps=71488, batch_size=64, lr=0.32, optimizer="sgd", momentum=0.9, weight_decay=1e-6,
        warmup_steps=1787, schedule="cosine", replica_grads="sum", precision="bf16",
    )  # fmt: skip
    return TrainConfig(**{**recipe, **changes})


@dataclass(frozen=True)
class CvrlPreset:
    """CVRL hyperparameters; the defaults are the ``paper`` preset, from ``tensorflow/models:
    official/projects/video_ssl/configs/{video_ssl.py, experiments/cvrl_pretrain_k600_200ep.yaml}``
    and ``dataloaders/video_ssl_input.py`` unless a comment says otherwise."""

    backbone: str = "r3d-50"  # R3D-50, v0 stem, temporal kernels [1, 1, 3, 3], no SE / gating
    # Backbone batch norm: video_classification_kinetics600's NormActivation (Keras momentum 0.9,
    # i.e. 0.1 in PyTorch's convention, eps 1e-5); the registry's r3d default is the RS recipe's.
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    stochastic_depth: float | None = None  # None: the backbone's own rate (0 for r3d-50, 0.1 for RS)
    size: int = 256  # decoded short side (the reader's min_image_size); the crop takes `crop` from it
    crop: int = 224
    frames: int = 16  # feature_shape (16, 224, 224, 3), temporal_stride 2
    stride: int = 2
    max_gap: int | None = None  # sample_ssl_sequence: the gap may span the whole video
    fps: float | None = None  # the videos' own frame rate
    # The two asymmetric views of _process_image: random resized crop (area 0.3-1, aspect
    # 0.5-2) and flip, colour jitter p 0.8 at SimCLR strength 1 (brightness, contrast,
    # saturation 0.8·s, hue 0.2·s; s = 0 turns jitter and grayscale off), grayscale p 0.2,
    # Gaussian blur with p 1.0 on view 1 and 0.1 on view 2, solarize on view 2 only (p 0.2).
    color_strength: float = 1.0
    blur: tuple[float, float] = (1.0, 0.1)
    solarize: tuple[float, float] = (0.0, 0.2)
    hidden_dim: int = 2048  # VideoSSLModel: 3 hidden layers of 2048, 128-d projection
    embed_dim: int = 128
    head_layers: int = 3
    # Head batch norm, apart from the backbone's: video_ssl.py::VideoSSLModel.hidden_norm_activation
    # keeps Keras momentum 0.997 (0.003 in PyTorch's convention), eps 1e-5; the k600 factory
    # overrides only the backbone's norm_activation and the yaml only sync BN.
    head_bn_momentum: float = 0.003
    head_bn_eps: float = 1e-5
    temperature: float = 0.1  # SSLLosses.temperature
    # K600 yaml: global batch 1024 (per rank here: 16 ranks x 64), SGD momentum 0.9 without
    # Nesterov, cosine from 0.32 after 1787 linear warm-up steps, 71488 steps (200 epochs),
    # L2 1e-6 on kernels only (tf.nn.l2_loss: gradient 1e-6 · w, SGD's weight decay), bf16.
    # Sync batch norm (use_sync_bn) is not applied here: see the module docstring of constcl.
    # Replica gradients are summed, as in the reference: video_ssl/tasks/pretrain.py::
    # VideoSSLPretrainTask.train_step does not divide the loss (its L2 included) by
    # num_replicas, and the Keras optimizer sums the replicas' gradients (docs/notes/constcl.md).
    train: TrainConfig = dataclasses.field(default_factory=lambda: paper_train())

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "> 0": ("bn_eps", "head_bn_eps", "temperature", "fps"),
                ">= 0": ("max_gap", "color_strength", "head_layers"),
                ">= 1": ("size", "crop", "frames", "stride", "hidden_dim", "embed_dim"),
                "in [0, 1]": ("bn_momentum", "head_bn_momentum", "blur", "solarize"),
                "in [0, 1)": ("stochastic_depth",),
            },
        )
        check(self, "crop", self.crop <= self.size, f"<= size = {self.size} (the crop is cut from the frame)")


def tiny_train(**changes: Any) -> TrainConfig:
    """The laptop training settings shared by the CVRL and ConST-CL ``tiny`` presets: AdamW at a
    constant 1e-3 (SGD at these sizes needs many more steps), batches of 8 clips (16 views)."""
    settings: dict[str, Any] = dict(batch_size=8, lr=1e-3, weight_decay=1e-4, num_workers=1)
    return laptop_train(**{**settings, **changes})


# A laptop CPU (2 cores): the 1/8-width test ResNet without stochastic depth on 8-frame clips
# (stride 4, about a second) at 64², a small head, half-strength colour jitter and blur at
# p 0.5 / 0.1 (full strength stalls a network this small: docs/notes/cvrl.md), AdamW.
TINY_VIEWS: dict[str, Any] = {"size": 80, "crop": 64, "frames": 8, "stride": 4, "color_strength": 0.5,
                              "blur": (0.5, 0.1)}  # fmt: skip
TINY_HEAD: dict[str, Any] = {"hidden_dim": 256, "embed_dim": 64, "head_layers": 2, "temperature": 0.2}

PRESETS: dict[str, CvrlPreset] = {
    "paper": CvrlPreset(),
    "tiny": CvrlPreset(
        backbone="r3d-tiny", stochastic_depth=0.0, **TINY_VIEWS, **TINY_HEAD, train=tiny_train()
    ),
}


def sampler(preset: CvrlPreset) -> TwoViews:
    return TwoViews(frames=preset.frames, stride=preset.stride, max_gap=preset.max_gap, fps=preset.fps)


def dataset_options(preset: CvrlPreset) -> dict[str, Any]:
    return {}


def build_backbone(preset: CvrlPreset, *, needs: tuple[str, ...] = (FEATURE,)):
    """The preset's backbone with the reference's batch norm; refuses one without ``needs``."""
    with torch.device("meta"):  # a free look at the outputs before building for real
        outputs = build_model(preset.backbone).output_shape()
    missing = [name for name in needs if name not in outputs]
    if missing:
        raise VvkError(
            f"backbone '{preset.backbone}' has no {', '.join(missing)} output",
            hint="use a 3D ResNet (r3d-50, r3d-rs-*, r3d-tiny)" if FEATURE in missing else None,
        )
    options = {"norm_momentum": preset.bn_momentum, "norm_eps": preset.bn_eps}
    if preset.stochastic_depth is not None:
        options["stochastic_depth_rate"] = preset.stochastic_depth
    return build_model(preset.backbone, **options)


def view_augments(preset: CvrlPreset) -> tuple[VideoAugment, VideoAugment]:
    """The augmentations of view 1 and view 2 (``cvrl_view_augments`` with the paper preset)."""
    s = preset.color_strength
    colour = {"strength": s, "jitter": 0.8 if s else 0.0, "grayscale": 0.2 if s else 0.0}
    view_1, view_2 = (
        VideoAugment(size=preset.crop, blur=blur, solarize=solarize, **colour)
        for blur, solarize in zip(preset.blur, preset.solarize, strict=True)
    )
    return view_1, view_2


def global_head(preset: CvrlPreset, in_dim: int) -> ProjectionMLP:
    # The reference's hidden Dense layers carry a bias before batch norm, which BN cancels;
    # ProjectionMLP drops it (6,144 fewer parameters, same function).
    return ProjectionMLP(in_dim=in_dim, hidden_dim=preset.hidden_dim, out_dim=preset.embed_dim,
                         layers=preset.head_layers, norm_momentum=preset.head_bn_momentum,
                         norm_eps=preset.head_bn_eps)  # fmt: skip


def build(preset: CvrlPreset) -> CvrlModel:
    backbone = build_backbone(preset)
    augment_a, augment_b = view_augments(preset)
    return CvrlModel(
        backbone=backbone,
        head=global_head(preset, backbone.output_shape()[FEATURE].channels),
        augment_a=augment_a,
        augment_b=augment_b,
        temperature=preset.temperature,
    )
