"""Pieces every detector shares: categories, the input transform, anchors, the backbone adapter
with its feature-modulation hook, and the checks of training targets.

The label convention is torchvision's: a detector over ``K`` categories predicts ``K + 1``
logits, column 0 is background (never a RetinaNet target, never a detection), label ``l`` in
``1..K`` is ``model.categories[l - 1]``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import box_convert

from vvk.errors import VvkError

# ImageNet statistics on 0..1 images; the reference normalises with the same values
# (tensorflow/models: official/vision/ops/preprocess_ops.py, MEAN_RGB / STDDEV_RGB).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

Categories = list[dict[str, Any]]


def coco_categories(*, reference_ids: bool = False) -> Categories:
    """The COCO categories with their dataset ids, from torchvision's COCO metadata.

    Args:
        reference_ids: all 90 ids 1..90, unused ones named ``unused-<id>``, so that label ``l`` is
            COCO id ``l`` and the model has the 91 logits the reference configs and the published
            parameter counts use (``num_classes: 91``, tensorflow/models:
            official/vision/configs/retinanet.py). Default: the 80 categories in use (81 logits).
    """
    names = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index = COCO id, 0 = background
    if reference_ids:
        return [{"id": i, "name": n if n != "N/A" else f"unused-{i}"} for i, n in enumerate(names) if i > 0]
    return [{"id": i, "name": n} for i, n in enumerate(names) if i > 0 and n != "N/A"]


def check_categories(categories: Categories | None) -> Categories:
    """``categories`` as plain ``{"id": int, "name": str}`` dicts (None: the 80 COCO ones); a
    malformed list is a ``VvkError`` naming the entry and the field."""
    if categories is None:
        return coco_categories()
    if not isinstance(categories, (list, tuple)) or not categories:
        raise VvkError("categories: expected a non-empty list of {'id': int, 'name': str}")
    checked, seen = [], set()
    for i, entry in enumerate(categories):
        if not isinstance(entry, dict):
            raise VvkError(f"categories[{i}]: expected a dict with 'id' and 'name'")
        cid, name = entry.get("id"), entry.get("name")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise VvkError(f"categories[{i}].id: expected an integer, got {cid!r}")
        if not isinstance(name, str) or not name:
            raise VvkError(f"categories[{i}].name: expected a non-empty string, got {name!r}")
        if cid in seen:
            raise VvkError(f"categories[{i}].id: {cid} appears twice")
        seen.add(cid)
        checked.append({"id": cid, "name": name})
    return checked


class CanvasTransform(GeneralizedRCNNTransform):
    """torchvision's batching and normalisation on a square canvas of ``image_size``.

    The long side of each image is resized to ``image_size`` (``min_size = max_size``), then the
    batch is padded to at least the ``image_size`` square, as the reference pads every input to
    its fixed ``output_size`` (tensorflow/models: official/vision/dataloaders/retinanet_input.py):
    fixed shapes, and anchors of a fixed grid. Images already at the canvas size are not
    resampled. ``postprocess`` maps outputs back to each input's own pixels.
    """

    def __init__(self, *, image_size: int, size_divisible: int):
        if image_size % size_divisible:
            raise VvkError(f"image_size: {image_size} is not a multiple of {size_divisible}")
        super().__init__(image_size, image_size, list(IMAGE_MEAN), list(IMAGE_STD), size_divisible)
        self.image_size = image_size

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if max(image.shape[-2:]) == self.image_size:
            return image, target
        resized, target = super().resize(image, target)
        if target is not None and "region_boxes" in target:  # torchvision resizes "boxes" only
            target["region_boxes"] = resize_boxes(
                target["region_boxes"], image.shape[-2:], resized.shape[-2:]
            )
        return resized, target

    def batch_images(self, images: list[Tensor], size_divisible: int = 32) -> Tensor:
        height = max([self.image_size] + [img.shape[-2] for img in images])
        width = max([self.image_size] + [img.shape[-1] for img in images])
        height, width = (math.ceil(s / size_divisible) * size_divisible for s in (height, width))
        batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))  # (B, 3, H, W)
        for i, img in enumerate(images):
            batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
        return batch


class LevelAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with the reference's anchor geometry.

    Per level ``l``: ``num_scales`` sizes ``anchor_size · 2^l · 2^(s / num_scales)`` and every
    aspect ratio (width / height), centred at ``(k + 0.5) · 2^l``
    (tensorflow/models: official/vision/ops/anchor.py, ``Anchor._generate_boxes``). torchvision's
    own generator rounds the cell anchors to integers and centres them at ``k · stride``; both
    are changed here, the tiling over the grid is torchvision's.
    """

    def __init__(
        self, *, levels: Sequence[int], anchor_size: float, num_scales: int, aspect_ratios: Sequence[float]
    ):
        sizes = tuple(
            tuple(anchor_size * 2**level * 2 ** (s / num_scales) for s in range(num_scales))
            for level in levels
        )
        super().__init__(sizes, (tuple(aspect_ratios),) * len(sizes))
        self.levels = tuple(levels)
        # (A, 4) per level, shifted by half a stride: the grid then starts at the first cell's centre.
        self.cell_anchors = [
            a + 2**level / 2 for a, level in zip(self.cell_anchors, self.levels, strict=True)
        ]

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        # Anchors stay float32 under autocast: torchvision makes them in the features' dtype, and
        # a bf16 anchor at x = 600 is off by up to 2 px.
        super().set_cell_anchors(torch.float32, device)

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),  # noqa: B008 (torchvision's signature)
    ) -> Tensor:
        sizes = torch.as_tensor(scales, dtype=dtype, device=device)  # (S,)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)  # (R,)
        widths = (sizes[:, None] * ratios[None, :].sqrt()).reshape(-1)  # (S*R,), scale-major
        heights = (sizes[:, None] / ratios[None, :].sqrt()).reshape(-1)
        return torch.stack([-widths, -heights, widths, heights], dim=1) / 2  # (A, 4), unrounded


