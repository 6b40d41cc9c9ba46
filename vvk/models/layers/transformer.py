"""Pre-norm transformer layers shared by the VATT video/audio/unified encoders and the T5 text encoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def norm_layer(kind: str, dim: int, eps: float) -> nn.Module:
    """``"layer"``: LayerNorm with bias; ``"rms"``: T5's scale-only RMS norm."""
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rms":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm '{kind}' (layer or rms)")


class MultiHeadAttention(nn.Module):
    """Self-attention with separate q/k/v/o projections (the reference's Dense layers).

    Args:
        d_kv: width per head; the inner width is ``num_heads · d_kv``.
        bias: projections with bias (VATT ViT) or without (T5).
        scale: logit scale; ``None`` is 1/sqrt(d_kv), T5 uses 1.0 (folded into its init).
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int,
        d_kv: int,
        bias: bool = True,
        scale: float | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        inner = num_heads * d_kv
        self.num_heads, self.d_kv, self.scale, self.dropout = num_heads, d_kv, scale, dropout
        self.q, self.k, self.v = (nn.Linear(d_model, inner, bias=bias) for _ in range(3))
        self.o = nn.Linear(inner, d_model, bias=bias)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """``x``: (B, N, D); ``attn_bias``: additive, broadcastable to (B, H, N, N)."""
        b, n, _ = x.shape
        # (B, N, H*Dk) -> (B, H, N, Dk)
        q, k, v = (
            proj(x).view(b, n, self.num_heads, self.d_kv).transpose(1, 2) for proj in (self.q, self.k, self.v)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )
        # (B, H, N, Dk) -> (B, N, H*Dk)
        return self.o(y.transpose(1, 2).reshape(b, n, self.num_heads * self.d_kv))


class TransformerLayer(nn.Module):
    """``x + drop(attn(norm(x)))`` then ``x + drop(ffn(norm(x)))``, the FFN being Dense-GELU-Dense.

    Args:
        attn_norm, ffn_norm: ``"layer"`` or ``"rms"`` (VATT's T5 uses RMS before attention but a
            plain LayerNorm before the FFN).
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        d_kv: int,
        d_ff: int,
        bias: bool = True,
        attention_scale: float | None = None,
        attn_norm: str = "layer",
        ffn_norm: str = "layer",
        dropout: float = 0.1,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.attn_norm = norm_layer(attn_norm, d_model, eps)
        self.attn = MultiHeadAttention(
            d_model, num_heads=num_heads, d_kv=d_kv, bias=bias, scale=attention_scale, dropout=dropout
        )
        self.ffn_norm = norm_layer(ffn_norm, d_model, eps)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_ff, bias=bias),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_ff, d_model, bias=bias),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), attn_bias))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


def token_parameter(dim: int) -> nn.Parameter:
    """A learned special token (VATT's AGG), Glorot-normal initialised like the reference."""
    token = nn.Parameter(torch.empty(dim))
    nn.init.xavier_normal_(token.view(1, -1))  # (D,) seen as a (1, D) matrix for the fan computation
    return token


def init_transformer_weights(model: nn.Module) -> None:
    """Glorot-uniform linear weights and zero biases (Keras Dense defaults); skipped on meta."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and not m.weight.is_meta:
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
