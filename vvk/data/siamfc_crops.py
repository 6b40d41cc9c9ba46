"""SiamFC's square context crops: one implementation for the tracker and the training pairs.

::

    from vvk.data.siamfc_crops import box_center, context_size, crop_and_resize, siamfc_crop

    crops = crop_and_resize(frame, centers, sizes, 255, fill)   # (N, 3, 255, 255): a search at N scales
    crop, target = siamfc_crop(frame, (x, y, w, h), out_size=127)  # a training exemplar and its box

The geometry is SiamFC's (Bertinetto et al. 2016; ``huanglianghua/siamfc-pytorch:
siamfc/siamfc.py``, ``parse_args`` and ``TrackerSiamFC.init``, ``siamfc/transforms.py``,
``SiamFCTransforms._crop``): the exemplar region around a ``w × h`` box is a square of side
``z_sz = sqrt((w + p)(h + p))``, ``p = context · (w + h)``, resized to 127; the search region is
``x_sz = z_sz · 255 / 127``, resized to 255. Pixels beyond the frame take a fill colour (the
frame's mean, as both references pad).

Coordinates: boxes are OTB's ``(x, y, w, h)`` with 1-based pixel indices, so the box centre in
0-based pixel coordinates (pixel ``j`` centred on ``j``) is ``(x - 1 + (w - 1) / 2, y - 1 + (h -
1) / 2)`` (``box_center``); a crop centred on ``c`` puts ``c`` on the centre of its output,
``(out_size - 1) / 2``. This is ``vvk.data`` code so that the data pipeline
(``vvk.data.track_pairs``) and the tracker (``vvk.methods.tracking.tracker``) share it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align

# huanglianghua/siamfc-pytorch: siamfc/siamfc.py (parse_args: exemplar_sz, instance_sz, context)
EXEMPLAR_SIZE = 127
SEARCH_SIZE = 255
CONTEXT = 0.5
# Training augmentation: siamfc-pytorch siamfc/transforms.py (SiamFCTransforms: RandomStretch(0.05),
# then RandomCrop(instance_sz - 16) of CenterCrop(instance_sz - 8), i.e. up to 4 pixels per axis);
# bertinetto/siamese-fc: training/experiment.m (augment.maxStretch 0.05, augment.maxTranslate 4).
MAX_STRETCH = 0.05
MAX_TRANSLATE = 4


def context_size(width: float, height: float, context: float = CONTEXT) -> float:
    """Side of the square exemplar region: ``sqrt((w + p)(h + p))``, ``p = context·(w + h)``."""
    pad = context * (width + height)
    return math.sqrt((width + pad) * (height + pad))


def box_center(box: Sequence[float]) -> tuple[float, float]:
    """The centre (x, y) in 0-based pixel coordinates of an OTB box (x, y, w, h, 1-based)."""
    x, y, w, h = (float(v) for v in box)
    return x - 1 + (w - 1) / 2, y - 1 + (h - 1) / 2


def crop_and_resize(image: Tensor, centers: Tensor, sizes: Tensor, out_size: int, fill: Tensor) -> Tensor:
    """Square crops of ``image`` resized to ``out_size``, padded with ``fill`` beyond the border.

    Crop ``i`` spans ``centers[i] ± sizes[i] / 2`` in 0-based pixel coordinates (pixel ``j``
    centred on ``j``), so ``centers[i]`` lands on the centre of the output, ``(out_size - 1) / 2``.
    Bilinear, averaging ``ceil(size / out_size)``² samples per output pixel when shrinking
    (RoIAlign with ``aligned=True``); values up to a pixel beyond the border are the border's,
    further out ``fill``.

    Args:
        image: (C, H, W) float.
        centers: (N, 2) as (x, y).
        sizes: (N,) side lengths in pixels.
        fill: (C,) colour outside the image (the image mean in SiamFC).

    Returns:
        (N, C, out_size, out_size) in ``image``'s dtype.
    """
    centers = torch.as_tensor(centers, dtype=torch.float64).reshape(-1, 2)
    half = torch.as_tensor(sizes, dtype=torch.float64).reshape(-1, 1) / 2
    # aligned=True reads box coordinates with pixel j spanning [j, j + 1): +0.5 makes j its centre;
    # in float64 first, so that a corner far from 0 keeps its fraction of a pixel
    boxes = torch.cat([centers - half + 0.5, centers + half + 0.5], dim=1).to(image)  # (N, 4) x1, y1, x2, y2
    fill = fill.to(image).view(-1, 1, 1)
    # RoIAlign reads 0 beyond the border: subtracting the fill first makes the padding the fill
    crops = roi_align(
        (image - fill)[None], [boxes], out_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True
    )
    return crops + fill  # (N, C, out_size, out_size)


def siamfc_crop(
    image: Tensor,
    box: Sequence[float],
    *,
    out_size: int,
    exemplar_size: int = EXEMPLAR_SIZE,
    context: float = CONTEXT,
    stretch: float = 1.0,
    shift: Sequence[float] = (0, 0),
    fill: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """SiamFC's crop of ``box`` (x, y, w, h, 1-based) in ``image`` (3, H, W) float.

    The square is centred on the box (``box_center``), its side ``context_size(w, h) · out_size /
    exemplar_size`` (``z_sz`` for the exemplar, ``x_sz = z_sz · 255 / 127`` for a search crop),
    divided by ``stretch``; it then moves by ``shift`` output pixels, so the target lands
    ``shift`` pixels off centre the other way. Training draws ``stretch`` in ``1 ± MAX_STRETCH``
    and integer shifts up to ``MAX_TRANSLATE``.

    Args:
        fill: (C,) colour beyond the frame; default the frame's mean (siamfc-pytorch
            ``SiamFCTransforms._crop``).

    Returns:
        the crop (3, out_size, out_size) and the box in it: (4,) float32 x, y, w, h in
        torchvision's coordinates (pixel j spans [j, j + 1)).
    """
    _, _, w, h = (float(v) for v in box)
    side = context_size(w, h, context) * out_size / exemplar_size / stretch
    scale = out_size / side  # crop pixels per frame pixel
    dx, dy = float(shift[0]), float(shift[1])
    cx, cy = box_center(box)
    center = torch.tensor([[cx + dx / scale, cy + dy / scale]], dtype=torch.float64)
    fill = image.mean(dim=(1, 2)) if fill is None else fill
    crop = crop_and_resize(image, center, torch.tensor([side], dtype=torch.float64), out_size, fill)[0]
    mid = out_size / 2  # the output's centre in torchvision's coordinates
    target = torch.tensor([mid - dx - w * scale / 2, mid - dy - h * scale / 2, w * scale, h * scale])
    return crop, target.float()
