"""Zero-shot text-video retrieval in VATT's video-text space.

Each video is embedded by VATT's video side of that space (video transformer -> AGG token ->
FAC head: video-audio space -> video-text space, ``z_vt``), averaged over ``num_clips`` evenly
spaced clips; each caption by the text transformer and the FAC head's text projection
(``z_tv``). Cosine similarity ranks them both ways:

- text -> video: each caption ranks all the videos; its own video is the match.
- video -> text: each video that has captions ranks all the captions; any of its own is a
  match (the best-ranked one counts, as with several captions per video in MSR-VTT).

Videos without a caption stay in the gallery of text -> video as distractors. Ranks start at
1. **Ties count against the model**: an item scoring exactly as much as the best match ranks
before it, so a model whose embeddings collapsed to one point gets the worst rank, not the best.
The median rank of an even count is the mean of the two middle ranks.

The model is a whole VATT training module (text transformer and FAC head included), so it comes
from a ``vvk pretrain vatt`` run folder (its latest checkpoint), or, for the random-init
baseline, from a VATT preset built with a seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.data.samplers import Caption
from vvk.data.sources import Data, describe
from vvk.errors import VvkError
from vvk.eval.features import ClipReader, ClipSpec

KS = (1, 5, 10)
PRESET_FILE = "preset.json"  # what `vvk pretrain` writes into its run folder (vvk.methods.pretrain)
Captions = str | os.PathLike | Mapping[str, Sequence[Caption]]


# ---- rank metrics --------------------------------------------------------------------------


def match_ranks(similarity: Tensor, positive: Tensor) -> Tensor:
    """(Q, G) scores and (Q, G) bool matches -> (Q,) rank from 1 of each query's best-scoring
    match among the gallery; an item that is no match and scores at least as much ranks before
    it (ties count against the model). Every query needs a match."""
    if not bool(positive.any(dim=1).all()):
        raise ValueError("every query needs at least one match in the gallery")
    best = similarity.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (Q, 1)
    return 1 + ((similarity >= best) & ~positive).sum(dim=1)


def rank_metrics(ranks: Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Recall@k (fraction of queries whose match ranks k or better) and the median rank."""
    out = {f"recall@{k}": float((ranks <= k).float().mean()) for k in ks}
    out["median_rank"] = float(torch.quantile(ranks.double(), 0.5))  # mean of the middle two when even
    return out


