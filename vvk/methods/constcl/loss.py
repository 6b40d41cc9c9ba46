"""ConST-CL's local objective: instances translated into the other view, contrasted with that
view's region features (``tensorflow/models: official/projects/const_cl/losses/losses.py::
InstanceContrastiveLoss``; reference/video_ssl.md §5.3). Positive: the feature argmax within
the clip; negatives: every instance of every other clip, on all processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.kernels import contrastive_loss
from vvk.methods.base import process_group


def match_instances(regions_a: Tensor, regions_b: Tensor) -> tuple[Tensor, Tensor]:
    """Positives by feature argmax (losses.py::InstanceContrastiveLoss): for each instance of
    view a, the most similar instance of the same clip's view b, and vice versa.

    Args:
        regions_a, regions_b: (B, N, C) raw region features of the two views.

    Returns:
        (a→b, b→a) indices, each (B, N): ``a2b[i, j]`` is the b instance matched to a instance j.
    """
    similarity = torch.einsum("bic,bjc->bij", F.normalize(regions_a, dim=-1), F.normalize(regions_b, dim=-1))
    return similarity.argmax(dim=2), similarity.argmax(dim=1)


def instance_direction_loss(
    translated: Tensor, targets: Tensor, match: Tensor, temperature: float, *, reduction: str = "mean"
) -> Tensor:
    """InfoNCE of every translated instance against the target view's region features.

    Row (i, j) has the positive ``targets[i, match[i, j]]``; every instance of every other
    clip (all processes) is a negative; the other instances of clip i are neither.

    Args:
        translated: (B, N, C) ẑ; targets: (B, N, C) u of the other view; match: (B, N) indices.
        reduction: "mean" over all B·N rows, or "none": (B·N,) per-row losses, clip-major.
    """
    b, n, c = translated.shape
    clip = torch.arange(b, device=translated.device)
    positives = (clip[:, None] * n + match).reshape(-1)  # (B, N) -> (B*N,) rows of targets
    return contrastive_loss(
        translated.reshape(b * n, c),  # (B, N, C) -> (B*N, C)
        targets.reshape(b * n, c),
        temperature,
        positives=positives,
        groups=clip.repeat_interleave(n),
        reduction=reduction,
        process_group=process_group(),
    )


def instance_loss(regions: Tensor, translated: Tensor, temperature: float) -> Tensor:
    """½ (L_a→b + L_b→a) from the reconstructor's outputs (2B rows: view a, then view b)."""
    regions_a, regions_b = regions.chunk(2)
    to_b, to_a = translated.chunk(2)
    a2b, b2a = match_instances(regions_a, regions_b)
    return 0.5 * (
        instance_direction_loss(to_b, regions_b, a2b, temperature)
        + instance_direction_loss(to_a, regions_a, b2a, temperature)
    )
