"""VATT raw-signal transformers: the video ViT, the audio WaT and the modality-agnostic UT.

Follows ``google-research/google-research: vatt/modeling/backbones/video/vitx3d.py``,
``audio/autx1d.py``, ``unified/uvatt.py``, ``common/transformers.py`` and ``vatt/configs``:

- tokenizers: video Conv3D 4×16×16 (kernel = stride), audio Conv1D over raw waveform patches of
  128 samples; UT adds a Dense + GELU ``pre_proj`` after them and has its own text table;
- learned position embeddings, one table per axis (temporal / vertical / horizontal), summed,
  layer-normed, then added to the tokens, then dropout;
- DropToken (training only, after the position embeddings): one random permutation shared by the
  whole batch keeps the first ``int(keep · prod(buckets))`` tokens (1568 -> 784, 1200 -> 600);
- an AGG token prepended before the pre-LN transformer; its output is ``pooled``;
- UT: one shared transformer, modality-specific tokenizers, positions, AGG tokens and a
  Dense(1024) + GELU ``post_proj`` per modality.

The reference stretches a position table to a new grid size with a cubic spline
(``ExpandableEmbedding``); we interpolate linearly at the same coordinates (``i / n``), which is
exact on the trained grid and needs no solver.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vvk.models.backbones.base import Backbone, FeatureSpec, register_variants
from vvk.models.backbones.vatt_text import CLIP_VOCAB_SIZE, clip_padding_mask
from vvk.models.layers.transformer import TransformerLayer, init_transformer_weights, token_parameter


def _resize_table(table: Tensor, length: int) -> Tensor:
    """Rows of ``table`` (M, D) read at positions ``i · M / length``, linearly interpolated -> (length, D)."""
    m = table.shape[0]
    if length == m:
        return table
    where = torch.arange(length, device=table.device, dtype=table.dtype) * (m / length)
    low = where.floor().long().clamp(max=m - 1)
    high = (low + 1).clamp(max=m - 1)
    frac = (where - low.to(table.dtype)).unsqueeze(1)
    return table[low] * (1 - frac) + table[high] * frac


class FactorizedPositionEmbedding(nn.Module):
    """One learned table per grid axis; ``forward(grid)`` -> LayerNorm(sum of broadcast rows), (N, D)."""

    def __init__(self, d_model: int, buckets: tuple[int, ...], eps: float = 1e-6):
        super().__init__()
        self.tables = nn.ParameterList(nn.Parameter(torch.empty(n, d_model)) for n in buckets)
        for table in self.tables:
            nn.init.trunc_normal_(table, std=d_model**-0.5)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, grid: tuple[int, ...]) -> Tensor:
        total = 0
        for axis, (table, size) in enumerate(zip(self.tables, grid, strict=True)):
            shape = [1] * len(grid) + [table.shape[1]]
            shape[axis] = size
            total = total + _resize_table(table, size).view(shape)  # broadcast over the other axes
        return self.norm(total).reshape(-1, total.shape[-1])  # (*grid, D) -> (N, D)


class _Tokenizer(nn.Module):
    """Raw signal -> (B, N, D) tokens with position embeddings (and dropout) added.

    ``video``: (B, 3, T, H, W) -> patches of ``patch`` = (t, h, w); ``audio``: (B, S) or (B, 1, S)
    -> patches of ``patch`` = (samples,); ``text``: ids (B, L) -> learned table + Dense/GELU.
    """

    def __init__(
        self,
        modality: str,
        *,
        d_model: int,
        patch: tuple[int, ...],
        buckets: tuple[int, ...],
        pre_projection: bool,
        dropout: float,
        d_embedding: int = 512,
    ):
        super().__init__()
        self.modality = modality
        if modality == "video":
            self.embed = nn.Conv3d(3, d_model, patch, stride=patch)
        elif modality == "audio":
            self.embed = nn.Conv1d(1, d_model, patch, stride=patch)
        elif modality == "text":
            self.embed = nn.Embedding(CLIP_VOCAB_SIZE, d_embedding)
            nn.init.trunc_normal_(self.embed.weight, std=d_embedding**-0.5)
        else:
            raise ValueError(f"unknown modality '{modality}'")
        width = d_embedding if modality == "text" else d_model
        self.pre_proj = (
            nn.Sequential(nn.Linear(width, d_model), nn.GELU()) if pre_projection else nn.Identity()
        )
        self.position = FactorizedPositionEmbedding(d_model, buckets)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.modality == "text":
            tokens = self.embed(x)  # (B, L, E)
            grid = tuple(x.shape[1:])
        else:
            if self.modality == "audio" and x.ndim == 2:
                x = x.unsqueeze(1)  # (B, S) -> (B, 1, S)
            maps = self.embed(x)  # (B, D, *grid)
            grid = tuple(maps.shape[2:])
            tokens = maps.flatten(2).transpose(1, 2)  # (B, D, *grid) -> (B, N, D)
        tokens = self.pre_proj(tokens)
        return self.drop(tokens + self.position(grid))


def drop_tokens(tokens: Tensor, keep: int) -> Tensor:
    """DropToken: the first ``keep`` tokens of one random permutation shared by the batch."""
    order = torch.randperm(tokens.shape[1], device=tokens.device)[:keep]
    return tokens[:, order]


class _Encoder(nn.Module):
    """Pre-LN transformer stack with the final LayerNorm (``TransformerEncoder(pre_norm=True)``)."""

    def __init__(
        self,
        *,
        d_model: int,
        d_kv: int,
        d_ff: int,
        num_layers: int,
        num_heads: int,
        dropout: float,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(
                d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff, dropout=dropout, eps=eps
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, attn_bias)
        return self.drop(self.norm(x))


def _with_agg(agg: Tensor, tokens: Tensor) -> Tensor:
    return torch.cat([agg.expand(tokens.shape[0], 1, -1), tokens], dim=1)  # (B, N, D) -> (B, 1+N, D)


class VattTransformer(Backbone):
    """Video ViT or audio WaT: raw signal -> {"tokens": (B, N, D), "pooled": (B, D)}.

    Args:
        modality: ``"video"`` or ``"audio"``.
        patch: (t, h, w) voxels or (samples,) per token.
        buckets: position-table sizes per axis (the default input's token grid).
        drop_token_rate: fraction of tokens DropToken removes in training (0 disables it).
    """

    def __init__(
        self,
        *,
        modality: str,
        patch: tuple[int, ...],
        buckets: tuple[int, ...],
        d_model: int,
        d_kv: int = 64,
        d_ff: int,
        num_layers: int,
        num_heads: int,
        drop_token_rate: float = 0.5,
        dropout: float = 0.1,
    ):
        super().__init__()
        if modality not in ("video", "audio"):
            raise ValueError(f"VattTransformer takes video or audio, not '{modality}'")
        self.tokenizer = _Tokenizer(
            modality, d_model=d_model, patch=patch, buckets=buckets, pre_projection=False, dropout=dropout
        )
        self.agg_token = token_parameter(d_model)
        self.encoder = _Encoder(
            d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers, num_heads=num_heads, dropout=dropout
        )
        # The reference keeps int(rate · max buckets) tokens, from the table size, not the input.
        self.keep_tokens = int((1 - drop_token_rate) * math.prod(buckets)) if drop_token_rate > 0 else 0
        self.d_model, self.patch = d_model, tuple(patch)
        init_transformer_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        tokens = self.tokenizer(x)
        if self.training and 0 < self.keep_tokens < tokens.shape[1]:
            tokens = drop_tokens(tokens, self.keep_tokens)
        out = self.encoder(_with_agg(self.agg_token, tokens))
        return {"tokens": out[:, 1:], "pooled": out[:, 0]}

    def output_shape(self) -> dict[str, FeatureSpec]:
        if len(self.patch) == 3:  # video: tokens are t x h x w voxels
            token_spec = FeatureSpec(self.d_model, self.patch[1], self.patch[0])
        else:  # audio: tokens are runs of samples
            token_spec = FeatureSpec(self.d_model, 1, self.patch[0])
        return {"tokens": token_spec, "pooled": FeatureSpec(self.d_model, 1)}


class UniversalVatt(Backbone):
    """Modality-agnostic VATT: one shared transformer, per-modality tokenizer, positions, AGG and head.

    ``forward(x)`` takes one modality (a float (B, 3, T, H, W) clip, a float (B, S) or (B, 1, S)
    waveform, or (B, L) integer CLIP ids) and returns {"tokens", "pooled"}; or a dict
    ``{"video": ..., "audio": ..., "text": ...}`` (any subset) and returns ``"video.tokens"``,
    ``"video.pooled"``, ... Outputs are ``d_post_proj`` wide (Dense + GELU after the transformer).
    """

    def __init__(
        self,
        *,
        d_model: int,
        d_kv: int = 64,
        d_ff: int,
        num_layers: int,
        num_heads: int,
        video_patch: tuple[int, int, int] = (4, 16, 16),
        video_buckets: tuple[int, int, int] = (8, 14, 14),
        audio_patch: int = 128,
        audio_buckets: int = 1200,
        text_buckets: int = 16,
        d_text_embedding: int = 512,
        d_post_proj: int = 1024,
        drop_token_rate: float = 0.5,
        dropout: float = 0.1,
    ):
        super().__init__()
        common = {"d_model": d_model, "pre_projection": True, "dropout": dropout}
        self.tokenizers = nn.ModuleDict(
            {
                "video": _Tokenizer("video", patch=video_patch, buckets=video_buckets, **common),
                "audio": _Tokenizer("audio", patch=(audio_patch,), buckets=(audio_buckets,), **common),
                "text": _Tokenizer(
                    "text", patch=(), buckets=(text_buckets,), d_embedding=d_text_embedding, **common
                ),
            }
        )
        self.agg_tokens = nn.ParameterDict({m: token_parameter(d_model) for m in self.tokenizers})
        self.encoder = _Encoder(
            d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers, num_heads=num_heads, dropout=dropout
        )
        self.post_proj = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d_model, d_post_proj), nn.GELU()) for m in self.tokenizers}
        )
        keep = 1 - drop_token_rate
        self.keep_tokens = {"video": int(keep * math.prod(video_buckets)), "audio": int(keep * audio_buckets)}
        self.drop_token = drop_token_rate > 0
        self.d_post_proj, self.video_patch = d_post_proj, tuple(video_patch)
        init_transformer_weights(self)

    def encode(self, x: Tensor, modality: str, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        """One modality through the shared transformer; text pads after EOT unless a mask is given."""
        tokens = self.tokenizers[modality](x)
        bias = None
        if modality == "text":
            keep = clip_padding_mask(x) if attention_mask is None else attention_mask.bool()
            keep = torch.cat([keep.new_ones(keep.shape[0], 1), keep], dim=1)  # the AGG token is never padding
            bias = torch.zeros(keep.shape, dtype=tokens.dtype, device=tokens.device).masked_fill(
                ~keep, float("-inf")
            )
            bias = bias[:, None, None, :]  # (B, 1+L) -> (B, 1, 1, 1+L)
        elif self.training and self.drop_token and self.keep_tokens[modality] < tokens.shape[1]:
            tokens = drop_tokens(tokens, self.keep_tokens[modality])
        out = self.post_proj[modality](self.encoder(_with_agg(self.agg_tokens[modality], tokens), bias))
        return {"tokens": out[:, 1:], "pooled": out[:, 0]}

    def forward(self, x: Tensor | dict[str, Tensor]) -> dict[str, Tensor]:
        if isinstance(x, dict):
            return {f"{m}.{k}": v for m, signal in x.items() for k, v in self.encode(signal, m).items()}
        modality = "text" if not x.is_floating_point() else "video" if x.ndim == 5 else "audio"
        return self.encode(x, modality)

    def output_shape(self) -> dict[str, FeatureSpec]:
        """Strides of *video* tokens (the default input); audio tokens stride ``audio_patch``
        samples, text tokens one id."""
        t, s = self.video_patch[0], self.video_patch[1]
        return {"tokens": FeatureSpec(self.d_post_proj, s, t), "pooled": FeatureSpec(self.d_post_proj, 1)}


# vatt/configs/{video,audio,unified}.py: (d_model, d_ff, num_heads, num_layers), d_kv 64.
SIZES = {
    "base": {"d_model": 768, "d_ff": 3072, "num_heads": 12, "num_layers": 12},
    "medium": {"d_model": 1024, "d_ff": 4096, "num_heads": 16, "num_layers": 12},
    "large": {"d_model": 1024, "d_ff": 4096, "num_heads": 16, "num_layers": 24},
    "xlarge": {"d_model": 1536, "d_ff": 4096, "num_heads": 24, "num_layers": 24},
    "tiny": {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_heads": 2, "num_layers": 2},  # test variants
}
_VIDEO = {"modality": "video", "patch": (4, 16, 16), "buckets": (8, 14, 14)}  # 32x224² -> 8x14x14
_AUDIO = {"modality": "audio", "patch": (128,), "buckets": (1200,)}  # 3.2 s at 48 kHz -> 1200
_TINY_UT = {
    "video_patch": (2, 8, 8),
    "video_buckets": (2, 4, 4),
    "audio_patch": 16,
    "audio_buckets": 32,
    "d_text_embedding": 32,
    "d_post_proj": 32,
}
_SRC = "google-research/google-research: vatt/"
_CLIP, _WAVE = (3, 32, 224, 224), (1, 153600)
register_variants(
    VattTransformer,
    {
        **{f"vatt-video-{s}": ({**_VIDEO, **SIZES[s]}, _CLIP) for s in ("base", "medium", "large", "xlarge")},
        "vatt-video-tiny": (
            {**_VIDEO, "patch": (2, 8, 8), "buckets": (2, 4, 4), **SIZES["tiny"]},
            (3, 4, 32, 32),
        ),
    },
    task="video-backbone",
    source=_SRC + "configs/video.py, modeling/backbones/video/vitx3d.py",
)
register_variants(
    VattTransformer,
    {
        **{f"vatt-audio-{s}": ({**_AUDIO, **SIZES[s]}, _WAVE) for s in ("base", "medium", "large")},
        "vatt-audio-tiny": ({**_AUDIO, "patch": (16,), "buckets": (32,), **SIZES["tiny"]}, (1, 512)),
    },
    task="audio-backbone",
    source=_SRC + "configs/audio.py, modeling/backbones/audio/autx1d.py",
)
register_variants(
    UniversalVatt,
    {
        **{f"vatt-ut-{s}": (SIZES[s], _CLIP) for s in ("base", "medium", "large")},
        "vatt-ut-tiny": ({**SIZES["tiny"], **_TINY_UT}, (3, 4, 32, 32)),
    },
    task="multimodal-backbone",
    source=_SRC + "configs/unified.py, modeling/backbones/unified/uvatt.py",
)