def text_video_metrics(similarity: Tensor, owner: Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """Both directions from (C, V) caption-video scores and ``owner`` (C,), each caption's video:
    ``t2v_recall@k``, ``t2v_median_rank``, ``v2t_recall@k``, ``v2t_median_rank``."""
    positive = owner[:, None] == torch.arange(similarity.shape[1])[None, :]  # (C, V)
    captioned = positive.any(dim=0)  # (V,): videos that are queries of video -> text
    t2v = rank_metrics(match_ranks(similarity, positive), ks)
    v2t = rank_metrics(match_ranks(similarity.T[captioned], positive.T[captioned]), ks)
    return {**{f"t2v_{k}": v for k, v in t2v.items()}, **{f"v2t_{k}": v for k, v in v2t.items()}}


# ---- the model -----------------------------------------------------------------------------


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
    from vvk.methods import vatt
    from vvk.models.checkpoint import load_weights

    preset, checkpoint = _read_vatt_run(Path(weights))
    model = vatt.build(preset)
    load_weights(model, checkpoint)
    return model.eval(), preset, str(weights)


def random_vatt(preset: Any, *, seed: int = 0) -> nn.Module:
    """VATT built from ``preset`` at random initialisation; with the run's seed these are the
    weights its training started from (``vvk pretrain`` seeds before it builds)."""
    from vvk.methods import vatt

    torch.manual_seed(seed)
    return vatt.build(preset).eval()


def vatt_preset_for(backbone: str) -> Any:
    """The VATT preset whose video transformer is ``backbone``; a ``vatt-ut-*`` name is the same
    preset with one modality-agnostic transformer (``vatt-ut-tiny``: ``tiny``, shared)."""
    from vvk.methods.vatt import PRESETS

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
    from vvk.engine.state import RunDir
    from vvk.methods.overrides import from_dict
    from vvk.methods.vatt import PRESETS

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
    from vvk.models.backbones.vatt_text import tokenize

    tower = model.text if model.text is not None else model.backbone  # the shared one reads ids too
    chunks = []
    for first in range(0, len(texts), batch_size):
        ids = tokenize(texts[first : first + batch_size], context_length=model.words_per_caption)
        chunks.append(F.normalize(model.head.text_to_vat(tower(ids)["pooled"]).float(), dim=-1))
    return torch.cat(chunks)


# ---- the protocol --------------------------------------------------------------------------


def read_caption_table(captions: Captions) -> dict[str, list[Caption]]:
    """``{video_id: [Caption]}`` from a caption table, a folder of subtitles, or a mapping."""
    from vvk.data.subtitles import read_caption_source

    if isinstance(captions, Mapping):
        return {k: list(v) for k, v in captions.items()}
    if not os.path.exists(captions):
        raise VvkError(f"captions={os.fspath(captions)}: no such file or folder", params=("captions",))
    return read_caption_source(captions)


def text_retrieval(
    model: nn.Module,
    data: Data,
    captions: Captions,
    *,
    clips: ClipSpec,
    fps: float | None,
    num_clips: int = 4,
    decoder: str = "auto",
    ks: Sequence[int] = KS,
    progress: bool = False,
    label: str = "text retrieval",
) -> dict[str, Any]:
    """Text -> video and video -> text recall@k and median rank of ``model`` (a VATT training
    module, ``load_vatt``) over the videos of ``data`` and the captions of them in ``captions``
    (captions of other videos are ignored). Clips of ``clips.frames`` at ``fps`` (VATT's
    sampling rate; None: each video's own)."""
    from vvk.data import UniformClips, open_video_dataset

    table = read_caption_table(captions)
    sampler = UniformClips(frames=clips.frames, stride=clips.stride, num_clips=num_clips, fps=fps)
    dataset = open_video_dataset(data, sampler=sampler, size=clips.size, frame="square", decoder=decoder)
    video_ids = [dataset.clips[i][0].video_id for i in range(len(dataset))]
    texts, owner = _captions_of(table, video_ids, data, captions)
    reader = ClipReader(clips, decoder=decoder)
    z, _ = reader.embed(VideoTextTower(model), dataset, progress=label if progress else None)  # (V, N, D)
    videos = F.normalize(z.mean(dim=1), dim=-1)  # (V, N, D) -> (V, D): the clips averaged
    similarity = embed_texts(model.eval(), texts) @ videos.T  # (C, V)
    return {
        **text_video_metrics(similarity, owner, ks),
        "videos": len(video_ids),
        "captions": len(texts),
        "captioned_videos": int(owner.unique().numel()),
        "skipped": len(dataset.bad_files),
        "chance@1": 1.0 / len(video_ids),
        "clips": {**vars(clips), "fps": fps, "num_clips": num_clips},
    }


def _captions_of(
    table: Mapping[str, Sequence[Caption]], video_ids: list[str], data: Data, captions: Captions
) -> tuple[list[str], Tensor]:
    """The non-empty captions of the videos (texts, (C,) video index of each)."""
    index = {vid: i for i, vid in enumerate(video_ids)}
    if len(index) < len(video_ids):
        twice = sorted({v for v in video_ids if video_ids.count(v) > 1})
        raise VvkError(
            f"data={describe(data)}: several videos are named {twice[0]}; captions name videos by "
            "file name (without extension), so each must be unique",
            params=("data",),
        )
    pairs = [
        (c.text, index[vid]) for vid, caps in table.items() if vid in index for c in caps if c.text.strip()
    ]
    if not pairs:
        where = "the mapping" if isinstance(captions, Mapping) else os.fspath(captions)
        raise VvkError(
            f"captions={where}: no caption of any of the {len(video_ids)} videos of data={describe(data)}",
            hint=f"captions name videos by file name without extension, e.g. {video_ids[0]}",
            params=("captions", "data"),
        )
    return [text for text, _ in pairs], torch.tensor([i for _, i in pairs])
