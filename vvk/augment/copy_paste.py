"""Simple Copy-Paste (Ghiasi et al., CVPR 2021) on one destination and one source image.

Both images are already jittered to the same square frame, and each object's mask is an
``InstanceMask`` of that frame (``vvk.augment.masks``). A random subset of the source's
objects is pasted on top of the destination; the destination's objects lose the pasted pixels
and are updated per object, as mmdetection's ``CopyPaste`` does (the official TF code decides
"occluded" once for the whole image, see ``../shared/reference/detection.md`` §3.2):

    box_before = tight box of the object's mask before pasting
    mask      -= union of the pasted masks
    box_after  = tight box of what remains
    occluded   = any edge of the box moved by more than ``box_px`` (or nothing remains)
    drop when occluded and area(mask) <= ``area_px``, else keep with the new mask and box

Two choices where the references leave room: ``box_before`` is the mask's own box, where mmdet
compares with the annotated box (which at the jittered resolution can be off the mask's by a
pixel or two), so the rule depends on masks only; and exactly ``area_px`` pixels left is
dropped, as mmdet keeps only ``area > 300``. Crowd regions are never pasted and are updated
like any other mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vvk.augment.masks import Box, Cover, InstanceMask, LocalMask, RunMask

BOX_PX = 10  # official copy_paste_box_update_threshold, mmdet bbox_occluded_thr
AREA_PX = 300  # official copy_paste_occluded_obj_threshold, mmdet mask_occluded_thr


@dataclass
class Instance:
    """One object in a jittered frame: its class, its mask, and where it came from."""

    category_id: int
    mask: InstanceMask
    iscrowd: bool = False
    origin: int | None = None  # id of the annotation it was made from


@dataclass
class PasteResult:
    """The composed image and its objects: surviving destination objects, then pasted ones."""

    image: np.ndarray  # (S, S, 3) uint8
    instances: list[Instance]
    cover: Cover  # the pasted masks' union
    num_pasted: int
    num_dropped: int
    pasted_flags: list[bool] = field(default_factory=list)

    @property
    def union(self) -> InstanceMask:
        """The pasted pixels, as one mask."""
        return RunMask(self.cover.spans, self.cover.frame)


def choose_objects(rng: np.random.Generator, num_candidates: int, max_objects: int) -> np.ndarray:
    """Indices of the objects to paste: a count uniform in 0..min(N, n), then a random subset.

    The paper draws the count uniformly; mmdet's ``randint(0, min(n + 1, N))`` never reaches N.
    Returned in ascending order, so pasted objects keep their source order.
    """
    count = int(rng.integers(0, min(max_objects, num_candidates) + 1))
    return np.sort(rng.choice(num_candidates, size=count, replace=False))


def survives_occlusion(
    box_before: Box | None,
    box_after: Box | None,
    area_after: int,
    *,
    box_px: float = BOX_PX,
    area_px: int = AREA_PX,
) -> bool:
    """Whether a destination object stays after pasting (the rule in the module docstring)."""
    if box_after is None or area_after == 0:
        return False
    occluded = box_before is None or any(
        abs(a - b) > box_px for a, b in zip(box_after, box_before, strict=True)
    )
    return not occluded or area_after > area_px


def compose(
    dst: np.ndarray,
    src: np.ndarray,
    masks: Sequence[InstanceMask],
    blend_sigma: float = 0.0,
    *,
    in_place: bool = False,
) -> np.ndarray:
    """``src`` under the pasted ``masks``, ``dst`` elsewhere; edges Gaussian-blended when sigma > 0.

    ``dst`` and ``src`` are (H, W, C) arrays of one dtype (uint8 frames, or float tensors' data).
    Only the masks' windows (grown by the blur's reach) are touched; ``in_place`` writes them
    into ``dst`` itself, saving a frame-sized copy.
    """
    out = dst if in_place else dst.copy()
    masks = [m.local for m in masks]  # the pixels of each mask's window
    boxes = [m.box for m in masks if m.area]
    if not boxes:
        return out
    if blend_sigma <= 0:
        out_px, src_px = _whole_pixels(out), _whole_pixels(np.ascontiguousarray(src))
        for m in masks:  # pasted masks may overlap: both write the same source pixels
            rows, cols = m.window()
            np.copyto(out_px[rows, cols], src_px[rows, cols], where=m.bits)
        return out
    reach = int(np.ceil(3 * blend_sigma)) + 1
    height, width = dst.shape[:2]
    rows = slice(max(0, min(b[1] for b in boxes) - reach), min(height, max(b[3] for b in boxes) + reach))
    cols = slice(max(0, min(b[0] for b in boxes) - reach), min(width, max(b[2] for b in boxes) + reach))
    union = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=bool)
    for m in masks:
        LocalMask(m.top - rows.start, m.left - cols.start, m.bits, union.shape).paint(union)
    alpha = blend_alpha(union, blend_sigma)[:, :, None]  # (h, w) -> (h, w, 1)
    mixed = dst[rows, cols] * (1.0 - alpha) + src[rows, cols] * alpha
    if np.issubdtype(dst.dtype, np.integer):
        limits = np.iinfo(dst.dtype)
        mixed = np.clip(np.rint(mixed), limits.min, limits.max)
    out[rows, cols] = mixed.astype(dst.dtype)
    return out


def _overlap(a: Box | None, b: Box) -> bool:
    return a is not None and a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _whole_pixels(image: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (H, W) view with one opaque item per pixel: a masked copy of whole pixels
    is faster than broadcasting the mask over the channels."""
    pixel = np.dtype((np.void, image.dtype.itemsize * image.shape[2]))
    return image.view(pixel)[:, :, 0]


