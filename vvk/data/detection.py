"""COCO instances as detection training samples, with the Copy-Paste paper's input pipeline.

::

    from vvk.data.detection import collate_detection, open_detection_dataset

    data = open_detection_dataset("coco/", size=640, scale_range=(0.1, 2.0), copy_paste=True)
    image, target = data[0]    # (3, 640, 640) float in 0..1; target["boxes"], ["labels"], ["masks"]

A training sample (``DetectionDataset``):

- the image is flipped with ``flip_prob``, resized so that it fits a square of side
  ``size * s``, ``s ~ U(scale_range)`` (large scale jitter 0.1-2.0, standard 0.8-1.25), then a
  random ``size x size`` window is cut where it is larger and it is padded with black at the
  bottom and right where it is smaller: ``vvk.augment.jitter``, the geometry of the official
  Copy-Paste code's ``resize_and_crop_image`` that ``vvk augment copy-paste`` also uses;
- polygons are mapped exactly and rasterised at the output size (masks stay sharp when an image
  is enlarged), RLE masks resampled; the boxes are the masks' tight boxes, so boxes and masks
  agree after the crop, and an object the crop cuts away is dropped;
- crowd annotations are left out (``skip_crowd_during_training`` in the reference parsers); an
  image left with no object is a sample with empty targets, which the detectors train on;
- with ``copy_paste``, a second image of the dataset gets its own flip, jitter and crop and a
  random subset of its objects is pasted on the first (``vvk.augment.CopyPaste.paste_pair``:
  hard edges, occluded objects updated or dropped), as in the reference's
  ``maskrcnn_parser_with_copy_paste.py``.

The target is ``{"boxes": BoundingBoxes XYXY (N, 4) float32, "labels": (N,) int64 in 1..K,
"masks": Mask (N, S, S) uint8, "image_id": int}``: label ``l`` is the ``l``-th category of the
annotation file, in its order (``categories``), the detectors' convention (0 is background).

Why not ``torchvision.transforms.v2`` for the geometry: ``ScaleJitter``, ``RandomCrop(pad_if_
needed=True)`` and ``RandomHorizontalFlip`` do move images, boxes and masks together, but they
resize every object's full-resolution mask (N x H x W, nearest neighbour) where rasterising the
polygons at the output size costs only the output and is exact, their boxes are the clamped
annotated boxes rather than those of the cropped masks, and ``pad_if_needed`` pads on both sides
where the reference pads at the bottom right. The tests check that both give the same masks.

Bad images (missing, not an image, a size other than the annotations') are replaced by another
image, chosen by the sample's own generator, and reported under the target's ``"skipped"``;
``collate_detection`` gathers them for the training loop, which warns once per file and counts
them, as for videos (``vvk.data.datasets.BadFiles``). Records the annotation file gets wrong are
counted by ``vvk.data.coco`` and reported once when the dataset is opened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from vvk.augment.jitter import Jitter, jitter_image, jitter_segmentation, sample_jitter
from vvk.augment.masks import InstanceMask
from vvk.data.coco import CocoDataset, CocoImage, find_coco_layout, load_coco
from vvk.data.datasets import BadFiles
from vvk.data.images import ImageReadError, load_rgb, probe_image
from vvk.data.media import PROBLEMS
from vvk.errors import VvkError

logger = logging.getLogger("vvk.data")

LSJ = (0.1, 2.0)  # large scale jitter (Copy-Paste paper; reference/detection.md §0)
SSJ = (0.8, 1.25)  # standard scale jitter
MAX_PASTED = 100  # at most this many objects pasted per image (mmdet's cap)

Target = dict[str, Any]


class BadImage(Exception):
    """An image that cannot be used; ``kind`` is a key of ``vvk.data.media.PROBLEMS``."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{PROBLEMS[kind]}: {detail}" if detail else PROBLEMS[kind])
        self.kind, self.detail = kind, detail


def categories_of(coco: CocoDataset) -> list[dict[str, Any]]:
    """``[{"id", "name"}]`` in the file's order: label ``l`` is entry ``l - 1``."""
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in coco.categories]


