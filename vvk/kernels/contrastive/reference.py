"""Contrastive (InfoNCE) loss in pure PyTorch: the plain definition, and the tiled CPU path.

Maths
-----
With rows ``q (N, D)``, columns ``k (M, D)`` (cosine-normalised or not) and ``scale = 1 / τ``,
``s_ij = scale * <q_i, k_j>``. Row ``i`` has a positive set ``P(i)`` (column indices) and an
optional group id; the columns kept in its denominator are

    A(i) = { j : not (group_q[i] == group_k[j] and j not in P(i)) }     (all j without groups)

and its loss is ``lse_{j in A(i)} s_ij - lse_{p in P(i)} s_ip``. With ``P(i) = {i}`` and no
groups this is ``F.cross_entropy(s, arange(N))``; see ``op.contrastive_loss`` for the modes
(SimCLR, CLIP, MIL-NCE, ConST-CL local) expressed in these terms.

Two implementations
-------------------
- :func:`plain_contrastive_loss` materialises the ``N × M`` logits and masks: the definition,
  used by the parity tests, never by the op (it needs ``O(N * M)`` memory).
- :func:`lse_forward` / :func:`lse_backward` compute the denominator
  ``lse_i = logsumexp_{j in A(i)} s_ij`` and its gradient tile by tile with an online
  log-sum-exp (running max ``m`` and sum ``l``, ``l <- l * exp(m - m') + sum exp(s - m')``);
  the backward recomputes each tile's ``exp(s_ij - lse_i)``. Peak extra memory is one
  ``block_rows × block_cols`` tile (and its mask), not ``N × M``. This is the ``reference``
  backend of ``op.py``: the CPU and deterministic path. Low-precision inputs are upcast to
  float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_BLOCK_ROWS = 1024
DEFAULT_BLOCK_COLS = 4096


def plain_contrastive_loss(
    q: Tensor,
    k: Tensor,
    temperature: float | Tensor,
    *,
    positives: Tensor | None = None,
    groups: Tensor | tuple[Tensor, Tensor] | None = None,
    exclude_self: bool = False,
    symmetric: bool = False,
    normalize: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """The plain materialised formula; same arguments and semantics as ``op.contrastive_loss``."""
    if normalize:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    logits = q @ k.T / temperature  # (N, M)
    n, m = logits.shape
    is_pos = torch.zeros(n, m, dtype=torch.bool, device=q.device)
    if positives is None:
        is_pos[torch.arange(n), torch.arange(n)] = True
    else:
        positives = positives.to(q.device).reshape(n, -1)  # (N,) or (N, P) -> (N, P)
        rows, slots = (positives >= 0).nonzero(as_tuple=True)
        is_pos[rows, positives[rows, slots]] = True
    if exclude_self:
        groups = torch.arange(n, device=q.device)
    dropped = torch.zeros_like(is_pos)
    if groups is not None:
        group_q, group_k = (
            g.to(q.device) for g in (groups if isinstance(groups, tuple) else (groups, groups))
        )
        dropped = (group_q[:, None] == group_k[None, :]) & ~is_pos
    loss = _plain_rows(logits, is_pos, dropped)
    if symmetric:
        loss_t = _plain_rows(logits.T, is_pos.T, dropped.T)
        return reduce_symmetric(loss, loss_t, reduction)
    return reduce_loss(loss, reduction)


def _plain_rows(logits: Tensor, is_pos: Tensor, dropped: Tensor) -> Tensor:
    denominator = torch.logsumexp(logits.masked_fill(dropped, float("-inf")), dim=1)
    numerator = torch.logsumexp(logits.masked_fill(~is_pos, float("-inf")), dim=1)
    return denominator - numerator


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """``"mean"`` / ``"sum"`` of per-row losses, or the rows themselves (``"none"``)."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def reduce_symmetric(loss: Tensor, loss_t: Tensor, reduction: str) -> Tensor:
    """Symmetric reduction: mean of the two directions' means, sum of all, or both concatenated."""
    if reduction == "mean":
        return (loss.mean() + loss_t.mean()) / 2
    if reduction == "sum":
        return loss.sum() + loss_t.sum()
    return torch.cat([loss, loss_t])


def _dropped_tile(
    rows: slice,
    c0: int,
    c1: int,
    positives: Tensor | None,
    group_q: Tensor | None,
    group_k: Tensor | None,
) -> Tensor | None:
    """``(rows, c1 - c0)`` bool: same-group columns that are not positives of the row."""
    if group_q is None:
        return None
    dropped = group_q[rows, None] == group_k[None, c0:c1]
    if positives is not None:
        pos = positives[rows]  # (rows, P) global column indices, -1 padded
        r, s = ((pos >= c0) & (pos < c1)).nonzero(as_tuple=True)
        dropped[r, pos[r, s] - c0] = False
    return dropped


def _tiles(n: int, block: int):
    return ((i, min(i + block, n)) for i in range(0, n, block))


