"""VATT's towers for zero-shot text-video retrieval (``vvk.eval.text_retrieval``).

The video side of VATT's video-text space is video transformer -> AGG token -> FAC head (video-
audio space -> video-text space, ``z_vt``); the text side the text transformer and the FAC
head's text projection (``z_tv``). Both live in the whole VATT training module (text
transformer and FAC head included), so the model comes from a ``vvk pretrain vatt`` run folder
(its latest checkpoint), or, for the random-init baseline, from a VATT preset built with a seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.data.sources import Data
from vvk.engine.state import RunDir
from vvk.errors import VvkError
from vvk.eval.features import ClipSpec
from vvk.eval.text_retrieval import Captions, text_retrieval
from vvk.methods.overrides import from_dict
from vvk.methods.pretrain import PRESET_FILE
from vvk.methods.vatt.preset import PRESETS, build
from vvk.models.backbones.vatt_text import tokenize
from vvk.models.checkpoint import load_weights


def load_vatt(
    weights: str | os.PathLike | None = None, *, backbone: str | None = None, seed: int = 0
) -> tuple[nn.Module, Any, str]:
    """(VATT training module in eval mode, its preset, where it came from): the latest
    checkpoint of the ``vvk pretrain vatt`` run folder ``weights``, or the VATT preset whose
    video transformer is ``backbone`` at random initialisation (seeded with ``seed``)."""
    if (weights is None) == (backbone is None):
        raise VvkError(
            "give weights=RUN (a vvk pretrain vatt run folder) or backbone=NAME (random initialisation)",
            params=("weights", "backbone"),
        )
    if backbone is not None:
        preset = vatt_preset_for(backbone)
        return random_vatt(preset, seed=seed), preset, f"random:{backbone}"
    preset, checkpoint = _read_vatt_run(Path(weights))
    model = build(preset)
    load_weights(model, checkpoint)
    return model.eval(), preset, str(weights)


def random_vatt(preset: Any, *, seed: int = 0) -> nn.Module:
    """VATT built from ``preset`` at random initialisation; with the run's seed these are the
    weights its training started from (``vvk pretrain`` seeds before it builds)."""
    torch.manual_seed(seed)
    return build(preset).eval()


def vatt_preset_for(backbone: str) -> Any:
    """The VATT preset whose video transformer is ``backbone``; a ``vatt-ut-*`` name is the same
    preset with one modality-agnostic transformer (``vatt-ut-tiny``: ``tiny``, shared)."""
    shared = backbone.startswith("vatt-ut-")
    video = backbone.replace("vatt-ut-", "vatt-video-", 1)
    for preset in PRESETS.values():
        if preset.backbone == video:
            return dataclasses.replace(preset, shared_backbone=shared)
    names = sorted({n for p in PRESETS.values() for n in (p.backbone, p.backbone.replace("-video-", "-ut-"))})
    raise VvkError(
        f"backbone={backbone}: not the video transformer of a VATT preset",
        hint=f"one of {', '.join(names)}",
        params=("backbone",),
    )


def _read_vatt_run(folder: Path) -> tuple[Any, Path]:
    """The resolved preset and the latest checkpoint of a ``vvk pretrain vatt`` run folder."""
    if not folder.exists():
        raise VvkError(f"weights={folder}: no such run folder", params=("weights",))
    needs = "text retrieval needs a vvk pretrain vatt run folder (its text transformer and FAC head)"
    if not folder.is_dir() or not (folder / PRESET_FILE).is_file():
        raise VvkError(f"weights={folder}: not a pretrain run folder; {needs}", params=("weights",))
    try:
        record = json.loads((folder / PRESET_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VvkError(f"{folder / PRESET_FILE}: malformed JSON at line {e.lineno}") from e
    if record.get("method") != "vatt":
        raise VvkError(
            f"weights={folder}: a {record.get('method')} run, not a VATT run; {needs}", params=("weights",)
        )
    if record.get("preset") not in PRESETS:
        raise VvkError(f"{folder / PRESET_FILE}: preset '{record.get('preset')}' is not a preset of vatt")
    preset = from_dict(PRESETS[record["preset"]], record.get("resolved", {}), what=str(folder / PRESET_FILE))
    latest = RunDir(folder).latest()
    if latest is None:
        raise VvkError(f"weights={folder}: the run has no checkpoint yet", params=("weights",))
    return preset, latest / "model.safetensors"


def clip_spec(preset: Any, **given: int | None) -> ClipSpec:
    """The evaluation clips: the given values, else the preset's (as it trained)."""
    values = {name: getattr(preset, name) if given.get(name) is None else given[name] for name in
              ("frames", "stride", "size", "crop")}  # fmt: skip
    return ClipSpec(**values)


class VideoTextTower(nn.Module):
    """VATT's video side of the video-text space: AGG token -> z_va -> z_vt (the FAC head)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> dict[str, Tensor]:
        head = self.model.head
        pooled = self.model.backbone(video)["pooled"]  # (B, D): the video AGG token
        return {"pooled": head.va_to_vat(head.video_to_va(pooled))}  # (B, vat_dim)


@torch.no_grad()
def embed_texts(model: nn.Module, texts: Sequence[str], *, batch_size: int = 64) -> Tensor:
    """(C, vat_dim) L2-normalised ``z_tv`` of ``texts``, tokenised as VATT trained on them."""
    tower = model.text if model.text is not None else model.backbone  # the shared one reads ids too
    chunks = []
    for first in range(0, len(texts), batch_size):
        ids = tokenize(texts[first : first + batch_size], context_length=model.words_per_caption)
        chunks.append(F.normalize(model.head.text_to_vat(tower(ids)["pooled"]).float(), dim=-1))
    return torch.cat(chunks)


def vatt_text_retrieval(model: nn.Module, data: Data, captions: Captions, **protocol: Any) -> dict[str, Any]:
    """``vvk.eval.text_retrieval.text_retrieval`` with ``model``'s towers (a VATT training
    module, ``load_vatt``); ``protocol``: that function's keyword arguments."""
    model.eval()
    return text_retrieval(VideoTextTower(model), partial(embed_texts, model), data, captions, **protocol)
