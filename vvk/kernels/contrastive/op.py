"""Contrastive (InfoNCE) loss without the N × M similarity matrix: function, module, dispatch.

The loss is assembled from one registered op, ``vvk::similarity_lse`` (the masked log-sum-exp
of scaled similarities over all columns, computed in tiles; its backward
``vvk::similarity_lse_backward`` recomputes the tiles), plus plain PyTorch for the positive
logits (``O(N * P * D)``), normalisation, reduction and the distributed gather. Neither pass
holds an ``N × M`` tensor. Backends (``vvk.kernels.backends``): ``reference`` (tiled PyTorch; CPU
and deterministic mode), ``triton`` (CUDA default; CPU under ``TRITON_INTERPRET=1``), ``cuda``
(compiled extension, FMA tiles, D <= 512). Dtypes: float16 / bfloat16 (sums and exponentials in
float32; the GPU backends feed the matmuls in the input dtype), float32, float64 (reference and
cuda; an automatic choice sends float64 to the reference, since the Triton tiles use float32);
``q`` and ``k`` of two dtypes (autocast's bfloat16 meeting float32) are both taken in the wider.
Hardware tested: CPU (reference; Triton under the interpreter). GPU results: docs/benchmarks.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vvk.kernels.backends import implementation, no_autocast, resolve_backend
from vvk.kernels.contrastive import reference

REDUCTIONS = ("mean", "sum", "none")
# Where the automatic choice is the reference backend (the CPU), logits up to this size are
# materialised: the plain product is faster than the tiles at small N (issue 22: 0.94x the plain
# formula at N = 4,096), the tiles win and save memory beyond. 256 MiB: N = M = 8,192 in float32.
PLAIN_BELOW_BYTES = 256 * 2**20


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("vvk::similarity_lse", mutates_args=())
def _similarity_lse(
    q: Tensor,
    k: Tensor,
    scale: Tensor,
    positives: Tensor | None,
    group_q: Tensor | None,
    group_k: Tensor | None,
    block_rows: int,
    block_cols: int,
    backend: str,
) -> Tensor:
    impl = implementation(__package__, backend)
    return impl.lse_forward(q, k, scale, positives, group_q, group_k, block_rows, block_cols)


@_similarity_lse.register_fake
def _(q, k, scale, positives, group_q, group_k, block_rows, block_cols, backend):
    return q.new_empty(q.shape[0], dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("vvk::similarity_lse_backward", mutates_args=())
def _similarity_lse_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    scale: Tensor,
    lse: Tensor,
    positives: Tensor | None,
    group_q: Tensor | None,
    group_k: Tensor | None,
    block_rows: int,
    block_cols: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    impl = implementation(__package__, backend)
    return impl.lse_backward(grad, q, k, scale, lse, positives, group_q, group_k, block_rows, block_cols)


@_similarity_lse_backward.register_fake
def _(grad, q, k, scale, lse, positives, group_q, group_k, block_rows, block_cols, backend):
    return torch.empty_like(q), torch.empty_like(k)


def _setup_context(ctx, inputs, output):
    q, k, scale, positives, group_q, group_k, block_rows, block_cols, backend = inputs
    ctx.save_for_backward(q, k, scale, output, positives, group_q, group_k)
    ctx.options = (block_rows, block_cols, backend)


def _backward(ctx, grad):
    q, k, scale, lse, positives, group_q, group_k = ctx.saved_tensors
    dq, dk = _similarity_lse_backward(grad, q, k, scale, lse, positives, group_q, group_k, *ctx.options)
    # d lse / d scale = sum_ij g_i p_ij <q_i, k_j> = <dq, q> / scale, since dq = scale * sum_j g_i p_ij k_j.
    dscale = (dq.to(lse.dtype) * q.to(lse.dtype)).sum() / scale.to(lse.dtype)
    return dq, dk, dscale.to(scale.dtype).reshape(scale.shape), None, None, None, None, None, None


_similarity_lse.register_autograd(_backward, setup_context=_setup_context)


@dataclass(frozen=True)
class _World:
    """The ranks that share one loss: keys are gathered from all of them."""

    rank: int = 0
    size: int = 1
    group: object = None

    @staticmethod
    def of(process_group) -> _World:
        import torch.distributed as dist

        if process_group is None or not dist.is_available() or not dist.is_initialized():
            return _World()
        return _World(dist.get_rank(process_group), dist.get_world_size(process_group), process_group)

    def gather_with_grad(self, x: Tensor) -> Tensor:
        """``(n, ...)`` per rank -> ``(size * n, ...)``; gradients flow back to every rank's part."""
        if self.size == 1:
            return x
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x.contiguous(), group=self.group))

    def gather(self, x: Tensor) -> Tensor:
        if self.size == 1:
            return x
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts)


