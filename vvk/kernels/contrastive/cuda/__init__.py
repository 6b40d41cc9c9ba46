"""Similarity log-sum-exp CUDA extension: ``similarity_lse.cpp`` + ``similarity_lse_kernel.cu``.

Compiled on first use (nvcc and a GPU needed) and cached by torch; see ``vvk.kernels.backends``.
Accumulates in float32 (float64 for float64 input); feature dimension up to 512.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from vvk.kernels.backends import load_cuda_extension

_HERE = Path(__file__).resolve().parent


def extension():
    """The compiled module (builds it the first time)."""
    return load_cuda_extension("vvk_similarity_lse", _HERE)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _long(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.long().contiguous()


def lse_forward(q, k, scale, positives, group_q, group_k, block_rows=0, block_cols=0) -> Tensor:
    """CUDA forward: same contract as ``reference.lse_forward`` (the tile is fixed at 32 × 32)."""
    scale = scale.to(_acc(q.dtype)).reshape(1).contiguous()
    return extension().forward(q, k.to(q.dtype), scale, _long(positives), _long(group_q), _long(group_k))


def lse_backward(grad, q, k, scale, lse, positives, group_q, group_k, block_rows=0, block_cols=0):
    """CUDA backward: same contract as ``reference.lse_backward``; returns ``(dq, dk)``."""
    acc = _acc(q.dtype)
    scale = scale.to(acc).reshape(1).contiguous()
    grad, lse = grad.to(acc).contiguous(), lse.to(acc).contiguous()
    dq, dk = extension().backward(grad, q, k, scale, lse, _long(positives), _long(group_q), _long(group_k))
    return dq, dk
