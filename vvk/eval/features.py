"""Frozen-backbone clip embeddings, shared by every video evaluation protocol.

A backbone comes from ``--weights`` (a pretrain run folder, a checkpoint file, a registry name or
an hf-hub spec) or, for the random-initialisation baseline, from ``--backbone NAME`` alone.
Clips are decoded through ``vvk.data`` as in training, but keep only the central square of the
resized frame and are centre-cropped from it (the reference's evaluation: ``resize_smallest``
then ``crop_image``), or augmented with a seeded ``VideoAugment`` inside that square; zero-
centred to [-1, 1] as the methods feed them, and reduced to one L2-normalised vector per clip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from vvk.data.sources import Data
from vvk.errors import VvkError
from vvk.models.checkpoint import backbone_file

# What can embed a clip: video backbones, and VATT's modality-agnostic one (video is one of its inputs).
VIDEO_TASKS = ("video-backbone", "multimodal-backbone")


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut for evaluation: ``frames`` at ``stride``, decoded at ``size`` (short
    side, centre square), cropped to ``crop``."""

    frames: int = 16
    stride: int = 2
    size: int = 128
    crop: int = 112


def load_backbone(
    weights: str | os.PathLike | None = None, *, backbone: str | None = None, seed: int = 0
) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone to evaluate (in eval mode) and what is known of how it was trained.

    Returns:
        (backbone, info) where ``info`` has ``"source"`` and, for a pretrain run folder,
        ``"preset"`` (the resolved preset of the run).
    """
    from vvk.models import build, load

    if weights is None and backbone is None:
        raise VvkError(
            "give weights=PATH (a run folder or checkpoint) or backbone=NAME (random initialisation)",
            params=("weights", "backbone"),
        )
    if weights is not None and backbone is not None:
        raise VvkError("give either weights= or backbone=, not both", params=("weights", "backbone"))
    info: dict[str, Any] = {}
    if weights is None:
        torch.manual_seed(seed)  # the random baseline is reproducible
        model = build(backbone)
        info["source"] = f"random:{backbone}"
    else:
        model = load(backbone_file(weights), tasks=VIDEO_TASKS)
        info["source"] = str(weights)
        preset = Path(weights) / "preset.json"
        if preset.is_file():
            info["preset"] = json.loads(preset.read_text())["resolved"]
    return model.eval(), info


def random_twin(weights: str | os.PathLike, *, seed: int = 0) -> nn.Module:
    """The architecture of a checkpoint (with its recorded arguments) at random initialisation:
    the baseline a pretrained backbone is compared with."""
    from vvk.models import build
    from vvk.models.checkpoint import read_arch
    from vvk.weights import resolve

    arch = read_arch(resolve(backbone_file(weights)))
    torch.manual_seed(seed)
    return build(arch["name"], **arch["kwargs"]).eval()


def clip_spec_for(info: dict[str, Any], **given: int | None) -> ClipSpec:
    """The evaluation clip shape: given options, else the run's preset, else the defaults."""
    preset = info.get("preset", {})
    values = {}
    for field in ("frames", "stride", "size", "crop"):
        value = given.get(field)
        if value is None:
            value = preset.get(field)
        if value is not None:
            values[field] = int(value)
    return ClipSpec(**values)


def embedding(features: dict[str, Tensor]) -> Tensor:
    """One vector per clip from a backbone's outputs: the aggregation token when there is one,
    else the global average of the deepest map (``res5``: the global branch of a Y backbone)."""
    if "pooled" in features:
        return features["pooled"]
    deepest = features["res5"] if "res5" in features else list(features.values())[-1]
    return deepest.flatten(2).mean(dim=2)  # (B, C, ...) -> (B, C)


def to_input(video: Tensor, crop: int) -> Tensor:
    """(B, C, T, H, W) uint8 -> centre crop ``crop``², float in [-1, 1]."""
    h, w = video.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    if top < 0 or left < 0:
        raise VvkError(
            f"crop={crop} is larger than the decoded frames ({h}×{w}); lower crop= or raise size=",
            params=("crop", "size"),
        )
    x = video[..., top : top + crop, left : left + crop].float() / 255.0
    return x * 2.0 - 1.0


@dataclass(frozen=True)
class ClipReader:
    """How an evaluation reads clips (``num_clips`` evenly spaced per video) and embeds them.

    Args:
        clips: frames, stride, decoded size and crop.
        decoder, cache_dir: as in ``vvk.data.open_video_dataset``.
        batch_size, num_workers, device: how the frozen backbone is fed.
    """

    clips: ClipSpec = ClipSpec()
    decoder: str = "auto"
    batch_size: int = 8
    num_workers: int = 0
    device: str = "cpu"
    cache_dir: str | os.PathLike | None = None

    def dataset(self, data: Data, *, num_clips: int):
        from vvk.data import UniformClips, open_video_dataset

        sampler = UniformClips(frames=self.clips.frames, stride=self.clips.stride, num_clips=num_clips)
        return open_video_dataset(
            data, sampler=sampler, size=self.clips.size, frame="square", decoder=self.decoder,
            cache_dir=self.cache_dir,
        )  # fmt: skip

    @torch.no_grad()
    def embed(
        self,
        backbone: nn.Module,
        dataset,
        *,
        transform: Callable[[Tensor, int], Tensor] | None = None,
        progress: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed every sample's clips: (embeddings (N, clips, D) L2-normalised, labels (N,)).

        Args:
            transform: ``transform(video_uint8, batch_number) -> input``; default: centre crop.
                The batch number lets a seeded augmentation be reproducible.
            progress: a label: show a progress bar of the videos embedded on stderr.
        """
        from vvk.data import collate

        backbone = backbone.to(self.device).eval()
        loader = DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate
        )
        chunks, labels = [], []
        for number, batch in enumerate(
            with_progress(loader, len(dataset), progress, size=lambda b: len(b["label"]))
        ):
            video = batch["video"]  # (B, N, C, T, H, W): N clips per video
            b, n = video.shape[:2]
            flat = video.flatten(0, 1)  # (B, N, C, T, H, W) -> (B*N, C, T, H, W)
            x = transform(flat, number) if transform is not None else to_input(flat, self.clips.crop)
            z = F.normalize(embedding(backbone(x.to(self.device))).float(), dim=-1)
            chunks.append(z.reshape(b, n, -1).cpu())  # (B*N, D) -> (B, N, D)
            labels.append(batch["label"])
        return torch.cat(chunks), torch.cat(labels)


def with_progress(items: Iterable, total: int, label: str | None, size: Callable[[Any], int] | None = None):
    """``items``, advancing a transient bar of ``total`` on stderr when ``label`` is given, by
    ``size(item)`` per item (default 1)."""
    if label is None:
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task, size(item) if size is not None else 1)
