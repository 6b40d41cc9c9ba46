"""RoIAlign-3D: public functions, module, backend dispatch and ``torch.library`` registration.

``roi_align_3d`` pools a box that spans time (rois ``[b, t1, x1, y1, t2, x2, y2]``) into
``pt × ph × pw`` bins by trilinear sampling; ``roi_align_tube`` pools one box per frame (a moving
object or a person tube) into ``ph × pw`` bins per frame. Both follow torchvision's
``roi_align`` rules (``aligned``, adaptive ``sampling_ratio``, borders), extended to time; with
one frame they equal ``torchvision.ops.roi_align``. The maths is in ``reference.py``.

Both reduce to one registered op, ``vvk::roi_align_3d_pool`` (images, batch index, roi table),
with its backward ``vvk::roi_align_3d_pool_backward``; fake (meta) implementations let
``torch.compile`` and ``torch.export`` trace through them. Backends (``vvk.kernels.backends``):
``reference`` (separable GEMMs; CPU and deterministic mode), ``triton`` (CUDA default; CPU under
``TRITON_INTERPRET=1``), ``cuda`` (compiled extension). Supported dtypes: float16, bfloat16
(computed in float32), float32, float64. Gradients flow to ``features`` only, not to the boxes.
Hardware tested: CPU (reference; Triton under the interpreter). GPU results: see
docs/benchmarks.md.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vvk.kernels.backends import implementation, resolve_backend
from vvk.kernels.roi_align_3d import reference


@torch.library.custom_op("vvk::roi_align_3d_pool", mutates_args=())
def _pool(
    images: Tensor,
    batch_index: Tensor,
    table: Tensor,
    pooled_t: int,
    pooled_h: int,
    pooled_w: int,
    backend: str,
) -> Tensor:
    return implementation(__package__, backend).pool_forward(
        images, batch_index, table, (pooled_t, pooled_h, pooled_w)
    )


@_pool.register_fake
def _(images, batch_index, table, pooled_t, pooled_h, pooled_w, backend):
    return images.new_empty(batch_index.shape[0], images.shape[1], pooled_t, pooled_h, pooled_w)


@torch.library.custom_op("vvk::roi_align_3d_pool_backward", mutates_args=())
def _pool_backward(
    grad: Tensor, batch_index: Tensor, table: Tensor, images_shape: list[int], backend: str
) -> Tensor:
    return implementation(__package__, backend).pool_backward(grad, batch_index, table, images_shape)


@_pool_backward.register_fake
def _(grad, batch_index, table, images_shape, backend):
    return grad.new_empty(images_shape)


def _setup_context(ctx, inputs, output):
    images, batch_index, table, *_, backend = inputs
    ctx.save_for_backward(batch_index, table)
    ctx.images_shape = list(images.shape)
    ctx.backend = backend


def _backward(ctx, grad):
    batch_index, table = ctx.saved_tensors
    grad_images = _pool_backward(grad, batch_index, table, ctx.images_shape, ctx.backend)
    return grad_images, None, None, None, None, None, None


_pool.register_autograd(_backward, setup_context=_setup_context)


def _sizes(output_size: int | tuple[int, ...], n: int, name: str) -> tuple[int, ...]:
    sizes = (output_size,) * n if isinstance(output_size, int) else tuple(output_size)
    if len(sizes) != n or any(int(s) < 1 for s in sizes):
        raise ValueError(f"{name}: output_size must be an int or {n} positive ints, got {output_size!r}")
    return tuple(int(s) for s in sizes)


def _check_features(features: Tensor, name: str) -> None:
    if features.dim() != 5:
        raise ValueError(f"{name}: features must be (N, C, T, H, W), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{name}: features must be floating point, got {features.dtype}")


def roi_align_3d(
    features: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int, int],
    spatial_scale: float = 1.0,
    temporal_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
    *,
    backend: str | None = None,
) -> Tensor:
    """RoIAlign over space and time.

    Args:
        features: ``(N, C, T, H, W)`` feature maps (any strides, e.g. ``channels_last_3d``).
        rois: ``(K, 7)`` ``[batch_index, t1, x1, y1, t2, x2, y2]`` in input coordinates; a roi
            covering frames ``t1 .. t2 - 1`` exactly is ``t1, t2`` with ``aligned=True`` (a frame
            ``t`` spans ``[t, t + 1)`` like a pixel).
        output_size: ``(pt, ph, pw)`` bins, or one int for all three.
        spatial_scale: factor from roi x/y coordinates to feature-map coordinates.
        temporal_scale: factor from roi t coordinates to feature-map frames.
        sampling_ratio: sample points per bin along each axis; ``<= 0`` is adaptive
            (``ceil(roi_length / bins)`` per axis).
        aligned: shift coordinates by -0.5 (pixel-centre model, detectron2's ``aligned=True``);
            ``False`` is the legacy rule that also forces rois to at least one pixel per axis.
        backend: ``None`` (automatic), ``"reference"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(K, C, pt, ph, pw)`` in the dtype of ``features``.
    """
    _check_features(features, "roi_align_3d")
    if rois.dim() != 2 or rois.shape[1] != 7:
        raise ValueError(f"roi_align_3d: rois must be (K, 7), got shape {tuple(rois.shape)}")
    sizes = _sizes(output_size, 3, "roi_align_3d")
    dtype = reference.compute_dtype(features.dtype)
    batch_index, table = reference.roi_table(
        rois.to(features.device), sizes, spatial_scale, temporal_scale, sampling_ratio, aligned, dtype
    )
    return _pool(features, batch_index, table, *sizes, resolve_backend(backend, features.device))


def roi_align_tube(
    features: Tensor,
    boxes: Tensor,
    batch_index: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
    *,
    backend: str | None = None,
) -> Tensor:
    """RoIAlign of one box per frame: frame ``t`` of tube ``k`` is pooled with ``boxes[k, t]``.

    Args:
        features: ``(N, C, T, H, W)`` feature maps.
        boxes: ``(K, T, 4)`` ``[x1, y1, x2, y2]`` per frame, in input coordinates.
        batch_index: ``(K,)`` which clip of ``features`` each tube belongs to.
        output_size: ``(ph, pw)`` or one int.
        spatial_scale, sampling_ratio, aligned, backend: as in :func:`roi_align_3d`
            (the sampling ratio applies to x and y; each frame is sampled exactly once).

    Returns:
        ``(K, C, T, ph, pw)``; per frame equal to ``torchvision.ops.roi_align`` on that frame. It
        is stored frame-major (a transposed view of ``(K, T, C, ph, pw)``, which saves a copy in
        the forward and one in the backward): ``.reshape`` it, or ``.contiguous()`` it first.
    """
    _check_features(features, "roi_align_tube")
    frames = features.shape[2]
    if boxes.dim() != 3 or boxes.shape[1:] != (frames, 4):
        raise ValueError(f"roi_align_tube: boxes must be (K, {frames}, 4), got shape {tuple(boxes.shape)}")
    if batch_index.shape != boxes.shape[:1]:
        raise ValueError(
            f"roi_align_tube: batch_index must be ({boxes.shape[0]},), got shape {tuple(batch_index.shape)}"
        )
    sizes = _sizes(output_size, 2, "roi_align_tube")
    dtype = reference.compute_dtype(features.dtype)
    image_index, table = reference.tube_table(
        boxes.to(features.device), batch_index, frames, sizes, spatial_scale, sampling_ratio, aligned, dtype
    )
    images = reference.tube_images(features)
    pooled = _pool(images, image_index, table, 1, *sizes, resolve_backend(backend, features.device))
    return reference.tube_output(pooled, boxes.shape[0], frames)


class RoIAlign3d(nn.Module):
    """Module form of :func:`roi_align_3d`; ``forward(features, rois)``."""

    def __init__(
        self,
        *,
        output_size: int | tuple[int, int, int],
        spatial_scale: float = 1.0,
        temporal_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = True,
        backend: str | None = None,
    ):
        super().__init__()
        self.output_size = _sizes(output_size, 3, "RoIAlign3d")
        self.spatial_scale = spatial_scale
        self.temporal_scale = temporal_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.backend = backend

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return roi_align_3d(
            features,
            rois,
            self.output_size,
            self.spatial_scale,
            self.temporal_scale,
            self.sampling_ratio,
            self.aligned,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"temporal_scale={self.temporal_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}"
        )
