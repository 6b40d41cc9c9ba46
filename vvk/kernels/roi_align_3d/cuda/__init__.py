"""RoIAlign-3D CUDA extension: ``roi_align_3d.cpp`` (bindings) + ``roi_align_3d_kernel.cu``.

Compiled on first use (nvcc and a GPU needed) and cached by torch; see ``vvk.kernels.backends``.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from vvk.kernels.backends import load_cuda_extension
from vvk.kernels.roi_align_3d.reference import compute_dtype

_HERE = Path(__file__).resolve().parent


def extension():
    """The compiled module (builds it the first time)."""
    return load_cuda_extension("vvk_roi_align_3d", _HERE)


def pool_forward(images: Tensor, batch_index: Tensor, table: Tensor, pooled: tuple[int, int, int]) -> Tensor:
    """CUDA forward: same contract as ``reference.pool_forward``."""
    return extension().forward(images, batch_index.long(), table.to(compute_dtype(images.dtype)), *pooled)


def pool_backward(grad: Tensor, batch_index: Tensor, table: Tensor, images_shape: list[int]) -> Tensor:
    """CUDA backward: same contract as ``reference.pool_backward``."""
    table = table.to(compute_dtype(grad.dtype))
    return extension().backward(grad, batch_index.long(), table, *images_shape)
