"""RoIAlign-3D in pure PyTorch: the definition of the op, and its CPU / deterministic path.

Maths
-----
A roi is cut into ``pt × ph × pw`` bins. Along each axis (t, y, x) of input size ``S``, with
roi ends ``a1, a2`` (already multiplied by the axis' scale) and ``P`` bins::

    offset = 0.5 if aligned else 0
    start  = a1 - offset;   length = a2 - a1           (clamped to >= 1 when not aligned)
    bin    = length / P;    grid   = sampling_ratio if sampling_ratio > 0 else ceil(length / P)

Bin ``p`` samples the ``grid`` points ``start + p * bin + (i + 0.5) * bin / grid``. A point
outside ``[-1, S]`` on any axis contributes zero; otherwise each coordinate is clamped to
``[0, S - 1]`` and linearly interpolated between ``floor`` and ``floor + 1`` (the upper
neighbour clamped to ``S - 1``). A bin's value is the sum of the trilinear values of its
``grid_t * grid_y * grid_x`` points divided by ``max(grid_t * grid_y * grid_x, 1)``. These are
torchvision's ``roi_align`` rules (``csrc/ops/cpu/roi_align_kernel.cpp``) with time as a third
axis; with one frame and ``pt = 1`` the op is torchvision's.

The roi table
-------------
Every backend reads the same ``(K, 3, 3)`` table ``[axis (t, y, x)][start, bin, grid]`` built
here by :func:`roi_table`, plus a ``(K,)`` batch index, so the rules above live in one place.
A tube (one box per frame) is expressed as ``K * T`` rois on an input whose frames are images:
each frame is an image with one time step, sampled at exactly ``t = 0`` (start -0.5, one bin
of length 1, one point).

Separable form (how this file computes it)
------------------------------------------
The trilinear weight is a product of three 1-D weights and a bin's points are a product of
three 1-D grids, so a roi's output is the input contracted with three small matrices::

    out[k, c, a, b, d] = sum_{t,h,w} Wt[k, a, t] * Wy[k, b, h] * Wx[k, d, w] * F[n_k, c, t, h, w]
    Wx[k, d, w] = (1 / grid) * sum_{i valid} max(0, 1 - |clamp(x_{d,i}, 0, W - 1) - w|)

(likewise Wy, Wt). Per image the x contraction is one GEMM ``(C*T*H, W) @ (W, k*pw)``, then
batched matmuls over t and y (t before y: pt < T shrinks what the y product reads; a one-frame
image, as in tubes, skips the t product); the backward is the same chain transposed. This costs
``O(K * C * T * H * W * pw)`` dense FLOPs, deterministic, no scatter: on the CPU it is several
times faster than looping ``torchvision.ops.roi_align`` over frames (benchmarks/kernels.py), but
it does not exploit small rois on large maps (dense weight rows are mostly zero there).

Caveats: no gradient for the roi coordinates (as torchvision); half / bfloat16 inputs are
computed in float32, with autocast off (under autocast the inputs keep their dtype, and so
does the output).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vvk.kernels.backends import no_autocast

# Bytes of the intermediate (k, C, T, H, pw) tensor per chunk of rois. Fewer, larger chunks mean
# fewer parallel regions, which matters when the CPU is shared (OpenMP threads then wait at
# every region's barrier); 8-128 MiB all measured within noise on 2 busy EPYC cores.
_CHUNK_BYTES = 32 << 20


def axis_params(a1: Tensor, a2: Tensor, pooled: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """``(K, 3)`` ``[start, bin, grid]`` for one axis from roi ends already multiplied by the scale."""
    offset = 0.5 if aligned else 0.0
    start = a1 - offset
    length = (a2 - offset) - start
    if not aligned:
        length = length.clamp(min=1.0)  # torchvision forces malformed rois to one pixel
    bin_size = length / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:
        grid = torch.ceil(length / pooled)
    return torch.stack([start, bin_size, grid], dim=1)


def roi_table(
    rois: Tensor,
    output_size: tuple[int, int, int],
    spatial_scale: float,
    temporal_scale: float,
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """``rois (K, 7) [b, t1, x1, y1, t2, x2, y2]`` -> ``(batch_index (K,), table (K, 3, 3))``."""
    rois = rois.detach().to(dtype)
    pt, ph, pw = output_size
    t = axis_params(rois[:, 1] * temporal_scale, rois[:, 4] * temporal_scale, pt, sampling_ratio, aligned)
    y = axis_params(rois[:, 3] * spatial_scale, rois[:, 6] * spatial_scale, ph, sampling_ratio, aligned)
    x = axis_params(rois[:, 2] * spatial_scale, rois[:, 5] * spatial_scale, pw, sampling_ratio, aligned)
    return rois[:, 0].long(), torch.stack([t, y, x], dim=1)


def tube_table(
    boxes: Tensor,
    batch_index: Tensor,
    num_frames: int,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Tube ``boxes (K, T, 4)`` -> rois on frame-images ``n * T + t``: ``((K*T,), (K*T, 3, 3))``."""
    k, frames = boxes.shape[:2]
    flat = boxes.detach().to(dtype).reshape(k * frames, 4)  # (K, T, 4) -> (K*T, 4)
    ph, pw = output_size
    y = axis_params(flat[:, 1] * spatial_scale, flat[:, 3] * spatial_scale, ph, sampling_ratio, aligned)
    x = axis_params(flat[:, 0] * spatial_scale, flat[:, 2] * spatial_scale, pw, sampling_ratio, aligned)
    # One point at t = 0 of a one-frame image: start -0.5, one bin of length 1, grid 1.
    t = torch.tensor([-0.5, 1.0, 1.0], dtype=dtype, device=boxes.device).expand(k * frames, 3)
    frame = torch.arange(frames, device=boxes.device)
    image_index = (batch_index.to(boxes.device).long()[:, None] * num_frames + frame).reshape(-1)
    return image_index, torch.stack([t, y, x], dim=1)