def blend_alpha(mask: np.ndarray, sigma: float) -> np.ndarray:
    """The mask blurred by a Gaussian of std ``sigma`` pixels (PIL's 3-pass box approximation)."""
    from PIL import Image, ImageFilter

    blurred = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(blurred, dtype=np.float32) / 255.0


def paste(
    dst_image: np.ndarray,
    dst_instances: list[Instance],
    src_image: np.ndarray,
    pasted: list[Instance],
    *,
    blend_sigma: float = 0.0,
    box_px: float = BOX_PX,
    area_px: int = AREA_PX,
    in_place: bool = False,
) -> PasteResult:
    """Paste the chosen source objects onto the destination and update its objects.

    Args:
        dst_image, src_image: (S, S, 3) uint8 frames of the same size.
        dst_instances: the destination's objects (crowd regions included).
        pasted: the source objects to paste (non-empty masks, crowd regions left out by caller).
        blend_sigma: std in pixels of the Gaussian that softens the paste edges; 0 = hard.
        box_px, area_px: the occlusion thresholds (module docstring).
        in_place: compose into ``dst_image`` instead of a copy of it.
    """
    cover = Cover(dst_image.shape[:2], [inst.mask for inst in pasted])
    image = compose(dst_image, src_image, [inst.mask for inst in pasted], blend_sigma, in_place=in_place)
    pasted_boxes = [inst.mask.box for inst in pasted if inst.mask.area]
    kept: list[Instance] = []
    for inst in dst_instances:
        if not any(_overlap(inst.mask.box, box) for box in pasted_boxes):
            kept.append(inst)  # untouched: the common case, and a cheap test
            continue
        updated = inst.mask.minus(cover).tight()
        keep = survives_occlusion(inst.mask.box, updated.box, updated.area, box_px=box_px, area_px=area_px)
        if keep:
            kept.append(Instance(inst.category_id, updated, inst.iscrowd, inst.origin))
    instances = kept + list(pasted)
    return PasteResult(
        image=image,
        instances=instances,
        cover=cover,
        num_pasted=len(pasted),
        num_dropped=len(dst_instances) - len(kept),
        pasted_flags=[False] * len(kept) + [True] * len(pasted),
    )
