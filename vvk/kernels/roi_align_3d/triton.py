"""RoIAlign-3D in Triton: forward gather and backward scatter over a precomputed roi table.

Maths: see ``reference.py``. Each program owns one roi and ``BLOCK_C`` channels and holds all
``pt * ph * pw`` bins of them as a ``(BLOCK_C, BLOCK_P)`` tile; it walks the roi's
``grid_t × grid_y × grid_x`` sample points (runtime loop bounds read from the table), computes the
three 1-D interpolation weights of every bin at once and gathers the 8 trilinear neighbours.
Input strides are arguments, so non-contiguous and channels-last inputs need no copy.

Backward: the same walk, scattering ``grad / count * weight`` into the 8 neighbours with
``tl.atomic_add`` into a float32 (float64 for float64 input) buffer. Atomic float adds make the
backward order-dependent, hence not bitwise deterministic; ``op.py`` sends calls made under
``torch.use_deterministic_algorithms(True)`` to the reference.

Caveats:
- Tested under ``TRITON_INTERPRET=1`` on the CPU in fp32 (tests/kernels) and on a GPU by
  ``benchmarks/gpu_check.sh``; bf16/fp16 accumulate in fp32. The interpreter computes bf16/fp16
  wrongly, so on the CPU they are cast to fp32 before the kernel (and the result back).
- ``BLOCK_P`` is the next power of two of ``pt * ph * pw``; very large outputs (> 4096 bins)
  would need a bin loop and are refused.
- No autotuning (the interpreter cannot run ``do_bench``); ``BLOCK_C`` and ``num_warps`` are fixed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from vvk.kernels.roi_align_3d.reference import compute_dtype

_MAX_BINS = 4096


@triton.jit
def _axis(coord, size):
    """1-D taps of ``coord`` on an axis of ``size``: (low, high, weight_low, weight_high)."""
    inside = (coord >= -1.0) & (coord <= size)
    c = tl.minimum(tl.maximum(coord, 0.0), size - 1.0)
    c = tl.where(inside, c, 0.0)  # keeps the integer cast defined for far-outside points
    low = c.to(tl.int32)
    high = tl.minimum(low + 1, size - 1)
    frac = c - low
    return low, high, tl.where(inside, 1.0 - frac, 0.0), tl.where(inside, frac, 0.0)


@triton.jit
def _roi_align_3d_kernel(
    X,  # input (B, C, T, H, W), any strides
    GRAD_X,  # backward only: accumulator (B, C, T, H, W), contiguous, float32 or float64
    OUT,  # forward: output (K, C, P); backward: gradient of the output (K, C, P); contiguous
    BATCH,  # (K,) int64 image index of each roi
    TABLE,  # (K, 3, 3) [axis t/y/x][start, bin, grid], contiguous
    C,  # channels
    T,  # input frames
    H,  # input height
    W,  # input width
    stride_b,  # input strides, in elements
    stride_c,
    stride_t,
    stride_h,
    stride_w,
    PT,  # output bins in t
    PH,  # output bins in y
    PW,  # output bins in x
    BACKWARD: tl.constexpr,  # False: gather into OUT; True: scatter OUT into GRAD_X
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # >= PT * PH * PW, a power of two
):
    k = tl.program_id(0)
    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    bins = tl.arange(0, BLOCK_P)
    c_ok = channels < C
    p_ok = bins < PT * PH * PW
    tile_ok = c_ok[:, None] & p_ok[None, :]
    bt = bins // (PH * PW)
    by = (bins // PW) % PH
    bx = bins % PW

    row = TABLE + k * 9
    start_t, bin_t, grid_t = tl.load(row + 0), tl.load(row + 1), tl.load(row + 2)
    start_y, bin_y, grid_y = tl.load(row + 3), tl.load(row + 4), tl.load(row + 5)
    start_x, bin_x, grid_x = tl.load(row + 6), tl.load(row + 7), tl.load(row + 8)
    n_t = grid_t.to(tl.int32)
    n_y = grid_y.to(tl.int32)
    n_x = grid_x.to(tl.int32)
    count = tl.maximum(n_t * n_y * n_x, 1).to(start_t.dtype)

    image = tl.load(BATCH + k)
    x_base = image * stride_b + channels[:, None] * stride_c  # (BLOCK_C, 1)
    g_base = (image * C + channels[:, None]) * (T * H * W)
    o_ptrs = OUT + (k * C + channels[:, None]) * (PT * PH * PW) + bins[None, :]
    if BACKWARD:
        grad = tl.load(o_ptrs, mask=tile_ok, other=0.0).to(start_t.dtype) / count
    else:
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=start_t.dtype)

    for it in range(n_t):
        t0, t1, wt0, wt1 = _axis(start_t + bt * bin_t + (it + 0.5) * bin_t / grid_t, T)
        for iy in range(n_y):
            y0, y1, wy0, wy1 = _axis(start_y + by * bin_y + (iy + 0.5) * bin_y / grid_y, H)
            for ix in range(n_x):
                x0, x1, wx0, wx1 = _axis(start_x + bx * bin_x + (ix + 0.5) * bin_x / grid_x, W)
                for corner in tl.static_range(8):
                    ti = t1 if corner & 4 else t0
                    yi = y1 if corner & 2 else y0
                    xi = x1 if corner & 1 else x0
                    w = (wt1 if corner & 4 else wt0) * (wy1 if corner & 2 else wy0)
                    w = (w * (wx1 if corner & 1 else wx0))[None, :]  # (1, BLOCK_P)
                    if BACKWARD:
                        offset = g_base + ((ti * H + yi) * W + xi)[None, :]
                        tl.atomic_add(GRAD_X + offset, grad * w, mask=tile_ok & (w != 0.0))
                    else:
                        offset = x_base + (ti * stride_t + yi * stride_h + xi * stride_w)[None, :]
                        v = tl.load(X + offset, mask=tile_ok & (w != 0.0), other=0.0)
                        acc += v.to(start_t.dtype) * w
    if not BACKWARD:
        tl.store(o_ptrs, (acc / count).to(OUT.dtype.element_ty), mask=tile_ok)


def _launch(images: Tensor, grad_images, out: Tensor, batch_index: Tensor, table: Tensor, backward: bool):
    _, c, t, h, w = images.shape
    k, _, pt, ph, pw = out.shape
    bins = pt * ph * pw
    if bins > _MAX_BINS:
        raise ValueError(f"the triton roi_align_3d supports up to {_MAX_BINS} output bins, got {bins}")
    if k == 0 or c == 0:
        return
    block_p = triton.next_power_of_2(bins)
    block_c = max(1, min(triton.next_power_of_2(c), 4096 // block_p, 64))
    grid = (k, triton.cdiv(c, block_c))
    _roi_align_3d_kernel[grid](
        images,
        grad_images if backward else images,
        out,
        batch_index.contiguous(),
        table.contiguous(),
        c,
        t,
        h,
        w,
        *images.stride(),
        pt,
        ph,
        pw,
        BACKWARD=backward,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        num_warps=4,
    )


def _interpretable(x: Tensor) -> Tensor:
    """``x`` as the kernel reads it: on the CPU (the interpreter, which computes float16 and
    bfloat16 wrongly) low precision goes in as float32; on a GPU as it is."""
    return x.float() if not x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) else x


def pool_forward(images: Tensor, batch_index: Tensor, table: Tensor, pooled: tuple[int, int, int]) -> Tensor:
    """Triton forward: same contract as ``reference.pool_forward``."""
    x = _interpretable(images)
    out = x.new_empty(batch_index.shape[0], x.shape[1], *pooled)
    _launch(x, None, out, batch_index, table.to(compute_dtype(x.dtype)), backward=False)
    return out.to(images.dtype)


def pool_backward(grad: Tensor, batch_index: Tensor, table: Tensor, images_shape: list[int]) -> Tensor:
    """Triton backward: same contract as ``reference.pool_backward``."""
    acc_dtype = compute_dtype(grad.dtype)
    grad_images = torch.zeros(images_shape, dtype=acc_dtype, device=grad.device)
    # The backward scatters into the contiguous buffer, so the buffer also stands in for the input.
    g = _interpretable(grad).contiguous()
    _launch(grad_images, grad_images, g, batch_index, table.to(acc_dtype), backward=True)
    return grad_images.to(grad.dtype)
