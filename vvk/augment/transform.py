"""``CopyPaste``: Simple Copy-Paste as an online transform over torchvision ``tv_tensors``.

A call takes a batch of samples of one size, ``(images, targets)``, and returns the batch in
the same form. Images are ``tv_tensors.Image`` (C, H, W) on the CPU, uint8 or float. Each target
holds ``masks`` (``tv_tensors.Mask``, (N, H, W)), ``boxes`` (``tv_tensors.BoundingBoxes`` of the
image's canvas, any format) and ``labels`` (N,); other keys are allowed.

Each sample gets a random subset of the previous sample's objects pasted on it (the batch rolled
by one, as torchvision's detection reference ``SimpleCopyPaste`` pairs them); its own objects lose
the pasted pixels and are dropped when occluded. The paste and the occlusion rule are
``vvk.augment.copy_paste.paste``, the code the dataset command runs. Crowd objects
(``iscrowd``) are never pasted. Objects whose mask is empty (an earlier crop cut them away)
have no box and are dropped.

In the returned targets the masks are the truth: ``boxes`` are their tight pixel-edge boxes (a
one-pixel mask at (x, y) is (x, y, x + 1, y + 1) in XYXY) in the input boxes' format, dtype and
canvas; ``masks`` keep their dtype; the per-object keys (``object_keys``) follow their objects,
``area`` is recounted and other keys are kept as they were.

Since everything is a tv_tensor, ``torchvision.transforms.v2`` moves images, boxes and masks
together around it: per sample before it (``v2.ScaleJitter``, a flip and a fixed-size crop/pad
make the batch one size), and on the batch after it, e.g. in ``v2.Compose([CopyPaste(),
v2.RandomHorizontalFlip()])`` called with ``(images, targets)``; a v2 transform applied to the
batch draws one set of random parameters for all its samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from vvk.augment.copy_paste import AREA_PX, BOX_PX, Instance, PasteResult, choose_objects, paste
from vvk.augment.masks import LocalMask

Target = dict[str, Any]


class CopyPaste(torch.nn.Module):
    """Simple Copy-Paste for a batch of (image, target) samples of one size (module docstring).

    Args:
        max_objects: at most this many objects pasted; the count is uniform in 0..max_objects.
        blend_sigma: Gaussian std in pixels for soft paste edges; 0 keeps hard edges.
        box_px, area_px: a destination object whose box edge moved by more than ``box_px`` and
            that keeps at most ``area_px`` pixels is dropped.
        object_keys: target keys holding one row per object ((N, ...) tensors, e.g. track ids);
            the output has the rows of the kept objects, then those of the pasted ones.
        generator: torch generator for the random choices (the global one if None).
    """

    def __init__(
        self,
        *,
        max_objects: int = 100,
        blend_sigma: float = 0.0,
        box_px: float = BOX_PX,
        area_px: int = AREA_PX,
        object_keys: Sequence[str] = ("labels", "iscrowd"),
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        reserved = {"boxes", "masks", "area"} & set(object_keys)
        if reserved:
            raise ValueError(f"object_keys: {sorted(reserved)} are recomputed from the masks")
        self.max_objects = max_objects
        self.blend_sigma = blend_sigma
        self.box_px = box_px
        self.area_px = area_px
        self.object_keys = tuple(object_keys)
        self.generator = generator

    def forward(
        self, images: Sequence[tv_tensors.Image], targets: Sequence[Target]
    ) -> tuple[list[tv_tensors.Image], list[Target]]:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        out_images, out_targets = [], []
        for i in range(len(images)):
            j = (i - 1) % len(images)  # the previous sample is the source, as in torchvision's reference
            image, target = self.paste_pair(images[i], targets[i], images[j], targets[j])
            out_images.append(image)
            out_targets.append(target)
        return out_images, out_targets

    def paste_pair(
        self, image: tv_tensors.Image, target: Target, src_image: tv_tensors.Image, src_target: Target
    ) -> tuple[tv_tensors.Image, Target]:
        """Paste a random subset of ``src_target``'s objects onto ``image``."""
        _check_sample(image, target)
        _check_sample(src_image, src_target)
        if image.shape != src_image.shape:
            raise ValueError(f"images differ in shape: {tuple(image.shape)} vs {tuple(src_image.shape)}")
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        rng = np.random.default_rng(seed)
        candidates = [inst for inst in _instances(src_target) if not inst.iscrowd and inst.mask.area]
        chosen = [candidates[k] for k in choose_objects(rng, len(candidates), self.max_objects)]
        result = paste(
            image.permute(1, 2, 0).numpy(),  # (C, H, W) -> (H, W, C) view
            [inst for inst in _instances(target) if inst.mask.area],
            src_image.permute(1, 2, 0).numpy(),
            chosen,
            blend_sigma=self.blend_sigma,
            box_px=self.box_px,
            area_px=self.area_px,
        )
        pixels = torch.from_numpy(result.image).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
        return tv_tensors.wrap(pixels.contiguous(), like=image), self._target(target, src_target, result)

    def _target(self, dst: Target, src: Target, result: PasteResult) -> Target:
        """``dst`` with the objects of ``result``: kept destination objects, then pasted ones."""
        boxes, masks = dst["boxes"], dst["masks"]
        height, width = masks.shape[-2:]
        pixels = np.zeros((len(result.instances), height, width), dtype=bool)
        for k, inst in enumerate(result.instances):
            inst.mask.paint(pixels[k])
        xyxy = tv_tensors.BoundingBoxes(
            torch.tensor([inst.mask.box for inst in result.instances], dtype=boxes.dtype).reshape(-1, 4),
            format=tv_tensors.BoundingBoxFormat.XYXY,
            canvas_size=boxes.canvas_size,
        )
        out = dict(dst)
        out["boxes"] = F.convert_bounding_box_format(xyxy, new_format=boxes.format)
        out["masks"] = tv_tensors.Mask(torch.from_numpy(pixels).to(masks.dtype))
        origins = [inst.origin for inst in result.instances]
        num_kept = len(origins) - result.num_pasted
        kept = torch.tensor(origins[:num_kept], dtype=torch.long)
        taken = torch.tensor(origins[num_kept:], dtype=torch.long)
        for key in self.object_keys:
            if key not in dst:
                continue
            if key not in src:
                raise ValueError(f"object key {key!r} is in the destination's target but not the source's")
            out[key] = torch.cat([dst[key][kept], src[key][taken]])
        if "area" in dst:
            area = [inst.mask.area for inst in result.instances]
            out["area"] = torch.tensor(area, dtype=torch.as_tensor(dst["area"]).dtype)
        return out

    def extra_repr(self) -> str:
        return (
            f"max_objects={self.max_objects}, blend_sigma={self.blend_sigma}, "
            f"box_px={self.box_px}, area_px={self.area_px}, object_keys={self.object_keys}"
        )


