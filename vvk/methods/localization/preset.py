"""Presets of the action-localization protocol: the one place its settings become arguments."""

from __future__ import annotations

from dataclasses import dataclass

HEADS = ("linear", "transformer")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class LocalizationPreset:
    """How clips are cut around key frames, the head, and how it is trained.

    The ConST-CL paper gives no downstream settings (reference/video_ssl.md §5: no AVA code is
    released); the head follows SlowFast's AVA head (``slowfast/models/head_helper.py``,
    ``ResNetRoIHead``; ``configs/AVA/SLOW_8x8_R50_SHORT.yaml``), the rest is vvk's choice.
    """

    frames: int = 16  # the clip centred on the key frame (the default)
    stride: int = 2  # source frames between clip frames (CVRL/ConST-CL pretraining clips)
    size: int = 256  # short side of the decoded frames (SlowFast AVA: TEST_CROP_SIZE 256)
    head: str = "linear"  # or "transformer": the RoI feature attends to the clip's context
    roi_size: int = 7  # RoIAlign bins per side (SlowFast: DETECTION.ROI_XFORM_RESOLUTION 7)
    dropout: float = 0.5  # before the classifier (SlowFast AVA: MODEL.DROPOUT_RATE 0.5)
    decoder_dim: int = 128  # transformer head: width of a unit (ConST-CL's decoder: 128)
    decoder_heads: int = 2  # transformer head: independent units in its one layer
    steps: int = 2000
    batch_size: int = 8  # key frames per step (each with all its boxes)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    finetune_backbone: bool = False  # train the backbone too (it stays in eval mode: frozen BN)
    backbone_lr_scale: float = 0.1  # the backbone's learning rate is lr times this
    holdout: float = 0.5  # without train annotations: the fraction of key frames evaluated
    eval_batch_size: int = 8
    num_workers: int = 2
    frame_cache: bool = False  # decode each video once, whole (vvk.data.frame_cache): small sets


PRESETS = {
    "default": LocalizationPreset(),
    # A real run of every piece on a laptop CPU in seconds (tests, the built-in example set).
    "tiny": LocalizationPreset(
        frames=8,
        stride=2,
        size=64,
        roi_size=4,
        decoder_dim=32,
        steps=20,
        batch_size=4,
        lr=1e-2,
        eval_batch_size=16,
        num_workers=0,
        frame_cache=True,
    ),
}
