"""Fine-tuning presets: the supervised recipes of the reference code, each value with its source.

``rs`` is the 3D ResNet-RS Kinetics-400 recipe (``tensorflow/models: official/vision/configs/
experiments/video_classification/k400_resnet3drs_50_tpu.yaml``, run as ``--experiment_type=
video_classification_kinetics400``, whose factory in ``official/vision/configs/
video_classification.py`` fills what the yaml leaves out); ``rs-<depth>-<frames>f`` scale the
depth with the frames as ``official/vision/MODEL_GARDEN.md`` lists them; ``ucf101`` is that
file's ``video_classification_ucf101`` factory; ``vatt`` is ``google-research/google-research:
vatt/configs/experiment.py::Finetune``; ``linear`` is CVRL's linear evaluation on frozen
features (``official/projects/video_ssl/configs/experiments/cvrl_linear_eval_k600.yaml``);
``tiny`` runs a real step on a laptop CPU in seconds. Neither reference gives layer-wise
learning-rate decay, so there is none. ConST-CL's reference code has no fine-tuning recipe and
TeG has no code: their backbones fine-tune with ``ucf101``, ``rs`` or ``linear``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vvk.engine import TrainConfig
from vvk.engine.config import check, check_ranges
from vvk.errors import VvkError
from vvk.methods.base import laptop_train
from vvk.methods.overrides import parse_overrides, replace_fields
from vvk.methods.runs import fit_warmup

DEFAULT_PRESET = "tiny"
# Fields that only say how a run is scored: a resumed run may change them.
EVAL_FIELDS = ("eval_views", "eval_size", "eval_crop", "eval_batch_size")

# The yaml's trainer: K400's 215,570 clips at a global batch of 1024 for 73,682 steps (350
# epochs) after 1,050 warm-up steps (about 5 epochs).
_RS_STEPS, _RS_WARMUP = 73_682, 1_050


@dataclass(frozen=True)
class FinetunePreset:
    """How to train and test a video classifier. The defaults are the ``rs`` preset: every value
    from ``k400_resnet3drs_50_tpu.yaml`` ("yaml") unless its comment names another source;
    "factory" is ``video_classification.py::video_classification_kinetics400`` and ``add_trainer``.

    Attributes:
        stochastic_depth, bn_eps: backbone arguments for a backbone built here (None: the
            backbone's own); a pretrained backbone keeps its ``bn_eps``.
        bn_momentum: PyTorch's convention (1 - Keras's), set on every batch norm of the backbone.
        normalize_features: L2-normalise the pooled features before the classifier.
        freeze: train the classifier alone on frozen features (the backbone in eval mode).
        zero_center: feed clips in [-1, 1] rather than [0, 1].
        eval_views: (clips, crops) of multi-view testing; 1x1 is reported beside it.
        eval_size, eval_crop: the test frames' short side and the square crops cut from it.
    """

    backbone: str = "r3d-rs-50"  # backbone.resnet_3d_rs.model_id 50, se_ratio 0.25, stem v1
    stochastic_depth: float | None = 0.1  # backbone.resnet_3d_rs.stochastic_depth_drop_rate
    # norm_activation.norm_momentum 0.0 in Keras: the moving statistics are the last batch's,
    # momentum 1.0 here; set 0.01 for averaged statistics when batches are small.
    bn_momentum: float | None = 1.0
    bn_eps: float | None = 1e-5  # norm_activation.norm_epsilon
    dropout: float = 0.5  # model.dropout_rate: Dropout before the Dense classifier
    label_smoothing: float = 0.1  # losses.label_smoothing (one_hot: true)
    # video_ssl_model.py::VideoSSLModel normalize_feature; the classification model has none.
    normalize_features: bool = False
    freeze: bool = False  # VideoClassificationTask.freeze_backbone default
    frames: int = 32  # train_data.feature_shape (32, 224, 224, 3)
    stride: int = 2  # train_data.temporal_stride
    fps: float | None = None  # the videos' own frame rate
    size: int = 256  # train_data.min_image_size: the decoded short side the crop is drawn from
    crop: int = 224  # train_data.feature_shape
    crop_scale: tuple[float, float] = (0.08, 1.0)  # train_data.aug_{min,max}_area_ratio
    crop_ratio: tuple[float, float] = (0.5, 2.0)  # train_data.aug_{min,max}_aspect_ratio
    flip: float = 0.5  # video_input.process_image: random_flip_left_right
    color_strength: float = 0.0  # no train_data.aug_type: crop and flip only
    zero_center: bool = False  # DataConfig.zero_centering_image default: [0, 1]
    eval_views: tuple[int, int] = (10, 3)  # validation_data.num_test_clips, num_test_crops
    eval_size: int = 256  # validation_data.min_image_size
    eval_crop: int = 256  # validation_data.feature_shape (32, 256, 256, 3): the whole short side
    eval_batch_size: int = 8  # clips per forward pass at test time (memory, not the recipe)
    # Global batch 1024 (train_data.global_batch_size) = 64 per process on 16 processes, each
    # replica's loss divided by their number (video_classification.py task's train_step): DDP's
    # mean. SGD momentum 0.9 with Nesterov (factory add_trainer's nesterov=True), cosine from
    # 0.8 (trainer.optimizer_config.learning_rate) after a linear warm-up from 0; L2 4e-5
    # (losses.l2_weight_decay, as keras l2(4e-5 / 2) on conv and Dense kernels only: SGD weight
    # decay, never on biases or batch norm); EMA 0.9999 (optimizer_config.ema; its
    # trainable_weights_only false averages the batch-norm statistics too); bf16
    # (runtime.mixed_precision_dtype); a checkpoint every 210 steps, 3 kept
    # (trainer.checkpoint_interval, max_to_keep); a metrics line every 500 (summary_interval).
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(
            steps=_RS_STEPS,
            batch_size=64,
            lr=0.8,
            optimizer="sgd",
            momentum=0.9,
            nesterov=True,
            weight_decay=4e-5,
            warmup_steps=_RS_WARMUP,
            schedule="cosine",
            ema_decay=0.9999,
            ema_buffers="average",
            precision="bf16",
            checkpoint_every=210,
            keep_checkpoints=3,
            log_every=500,
        )
    )

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                "> 0": ("fps", "bn_eps", "crop_ratio"),
                ">= 0": ("color_strength",),
                ">= 1": ("frames", "stride", "size", "crop", "eval_views", "eval_size", "eval_crop",
                         "eval_batch_size"),
                "in [0, 1]": ("bn_momentum", "flip"),
                "in (0, 1]": ("crop_scale",),
                "in [0, 1)": ("stochastic_depth", "dropout", "label_smoothing"),
            },
        )  # fmt: skip
        check(self, "crop", self.crop <= self.size, f"<= size = {self.size} (the crop is cut from the frame)")
        check(self, "eval_crop", self.eval_crop <= self.eval_size, f"<= eval_size = {self.eval_size}")
        check(self, "eval_views", len(self.eval_views) == 2, "two numbers: clips,crops")
        for name in ("crop_scale", "crop_ratio"):
            low, high = getattr(self, name)
            check(self, name, low <= high, "a (low, high) range")


_RS = FinetunePreset()

# MODEL_GARDEN.md, Kinetics-400 table: R3D-RS-101, -152, -200 at 32 x 2 and R3D-RS-200 at 48 x 2
# (79.5, 79.9, 80.4, 81.0 top-1), the depth scaled with the frames. Only RS-50's yaml is
# published; these keep its recipe with their backbone and clip length.
RS_SCALING = {
    "rs-101-32f": (101, 32),
    "rs-152-32f": (152, 32),
    "rs-200-32f": (200, 32),
    "rs-200-48f": (200, 48),
}

# The tiny run: r3d-tiny on 8-frame clips of 64² at a laptop's steps (vvk.methods.base), crop and
# flip as rs; AdamW at a constant 1e-3 (SGD at these sizes needs far more steps), no EMA (0.9999
# averages over ten thousand steps: a short run's average is its initial weights), fp32, and
# clips zero-centred as vvk's pretraining methods feed them, so that it fine-tunes their runs.
_TINY = dataclasses.replace(
    _RS, backbone="r3d-tiny", stochastic_depth=0.0, bn_momentum=None, bn_eps=None, frames=8, size=80,
    crop=64, zero_center=True, eval_views=(2, 3), eval_size=80, eval_crop=80,
    train=laptop_train(batch_size=8, lr=1e-3, weight_decay=1e-4, num_workers=1),
)  # fmt: skip

# video_classification.py::video_classification_ucf101 (with add_trainer): 9,537 clips at a
# global batch of 64 (149 steps an epoch) for 100 epochs after 5 of warm-up, SGD momentum 0.9 from
# lr 0.8, L2 1e-4 (Losses(l2_weight_decay=1e-4)), batch norm momentum 0.9 (0.1 here) and eps
# 1e-5; VideoClassificationModel's default dropout 0.2, Losses' label smoothing 0, DataConfig's
# crop area 0.49-1, min_image_size 256. Its backbone is ResNet3D50; r3d-50 here, the one vvk's
# CVRL and TeG pretrain. Its validation set keeps is_training=True (random crops): vvk tests the
# centre view (1 clip x 1 crop, num_test_clips / num_test_crops defaults) at 224². Clips are
# zero-centred, as the pretrained backbones this recipe fine-tunes were fed.
_UCF101_EPOCH = 9537 // 64
_UCF101 = dataclasses.replace(
    _RS, backbone="r3d-50", stochastic_depth=None, bn_momentum=0.1, dropout=0.2, label_smoothing=0.0,
    crop_scale=(0.49, 1.0), zero_center=True, eval_views=(1, 1), eval_crop=224,
    train=TrainConfig(
        steps=100 * _UCF101_EPOCH, batch_size=64, lr=0.8, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
        warmup_steps=5 * _UCF101_EPOCH, schedule="cosine", precision="bf16", checkpoint_every=_UCF101_EPOCH,
    ),
)  # fmt: skip

# vatt/configs/experiment.py::Finetune: ViTBase (configs/video.py; cls_dropout_rate 0.5 on the AGG
# token, DropToken kept on: random_patch_sampling), MomentumOptimizer 0.9 without Nesterov and
# no weight decay, cosine from 0.005 after 2,500 warm-up steps, 100k steps, gradient clipping at
# 0.75 (gradient_clip_norm; gradient_clip_norm_cls 0), a checkpoint every 5,000 steps, 10 kept.
# configs/dataset.py::Finetune: 32 frames at stride 2, 224², label smoothing 0.1, zero-centred,
# "VGG" crops with scale jitter from min_resize 224 and colour augmentation (as vvk.methods.vatt
# draws them), 4 test windows x 3 crops (num_windows_test, multi_crop). Its batch_size is the
# global batch, Dataset's default 8 unless a run sets it. bf16 as VATT's pretraining.
_VATT = dataclasses.replace(
    _RS, backbone="vatt-video-base", stochastic_depth=None, bn_momentum=None, bn_eps=None, size=224,
    crop_scale=(0.67, 1.0), crop_ratio=(0.67, 1.5), color_strength=0.5, zero_center=True, eval_views=(4, 3),
    eval_size=224, eval_crop=224,
    train=TrainConfig(
        steps=100_000, batch_size=8, lr=0.005, optimizer="sgd", momentum=0.9, weight_decay=0.0,
        warmup_steps=2500, schedule="cosine", grad_clip=0.75, precision="bf16", checkpoint_every=5000,
        keep_checkpoints=10,
    ),
)  # fmt: skip

# cvrl_linear_eval_k600.yaml on video_ssl.py::video_ssl_linear_eval_kinetics600: R3D-50 frozen
# (linear_eval.py sets the backbone non-trainable), L2-normalised features (normalize_feature)
# into one Dense layer (hidden_layer_num 0), no dropout (VideoSSLModel never applies its
# dropout_rate), no L2, no label smoothing; crop area 0.3-1; cosine from 32.0 without Nesterov
# after 1,787 warm-up steps, 35,744 steps at a global batch of 1024; tested 10 x 3 at 256².
_LINEAR = dataclasses.replace(
    _RS, backbone="r3d-50", stochastic_depth=None, bn_momentum=None, bn_eps=None, dropout=0.0,
    label_smoothing=0.0, normalize_features=True, freeze=True, crop_scale=(0.3, 1.0), zero_center=True,
    train=TrainConfig(
        steps=35_744, batch_size=64, lr=32.0, optimizer="sgd", momentum=0.9, weight_decay=0.0,
        warmup_steps=1787, schedule="cosine", precision="bf16",
    ),
)  # fmt: skip

PRESETS: dict[str, FinetunePreset] = {
    "rs": _RS,
    **{
        name: dataclasses.replace(_RS, backbone=f"r3d-rs-{depth}", frames=frames)
        for name, (depth, frames) in RS_SCALING.items()
    },
    "tiny": _TINY,
    "ucf101": _UCF101,
    "vatt": _VATT,
    "linear": _LINEAR,
}


def resolve_finetune_preset(
    preset: str = DEFAULT_PRESET,
    *,
    overrides: Sequence[str] = (),
    base: FinetunePreset | None = None,
    **shortcut: Any,
) -> FinetunePreset:
    """Preset ``preset`` (or ``base``) with ``overrides`` and then the ``shortcuts`` applied at
    once, each field checked; a run shorter than the warm-up shortens it in proportion."""
    if base is None:
        if preset not in PRESETS:
            raise VvkError(
                f"preset={preset}: not a finetune preset", hint=f"one of {', '.join(PRESETS)}",
                params=("preset",),
            )  # fmt: skip
        base = PRESETS[preset]
    changes = parse_overrides(base, [*overrides, *shortcuts(**shortcut)])
    fit_warmup(base.train, changes)
    return replace_fields(base, changes)


def shortcuts(
    *,
    backbone: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    freeze: bool = False,
    views: tuple[int, int] | None = None,
    seed: int | None = None,
) -> list[str]:
    """The ``key=value`` overrides the shortcut arguments stand for."""
    given = {"backbone": backbone, "train.steps": steps, "train.batch_size": batch_size,
             "freeze": "true" if freeze else None, "eval_views": views and f"{views[0]},{views[1]}",
             "train.seed": seed}  # fmt: skip
    return [f"{key}={value}" for key, value in given.items() if value is not None]