def _upcast(*tensors: Tensor) -> tuple[Tensor, ...]:
    return tuple(t if t.dtype in (torch.float32, torch.float64) else t.float() for t in tensors)


def _tile_products(rows: Tensor, cols: Tensor, block_rows: int, block_cols: int, masks):
    """Yields ``(r0, r1, c0, c1, rows[r0:r1] @ cols[c0:c1].T)`` tile by tile, with dropped entries -inf.

    All tiles share one preallocated buffer (a fresh large allocation per tile costs page faults
    that, on the CPU, take longer than the tile's matmul); a tile is valid until the next one.
    """
    buffer = rows.new_empty(min(block_rows, rows.shape[0]) * min(block_cols, cols.shape[0]))
    for r0, r1 in _tiles(rows.shape[0], block_rows):
        for c0, c1 in _tiles(cols.shape[0], block_cols):
            tile = torch.mm(
                rows[r0:r1], cols[c0:c1].T, out=buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            )
            dropped = _dropped_tile(slice(r0, r1), c0, c1, *masks)
            if dropped is not None:
                tile.masked_fill_(dropped, float("-inf"))
            yield r0, r1, c0, c1, tile


@torch.no_grad()
def lse_forward(
    q: Tensor,
    k: Tensor,
    scale: Tensor,
    positives: Tensor | None = None,
    group_q: Tensor | None = None,
    group_k: Tensor | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
) -> Tensor:
    """``lse_i = logsumexp_{j in A(i)} scale * <q_i, k_j>`` for every row: ``(N,)``."""
    q, k = _upcast(q, k)
    scaled_q = q * scale.to(q.dtype)  # (N, D): the scale rides on the matmul, not on every tile
    running_max = q.new_full((q.shape[0],), float("-inf"))
    running_sum = q.new_zeros(q.shape[0])
    tiles = _tile_products(
        scaled_q,
        k,
        block_rows or DEFAULT_BLOCK_ROWS,
        block_cols or DEFAULT_BLOCK_COLS,
        (positives, group_q, group_k),
    )
    for r0, r1, _, _, logits in tiles:
        old_max = running_max[r0:r1]
        new_max = torch.maximum(old_max, logits.amax(dim=1))
        # A row whose columns so far are all dropped keeps max -inf; shift it by 0 instead.
        shift = torch.where(torch.isinf(new_max), 0.0, new_max)
        tile_sum = logits.sub_(shift[:, None]).exp_().sum(1)
        running_sum[r0:r1] = running_sum[r0:r1] * torch.exp(old_max - shift) + tile_sum
        running_max[r0:r1] = new_max
    return torch.where(torch.isinf(running_max), running_max, running_max + torch.log(running_sum))


@torch.no_grad()
def lse_backward(
    grad_lse: Tensor,
    q: Tensor,
    k: Tensor,
    scale: Tensor,
    lse: Tensor,
    positives: Tensor | None = None,
    group_q: Tensor | None = None,
    group_k: Tensor | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_cols: int = DEFAULT_BLOCK_COLS,
) -> tuple[Tensor, Tensor]:
    """``(dq, dk)`` of ``sum_i grad_lse_i * lse_i``, recomputing ``p_ij = exp(s_ij - lse_i)`` per tile.

    ``dq_i = scale * sum_j g_i p_ij k_j`` and ``dk_j = scale * sum_i g_i p_ij q_i``. The row
    offset ``log g_i - lse_i`` rides on the tile matmul as an extra feature column
    (``[scale * q_i, offset_i] . [k_j, 1]``), so each tile costs one ``exp`` pass.
    """
    q32, k32, grad_lse = _upcast(q, k, grad_lse)
    dtype = q32.dtype
    scale = scale.to(dtype)
    lse = torch.where(torch.isinf(lse), 0.0, lse).to(dtype)  # fully dropped rows: every p_ij is 0
    grad_lse = grad_lse.to(dtype)
    fold_grad = bool((grad_lse >= 0).all())  # log g needs g >= 0 (log 0 = -inf gives p = 0)
    offset = (torch.log(grad_lse) - lse) if fold_grad else -lse
    rows = torch.cat([q32 * scale, offset[:, None]], dim=1)  # (N, D + 1)
    cols = torch.cat([k32, k32.new_ones(k32.shape[0], 1)], dim=1)  # (M, D + 1)
    dq, dk = torch.zeros_like(q32), torch.zeros_like(k32)
    tiles = _tile_products(
        rows,
        cols,
        block_rows or DEFAULT_BLOCK_ROWS,
        block_cols or DEFAULT_BLOCK_COLS,
        (positives, group_q, group_k),
    )
    for r0, r1, c0, c1, p in tiles:
        p.exp_()
        if not fold_grad:
            p.mul_(grad_lse[r0:r1, None])
        dq[r0:r1].addmm_(p, k32[c0:c1])
        dk[c0:c1].addmm_(p.T, rows[r0:r1, :-1])  # rows carry scale * q already
    return (dq * scale).to(q.dtype), dk.to(k.dtype)