def _check_sample(image: Any, target: Target) -> None:
    """The module docstring's input contract: a plain tensor would silently fall out of step,
    since v2 transforms move only tv_tensors (and at most one plain tensor, as the image)."""
    if not isinstance(image, tv_tensors.Image):
        raise TypeError(f"images must be tv_tensors.Image, got {type(image).__name__}")
    boxes, masks = target.get("boxes"), target.get("masks")
    if not isinstance(boxes, tv_tensors.BoundingBoxes) or not isinstance(masks, tv_tensors.Mask):
        raise TypeError("targets need 'boxes' as tv_tensors.BoundingBoxes and 'masks' as tv_tensors.Mask")
    size = tuple(image.shape[-2:])
    if masks.ndim != 3 or tuple(masks.shape[-2:]) != size or tuple(boxes.canvas_size) != size:
        raise ValueError(
            f"image is {size[0]}x{size[1]} but its masks are {tuple(masks.shape)} and its boxes' "
            f"canvas {tuple(boxes.canvas_size)}"
        )
    if not len(masks) == len(boxes) == len(target["labels"]):
        raise ValueError(f"{len(masks)} masks, {len(boxes)} boxes and {len(target['labels'])} labels")


def _instances(target: Target) -> list[Instance]:
    masks = target["masks"].bool().numpy()  # (N, H, W)
    labels = target["labels"].tolist()
    crowd = target["iscrowd"].bool().tolist() if "iscrowd" in target else [False] * len(labels)
    return [
        Instance(int(labels[k]), LocalMask.from_full(masks[k]), bool(crowd[k]), origin=k)
        for k in range(len(labels))
    ]
