"""Zero-shot text-video retrieval in a video-text space.

Each video is embedded by the video tower, averaged over ``num_clips`` evenly spaced clips;
each caption by the text tower. Cosine similarity ranks them both ways:

- text -> video: each caption ranks all the videos; its own video is the match.
- video -> text: each video that has captions ranks all the captions; any of its own is a
  match (the best-ranked one counts, as with several captions per video in MSR-VTT).

Videos without a caption stay in the gallery of text -> video as distractors. Ranks start at
1. **Ties count against the model**: an item scoring exactly as much as the best match ranks
before it, so a model whose embeddings collapsed to one point gets the worst rank, not the best.
The median rank of an even count is the mean of the two middle ranks.

The protocol takes the two towers of a video-text space (a video module whose ``"pooled"``
output is a clip's embedding, and a function embedding captions); VATT's come from
``vvk.methods.vatt.retrieval``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.data.samplers import Caption
from vvk.data.sources import Data, describe
from vvk.errors import VvkError
from vvk.eval.features import ClipReader, ClipSpec

KS = (1, 5, 10)
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
    video_tower: nn.Module,
    embed_texts: Callable[[Sequence[str]], Tensor],
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
    """Text -> video and video -> text recall@k and median rank over the videos of ``data`` and
    the captions of them in ``captions`` (captions of other videos are ignored).
    ``video_tower``: clips (B, 3, T, H, W) -> ``{"pooled": (B, D)}``; ``embed_texts``: captions
    -> (C, D), L2-normalised. Clips of ``clips.frames`` at ``fps`` (None: each video's own)."""
    from vvk.data import UniformClips, open_video_dataset

    table = read_caption_table(captions)
    sampler = UniformClips(frames=clips.frames, stride=clips.stride, num_clips=num_clips, fps=fps)
    dataset = open_video_dataset(data, sampler=sampler, size=clips.size, frame="square", decoder=decoder)
    video_ids = [dataset.clips[i][0].video_id for i in range(len(dataset))]
    texts, owner = _captions_of(table, video_ids, data, captions)
    reader = ClipReader(clips, decoder=decoder)
    z, _ = reader.embed(video_tower, dataset, progress=label if progress else None)  # (V, N, D)
    videos = F.normalize(z.mean(dim=1), dim=-1)  # (V, N, D) -> (V, D): the clips averaged
    similarity = embed_texts(texts) @ videos.T  # (C, V)
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
