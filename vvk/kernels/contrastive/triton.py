"""Masked log-sum-exp of scaled similarities in Triton: forward and recomputing backward.

Maths: see ``reference.py``. ``lse_i = logsumexp_{j in A(i)} scale * <q_i, k_j>`` where ``A(i)``
drops same-group columns that are not positives of row ``i`` (no columns without groups).

- Forward: one program per ``BLOCK_M`` rows keeps the rows' features in registers and walks the
  columns in ``BLOCK_N`` tiles with an online log-sum-exp (running max and rescaled sum), in
  the manner of flash attention and Inf-CL's ``_prob_fwd_kernel``.
- Backward: one kernel launched twice, no atomics (deterministic). ``FOR_KEYS=False`` (dq): a
  program per row block walks the column tiles recomputing ``p_ij = exp(s_ij - lse_i)`` and
  accumulates ``dq += (g * p) @ k``; ``FOR_KEYS=True`` (dk): a program per column block walks the
  row tiles and accumulates ``dk += (g * p)^T @ q``. Both finish with ``* scale``; each
  recomputes ``s``, so the backward costs three similarity products to the forward's one.

Caveats:
- The whole feature dimension is one tile (``BLOCK_D = next_power_of_2(D)``, at most 1024):
  register pressure grows with ``D``, so the row/column tiles shrink as ``D`` grows.
- float32 inputs use ``input_precision="tf32"`` only when
  ``torch.backends.cuda.matmul.allow_tf32`` is set (the plain formula then uses TF32 too);
  otherwise "ieee". float16/bfloat16 feed the tensor cores directly; ``p`` is cast to the input
  dtype for the second product, as flash attention does. float64 is refused (use the reference).
- Tested under ``TRITON_INTERPRET=1`` on the CPU in fp32 and on a GPU by
  ``benchmarks/gpu_check.sh``. No autotuning (the interpreter cannot run ``do_bench``). The
  interpreter computes bf16/fp16 wrongly, so on the CPU they are cast to fp32 first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_MAX_D = 1024


@triton.jit
def _masked_scores(
    q,
    k,
    rows,
    cols,
    row_ok,
    col_ok,
    scale,
    POS,
    GQ,
    GK,
    stride_pn,
    P,
    HAS_GROUPS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``scale * q @ k^T`` of one tile, ``-inf`` outside the matrix and for dropped columns."""
    keep = row_ok[:, None] & col_ok[None, :]
    if HAS_GROUPS:
        group_rows = tl.load(GQ + rows, mask=row_ok, other=0)
        group_cols = tl.load(GK + cols, mask=col_ok, other=0)
        is_pos = (rows[:, None] < 0) & (cols[None, :] < 0)  # all False, (BLOCK_M, BLOCK_N)
        for p in range(P):
            pos = tl.load(POS + rows * stride_pn + p, mask=row_ok, other=-1)
            is_pos = is_pos | (pos[:, None] == cols[None, :])
        keep = keep & ((group_rows[:, None] != group_cols[None, :]) | is_pos)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    return tl.where(keep, s, float("-inf"))


@triton.jit
def _load_rows(X, rows, row_ok, dims, d_ok, stride_n, stride_d):
    return tl.load(
        X + rows[:, None] * stride_n + dims[None, :] * stride_d,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )


