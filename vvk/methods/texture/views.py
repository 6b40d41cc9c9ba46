"""The fixed training views of SITT: each image seen as a few augmented squares, drawn once.

The reference (``Boyiliee/SITTA: utils.py``, ``get_singleM_dataloaders``) builds ``num = 10``
transforms per image: 9 drawn at random among three kinds, then a plain resize, and
``train.py`` runs them once and caches the 10 tensors (``imagesAs`` / ``imagesBs``), so every
epoch sees the same 10 views in the same order. The kinds, for an output side ``S`` (288 there):

- ``choice == 0`` (1 in 10): horizontal flip, then resize to ``S × S``;
- ``choice == 1`` (1 in 10): resize to ``int(1.1 S)`` square, centre crop ``S``;
- otherwise (8 in 10): ``RandomResizedCrop(S, scale=(0.8, 1))`` (torchvision's default ratios).

Resizes squash the aspect ratio (``Resize([S, S])``), as there. Pixels are scaled to ``[-1, 1]``
(``Normalize(0.5, 0.5)``). The draws use a generator seeded here, never the global RNG, so the
views depend on the seed alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF

VIEWS = 10  # utils.py, get_singleM_dataloaders: num = 10
ENLARGE = 1.1  # utils.py: big_data_size = int(data_size * 1.1)
CROP_SCALE = (0.8, 1.0)  # utils.py: RandomResizedCrop(data_size, scale=(0.8, 1))
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default, which the reference keeps


def to_unit_range(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1)


def to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) float in [-1, 1] -> (H, W, 3) uint8."""
    return (
        image.detach().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    )


def resize(image: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear with antialiasing, as PIL's resize in the reference's transforms."""
    return TF.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)


def fixed_views(images: Sequence[np.ndarray], size: int, *, views: int = VIEWS, seed: int = 0) -> Tensor:
    """(views, 3, size, size) in [-1, 1]: view ``k`` of ``images[k % len(images)]``, the last one
    a plain resize; one image gives the reference's views of it."""
    if not images:
        raise ValueError("no images to take views of")
    generator = torch.Generator().manual_seed(seed)
    out = []
    for k in range(views):
        image = to_unit_range(images[k % len(images)])  # (3, H, W)
        kind = "plain" if k == views - 1 else int(torch.randint(10, (1,), generator=generator))
        out.append(_view(image, size, kind, generator))
    return torch.stack(out).clamp_(-1, 1)  # resampling rounds a hair past the ends


def _view(image: Tensor, size: int, kind: int | str, generator: torch.Generator) -> Tensor:
    if kind == 0:
        return resize(TF.hflip(image), (size, size))
    if kind == 1:
        big = int(size * ENLARGE)
        return TF.center_crop(resize(image, (big, big)), [size, size])
    if kind == "plain":
        return resize(image, (size, size))
    # RandomResizedCrop's own sampling, on our generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        top, left, height, width = v2.RandomResizedCrop.get_params(image, list(CROP_SCALE), list(CROP_RATIO))
    return TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