def read_image(coco: CocoDataset, image: CocoImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB of ``image``, upright as its annotations were drawn (EXIF); raises
    ``BadImage`` when it is missing, unreadable or not the size the annotation file says."""
    path = coco.image_path(image)
    try:
        probe = probe_image(path, expected_size=(image.width, image.height))
        if probe.size != (image.width, image.height):
            raise BadImage("image_size", f"{probe.size[0]}x{probe.size[1]}, not {image.width}x{image.height}")
        return load_rgb(path, exif_orientation=probe.exif_orientation)
    except ImageReadError as e:
        reason = str(e)
        raise BadImage("missing" if reason == "missing" else "not_image", reason) from None


class DetectionDataset(Dataset):
    """Training samples ``(image (3, S, S) float 0..1, target)`` of a COCO dataset (module docstring).

    Args:
        coco: the annotations and images (``vvk.data.coco.load_coco``).
        size: ``S``, the side of the square canvas.
        scale_range: the scale jitter, as fractions of ``size``.
        flip_prob: probability of a horizontal flip.
        copy_paste: paste objects of another image of the dataset onto each sample.
        max_paste: at most this many objects pasted (the count is uniform in 0..max_paste).
        masks: keep the masks in the targets (False for box-only detectors: they still decide
            the boxes and the paste).
        seed: with the sample key, seeds each sample's own generator.
        exclude_categories: ids of categories whose annotations are left out of the targets (an
            open-vocabulary split's novel ones: their pixels stay, their boxes go); the labels
            number the remaining categories, in the file's order.
        regions: boxes and teacher embeddings per image id (``vvk.methods.vild.regions.
            RegionStore``): moved with the image into ``target["region_boxes"]`` (R, 4) and
            ``["region_embeddings"]`` (R, D); the regions the crop cuts away are dropped.
        max_retries: replacements of a bad image (each one not tried before for this sample)
            before giving up with a ``VvkError``.
        bad_files: where skipped images are recorded (the training loop merges the records
            that samples carry into it).

    Indexing with an int ``i`` draws with ``seed, i``; with a key ``(i, draw)`` (what the
    training loop's sampler yields) with ``seed, draw``: every epoch draws new augmentations and
    a resumed run the same ones.
    """

    def __init__(
        self,
        coco: CocoDataset,
        *,
        size: int,
        scale_range: tuple[float, float] = LSJ,
        flip_prob: float = 0.5,
        copy_paste: bool = False,
        max_paste: int = MAX_PASTED,
        masks: bool = True,
        seed: int = 0,
        exclude_categories: Sequence[int] = (),
        regions: Any = None,
        max_retries: int = 10,
        bad_files: BadFiles | None = None,
    ):
        if not coco.images:
            raise VvkError(f"{coco.annotations_path}: no usable images")
        if not coco.categories:
            raise VvkError(f"{coco.annotations_path}: no categories")
        if size < 1 or not 0 < scale_range[0] <= scale_range[1] or not 0 <= flip_prob <= 1:
            raise ValueError(f"size={size}, scale_range={scale_range}, flip_prob={flip_prob}")
        self.coco = coco
        self.size, self.scale_range, self.flip_prob = size, tuple(scale_range), flip_prob
        self.copy_paste, self.max_paste, self.masks = copy_paste, max_paste, masks
        self.seed, self.max_retries = seed, max_retries
        self.bad_files = BadFiles() if bad_files is None else bad_files
        self.categories = [c for c in categories_of(coco) if c["id"] not in set(exclude_categories)]
        self.labels = {c["id"]: k + 1 for k, c in enumerate(self.categories)}
        self.regions = regions
        self.image_ids = np.array(list(coco.images), dtype=np.int64)  # the file's order

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, Target]:
        index, draw = (key, key) if isinstance(key, int | np.integer) else key
        rng = np.random.default_rng([self.seed, int(draw)])
        skipped: list[dict[str, str]] = []
        pixels, target = self._jittered(int(index), rng, skipped)
        if self.copy_paste:
            source = self._jittered(int(rng.integers(len(self))), rng, skipped)
            pixels, target = self._paste(pixels, target, *source, rng)
        if not self.masks:
            target.pop("masks")
        target["skipped"] = skipped
        image = pixels.as_subclass(torch.Tensor).float().div_(255)  # (3, S, S) in 0..1
        return image, target

    def _jittered(
        self, index: int, rng: np.random.Generator, skipped: list[dict[str, str]]
    ) -> tuple[tv_tensors.Image, Target]:
        """Image ``index`` (or a replacement for it) flipped, jittered and cropped to the canvas."""
        tried: list[int] = []
        for _ in range(min(self.max_retries + 1, len(self))):
            image = self.coco.images[int(self.image_ids[index])]
            try:
                pixels = read_image(self.coco, image)
            except BadImage as e:
                path = str(self.coco.image_path(image))
                skipped.append({"path": path, "problem": e.kind, "detail": e.detail})
                tried.append(index)
                untried = np.setdiff1d(np.arange(len(self)), tried)  # never the same bad image twice
                index = int(untried[rng.integers(len(untried))]) if len(untried) else index
                continue
            jitter = sample_jitter(
                rng, height=image.height, width=image.width, size=self.size,
                scale_range=self.scale_range, flip_prob=self.flip_prob,
            )  # fmt: skip
            frame = torch.from_numpy(jitter_image(pixels, jitter)).permute(2, 0, 1)  # (S, S, 3) -> (3, S, S)
            objects = [
                (self.labels[a.category_id], jitter_segmentation(a.segmentation, jitter))
                for a in self.coco.annotations[image.id]
                if not a.iscrowd and a.category_id in self.labels
            ]
            kept = [(label, mask) for label, mask in objects if mask.area]  # the crop may cut some away
            target = dense_target(kept, self.size, image.id)
            if self.regions is not None:
                target.update(jitter_regions(*self.regions[image.id], jitter))
            return tv_tensors.Image(frame), target
        last = skipped[-1]["path"]
        raise VvkError(f"{len(tried)} image(s) in a row could not be read, last: {last}")

    def _paste(
        self,
        pixels: tv_tensors.Image,
        target: Target,
        src_pixels: tv_tensors.Image,
        src_target: Target,
        rng: np.random.Generator,
    ) -> tuple[tv_tensors.Image, Target]:
        from vvk.augment.transform import CopyPaste

        # The paste draws from its own generator, seeded by the sample's: deterministic in any worker.
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        paste = CopyPaste(max_objects=self.max_paste, object_keys=("labels",), generator=generator)
        return paste.paste_pair(pixels, target, src_pixels, src_target)


def dense_target(objects: Sequence[tuple[int, InstanceMask]], size: int, image_id: int) -> Target:
    """The target of ``(label, mask)`` objects on a ``size x size`` canvas; boxes from the masks."""
    masks = np.zeros((len(objects), size, size), dtype=bool)  # (N, S, S)
    for k, (_, mask) in enumerate(objects):
        mask.paint(masks[k])
    boxes = torch.tensor([mask.box for _, mask in objects], dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(size, size)),
        "labels": torch.tensor([label for label, _ in objects], dtype=torch.int64),
        "masks": tv_tensors.Mask(torch.from_numpy(masks).to(torch.uint8)),
        "image_id": int(image_id),
    }


def jitter_regions(boxes: torch.Tensor, embeddings: torch.Tensor, jitter: Jitter) -> Target:
    """``region_boxes`` (R', 4) and ``region_embeddings`` (R', D): the (R, 4) XYXY input-image
    ``boxes`` moved as the image is, cut to the frame's content, those left under a pixel wide
    or high dropped with their embeddings."""
    x, y = jitter.map_xy(boxes[:, [0, 2]].numpy(), boxes[:, [1, 3]].numpy())  # (R, 2) each
    x.sort(axis=1)  # a flip swaps the left and right edges
    rows, cols = jitter.content
    moved = torch.from_numpy(np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)).float()  # (R, 4)
    moved = torch.minimum(moved.clamp(min=0), torch.tensor([cols, rows, cols, rows], dtype=torch.float32))
    keep = ((moved[:, 2:] - moved[:, :2]) >= 1).all(dim=1)
    return {"region_boxes": moved[keep], "region_embeddings": embeddings[keep]}


def collate_detection(samples: Sequence[tuple[torch.Tensor, Target]]) -> dict[str, Any]:
    """A training batch: ``{"images": (B, 3, S, S), "targets": [target], "skipped": [record]}``;
    the skipped-image records of every sample are taken out of the targets."""
    images = torch.stack([image for image, _ in samples])  # B x (3, S, S) -> (B, 3, S, S)
    targets, skipped = [], []
    for _, target in samples:
        target = dict(target)
        skipped.extend(target.pop("skipped", ()))
        targets.append(target)
    return {"images": images, "targets": targets, "skipped": skipped}


class DetectionImages(Dataset):
    """The images of a COCO dataset as they are, for evaluation and inference.

    ``data[i]`` is ``(image (3, H, W) float 0..1, {"image_id", "skipped"})``, or ``(None, ...)``
    for an image that cannot be read (its record under ``"skipped"``): the caller leaves it out.
    """

    def __init__(self, coco: CocoDataset):
        self.coco = coco
        self.image_ids = np.array(list(coco.images), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, dict[str, Any]]:
        image = self.coco.images[int(self.image_ids[index])]
        info: dict[str, Any] = {"image_id": image.id, "skipped": []}
        try:
            pixels = read_image(self.coco, image)
        except BadImage as e:
            path = str(self.coco.image_path(image))
            info["skipped"].append({"path": path, "problem": e.kind, "detail": e.detail})
            return None, info
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255), info  # (H, W, 3) -> (3, H, W)


def open_coco(
    root: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    what: str = "data",
) -> CocoDataset:
    """Find (``vvk.data.coco.find_coco_layout``) and read a COCO dataset; the records it skips
    are reported in one warning line. ``what`` names the parameter in errors (``val=...``)."""
    if not os.path.lexists(root):
        raise VvkError(f"{what}={os.fspath(root)}: no such folder or file", params=(what,))
    ann_path, images_dir = find_coco_layout(root, images=images, annotations=annotations)
    coco = load_coco(ann_path, images_dir)
    problems = {k: n for k, n in coco.issues.items() if k != "images_without_objects"}
    if problems:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(problems.items()))
        logger.warning("%s: skipped %d record(s): %s", ann_path, sum(problems.values()), counts)
    return coco


def open_detection_dataset(root: str | os.PathLike, *, size: int, **options: Any) -> DetectionDataset:
    """A ``DetectionDataset`` over the COCO dataset at ``root`` (a folder or an instances file);
    ``options`` are ``DetectionDataset``'s."""
    return DetectionDataset(open_coco(root), size=size, **options)