def axis_weights(params: Tensor, pooled: int, size: int) -> Tensor:
    """``(K, pooled, size)`` averaging-and-interpolation matrix of one axis from ``params (K, 3)``."""
    start, bin_size, grid = (params[:, i, None, None] for i in range(3))  # each (K, 1, 1)
    max_grid = max(int(grid.max().item()), 1) if params.shape[0] else 1
    p = torch.arange(pooled, dtype=params.dtype, device=params.device)[None, :, None]
    i = torch.arange(max_grid, dtype=params.dtype, device=params.device)[None, None, :]
    coord = start + p * bin_size + (i + 0.5) * bin_size / grid  # (K, P, G), torchvision's order
    valid = (i < grid) & (coord >= -1.0) & (coord <= size)
    clamped = coord.clamp(0, size - 1)
    j = torch.arange(size, dtype=params.dtype, device=params.device)
    hat = (1.0 - (clamped[..., None] - j).abs()).clamp(min=0.0)  # (K, P, G, S)
    hat = torch.where(valid[..., None], hat, 0.0)  # where, not *: grid 0 makes coord NaN
    return hat.sum(2) / grid.clamp(min=1.0)


def _weights(table: Tensor, images_shape, pooled: tuple[int, int, int]) -> tuple[Tensor, Tensor, Tensor]:
    _, _, t, h, w = images_shape
    return tuple(axis_weights(table[:, a], pooled[a], size) for a, size in enumerate((t, h, w)))


