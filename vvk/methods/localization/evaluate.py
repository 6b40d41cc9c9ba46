"""The action-localization protocol end to end, as ``vvk eval action-localization`` runs it."""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from vvk.data.ava import Annotations
from vvk.data.sources import Data, describe
from vvk.errors import VvkError
from vvk.eval.frame_map import frame_map
from vvk.methods.localization.data import KeyFrameClips, Videos, clip_decoder, load_annotations, open_videos
from vvk.methods.localization.head import build_localizer
from vvk.methods.localization.preset import PRESETS, LocalizationPreset
from vvk.methods.localization.train import frame_boxes, predict_scores, train_localizer


def action_localization(
    backbone: nn.Module,
    data: Data,
    *,
    annotations: str | os.PathLike,
    train_annotations: str | os.PathLike | None = None,
    label_map: str | os.PathLike | None = None,
    excluded: str | os.PathLike | None = None,
    preset: LocalizationPreset = PRESETS["default"],
    seed: int = 0,
    decoder: str = "auto",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Frame-mAP at IoU 0.5 of a RoI head on ``backbone`` trained on ``train_annotations`` and
    scored on the ground-truth boxes of ``annotations``.

    Args:
        data: the videos (a folder, a list, files); annotations name them by file name without
            extension, alone or after the folder's name (``vvk.methods.localization.data.Videos``).
        annotations: AVA CSV or UCF101-24 ``.pkl``: the key frames evaluated.
        train_annotations: the key frames trained on; default: a seeded per-frame split of
            ``annotations`` (``preset.holdout`` evaluated), which only checks the mechanics.
        label_map, excluded: AVA's label map (``.pbtxt`` or ``id,name`` CSV) and excluded
            timestamps, applied to both annotation files.
        preset: clips, head and training (``vvk.methods.localization.preset``).
        device: ``auto`` (the GPU when there is one), ``cpu``, ``cuda``.
        cache_dir: where the video index is cached (default: the user cache).

    Returns:
        ``frame_mAP``, ``per_class`` (class name -> AP, of the classes with ground truth), the
        key frames and boxes trained on and evaluated, ``split`` (how the training frames were
        chosen), ``skipped`` (annotations left out, by reason), ``bad_files``, ``final_loss``,
        ``preset``. With ``preset.finetune_backbone`` the backbone is trained in place.
    """
    from vvk.methods.detection.predict import pick_device

    where = pick_device(device)
    videos = open_videos(data, decoder=decoder, cache_dir=cache_dir, progress=progress)
    if not videos.files:
        raise VvkError(f"data={describe(data)}: no usable videos", params=("data",))
    trained, evaluated, split = _key_frames(
        videos, data, annotations, train_annotations, holdout=preset.holdout, seed=seed,
        label_map=label_map, excluded=excluded,
    )  # fmt: skip
    classes = {**trained.classes, **evaluated.classes}
    ids = sorted(classes)
    torch.manual_seed(seed)  # the head's initialisation
    model = build_localizer(backbone, num_classes=len(ids), preset=preset)
    reader = clip_decoder(decoder, frame_cache=preset.frame_cache)
    clips = {"classes": ids, "frames": preset.frames, "stride": preset.stride, "size": preset.size,
             "decoder": reader}  # fmt: skip
    multi, shown = evaluated.multi_label, {"device": where, "progress": progress}
    losses = train_localizer(
        model, KeyFrameClips(trained, videos, **clips), preset=preset, multi_label=multi, seed=seed, **shown
    )
    scores = predict_scores(
        model, KeyFrameClips(evaluated, videos, **clips), multi_label=multi,
        batch_size=preset.eval_batch_size, num_workers=preset.num_workers, **shown,
    )  # fmt: skip
    score = frame_map(*frame_boxes(evaluated, scores, ids), classes=ids)
    return {
        "frame_mAP": score.mean_ap,
        "per_class": {classes[c]: ap for c, ap in score.per_class.items() if not math.isnan(ap)},
        "train_key_frames": len(trained.frames),
        "train_boxes": trained.num_boxes,
        "eval_key_frames": len(evaluated.frames),
        "eval_boxes": evaluated.num_boxes,
        "split": split,
        "skipped": dict(
            evaluated.skipped + (trained.skipped if train_annotations is not None else Counter())
        ),
        "bad_files": len(videos.bad_files),
        "final_loss": losses[-1] if losses else math.nan,
        "preset": asdict(preset),
    }


def _key_frames(
    videos: Videos,
    data: Data,
    annotations: str | os.PathLike,
    train_annotations: str | os.PathLike | None,
    *,
    holdout: float,
    seed: int,
    **files: str | os.PathLike | None,
) -> tuple[Annotations, Annotations, str]:
    """(trained, evaluated, how the training key frames were chosen)."""
    evaluated = _annotations(annotations, "annotations", videos, data, **files)
    if train_annotations is None:
        trained, evaluated = evaluated.split(fraction=1.0 - holdout, seed=seed)
        split = f"per-frame split of {annotations} (seed {seed}): mechanics only, neighbouring frames leak"
    else:
        trained = _annotations(train_annotations, "train_annotations", videos, data, **files)
        split = str(train_annotations)
        if trained.multi_label != evaluated.multi_label:
            raise VvkError(
                "train_annotations= and annotations= must be of one kind (AVA CSV or UCF101-24 pickle)",
                params=("train_annotations", "annotations"),
            )
    for part, use in ((trained, "to train on"), (evaluated, "to evaluate")):
        if not part.frames:  # a split of very few key frames
            raise VvkError(f"annotations={annotations}: no key frame left {use}", params=("annotations",))
    return trained, evaluated, split


def _annotations(path, param: str, videos: Videos, data: Data, **files) -> Annotations:
    loaded = load_annotations(path, videos=videos, **files)
    if not loaded.frames:
        reasons = ", ".join(f"{n} {k}" for k, n in sorted(loaded.skipped.items())) or "the file has none"
        raise VvkError(
            f"{param}={path}: no key frame of the videos in data={describe(data)} ({reasons})",
            params=(param, "data"),
        )
    return loaded
