"""The video classifier, its training step, and its file::

    clip (B, 3, T, H, W) ─ backbone ─ pooled token (VATT) or GAP(res5) ─ [L2-normalise]
                         ─ dropout ─ Linear ─ logits (B, K)

as ``tensorflow/models: official/vision/modeling/video_classification_model.py`` builds it (the
last endpoint, global average pooling, Dropout, Dense) and VATT's fine-tuning classifies its
AGG token (``vvk.eval.features.embedding`` picks the same feature as every evaluation).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_model
from torch import Tensor, nn

from vvk.atomic import atomic_path
from vvk.data.video_transforms import VideoAugment
from vvk.errors import VvkError
from vvk.eval.features import VIDEO_TASKS, embedding
from vvk.methods.base import augment_views
from vvk.methods.finetune.preset import FinetunePreset
from vvk.models import build, get_entry
from vvk.models.checkpoint import load_weights
from vvk.models.registry import ARCH_ATTR

CLASSIFIER_FORMAT = "vvk-video-classifier"
# The backbone arguments a preset field sets, by field: named in the error of a backbone without them.
_BACKBONE_FIELDS = {"stochastic_depth_rate": "stochastic_depth", "norm_eps": "bn_eps"}


class VideoClassifier(nn.Module):
    """``forward(clips) -> logits``: a video backbone and a linear classifier on its pooled feature.

    Args:
        backbone: a video backbone (``vvk.models``) returning ``pooled`` or ``res5``.
        num_classes: the classifier's outputs.
        dropout: applied to the feature in training.
        normalize_features: L2-normalise the feature first (CVRL's linear evaluation).
        freeze: train the classifier alone: the backbone takes no gradients and stays in eval
            mode (batch-norm statistics, dropout and DropToken as at test time).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        num_classes: int,
        dropout: float = 0.0,
        normalize_features: bool = False,
        freeze: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.normalize_features, self.frozen = normalize_features, freeze
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_width(backbone), num_classes)
        # Keras Dense(kernel_initializer='random_uniform'), video_classification_model.py: U(-0.05, 0.05).
        nn.init.uniform_(self.head.weight, -0.05, 0.05)
        nn.init.zeros_(self.head.bias)
        if freeze:
            backbone.requires_grad_(False)

    def features(self, clips: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, C) pooled features."""
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            z = embedding(self.backbone(clips))
        return F.normalize(z, dim=-1) if self.normalize_features else z

    def forward(self, clips: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(clips)))  # (B, C) -> (B, K)

    def train(self, mode: bool = True) -> VideoClassifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self


def feature_width(backbone: nn.Module) -> int:
    """Channels of the feature ``embedding`` takes from ``backbone``."""
    shapes = backbone.output_shape()
    key = "pooled" if "pooled" in shapes else "res5" if "res5" in shapes else list(shapes)[-1]
    return shapes[key].channels


def build_backbone(config: FinetunePreset, arch: dict[str, Any], *, pretrained: bool = False) -> nn.Module:
    """The backbone ``arch`` names (``{"name", "kwargs"}``) with the preset's stochastic depth and,
    unless it is to receive ``pretrained`` weights, batch-norm epsilon; then the preset's
    batch-norm momentum, a training setting (not recorded with the architecture)."""
    if get_entry(arch["name"]).task not in VIDEO_TASKS:
        raise VvkError(
            f"backbone={arch['name']}: task {get_entry(arch['name']).task}, not a video backbone",
            hint="see `vvk models list --task video-backbone`", params=("backbone",),
        )  # fmt: skip
    options: dict[str, Any] = {}
    if config.stochastic_depth is not None:
        options["stochastic_depth_rate"] = config.stochastic_depth
    if config.bn_eps is not None and not pretrained:
        options["norm_eps"] = config.bn_eps
    try:
        backbone = build(arch["name"], **{**arch["kwargs"], **options})
    except VvkError as e:
        if not options:
            raise
        fields = " and ".join(f"{_BACKBONE_FIELDS[k]}=none" for k in options)
        raise VvkError(e.message, hint=f"for a backbone without them, set {fields}") from e
    if config.bn_momentum is not None:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    return backbone


def build_classifier(
    config: FinetunePreset, *, num_classes: int, arch: dict[str, Any], pretrained: bool = False
) -> VideoClassifier:
    """The preset's classifier on the backbone ``arch`` names (see ``build_backbone``)."""
    return VideoClassifier(
        backbone=build_backbone(config, arch, pretrained=pretrained), num_classes=num_classes,
        dropout=config.dropout, normalize_features=config.normalize_features, freeze=config.freeze,
    )  # fmt: skip


def train_augment(config: FinetunePreset) -> VideoAugment:
    """Random resized crop and flip (``preprocess_ops_3d.random_crop_resize``, ``random_flip_left_
    right``), colour jitter with p 0.8 when ``color_strength`` > 0, nothing else."""
    s = config.color_strength
    return VideoAugment(
        size=config.crop, crop_scale=config.crop_scale, crop_ratio=config.crop_ratio, flip=config.flip,
        jitter=0.8 if s > 0 else 0.0, strength=s, grayscale=0.0, blur=0.0, solarize=0.0,
        zero_center=config.zero_center,
    )  # fmt: skip


def classification_step(
    net: nn.Module, batch: dict[str, Any], *, augment: VideoAugment, label_smoothing: float
) -> dict[str, Tensor]:
    """One training step: augmented clips, their logits, the label-smoothed cross-entropy (the
    reference's categorical cross-entropy of one-hot labels y·(1 - ε) + ε / K) and the accuracy."""
    clips = augment_views(augment, batch["video"], batch.get("frame_size"))  # (B, 3, T, crop, crop)
    logits = net(clips).float()  # (B, K)
    labels = batch["label"]
    return {
        "loss": F.cross_entropy(logits, labels, label_smoothing=label_smoothing),
        "accuracy": (logits.detach().argmax(dim=1) == labels).float().mean(),
    }


def save_classifier(model: VideoClassifier, path: str | os.PathLike, *, classes: list[str]) -> Path:
    """Write ``model`` (backbone and classifier) as safetensors whose metadata rebuilds it
    (``load_classifier``), atomically; returns ``path``."""
    metadata = {
        "format": CLASSIFIER_FORMAT, "backbone": json.dumps(getattr(model.backbone, ARCH_ATTR)),
        "classes": json.dumps(classes), "normalize_features": json.dumps(model.normalize_features),
    }  # fmt: skip
    path = Path(path)
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)
    return path


def load_classifier(path: str | os.PathLike) -> tuple[VideoClassifier, list[str]]:
    """The classifier ``save_classifier`` wrote (in eval mode) and its class names."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for other files
        raise VvkError(f"{path}: not a safetensors file ({e})") from e
    if metadata.get("format") != CLASSIFIER_FORMAT:
        raise VvkError(f"{path}: not a vvk video classifier (format {metadata.get('format')!r})")
    arch, classes = json.loads(metadata["backbone"]), json.loads(metadata["classes"])
    model = VideoClassifier(
        backbone=build(arch["name"], **arch["kwargs"]), num_classes=len(classes),
        normalize_features=json.loads(metadata["normalize_features"]),
    )  # fmt: skip
    load_weights(model, path)
    return model.eval(), classes
