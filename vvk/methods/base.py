"""What a pretraining method provides, so that one orchestration (``vvk.methods.pretrain``) and
one training loop (``vvk.engine``) serve every method.

A method is a package ``vvk/methods/<name>/`` (named in ``vvk.methods.registry``) whose
``preset.py`` holds its presets and turns them into arguments, ``model.py`` its training
module and ``loss.py`` its objective. The package exports:

- ``PRESETS: dict[str, <Preset>]``: frozen dataclasses (``tiny`` for a laptop CPU and tests,
  ``paper`` with the reference hyperparameters, each field commented with its source). A preset
  has a ``backbone`` (registry name), a ``size`` (decoded frame side) and ``train``
  (``vvk.engine.TrainConfig``); ``--set`` reaches any field (``train.lr=0.1``).
- ``sampler(preset) -> ClipSampler``: the clips a training sample needs.
- ``build(preset) -> PretrainModel``: the training module.
- ``dataset_options(preset) -> dict``: extra ``ClipDataset`` arguments (audio rate, captions).

The training module's ``forward(batch) -> dict[str, Tensor]`` takes the collated batch as it
comes from the loader (uint8 clips on the device), augments, embeds and returns named losses
(the total under ``"loss"``, the rest logged). It exposes ``backbone``, the network that is
exported to ``backbone.safetensors`` and evaluated.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist
from torch import Tensor, nn

from vvk.engine import TrainConfig
from vvk.kernels.backends import no_autocast
from vvk.models.backbones.base import Backbone


class PretrainModel(nn.Module):
    """Base of every method's training module: holds the backbone that gets exported."""

    backbone: Backbone

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


# The length of a ``tiny`` run, the one a user's run gets without ``steps``: shorter runs leave
# the backbone no better than random initialisation at clip retrieval (40 steps did). With decoded
# frames cached, ConST-CL's 1000 steps take about three minutes on 2 CPU cores and lift its
# recall@1 on the built-in example set from 0.08 to 0.22. Tests pass their own, shorter ``steps``.
LAPTOP_STEPS = 1000


def laptop_train(**settings: Any) -> TrainConfig:
    """The training settings every ``tiny`` preset shares (``LAPTOP_STEPS`` steps of AdamW at a
    constant rate, no warm-up, no periodic checkpoints, a log line every 2 steps, decoded frames
    cached: at a tiny preset's frame size decoding costs several times the network's step);
    ``settings`` give the rest (batch size, learning rate, ...) and may override these."""
    shared: dict[str, Any] = dict(
        steps=LAPTOP_STEPS, optimizer="adamw", warmup_steps=0, schedule="constant", checkpoint_every=0,
        log_every=2, frame_cache=True,
    )  # fmt: skip
    return TrainConfig(**{**shared, **settings})


def augment_views(augment: nn.Module, video: Tensor, frame_size: Tensor | None) -> Tensor:
    """``augment(video, frame_size)`` with autocast off: the augmentation turns uint8 clips into
    float32 views, and under a bf16 training step autocast would both round the pixels and hand
    bfloat16 results of its matmuls (blur, colour) to float32 buffers, which fails."""
    with no_autocast(video.device):
        return augment(video, frame_size)


def process_group() -> dist.ProcessGroup | None:
    """The default group when several processes train together, for losses that gather keys."""
    return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None


def global_pool(x: Tensor) -> Tensor:
    """(B, C, T, H, W) or (B, C, H, W) -> (B, C) by averaging everything but the channels."""
    return x.flatten(2).mean(dim=2)
