"""Train the RoI head on key frames with their boxes, score every ground-truth box of the
evaluation key frames, and compute frame-mAP (``vvk.eval.frame_map``).

A protocol run writes nothing and keeps no run folder, as ``vvk eval linear-probe``: its small
loop (a seeded shuffle, AdamW or SGD, a constant rate) lives here rather than in
``vvk.engine``, whose loop is for runs that checkpoint and resume.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vvk.data.ava import Annotations
from vvk.errors import VvkError
from vvk.eval.features import with_progress
from vvk.eval.frame_map import Boxes
from vvk.methods.localization.data import (
    KeyFrameClips,
    collate_key_frames,
)
from vvk.methods.localization.head import ActionLocalizer
from vvk.methods.localization.preset import OPTIMIZERS, LocalizationPreset


def localization_loss(logits: Tensor, targets: Tensor, *, multi_label: bool) -> Tensor:
    """Sigmoid cross-entropy per action (AVA: a person does several at once) or softmax
    cross-entropy over actions (UCF101-24: one per tube), from (K, C) multi-hot ``targets``."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets.argmax(dim=1))


def box_scores(logits: Tensor, *, multi_label: bool) -> Tensor:
    """(K, C) per-action scores of the boxes: sigmoid or softmax, as the loss."""
    return logits.sigmoid() if multi_label else logits.softmax(dim=1)


def to_input(video: Tensor) -> Tensor:
    """uint8 clips -> float in [-1, 1], as the pretraining methods feed them."""
    return video.float() / 127.5 - 1.0


def train_localizer(
    model: ActionLocalizer,
    data: KeyFrameClips,
    *,
    preset: LocalizationPreset,
    multi_label: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[float]:
    """Train the head (and the backbone with ``preset.finetune_backbone``) for ``preset.steps``
    steps of ``preset.batch_size`` key frames; the loss of every step."""
    model.to(device).train()
    optimizer = _optimizer(model, preset)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=preset.batch_size, shuffle=True, generator=generator,
                        collate_fn=collate_key_frames, num_workers=preset.num_workers)  # fmt: skip
    losses = []
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epochs, reshuffled each time
    for batch in with_progress(
        itertools.islice(batches, preset.steps), preset.steps, "training" if progress else None
    ):
        logits = _logits(model, batch, device)
        loss = localization_loss(logits, batch["targets"].to(device), multi_label=multi_label)
        value = loss.item()  # one read per step: this loop is short, and a bad step must not update
        if not math.isfinite(value):
            raise VvkError(f"the loss is {value} at step {len(losses) + 1}", hint="lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(value)
    return losses


def _optimizer(model: ActionLocalizer, preset: LocalizationPreset) -> torch.optim.Optimizer:
    if preset.optimizer not in OPTIMIZERS:
        raise VvkError(
            f"optimizer={preset.optimizer}: choose one of {', '.join(OPTIMIZERS)}", params=("optimizer",)
        )
    groups = [{"params": list(model.head.parameters()), "lr": preset.lr}]
    if preset.finetune_backbone:
        groups.append(
            {"params": list(model.backbone.parameters()), "lr": preset.lr * preset.backbone_lr_scale}
        )
    if preset.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=preset.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=preset.weight_decay)


def _logits(model: nn.Module, batch: dict[str, Tensor], device: torch.device | str) -> Tensor:
    video = to_input(batch["video"].to(device))
    return model(
        video, batch["boxes"].to(device), batch["batch_index"].to(device), batch["frame_size"].to(device)
    )


@torch.no_grad()
def predict_scores(
    model: ActionLocalizer,
    data: KeyFrameClips,
    *,
    multi_label: bool,
    batch_size: int = 8,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[np.ndarray]:
    """Per key frame of ``data``, (N, C) scores of its N boxes for the C classes."""
    model.to(device).eval()
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate_key_frames, num_workers=num_workers)
    scores: list[np.ndarray] = []
    for batch in with_progress(loader, len(loader), "scoring" if progress else None):
        per_box = box_scores(_logits(model, batch, device), multi_label=multi_label).float().cpu()  # (K, C)
        counts = torch.bincount(batch["batch_index"], minlength=len(batch["index"])).tolist()
        scores.extend(t.numpy() for t in per_box.split(counts))  # (K, C) -> B x (N, C)
    return scores


def frame_boxes(
    annotations: Annotations, scores: list[np.ndarray], classes: list[int]
) -> tuple[dict[Any, Boxes], dict[Any, Boxes]]:
    """(ground truth, detections) for ``frame_map``: each box once per action it does, and each
    box once per class with its score (the boxes are given: only the scores differ)."""
    truth, detections = {}, {}
    for frame, per_box in zip(annotations.frames, scores, strict=True):
        rows = [(i, a) for i, actions in enumerate(frame.actions) for a in actions]
        truth[frame.key] = Boxes(
            frame.boxes[[i for i, _ in rows]].reshape(-1, 4), np.array([a for _, a in rows], dtype=np.int64)
        )
        n, c = per_box.shape
        detections[frame.key] = Boxes(
            np.repeat(frame.boxes, c, axis=0),
            np.tile(np.array(classes, dtype=np.int64), n),
            per_box.reshape(-1),
        )  # (N, 4) -> (N*C, 4): box-major, as the scores (N, C) -> (N*C,)
    return truth, detections
