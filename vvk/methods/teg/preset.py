"""TeG presets and the assembly of its training module from a preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vvk.data.samplers import LongShortClips
from vvk.data.video_transforms import VideoAugment, cvrl_view_augments
from vvk.engine import TrainConfig
from vvk.engine.config import check, check_ranges
from vvk.errors import VvkError
from vvk.methods.base import laptop_train
from vvk.methods.cvrl.preset import CvrlPreset, paper_train
from vvk.methods.teg.model import FEATURE, TegModel
from vvk.models import build as build_model
from vvk.models.heads.projection import ProjectionMLP

MAX_TEMPORAL_STRIDE = 2  # dense temporal embeddings need res5 to keep most of the frame rate


@dataclass(frozen=True)
class TegPreset:
    """TeG hyperparameters. The defaults are the ``paper`` preset: the paper's values are not
    public (reference/video_ssl.md §6, §11), so each default is our choice, built on the CVRL
    recipe (``tensorflow/models: official/projects/video_ssl/configs/experiments/
    cvrl_pretrain_k600_200ep.yaml``) with the reason beside it."""

    # CVRL's R3D-50 with a temporal stride of 1 in the stem: res5 keeps all 16 steps of a
    # 16-frame clip (the reference asks for <= 2; 1 gives the fine-grained loss 16 positions).
    backbone: str = "r3d-50"
    stem_temporal_stride: int = 1
    # CVRL's backbone batch norm (Keras momentum 0.9, i.e. 0.1 in PyTorch's convention, eps 1e-5).
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    size: int = 256  # decoded short side; the random resized crop takes `crop` from it
    crop: int = 224  # CVRL's 224² views
    # CVRL's two asymmetric views (colour jitter, grayscale, blur, solarize); off: random
    # resized crop and flip only, which leaves the embeddings free to key on colour.
    color_augment: bool = True
    fps: float | None = None  # the videos' own rate, as CVRL samples
    # Long clip: 16 frames every 8 (5.1 s at 25 fps), the persistent, slow view. Short clip:
    # CVRL's 16 frames every 2 (1.2 s) inside it; its steps fall every quarter long step.
    long_frames: int = 16
    long_stride: int = 8
    short_frames: int = 16
    short_stride: int = 2
    # Both heads have CVRL's global-head shape (3 x 2048 hidden, 128-d out) and batch norm
    # (Keras momentum 0.997, eps 1e-5: CvrlPreset's head_bn_*), separate weights.
    hidden_dim: int = 2048
    embed_dim: int = 128
    head_layers: int = 3
    head_bn_momentum: float = CvrlPreset.head_bn_momentum
    head_bn_eps: float = CvrlPreset.head_bn_eps
    temperature: float = 0.1  # persistent loss: CVRL's global loss and temperature
    fine_temperature: float = 0.1  # the same scale for the dense InfoNCE
    # λ = 1 weighs every directional InfoNCE term alike: the persistent loss is CVRL's sum of
    # its two directions (long -> short, short -> long), the fine-grained loss has one (short
    # steps -> long clip). The paper reports that the weighting trades fine-grained tasks
    # against persistent ones, so this is the neutral starting point.
    fine_weight: float = 1.0
    # CVRL K600 yaml: SGD momentum 0.9, cosine from 0.32 with 1787 warm-up steps over 71488
    # steps, global batch 1024 (batch_size is per rank: 16 ranks x 64), L2 1e-6, bf16; and
    # CVRL's summed replica gradients, without which its rate is not CVRL's step (CvrlPreset).
    train: TrainConfig = dataclasses.field(default_factory=lambda: paper_train())

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "> 0": ("bn_eps", "head_bn_eps", "fps", "temperature", "fine_temperature"),
                ">= 0": ("fine_weight", "head_layers"),
                ">= 1": ("stem_temporal_stride", "size", "crop", "long_frames", "long_stride", "short_frames",
                         "short_stride", "hidden_dim", "embed_dim"),
                "in [0, 1]": ("bn_momentum", "head_bn_momentum"),
            },
        )  # fmt: skip
        check(self, "crop", self.crop <= self.size, f"<= size = {self.size} (the crop is cut from the frame)")
        long_span = (self.long_frames - 1) * self.long_stride + 1
        short_span = (self.short_frames - 1) * self.short_stride + 1
        fits = f"such that the short clip ({short_span} frames) fits in the long one ({long_span})"
        check(self, "short_frames", short_span <= long_span, fits)


PRESETS: dict[str, TegPreset] = {
    "paper": TegPreset(),
    # A laptop CPU: the 1/8-width test ResNet at 48², 8-frame clips whose short steps fall
    # every half long step (every other positive is interpolated), small heads, CVRL's views,
    # Adam at 3e-3.
    "tiny": TegPreset(
        backbone="r3d-tiny",
        size=64,
        crop=48,
        long_frames=8,
        long_stride=4,
        short_frames=8,
        short_stride=2,
        hidden_dim=128,
        embed_dim=32,
        head_layers=2,
        train=laptop_train(batch_size=6, lr=3e-3, weight_decay=0.0, num_workers=0),
    ),
}


def sampler(preset: TegPreset) -> LongShortClips:
    return LongShortClips(
        long_frames=preset.long_frames,
        long_stride=preset.long_stride,
        short_frames=preset.short_frames,
        short_stride=preset.short_stride,
        fps=preset.fps,
    )


def dataset_options(preset: TegPreset) -> dict[str, Any]:
    return {}


def build(preset: TegPreset) -> TegModel:
    backbone = build_model(
        preset.backbone,
        stem_temporal_stride=preset.stem_temporal_stride,
        norm_momentum=preset.bn_momentum,
        norm_eps=preset.bn_eps,
    )
    spec = backbone.output_shape().get(FEATURE)
    if spec is None:
        raise VvkError(f"teg: backbone '{preset.backbone}' has no {FEATURE} output (use an r3d-* model)")
    if spec.temporal_stride > MAX_TEMPORAL_STRIDE:
        raise VvkError(
            f"teg: backbone '{preset.backbone}' subsamples time by {spec.temporal_stride} at {FEATURE}; "
            f"dense temporal embeddings need <= {MAX_TEMPORAL_STRIDE}",
            hint="set stem_temporal_stride=1",
        )
    head = {
        "in_dim": spec.channels,
        "hidden_dim": preset.hidden_dim,
        "out_dim": preset.embed_dim,
        "layers": preset.head_layers,
        "norm_momentum": preset.head_bn_momentum,
        "norm_eps": preset.head_bn_eps,
    }
    if preset.color_augment:  # CVRL's views: the long clip gets view 1, the short clip view 2
        augment_long, augment_short = cvrl_view_augments(preset.crop)
    else:
        augment_long = augment_short = VideoAugment(size=preset.crop, jitter=0.0, grayscale=0.0, blur=0.0)
    return TegModel(
        backbone=backbone,
        global_head=ProjectionMLP(**head),
        dense_head=ProjectionMLP(**head),
        augment_long=augment_long,
        augment_short=augment_short,
        temperature=preset.temperature,
        fine_temperature=preset.fine_temperature,
        fine_weight=preset.fine_weight,
    )