class FeatureBackbone(nn.Module):
    """A backbone as torchvision's detectors take it: an ordered dict of equally wide maps and
    ``out_channels``; plus the hook query-modulated detection needs.

    ``feature_modulation`` (None, a module or any callable) maps the feature dict to a feature dict
    of the same keys and shapes; it runs on every forward, before any head (set it with the
    detector's ``set_feature_modulation``).
    """

    def __init__(self, body: nn.Module, *, levels: Sequence[str], out_channels: int):
        super().__init__()
        self.body = body
        self.levels = tuple(levels)
        self.out_channels = out_channels
        self.feature_modulation: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        # (B, 3, H, W) as channels-last: oneDNN's depthwise convolutions (SpineNet-Mobile's
        # MBConvs) run several times faster in it on CPU; convolutions keep the layout downstream
        outputs = self.body(x.contiguous(memory_format=torch.channels_last))
        features = OrderedDict((level, outputs[level]) for level in self.levels)
        if self.feature_modulation is not None:
            features = OrderedDict(self.feature_modulation(features))
        return features


class DetectorHooks:
    """What every vvk detector adds to its torchvision base class: ``categories``,
    ``image_size``, and setters for the two hooks of the later detection methods."""

    categories: Categories
    image_size: int
    backbone: FeatureBackbone

    def set_feature_modulation(
        self, modulation: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None
    ) -> None:
        """Apply ``modulation`` to the backbone's feature dict before every head (None: remove it)."""
        # a module set earlier is registered as a child, which would refuse a plain function
        del self.backbone.feature_modulation
        self.backbone.feature_modulation = modulation

    @property
    def num_classes(self) -> int:
        """Logits per box: the categories plus background."""
        return len(self.categories) + 1

    def prepare_targets(
        self, targets: list[dict[str, Any]] | None, *, masks: bool
    ) -> list[dict[str, Tensor]] | None:
        """Plain tensors torchvision's code expects (boxes XYXY float, labels int64, masks uint8),
        checked once: a bad field is a ``VvkError`` naming the target and the field."""
        if targets is None:
            return None
        return [
            plain_target(f"targets[{i}]", t, num_categories=len(self.categories), masks=masks)
            for i, t in enumerate(targets)
        ]


def plain_target(
    where: str, target: dict[str, Any], *, num_categories: int, masks: bool
) -> dict[str, Tensor]:
    """One target as ``prepare_targets`` makes it; errors name it ``where``."""
    for key in ("boxes", "labels", *(["masks"] if masks else [])):
        if key not in target:
            raise VvkError(f"{where}: missing '{key}'")
    boxes = target["boxes"]
    if isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
        boxes = box_convert(boxes.as_subclass(Tensor), boxes.format.value.lower(), "xyxy")
    boxes = boxes.as_subclass(Tensor).float()
    labels = target["labels"].as_subclass(Tensor).long()
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
        raise VvkError(f"{where}: boxes {tuple(boxes.shape)} and labels {tuple(labels.shape)} do not match")
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 1 or high > num_categories:
            raise VvkError(f"{where}['labels']: {low if low < 1 else high} is outside 1..{num_categories}")
        if bool((boxes[:, 2:] <= boxes[:, :2]).any()):
            raise VvkError(f"{where}['boxes']: a box with zero or negative width or height")
    plain = {"boxes": boxes, "labels": labels}
    if masks:
        mask = target["masks"].as_subclass(Tensor)
        if mask.ndim != 3 or mask.shape[0] != boxes.shape[0]:
            raise VvkError(f"{where}['masks']: expected ({boxes.shape[0]}, H, W), got {tuple(mask.shape)}")
        plain["masks"] = mask.to(torch.uint8)
    # what a method adds (ViLD's region_boxes and region_embeddings) passes as it is
    plain.update({k: v.as_subclass(Tensor) for k, v in target.items() if k.startswith("region_")})
    return plain


def to_image_list(images: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """A batch tensor (B, 3, H, W) or a list of (3, H, W) images as the list torchvision takes."""
    if isinstance(images, Tensor):
        if images.ndim == 3:
            return [images]
        return list(images.unbind(0))
    return list(images)


def register_variants(
    variants: Mapping[str, str],
    build: Callable[..., nn.Module],
    *,
    image_size: Callable[[str], int],
    source: str,
) -> None:
    """Register each ``name: detector`` of ``variants`` (a method on a registered detector) as
    ``build(detector=detector, **overrides)``, at the detector's ``image_size``; ``source`` names
    the reference, the detector's name appended."""
    from vvk.models.registry import register

    for name, detector in variants.items():
        size = image_size(detector)
        builder = _variant_builder(build, detector)
        builder.__name__ = name.replace("-", "_")
        note = "; tiny test variant" if name.endswith("-tiny") else ""
        register(name, task="detection", default_input=(3, size, size), source=source + detector + note)(
            builder
        )


def _variant_builder(build: Callable[..., nn.Module], detector: str) -> Callable[..., nn.Module]:
    def builder(**overrides: Any) -> nn.Module:
        return build(detector=detector, **overrides)

    builder.__module__ = build.__module__  # the registry names the builder's module in its errors
    return builder