@triton.jit
def _lse_fwd_kernel(
    Q,  # (N, D) rows, any strides
    K,  # (M, D) columns, any strides
    SCALE,  # one element: 1 / temperature
    LSE,  # out: (N,) float32
    POS,  # (N, P) int64 positive column indices, -1 padded; read only with groups
    GQ,  # (N,) int64 row groups; read only with groups
    GK,  # (M,) int64 column groups; read only with groups
    N,  # rows of q
    M,  # rows of k
    D,  # features
    P,  # positives per row (columns of POS); 0 without groups
    stride_qn,  # q strides, in elements
    stride_qd,
    stride_kn,  # k strides, in elements
    stride_kd,
    stride_pn,  # row stride of POS
    HAS_GROUPS: tl.constexpr,  # drop same-group non-positive columns
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # columns per tile
    BLOCK_D: tl.constexpr,  # next power of two >= D
    PRECISION: tl.constexpr,  # tl.dot input precision for float32: "ieee" or "tf32"
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < D
    q = _load_rows(Q, rows, row_ok, dims, d_ok, stride_qn, stride_qd)
    scale = tl.load(SCALE).to(tl.float32)
    running_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    running_sum = tl.zeros((BLOCK_M,), tl.float32)
    for c0 in range(0, M, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < M
        k = _load_rows(K, cols, col_ok, dims, d_ok, stride_kn, stride_kd)
        s = _masked_scores(
            q, k, rows, cols, row_ok, col_ok, scale, POS, GQ, GK, stride_pn, P, HAS_GROUPS, PRECISION
        )
        new_max = tl.maximum(running_max, tl.max(s, axis=1))
        # Rows with every column so far dropped keep max -inf: shift them by 0, not -inf.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(s - shift[:, None]), axis=1)
        running_max = new_max
    # The running sum is >= 1 wherever the max is finite (the max term is exp(0)); flooring it at 1
    # only keeps log(0) out of fully dropped rows, whose lse is -inf through the max.
    tl.store(LSE + rows, running_max + tl.log(tl.maximum(running_sum, 1.0)), mask=row_ok)


@triton.jit
def _weighted_probs(
    q, k, rows, cols, row_ok, col_ok, scale, LSE, GRAD, POS, GQ, GK, stride_pn, P, HAS_GROUPS, PRECISION
):
    """``g_i * exp(s_ij - lse_i)`` of one tile; 0 for dropped columns and outside the matrix."""
    s = _masked_scores(
        q, k, rows, cols, row_ok, col_ok, scale, POS, GQ, GK, stride_pn, P, HAS_GROUPS, PRECISION
    )
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)  # a fully dropped row has s = -inf everywhere
    grad = tl.load(GRAD + rows, mask=row_ok, other=0.0).to(tl.float32)
    return tl.exp(s - lse[:, None]) * grad[:, None]


@triton.jit
def _store_rows(X, rows, row_ok, dims, d_ok, D, values):
    tl.store(
        X + rows[:, None] * D + dims[None, :],
        values.to(X.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )


@triton.jit
def _lse_bwd_kernel(
    Q,  # (N, D) rows, any strides
    K,  # (M, D) columns, any strides
    SCALE,  # one element: 1 / temperature
    LSE,  # (N,) float32 forward result
    GRAD,  # (N,) upstream gradient of lse
    OUT,  # out: dq (N, D) or dk (M, D), contiguous, in the input dtype
    POS,  # (N, P) int64 positive column indices, -1 padded; read only with groups
    GQ,  # (N,) int64 row groups; read only with groups
    GK,  # (M,) int64 column groups; read only with groups
    N,  # rows of q
    M,  # rows of k
    D,  # features
    P,  # positives per row (columns of POS); 0 without groups
    stride_qn,  # q strides, in elements
    stride_qd,
    stride_kn,  # k strides, in elements
    stride_kd,
    stride_pn,  # row stride of POS
    HAS_GROUPS: tl.constexpr,  # drop same-group non-positive columns
    FOR_KEYS: tl.constexpr,  # False: dq, a program per row block; True: dk, a program per column block
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # columns per tile
    BLOCK_D: tl.constexpr,  # next power of two >= D
    PRECISION: tl.constexpr,  # tl.dot input precision for float32: "ieee" or "tf32"
):
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < D
    scale = tl.load(SCALE).to(tl.float32)
    if FOR_KEYS:  # dk_j = scale * sum_i g_i p_ij q_i, walking the row tiles
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < M
        k = _load_rows(K, cols, col_ok, dims, d_ok, stride_kn, stride_kd)
        acc = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        for r0 in range(0, N, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M)
            row_ok = rows < N
            q = _load_rows(Q, rows, row_ok, dims, d_ok, stride_qn, stride_qd)
            p = _weighted_probs(
                q,
                k,
                rows,
                cols,
                row_ok,
                col_ok,
                scale,
                LSE,
                GRAD,
                POS,
                GQ,
                GK,
                stride_pn,
                P,
                HAS_GROUPS,
                PRECISION,
            )
            acc += tl.dot(tl.trans(p).to(q.dtype), q, input_precision=PRECISION)
        _store_rows(OUT, cols, col_ok, dims, d_ok, D, acc * scale)
    else:  # dq_i = scale * sum_j g_i p_ij k_j, walking the column tiles
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        q = _load_rows(Q, rows, row_ok, dims, d_ok, stride_qn, stride_qd)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        for c0 in range(0, M, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            col_ok = cols < M
            k = _load_rows(K, cols, col_ok, dims, d_ok, stride_kn, stride_kd)
            p = _weighted_probs(
                q,
                k,
                rows,
                cols,
                row_ok,
                col_ok,
                scale,
                LSE,
                GRAD,
                POS,
                GQ,
                GK,
                stride_pn,
                P,
                HAS_GROUPS,
                PRECISION,
            )
            acc += tl.dot(p.to(k.dtype), k, input_precision=PRECISION)
        _store_rows(OUT, rows, row_ok, dims, d_ok, D, acc * scale)


def _settings(q: Tensor, block_rows: int, block_cols: int) -> dict:
    if q.dtype == torch.float64:
        raise ValueError(
            "the triton contrastive kernels compute in float32; use backend='reference' for float64"
        )
    d = q.shape[1]
    if d > _MAX_D:
        raise ValueError(f"the triton contrastive kernels support D <= {_MAX_D}, got {d}")
    block_d = max(16, triton.next_power_of_2(d))
    default = 64 if block_d <= 128 else 32 if block_d <= 512 else 16
    blocks = {}
    for name, value in (("BLOCK_M", block_rows), ("BLOCK_N", block_cols)):
        value = value or default
        if value < 16 or value & (value - 1):
            raise ValueError(f"triton block sizes must be powers of two >= 16, got {value}")
        blocks[name] = value
    tf32 = q.dtype == torch.float32 and q.is_cuda and torch.backends.cuda.matmul.allow_tf32
    return dict(
        BLOCK_D=block_d, PRECISION="tf32" if tf32 else "ieee", num_warps=8 if block_d >= 256 else 4, **blocks
    )


def _common_args(q: Tensor, k: Tensor, positives, group_q, group_k) -> tuple[tuple, bool]:
    """Pointer, size and stride arguments shared by the three kernels (masks read only with groups)."""
    has_groups = group_q is not None
    dummy = torch.zeros(1, 1, dtype=torch.long, device=q.device)
    pos = positives.contiguous() if has_groups and positives is not None else dummy
    n_pos = pos.shape[1] if pos is not dummy else 0
    gq = group_q.contiguous() if has_groups else dummy
    gk = group_k.contiguous() if has_groups else dummy
    sizes = (q.shape[0], k.shape[0], q.shape[1], n_pos)
    strides = (*q.stride(), *k.stride(), pos.stride(0))
    return (pos, gq, gk, *sizes, *strides), has_groups


def _interpretable(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors as the kernels read them: on the CPU (the interpreter, which computes float16
    and bfloat16 wrongly) low precision goes in as float32; on a GPU as it is."""
    return tuple(
        t.float() if not t.is_cuda and t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors
    )


def lse_forward(q, k, scale, positives, group_q, group_k, block_rows=0, block_cols=0) -> Tensor:
    """Triton forward: same contract as ``reference.lse_forward``; returns float32 ``(N,)``."""
    q, k = _interpretable(q, k)
    settings = _settings(q, block_rows, block_cols)
    lse = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    if q.shape[0] == 0:
        return lse
    args, has_groups = _common_args(q, k, positives, group_q, group_k)
    grid = (triton.cdiv(q.shape[0], settings["BLOCK_M"]),)
    _lse_fwd_kernel[grid](q, k, scale.float(), lse, *args, HAS_GROUPS=has_groups, **settings)
    return lse


def lse_backward(grad, q, k, scale, lse, positives, group_q, group_k, block_rows=0, block_cols=0):
    """Triton backward: same contract as ``reference.lse_backward``; returns ``(dq, dk)``."""
    dtypes = q.dtype, k.dtype
    q, k = _interpretable(q, k)
    settings = _settings(q, block_rows, block_cols)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if q.shape[0] == 0 or k.shape[0] == 0:
        return dq.zero_().to(dtypes[0]), dk.zero_().to(dtypes[1])
    args, has_groups = _common_args(q, k, positives, group_q, group_k)
    inputs = (q, k, scale.float(), lse.float().contiguous(), grad.contiguous())
    for out, for_keys, blocks in ((dq, False, q.shape[0]), (dk, True, k.shape[0])):
        grid = (triton.cdiv(blocks, settings["BLOCK_N" if for_keys else "BLOCK_M"]),)
        _lse_bwd_kernel[grid](*inputs, out, *args, HAS_GROUPS=has_groups, FOR_KEYS=for_keys, **settings)
    return dq.to(dtypes[0]), dk.to(dtypes[1])