def _global_groups(groups: Tensor | None, world: _World) -> Tensor | None:
    # Group ids are local to a rank's batch: the pair (id, rank) names a group.
    return None if groups is None else groups.long() * world.size + world.rank


def _direction(
    rows: Tensor,
    cols: Tensor,
    positives: Tensor,
    group_rows: Tensor | None,
    group_cols: Tensor | None,
    scale: Tensor,
    world: _World,
    blocks: tuple[int, int],
    backend: str,
    lse: Tensor | None = None,
) -> Tensor:
    """Per-row loss ``lse over kept columns - lse over positives`` of local rows vs global
    columns; ``lse`` when the denominator is already known (``_plain_lse``)."""
    all_cols = world.gather_with_grad(cols)
    positives = torch.where(positives >= 0, positives + world.rank * cols.shape[0], -1)
    if lse is None:
        group_q = _global_groups(group_rows, world)
        group_k = None if group_cols is None else world.gather(_global_groups(group_cols, world))
        lse = _similarity_lse(
            rows, all_cols, scale, positives if group_q is not None else None, group_q, group_k, *blocks,
            backend,
        )  # fmt: skip
    dtype = lse.dtype
    picked = all_cols[positives.clamp(min=0)].to(dtype)  # (N, P, D)
    with no_autocast(rows.device):  # in the log-sum-exp's dtype, as the denominator
        pos_logits = torch.einsum("nd,npd->np", rows.to(dtype), picked) * scale.to(dtype)
    pos_logits = pos_logits.masked_fill(positives < 0, float("-inf"))
    return lse - torch.logsumexp(pos_logits, dim=1)


