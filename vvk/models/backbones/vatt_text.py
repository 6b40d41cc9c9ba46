"""VATT's text backbone: a T5-Small-shaped encoder over CLIP BPE token ids.

Follows ``google-research/google-research: vatt/modeling/backbones/text/{factory,t5}.py`` and
``vatt/configs/text.py`` (``T5Small``: d 512, d_ff 2048, 8 heads × 64, 6 layers, relative
position buckets 32 / max distance 64, GELU, dropout 0.1, an AGG token whose output is the
sentence embedding). One deliberate change: VATT looks words up in a frozen 300-d word2vec
table over a 2^16 vocabulary, which cannot be downloaded here; we take the ids of the CLIP BPE
tokenizer bundled with open_clip (49,408 tokens, works offline) and learn a 512-d table
(512 = CLIP's token-embedding width, so a CLIP table can be loaded and frozen instead).

Kept from the reference code: the embedding goes through a bias-free Dense + GELU
(``pre_proj``) before the encoder; attention has no biases and no 1/sqrt(d) scaling (T5);
its pre-norm is T5's RMS norm while the FFN's pre-norm is an ordinary LayerNorm (that is what
``t5.FeedForward`` builds); the relative-position bias lives in layer 0 and is shared by all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vvk.models.backbones.base import Backbone, FeatureSpec, register_variants
from vvk.models.layers.transformer import TransformerLayer, init_transformer_weights, token_parameter

CLIP_VOCAB_SIZE = 49408
CLIP_EOT_TOKEN = 49407  # open_clip pads with 0 after <end_of_text>


def tokenize(texts: str | Sequence[str], *, context_length: int = 16) -> Tensor:
    """CLIP BPE ids (B, context_length) from open_clip's bundled tokenizer; truncated texts end in EOT.

    16 matches VATT's 16 words per sentence (and UT's 16 text position buckets).
    """
    from open_clip.tokenizer import SimpleTokenizer  # heavy import, only when text is tokenized

    return SimpleTokenizer(context_length=context_length)([texts] if isinstance(texts, str) else list(texts))


def clip_padding_mask(ids: Tensor, eot_token: int = CLIP_EOT_TOKEN) -> Tensor:
    """True for real tokens: everything up to and including the first EOT (all, when there is none).

    VATT treats id 0 as padding, but 0 is a real CLIP token ("!"), so we cut after EOT instead.
    """
    is_eot = (ids == eot_token).int()
    return (is_eot.cumsum(dim=1) - is_eot) == 0  # (B, L)


def relative_position_bucket(relative: Tensor, *, num_buckets: int, max_distance: int) -> Tensor:
    """T5's bidirectional buckets: half per direction, exact below ``num_buckets / 4``, then
    log-spaced up to ``max_distance``."""
    half = num_buckets // 2
    bucket = (relative > 0).long() * half  # keys after the query use the upper half
    n = relative.abs()
    max_exact = half // 2
    log_scaled = (
        max_exact
        + (
            torch.log(n.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (half - max_exact)
        ).long()
    )
    return bucket + torch.where(n < max_exact, n, log_scaled.clamp(max=half - 1))


class VattTextTransformer(Backbone):
    """Token ids (B, L) -> {"tokens": (B, L, D), "pooled": (B, D)}, pooled = the AGG token's output.

    Args:
        d_embedding: width of the learned token table (pre-projected to ``d_model``).
        freeze_embeddings: keep the table fixed (VATT froze word2vec), e.g. after loading CLIP's.
    """

    def __init__(
        self,
        *,
        vocab_size: int = CLIP_VOCAB_SIZE,
        d_embedding: int = 512,
        d_model: int = 512,
        d_kv: int = 64,
        d_ff: int = 2048,
        num_layers: int = 6,
        num_heads: int = 8,
        relative_buckets: int = 32,
        max_distance: int = 64,
        dropout: float = 0.1,
        eps: float = 1e-6,
        freeze_embeddings: bool = False,
        eot_token: int = CLIP_EOT_TOKEN,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_embedding)
        self.embedding.weight.requires_grad_(not freeze_embeddings)
        self.agg_token = token_parameter(d_embedding)
        self.pre_proj = nn.Sequential(nn.Linear(d_embedding, d_model, bias=False), nn.GELU())
        self.relative_bias = nn.Embedding(relative_buckets, num_heads)
        self.layers = nn.ModuleList(
            TransformerLayer(
                d_model=d_model,
                num_heads=num_heads,
                d_kv=d_kv,
                d_ff=d_ff,
                bias=False,
                attention_scale=1.0,
                attn_norm="rms",
                ffn_norm="layer",
                dropout=dropout,
                eps=eps,
            )
            for _ in range(num_layers)
        )
        self.final_norm = nn.RMSNorm(d_model, eps=eps)
        self.drop = nn.Dropout(dropout)
        self.relative_buckets, self.max_distance, self.eot_token = relative_buckets, max_distance, eot_token
        self.d_model = d_model
        init_transformer_weights(self)
        nn.init.trunc_normal_(self.embedding.weight, std=d_embedding**-0.5)

    def _position_bias(self, length: int, device: torch.device) -> Tensor:
        pos = torch.arange(length, device=device)
        buckets = relative_position_bucket(
            pos[None, :] - pos[:, None], num_buckets=self.relative_buckets, max_distance=self.max_distance
        )
        return self.relative_bias(buckets).permute(2, 0, 1).unsqueeze(0)  # (L, L, H) -> (1, H, L, L)

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        """``ids``: (B, L) CLIP ids; ``attention_mask``: (B, L) True for real tokens (default: up to EOT)."""
        if attention_mask is None:
            attention_mask = clip_padding_mask(ids, self.eot_token)
        b = ids.shape[0]
        # Prepend the AGG token: (B, L, E) -> (B, 1+L, E); it is never padding.
        x = torch.cat([self.agg_token.expand(b, 1, -1), self.embedding(ids)], dim=1)
        keep = torch.cat([attention_mask.new_ones(b, 1), attention_mask.bool()], dim=1)
        x = self.drop(self.pre_proj(x))
        padding = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, float("-inf"))
        bias = self._position_bias(x.shape[1], x.device) + padding[:, None, None, :]  # (B, H, 1+L, 1+L)
        for layer in self.layers:
            x = layer(x, bias)
        x = self.drop(self.final_norm(x))
        return {"tokens": x[:, 1:], "pooled": x[:, 0]}

    def output_shape(self) -> dict[str, FeatureSpec]:
        return {"tokens": FeatureSpec(self.d_model, 1), "pooled": FeatureSpec(self.d_model, 1)}


# vatt/configs/text.py::T5Small; the tiny variant is for tests.
register_variants(
    VattTextTransformer,
    {
        "vatt-text-small": ({}, (16,)),
        "vatt-text-tiny": (
            {"d_embedding": 32, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2},
            (16,),
        ),
    },
    task="text-backbone",
    source="google-research/google-research: vatt/configs/text.py (T5Small),"
    " vatt/modeling/backbones/text/t5.py",
)
