"""Clip retrieval: a label-free check of what a video backbone learned.

Each video contributes a query (a clip at one time) and a gallery item (a clip of the same
video at another time, augmented differently); recall@k is the fraction of queries whose own
video's gallery clip is among the k most similar of all videos' gallery clips (cosine
similarity of frozen embeddings). Two evenly spaced clips per video (``UniformClips``) give the
two times; both clips get independent draws of the training augmentation (``VideoAugment``:
random resized crop, flip, colour jitter, grayscale, blur), seeded so that runs compare.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from vvk.data.sources import Data, describe
from vvk.errors import VvkError
from vvk.eval.features import ClipReader


def recall_at_k(
    queries: torch.Tensor, gallery: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Recall@k when query i's match is gallery item i (rows L2-normalised)."""
    sim = queries @ gallery.T  # (N, N): N videos, an evaluation-sized matrix
    own = sim.diagonal()[:, None]
    rank = (sim > own).sum(dim=1)  # how many gallery items beat the right one
    return {k: float((rank < k).float().mean()) for k in ks}


def retrieval(
    backbone: nn.Module,
    data: Data,
    *,
    reader: ClipReader = ClipReader(),
    ks: tuple[int, ...] = (1, 5),
    seed: int = 0,
    repeats: int = 1,
    progress: bool = False,
    label: str = "retrieval",
) -> dict[str, Any]:
    """Recall@k of clip retrieval over the videos of ``data`` (a folder, a list or video file, or
    a sequence of those: ``vvk.data.sources.Data``).

    With ``repeats`` > 1 the evaluation runs with that many augmentation seeds and reports the
    mean (small video sets give noisy single draws). ``progress`` shows a bar of the videos
    embedded on stderr, named ``label``.
    """
    from vvk.data import VideoAugment

    dataset = reader.dataset(data, num_clips=2)  # the query's time and the gallery's time
    if len(dataset) < 2:
        raise VvkError(
            f"data={describe(data)}: retrieval needs at least 2 usable videos, found {len(dataset)}",
            params=("data",),
        )
    augment = VideoAugment(size=reader.clips.crop).to(reader.device)
    runs = []
    for r in range(repeats):

        def transform(video: torch.Tensor, number: int, draw: int = seed + r) -> torch.Tensor:
            torch.manual_seed(draw * 100_003 + number)  # kornia draws from the global generator
            return augment(video.to(reader.device))

        shown = f"{label} {r + 1}/{repeats}" if repeats > 1 else label
        z, _ = reader.embed(backbone, dataset, transform=transform, progress=shown if progress else None)
        runs.append(recall_at_k(z[:, 0], z[:, 1], ks))
    return {
        **{f"recall@{k}": sum(run[k] for run in runs) / repeats for k in ks},
        "videos": len(dataset),
        "skipped": len(dataset.bad_files),
        "chance@1": 1.0 / len(dataset),
        "repeats": repeats,
        "clips": vars(reader.clips),
    }


def retrieval_gain(
    weights: str | os.PathLike,
    data: Data,
    *,
    reader: ClipReader | None = None,
    seed: int = 0,
    repeats: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Retrieval of a pretrained backbone and of the same architecture at random initialisation,
    on the same clips and augmentation draws: ``{"pretrained": ..., "random": ..., "gain@1": ...}``."""
    from vvk.eval.features import clip_spec_for, load_backbone, random_twin

    trained, info = load_backbone(weights)
    reader = reader or ClipReader(clip_spec_for(info))
    common = {"reader": reader, "seed": seed, "repeats": repeats, "progress": progress}
    pretrained = retrieval(trained, data, label="retrieval (pretrained)", **common)
    baseline = retrieval(random_twin(weights, seed=seed), data, label="retrieval (random init)", **common)
    return {
        "pretrained": pretrained,
        "random": baseline,
        "gain@1": pretrained["recall@1"] - baseline["recall@1"],
    }