def _plain_lse(
    q: Tensor, k: Tensor, scale: Tensor, positives: Tensor, group_q: Tensor | None, group_k: Tensor | None,
    *, columns: bool,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """``similarity_lse`` of rows (and ``columns``) from one materialised ``(N, M)`` logits matrix (one
    process): where it fits, one matrix product beats the tiles on the CPU (the plain formula's
    speed at small N), and autograd gives the gradients that the tiled backward computes."""
    dtype = _lse_dtype(q.dtype)
    with no_autocast(q.device):
        logits = q.to(dtype) @ k.to(dtype).T * scale.to(dtype)  # (N, M)
    if group_q is not None:  # same-group columns leave the denominator unless they are positives
        dropped = group_q[:, None] == group_k[None, :]  # (N, M)
        rows, slots = (positives >= 0).nonzero(as_tuple=True)
        dropped[rows, positives[rows, slots]] = False
        logits = logits.masked_fill(dropped, float("-inf"))
    # rows (N,); columns (M,) when the symmetric loss needs them
    return torch.logsumexp(logits, dim=1), torch.logsumexp(logits, dim=0) if columns else None


def transpose_positives(positives: Tensor, num_cols: int) -> Tensor:
    """``(N, P)`` column indices per row -> ``(M, P')`` row indices per column, ``-1`` padded."""
    rows, slots = (positives >= 0).nonzero(as_tuple=True)
    cols = positives[rows, slots]
    order = torch.argsort(cols, stable=True)
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(cols, minlength=num_cols)
    if bool((counts == 0).any()):
        raise ValueError(
            "contrastive_loss: symmetric=True needs every row of k to be a positive of some row of q"
        )
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(cols.shape[0], device=cols.device) - first[cols]
    out = torch.full((num_cols, int(counts.max())), -1, dtype=torch.long, device=positives.device)
    out[cols, slot] = rows
    return out


def _positives(positives: Tensor | None, n: int, m: int, device) -> Tensor:
    if positives is None:
        if n != m:
            raise ValueError(f"contrastive_loss: q has {n} rows and k {m}; pass positives= to pair them")
        return torch.arange(n, device=device)[:, None]
    if positives.dim() == 1:
        positives = positives[:, None]
    if positives.shape[0] != n or positives.dtype.is_floating_point:
        raise ValueError(
            f"contrastive_loss: positives must be integer (N={n}, P), got {tuple(positives.shape)}"
        )
    positives = positives.to(device=device, dtype=torch.long)
    if torch.compiler.is_compiling():
        return positives  # the value check syncs with the device and would break the graph
    valid = ((positives >= -1) & (positives < m)).all() & (positives >= 0).any(1).all()
    message = f"contrastive_loss: positives must be in [0, {m}) with -1 padding, at least one per row"
    if positives.device.type != "cpu":
        # Reading the flag back would stall the device once per call; an asynchronous assertion
        # still stops a run with bad indices, from the device.
        torch._assert_async(valid, message)
    elif not bool(valid):
        raise ValueError(message)
    return positives


def _groups(groups, exclude_self: bool, n: int, m: int, device) -> tuple[Tensor | None, Tensor | None]:
    if exclude_self:
        if groups is not None or n != m:
            raise ValueError("contrastive_loss: exclude_self needs q and k of the same rows and no groups")
        every_row = torch.arange(n, device=device)  # each row its own group: drops j == i unless positive
        return every_row, every_row
    if groups is None:
        return None, None
    group_q, group_k = groups if isinstance(groups, tuple) else (groups, groups)
    if group_q.shape != (n,) or group_k.shape != (m,):
        raise ValueError(f"contrastive_loss: groups must be ({n},) and ({m},) group ids")
    return group_q.to(device), group_k.to(device)


def _scale(temperature: float | Tensor, like: Tensor) -> Tensor:
    dtype = _lse_dtype(like.dtype)
    if isinstance(temperature, Tensor):
        return (1.0 / temperature.to(device=like.device)).reshape(())
    return torch.tensor(1.0 / temperature, dtype=dtype, device=like.device)


def _blocks(block_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if block_size is None:
        return 0, 0  # each backend's default
    rows, cols = (block_size, block_size) if isinstance(block_size, int) else block_size
    if rows < 1 or cols < 1:
        raise ValueError(f"contrastive_loss: block_size must be positive, got {block_size!r}")
    return int(rows), int(cols)


def contrastive_loss(
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
    process_group=None,
    backend: str | None = None,
    block_size: int | tuple[int, int] | None = None,
    plain_below_bytes: int = PLAIN_BELOW_BYTES,
) -> Tensor:
    """InfoNCE of every row of ``q`` against all rows of ``k``, in tiles (no ``N × M`` matrix).

    ``s_ij = <q_i, k_j> / temperature`` (after L2 normalisation when ``normalize``). Row ``i``'s
    loss is ``logsumexp_{j in A(i)} s_ij - logsumexp_{p in P(i)} s_ip``, where ``P(i)`` are its
    positives and ``A(i)`` all columns except those of the row's group that are not positives.

    Modes:
        - InfoNCE / CLIP: ``contrastive_loss(img, txt, t)`` (positive of row i is column i);
          ``symmetric=True`` adds the loss of ``k`` rows against ``q`` columns:
          ``mean = (mean_q + mean_k) / 2``, ``sum = sum_q + sum_k``, ``none = cat(rows_q, rows_k)``.
        - SimCLR NT-Xent over 2N views ``z = cat(z_a, z_b)``: ``contrastive_loss(z, z, t,
          positives=(arange(2N) + N) % 2N, exclude_self=True)`` (self-similarity dropped).
        - MIL-NCE: ``positives (N, P)`` lists several positive columns per row (``-1`` pads
          shorter lists); the numerator is the log-sum-exp over them, the denominator covers all
          columns (positives included). E.g. clip i with narrations ``i*P .. i*P+P-1``:
          ``positives = arange(N*P).view(N, P)``.
        - ConST-CL local loss: ``groups`` = video id of every instance; same-video columns
          that are not positives leave the denominator (negatives only from other videos). A
          tuple ``(group_q, group_k)`` gives ids for rows and columns separately.

    Args:
        q: ``(N, D)`` rows (queries).
        k: ``(M, D)`` columns (keys).
        temperature: float or a tensor with one element (learnable: it receives a gradient).
        positives: ``(N,)`` or ``(N, P)`` integer indices into this rank's ``k``; default
            ``arange(N)`` (needs ``N == M``). Every row needs at least one.
        groups: ``(N,)`` ids for rows and columns (when ``N == M``), or ``(group_q, group_k)``.
        exclude_self: drop column ``i`` from row ``i`` (``q`` and ``k`` the same rows); same as
            ``groups=arange(N)``, so it cannot be combined with ``groups``.
        symmetric: also the loss of ``k``'s rows against ``q`` (CLIP); ``positives`` are
            transposed (every ``k`` row must be a positive of some ``q`` row).
        normalize: L2-normalise ``q`` and ``k`` (cosine similarity); off for pre-normalised input.
        reduction: ``"mean"`` over rows, ``"sum"``, or ``"none"`` (per-row losses).
        process_group: with an initialised ``torch.distributed`` group, every rank passes its
            local ``q``/``k``; keys are all-gathered with gradients and this rank's rows are
            scored against all ranks' keys (``positives`` and ``groups`` stay local: group
            ``g`` on two ranks is two groups). Each rank returns the loss of its own rows:
            averaging it over ranks (as DDP averages gradients) gives the single-process loss on
            the concatenated batch. All ranks need the same ``N`` and ``M``.
        backend: ``None`` (automatic), ``"reference"``, ``"triton"`` or ``"cuda"``.
        block_size: tile rows and columns (int or pair) for the reference and Triton backends.
        plain_below_bytes: with the automatic backend choice on the CPU (the reference) in one
            process, ``N × M`` logits (in the log-sum-exp's dtype) of at most this many bytes
            are materialised, once for both directions: same values and gradients, faster at
            small N. 0: always tiles. An explicit ``backend`` is always honoured.

    Returns:
        A scalar, or per-row losses for ``reduction="none"``.
    """
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(
            f"contrastive_loss: q and k must be (N, D) and (M, D), got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"contrastive_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    n, m = q.shape[0], k.shape[0]
    pairs_on_diagonal = positives is None
    positives = _positives(positives, n, m, q.device)
    group_q, group_k = _groups(groups, exclude_self, n, m, q.device)
    scale = _scale(temperature, q)
    if normalize:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    # Under autocast a head's bfloat16 output may meet float32 keys: the kernels take one dtype.
    dtype = torch.promote_types(q.dtype, k.dtype)
    q, k = q.to(dtype), k.to(dtype)
    world = _World.of(process_group)
    chosen = resolve_backend(backend, q.device)
    if backend is None and chosen == "triton" and q.dtype == torch.float64:
        chosen = "reference"  # the Triton tiles accumulate in float32
    options = (scale, world, _blocks(block_size), chosen)
    # Only the automatic choice switches: an explicit backend is what its caller wants timed or tested.
    logits_bytes = n * m * torch.finfo(_lse_dtype(dtype)).bits // 8
    may_materialise = backend is None and chosen == "reference" and world.size == 1
    if may_materialise and logits_bytes <= plain_below_bytes:
        lse, lse_t = _plain_lse(q, k, scale, positives, group_q, group_k, columns=symmetric)
    else:
        lse, lse_t = None, None
    loss = _direction(q, k, positives, group_q, group_k, *options, lse=lse)
    if not symmetric:
        return reference.reduce_loss(loss, reduction)
    # The diagonal is its own transpose; other positive sets have a data-dependent transpose.
    positives_t = positives if pairs_on_diagonal else transpose_positives(positives, m)
    loss_t = _direction(k, q, positives_t, group_k, group_q, *options, lse=lse_t)
    return reference.reduce_symmetric(loss, loss_t, reduction)


class ContrastiveLoss(nn.Module):
    """Module form of :func:`contrastive_loss` holding the temperature and the distributed context.

    With ``learnable_temperature`` the parameter is ``log_temperature`` (optimised in log space
    like CLIP's ``logit_scale``; clamp it in the method if needed).
    """

    def __init__(
        self,
        *,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
        symmetric: bool = False,
        exclude_self: bool = False,
        normalize: bool = True,
        reduction: str = "mean",
        process_group=None,
        backend: str | None = None,
        block_size: int | tuple[int, int] | None = None,
        plain_below_bytes: int = PLAIN_BELOW_BYTES,
    ):
        super().__init__()
        log_t = torch.tensor(math.log(temperature))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.options = dict(
            symmetric=symmetric,
            exclude_self=exclude_self,
            normalize=normalize,
            reduction=reduction,
            process_group=process_group,
            backend=backend,
            block_size=block_size,
            plain_below_bytes=plain_below_bytes,
        )

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    def forward(self, q: Tensor, k: Tensor, *, positives: Tensor | None = None, groups=None) -> Tensor:
        return contrastive_loss(q, k, self.temperature, positives=positives, groups=groups, **self.options)

    def extra_repr(self) -> str:
        shown = {key: value for key, value in self.options.items() if key != "process_group"}
        items = ", ".join(f"{key}={value!r}" for key, value in shown.items())
        return f"temperature={float(self.temperature.detach()):.4g}, {items}"
