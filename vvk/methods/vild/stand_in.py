"""Training the stand-in teacher on the built-in example set (see :mod:`vvk.methods.vild.teacher`).

The teacher sees crops of every object of the example's train split, all 10 categories, each
crop drawn at a random enlargement in [1, 1.5] of its box (the range ViLD's 1x and 1.5x crops
span) and shifted by up to a tenth of its size, and learns CLIP's image-to-class objective:
softmax cross-entropy of the scaled cosines between a crop's embedding and the K rows of the
class table. It is scored on the val split's objects, embedded as ViLD embeds proposals (1x and
1.5x crops summed). ``built_in_stand_in()`` trains it once and caches it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.data.coco import CocoDataset
from vvk.methods.vild.crops import CROP_SCALES, crop_regions
from vvk.methods.vild.regions import region_embeddings
from vvk.methods.vild.teacher import StandInTeacher, load_stand_in, save_stand_in

logger = logging.getLogger("vvk.vild")


@dataclass(frozen=True)
class StandInRecipe:
    """How the built-in stand-in teacher is trained; every field enters its cache key."""

    dim: int = 64
    image_size: int = 32
    width: int = 32
    draws: int = 4  # random crops per training object
    steps: int = 600
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def labelled_images(coco: CocoDataset) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Each readable image with objects: its (3, H, W) pixels in 0..1, (N, 4) XYXY boxes and (N,)
    labels in 0..K-1 (the categories' file order)."""
    from vvk.augment.jitter import source_box
    from vvk.data.detection import DetectionImages

    index = {c["id"]: k for k, c in enumerate(coco.categories)}
    images = DetectionImages(coco)
    for position in range(len(images)):
        pixels, info = images[position]
        image = coco.images[info["image_id"]]
        objects = [a for a in coco.annotations.get(image.id, ()) if not a.iscrowd]
        if pixels is None or not objects:
            continue
        boxes = [source_box(a.segmentation, image.height, image.width) for a in objects]
        yield pixels, torch.tensor(boxes), torch.tensor([index[a.category_id] for a in objects])


def training_crops(coco: CocoDataset, recipe: StandInRecipe) -> tuple[Tensor, Tensor]:
    """(M, 3, S, S) randomly enlarged and shifted crops of every object, ``draws`` each, and
    their (M,) labels."""
    rng = np.random.default_rng(recipe.seed)
    crops, labels = [], []
    for image, boxes, objects in labelled_images(coco):
        for _ in range(recipe.draws):
            size = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
            shift = torch.from_numpy(rng.uniform(-0.1, 0.1, size.shape)).float() * size
            scale = torch.from_numpy(rng.uniform(1.0, CROP_SCALES[-1], (len(boxes), 1))).float()
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + shift
            drawn = torch.cat([centre - size * scale / 2, centre + size * scale / 2], dim=1)
            crops.append(crop_regions(image, drawn, recipe.image_size, scales=(1.0,))[0])
            labels.append(objects)
    return torch.cat(crops), torch.cat(labels)


def region_accuracy(teacher: StandInTeacher, coco: CocoDataset) -> float:
    """Top-1 accuracy of the teacher's zero-shot classification of ``coco``'s objects, each
    embedded as ViLD embeds a proposal (1x and 1.5x crops summed, renormalised)."""
    classes = teacher.embed_vocabulary([[c["name"]] for c in coco.categories])  # (K, D)
    correct = total = 0
    for image, boxes, labels in labelled_images(coco):
        embeddings = region_embeddings(teacher, image, boxes)  # (N, D)
        correct += int(((embeddings @ classes.t()).argmax(dim=1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def train_stand_in_teacher(train: CocoDataset, recipe: StandInRecipe = StandInRecipe()) -> StandInTeacher:
    """A stand-in teacher trained on crops of ``train``'s objects (module docstring)."""
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    crops, labels = training_crops(train, recipe)
    teacher = StandInTeacher(
        [c["name"] for c in train.categories],
        dim=recipe.dim,
        image_size=recipe.image_size,
        width=recipe.width,
    ).train()
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.steps)
    for _ in range(recipe.steps):
        batch = torch.randint(len(crops), (recipe.batch_size,), generator=generator)
        loss = F.cross_entropy(teacher(crops[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return teacher.eval().requires_grad_(False)


RECIPE = StandInRecipe()  # the built-in stand-in's


def built_in_stand_in(recipe: StandInRecipe | None = None) -> StandInTeacher:
    """The stand-in teacher of the built-in example set (``RECIPE`` unless ``recipe`` is given):
    trained on its train split on first use (about a minute on a CPU), cached under the
    example's and the recipe's keys."""
    recipe = recipe or RECIPE
    from vvk.data.detection import open_coco
    from vvk.examples.digits_on_photos import DetectionExampleSpec, detection_example_dir
    from vvk.paths import cache_dir

    path = cache_dir() / "teachers" / f"stand-in-{DetectionExampleSpec().key()}-{recipe.key()}.safetensors"
    if path.is_file():
        return load_stand_in(path)
    root = detection_example_dir()
    logger.info("vild: training the stand-in teacher on the built-in example set (once)")
    teacher = train_stand_in_teacher(open_coco(root / "train"), recipe)
    accuracy = region_accuracy(teacher, open_coco(root / "val", what="val"))
    save_stand_in(teacher, Path(path), metadata={"recipe": asdict(recipe), "val_region_accuracy": accuracy})
    return load_stand_in(path)
