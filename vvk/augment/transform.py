"""``CopyPaste`` over torchvision ``tv_tensors``, for online augmentation in a training loop.

Each sample of a batch gets objects pasted from the next sample (the batch rolled by one, as
torchvision's detection reference ``SimpleCopyPaste`` pairs them). The samples must already be
jittered to one size, e.g. with ``v2.ScaleJitter``, ``v2.RandomHorizontalFlip`` and a fixed
size crop/pad; the paste and the per-object occlusion update are ``vvk.augment.copy_paste.paste``,
the same code the dataset command runs. Runs on the CPU (in DataLoader workers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from vvk.augment.copy_paste import AREA_PX, BOX_PX, Instance, choose_objects, paste
from vvk.augment.masks import LocalMask


class CopyPaste(torch.nn.Module):
    """Simple Copy-Paste for a batch of (image, target) samples of one size.

    Targets hold ``boxes`` (``tv_tensors.BoundingBoxes``), ``masks`` (``tv_tensors.Mask``,
    (N, H, W)), ``labels`` (N,) and optionally ``iscrowd`` (N,) and ``area`` (N,). Returned
    targets have XYXY boxes that are the tight pixel-edge boxes of the updated masks
    (a one-pixel mask at (x, y) has box (x, y, x + 1, y + 1)); other keys are kept as they were.

    Args:
        max_objects: at most this many objects pasted; the count is uniform in 0..max_objects.
        blend_sigma: Gaussian std in pixels for soft paste edges; 0 keeps hard edges.
        box_px, area_px: a destination object whose box edge moved by more than ``box_px`` and
            that keeps at most ``area_px`` pixels is dropped.
        generator: torch generator for the random choices (the global one if None).
    """

    def __init__(
        self,
        *,
        max_objects: int = 100,
        blend_sigma: float = 0.0,
        box_px: float = BOX_PX,
        area_px: int = AREA_PX,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.max_objects = max_objects
        self.blend_sigma = blend_sigma
        self.box_px = box_px
        self.area_px = area_px
        self.generator = generator

    def forward(
        self, images: list[torch.Tensor], targets: list[dict[str, Any]]
    ) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
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
        self, image: torch.Tensor, target: dict[str, Any], src_image: torch.Tensor, src_target: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Paste a random subset of ``src_target``'s objects onto ``image``."""
        if image.shape != src_image.shape:
            raise ValueError(f"images differ in shape: {tuple(image.shape)} vs {tuple(src_image.shape)}")
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        rng = np.random.default_rng(seed)
        dst_instances = _instances(target)
        candidates = [inst for inst in _instances(src_target) if not inst.iscrowd and inst.mask.area]
        chosen = [candidates[k] for k in choose_objects(rng, len(candidates), self.max_objects)]
        result = paste(
            image.permute(1, 2, 0).numpy(),  # (C, H, W) -> (H, W, C) view
            dst_instances,
            src_image.permute(1, 2, 0).numpy(),
            chosen,
            blend_sigma=self.blend_sigma,
            box_px=self.box_px,
            area_px=self.area_px,
        )
        pixels = torch.from_numpy(result.image).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
        out_image = (
            tv_tensors.wrap(pixels.contiguous(), like=image)
            if isinstance(image, tv_tensors.Image)
            else pixels
        )
        return out_image, _target(target, result.instances, image.shape[-2:])

    def extra_repr(self) -> str:
        return (
            f"max_objects={self.max_objects}, blend_sigma={self.blend_sigma}, "
            f"box_px={self.box_px}, area_px={self.area_px}"
        )


def _instances(target: dict[str, Any]) -> list[Instance]:
    masks = target["masks"].bool().numpy()  # (N, H, W)
    labels = target["labels"].tolist()
    crowd = target["iscrowd"].bool().tolist() if "iscrowd" in target else [False] * len(labels)
    return [
        Instance(int(labels[k]), LocalMask.from_full(masks[k]), bool(crowd[k]), origin=k)
        for k in range(len(labels))
    ]


def _target(like: dict[str, Any], instances: list[Instance], canvas: torch.Size) -> dict[str, Any]:
    height, width = int(canvas[0]), int(canvas[1])
    masks = np.zeros((len(instances), height, width), dtype=bool)
    for k, inst in enumerate(instances):
        inst.mask.paint(masks[k])
    boxes = [inst.mask.box for inst in instances]
    out = dict(like)
    out["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
    out["boxes"] = tv_tensors.BoundingBoxes(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        format=tv_tensors.BoundingBoxFormat.XYXY,
        canvas_size=(height, width),
    )
    out["labels"] = torch.tensor([inst.category_id for inst in instances], dtype=like["labels"].dtype)
    if "iscrowd" in like:
        out["iscrowd"] = torch.tensor([inst.iscrowd for inst in instances], dtype=like["iscrowd"].dtype)
    if "area" in like:
        out["area"] = torch.tensor([inst.mask.area for inst in instances], dtype=torch.float32)
    return out
