"""One augmented image of a COCO dataset: the random draws, the jitter, the paste, the records.

Everything random about output copy ``k`` of destination image ``i`` comes from one generator
seeded with ``(seed, image id, k)``, so a copy is the same whichever process renders it and in
whatever order: the dataset-level run (``dataset_writer``) only schedules and gathers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vvk.augment.copy_paste import AREA_PX, BOX_PX, Instance, choose_objects, paste
from vvk.augment.jitter import (
    Jitter,
    Polygons,
    frame_window,
    jitter_image,
    jitter_segmentation,
    sample_jitter,
)
from vvk.augment.masks import InstanceMask
from vvk.data.coco import rle_area_and_box
from vvk.data.images import ImageReadError, load_rgb


@dataclass(frozen=True)
class CopyPasteOptions:
    """What each augmented image is made with (the CLI's options, validated)."""

    copies: int = 1
    max_objects: int = 100
    scale_range: tuple[float, float] = (0.1, 2.0)
    size: int = 1024
    blend_sigma: float = 0.0
    mask_format: str = "rle"  # or "polygon"
    seed: int = 0
    box_px: float = BOX_PX
    area_px: int = AREA_PX
    categories: tuple[str, ...] | None = None  # names of source categories to paste; None = all


@dataclass(frozen=True)
class PlannedObject:
    ann_id: int
    category_id: int  # in the output's category ids
    segmentation: Polygons | dict[str, Any]  # polygons as arrays, or a COCO RLE
    iscrowd: bool
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in the input image


@dataclass(frozen=True)
class PlannedImage:
    id: int
    path: str
    height: int
    width: int
    exif_orientation: int
    license: int | None
    objects: tuple[PlannedObject, ...]


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs: the destinations, the paste sources, the options."""

    destinations: tuple[PlannedImage, ...]
    sources: tuple[PlannedImage, ...]  # only pasteable objects, only images that have some
    options: CopyPasteOptions


@dataclass
class RenderedCopy:
    """One output image and its objects; the jittered inputs are kept only when asked."""

    destination_id: int
    source_id: int
    copy: int
    image: np.ndarray | None  # (S, S, 3) uint8; None when the destination could not be read
    instances: list[Instance] = field(default_factory=list)
    pasted_flags: list[bool] = field(default_factory=list)
    num_pasted: int = 0
    num_dropped: int = 0
    num_cropped_out: int = 0
    issues: dict[str, int] = field(default_factory=dict)
    jittered_dst: np.ndarray | None = None
    jittered_src: np.ndarray | None = None
    union: InstanceMask | None = None  # the pasted pixels


def copy_rng(seed: int, image_id: int, copy: int) -> np.random.Generator:
    return np.random.default_rng([seed, image_id, copy])


def jitter_objects(objects: tuple[PlannedObject, ...], jitter: Jitter) -> list[Instance]:
    """The objects as masks in the jittered frame; objects cut away by the crop are left out."""
    instances = []
    for obj in objects:
        mask = jitter_segmentation(obj.segmentation, jitter, obj.box)
        if mask.area:
            instances.append(Instance(obj.category_id, mask, obj.iscrowd, obj.ann_id))
    return instances


@dataclass(frozen=True)
class CopyDraw:
    """Every random choice behind one output copy, in the order they are drawn."""

    dst_jitter: Jitter
    source: PlannedImage
    src_jitter: Jitter
    chosen: tuple[PlannedObject, ...]  # the source objects to paste


def draw_copy(plan: Plan, dst: PlannedImage, copy: int) -> CopyDraw:
    opt = plan.options
    rng = copy_rng(opt.seed, dst.id, copy)
    dst_jitter = sample_jitter(
        rng, height=dst.height, width=dst.width, size=opt.size, scale_range=opt.scale_range
    )
    src = plan.sources[int(rng.integers(len(plan.sources)))]
    src_jitter = sample_jitter(
        rng, height=src.height, width=src.width, size=opt.size, scale_range=opt.scale_range
    )
    # Objects the crop cuts away are no candidates: the count is drawn among visible ones.
    candidates = [o for o in src.objects if frame_window(o.box, src_jitter) is not None]
    chosen = tuple(candidates[i] for i in choose_objects(rng, len(candidates), opt.max_objects))
    return CopyDraw(dst_jitter, src, src_jitter, chosen)


def render_copy(
    plan: Plan, dst: PlannedImage, dst_pixels: np.ndarray | None, copy: int, *, keep_inputs: bool = False
) -> RenderedCopy:
    """Output copy ``copy`` of destination ``dst`` (its decoded pixels given, None if unreadable)."""
    draw = draw_copy(plan, dst, copy)
    out = RenderedCopy(destination_id=dst.id, source_id=draw.source.id, copy=copy, image=None)
    if dst_pixels is None:
        out.issues["copies_skipped_unreadable_image"] = 1
        return out
    dst_instances = jitter_objects(dst.objects, draw.dst_jitter)
    out.num_cropped_out = len(dst.objects) - len(dst_instances)
    pasted = jitter_objects(draw.chosen, draw.src_jitter)
    jittered_dst = jitter_image(dst_pixels, draw.dst_jitter)
    jittered_src = jittered_dst  # never read where nothing is pasted
    if pasted:
        try:
            src_pixels = load_rgb(draw.source.path, exif_orientation=draw.source.exif_orientation)
            jittered_src = jitter_image(src_pixels, draw.src_jitter)
        except ImageReadError:
            out.issues["sources_unreadable"] = 1
            pasted = []
    opt = plan.options
    result = paste(
        jittered_dst,
        dst_instances,
        jittered_src,
        pasted,
        blend_sigma=opt.blend_sigma,
        box_px=opt.box_px,
        area_px=opt.area_px,
        in_place=not keep_inputs,  # the jittered destination is kept only when asked for
    )
    out.image, out.instances, out.pasted_flags = result.image, result.instances, result.pasted_flags
    out.num_pasted, out.num_dropped = result.num_pasted, result.num_dropped
    if keep_inputs:
        out.jittered_dst, out.jittered_src, out.union = jittered_dst, jittered_src, result.union
    return out


def annotation_record(inst: Instance, mask_format: str) -> dict[str, Any] | None:
    """COCO fields of one object (no ids yet), area and box taken from the mask as written.

    Crowd regions stay RLE whatever the format (the COCO convention). A polygon cannot hold
    holes, so with ``polygon`` the area and box are those of the rasterised polygons; None
    when nothing of the object survives that.
    """
    from pycocotools import mask as mask_utils

    if mask_format == "polygon" and not inst.iscrowd:
        segmentation: Any = inst.mask.to_polygons()
        if not segmentation:
            return None
        height, width = inst.mask.frame
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        area, bbox = rle_area_and_box({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
        if area == 0:
            return None
    else:
        segmentation = inst.mask.to_rle()
        area, box = inst.mask.area, inst.mask.box
        bbox = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    return {
        "category_id": inst.category_id,
        "segmentation": segmentation,
        "area": area,
        "bbox": bbox,
        "iscrowd": int(inst.iscrowd),
    }