def _chunks(rows: Tensor, channels: int, frames: int, height: int, pw: int, itemsize: int) -> tuple:
    per_roi = channels * frames * height * pw * itemsize
    return rows.split(max(1, _CHUNK_BYTES // max(per_roi, 1)))


def _pool_image(image: Tensor, wt: Tensor, wy: Tensor, wx: Tensor) -> Tensor:
    """``image (C, T, H, W)`` and ``k`` rois' weights -> ``(k, C, pt, ph, pw)``: x, then t, then y."""
    c, t, h, w = image.shape
    k, pw = wx.shape[:2]
    ph, pt = wy.shape[1], wt.shape[1]
    single_frame = t == 1 and pt == 1  # tubes: the one temporal weight rides on the x weights
    if single_frame:
        wx = wx * wt.reshape(k, 1, 1)
    x = image.reshape(c * t * h, w) @ wx.reshape(k * pw, w).T  # (C*T*H, W) -> (C*T*H, k*pw)
    if single_frame:
        x = x.view(c, h, k, pw).permute(2, 1, 0, 3).unsqueeze(2)  # -> (k, H, 1, C, pw)
    else:
        x = x.view(c, t, h, k, pw).permute(3, 1, 0, 2, 4).reshape(k, t, c * h * pw)  # -> (k, T, C*H*pw)
        x = torch.bmm(wt, x).view(k, pt, c, h, pw).permute(0, 3, 1, 2, 4)  # -> (k, H, pt, C, pw)
    x = torch.bmm(wy, x.reshape(k, h, pt * c * pw))  # (k, ph, pt*C*pw)
    return x.view(k, ph, pt, c, pw).permute(0, 3, 2, 1, 4)  # -> (k, C, pt, ph, pw)


def _unpool_image(grad: Tensor, wt: Tensor, wy: Tensor, wx: Tensor, frames: int, height: int) -> Tensor:
    """Adjoint of :func:`_pool_image`: ``grad (k, C, pt, ph, pw)`` -> ``(C, T, H, W)``."""
    k, c, pt, ph, pw = grad.shape
    width = wx.shape[2]
    single_frame = frames == 1 and pt == 1
    g = grad.permute(0, 3, 2, 1, 4).reshape(k, ph, pt * c * pw)  # -> (k, ph, pt*C*pw)
    g = torch.bmm(wy.transpose(1, 2), g).view(k, height, pt, c, pw)  # (k, H, pt, C, pw)
    if single_frame:
        wx = wx * wt.reshape(k, 1, 1)
        g = g[:, :, 0].permute(2, 1, 0, 3)  # -> (C, H, k, pw)
    else:
        g = g.permute(0, 2, 3, 1, 4).reshape(k, pt, c * height * pw)  # -> (k, pt, C*H*pw)
        g = (
            torch.bmm(wt.transpose(1, 2), g).view(k, frames, c, height, pw).permute(2, 1, 3, 0, 4)
        )  # (C, T, H, k, pw)
    g = g.reshape(c * frames * height, k * pw) @ wx.reshape(k * pw, width)  # -> (C*T*H, W)
    return g.view(c, frames, height, width)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sample coordinates and sums are computed in: float64 stays, the rest use float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def pool_forward(images: Tensor, batch_index: Tensor, table: Tensor, pooled: tuple[int, int, int]) -> Tensor:
    """``images (B, C, T, H, W)``, ``batch_index (K,)``, ``table (K, 3, 3)`` -> ``(K, C, pt, ph, pw)``.

    Written with differentiable ops only, so autograd through it is a second, independent
    derivation of the gradient that :func:`pool_backward` computes explicitly.
    """
    with no_autocast(images.device):  # the compute dtype is chosen here; autocast would mix in bf16
        return _pool_forward(images, batch_index, table, pooled)


def _pool_forward(images: Tensor, batch_index: Tensor, table: Tensor, pooled: tuple[int, int, int]) -> Tensor:
    dtype = compute_dtype(images.dtype)
    x = images.to(dtype).contiguous()
    _, c, t, h, _ = x.shape
    if batch_index.shape[0] == 0:
        return x.new_zeros(0, c, *pooled).to(images.dtype)
    wt, wy, wx = _weights(table.to(dtype), x.shape, pooled)
    out = x.new_empty(batch_index.shape[0], c, *pooled)
    for b in torch.unique(batch_index).tolist():
        rows = (batch_index == b).nonzero().squeeze(1)
        for chunk in _chunks(rows, c, t, h, pooled[2], x.element_size()):
            # In place but differentiable: autograd records the copy into each roi's slot.
            out.index_copy_(0, chunk, _pool_image(x[b], wt[chunk], wy[chunk], wx[chunk]))
    return out.to(images.dtype)


def pool_backward(grad: Tensor, batch_index: Tensor, table: Tensor, images_shape: list[int]) -> Tensor:
    """Gradient of :func:`pool_forward` for the images: ``(K, C, pt, ph, pw)`` -> ``(B, C, T, H, W)``."""
    with no_autocast(grad.device):
        return _pool_backward(grad, batch_index, table, images_shape)


def _pool_backward(grad: Tensor, batch_index: Tensor, table: Tensor, images_shape: list[int]) -> Tensor:
    dtype = compute_dtype(grad.dtype)
    g = grad.to(dtype)
    table = table.to(dtype)
    _, c, t, h, _ = images_shape
    out = g.new_zeros(images_shape)
    if g.numel() == 0:
        return out.to(grad.dtype)
    pooled = tuple(g.shape[2:])
    wt, wy, wx = _weights(table, images_shape, pooled)
    for b in torch.unique(batch_index).tolist():
        rows = (batch_index == b).nonzero().squeeze(1)
        for chunk in _chunks(rows, c, t, h, pooled[2], g.element_size()):
            out[b] += _unpool_image(g[chunk], wt[chunk], wy[chunk], wx[chunk], t, h)
    return out.to(grad.dtype)


def tube_images(features: Tensor) -> Tensor:
    """``(N, C, T, H, W)`` -> frame-images ``(N*T, C, 1, H, W)`` (a view when the layout allows)."""
    n, c, t, h, w = features.shape
    return features.transpose(1, 2).reshape(n * t, c, 1, h, w)  # (N, T, C, H, W) -> (N*T, C, 1, H, W)


def tube_output(pooled: Tensor, num_rois: int, frames: int) -> Tensor:
    """``(K*T, C, 1, ph, pw)`` -> ``(K, C, T, ph, pw)``, a transposed view (no copy either way)."""
    _, c, _, ph, pw = pooled.shape
    return pooled.view(num_rois, frames, c, ph, pw).transpose(1, 2)


def roi_align_3d(
    features: Tensor,
    rois: Tensor,
    output_size: tuple[int, int, int],
    spatial_scale: float = 1.0,
    temporal_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Differentiable pure-PyTorch RoIAlign-3D (autograd through the contraction); see the module doc."""
    index, table = roi_table(
        rois,
        output_size,
        spatial_scale,
        temporal_scale,
        sampling_ratio,
        aligned,
        compute_dtype(features.dtype),
    )
    return pool_forward(features, index, table, output_size)


def roi_align_tube(
    features: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Differentiable pure-PyTorch tube RoIAlign: ``boxes (K, T, 4)`` -> ``(K, C, T, ph, pw)``."""
    dtype = compute_dtype(features.dtype)
    index, table = tube_table(
        boxes, batch_index, features.shape[2], output_size, spatial_scale, sampling_ratio, aligned, dtype
    )
    pooled = pool_forward(tube_images(features), index, table, (1, *output_size))
    return tube_output(pooled, boxes.shape[0], features.shape[2])


__all__ = [
    "axis_params",
    "axis_weights",
    "compute_dtype",
    "pool_backward",
    "pool_forward",
    "roi_align_3d",
    "roi_align_tube",
    "roi_table",
    "tube_images",
    "tube_output",
    "tube_table",
]
