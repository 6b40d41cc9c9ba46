"""Training the stand-in teacher on the built-in example set (see :mod:`vvk.methods.vild.teacher`).

The teacher sees crops of every object of the example's train split, all 10 categories, each
crop drawn at a random enlargement in [1, 1.5] of its box (the range ViLD's 1x and 1.5x crops
span) and shifted by up to a tenth of its size, and crops of the photographs around them, which
it learns as one more class, ``background``. CLIP knows what a patch of sky or wall is, and it
is not a digit; a teacher that knew only digits would embed the many background proposals ViLD
distils next to some digit's row, and teach the detector to find that digit everywhere. The
objective is CLIP's image-to-class one: softmax cross-entropy of the cosines between a crop's
embedding and the K + 1 rows of the class table, times CLIP's trained scale, 100 (the one ViLD's
classifier copies: a teacher that settled at a softer scale would leave the detector margins
that x 100 turns into certainties). It is scored on the val split's objects
(top-1 over the K categories) and background crops (closer to ``background`` than to every
category), embedded as ViLD embeds proposals (1x and 1.5x crops summed). ``built_in_stand_in()``
trains it once and caches it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

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
    background_draws: int = 8  # background crops per training image
    steps: int = 600
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # the cosine scale of its objective, fixed at CLIP's trained one (logit_scale.exp() = 100,
    # the ceiling CLIP clips it to), which ViLD's classifier copies (temperature 100);
    # 0: learned from CLIP's initial 1/0.07
    logit_scale: float = 100.0
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


BACKGROUND = "background"  # the table's last row: what the background crops learn
MAX_BACKGROUND_IOU = 0.3  # a crop overlapping an object less than this is background


def background_boxes(boxes: Tensor, height: int, width: int, count: int, rng: np.random.Generator) -> Tensor:
    """Up to ``count`` (C, 4) XYXY boxes of the image that overlap none of its (N, 4) object
    ``boxes`` by ``MAX_BACKGROUND_IOU`` or more, their sides drawn from the objects' range (1x to
    2x), as an RPN's background proposals would be."""
    sides = (boxes[:, 2:] - boxes[:, :2]).flatten()  # (2N,)
    low, high = float(sides.min()), 2 * float(sides.max())
    tries = 8 * count  # candidates drawn at once; the ones on an object are dropped
    size = torch.from_numpy(rng.uniform(low, min(high, height, width), (tries, 2))).float()  # (T, 2)
    corner = torch.from_numpy(rng.uniform(0, 1, (tries, 2))).float() * (torch.tensor([width, height]) - size)
    drawn = torch.cat([corner, corner + size], dim=1)  # (T, 4)
    clear = box_iou(drawn, boxes.float()).amax(dim=1) < MAX_BACKGROUND_IOU  # (T,)
    return drawn[clear][:count]


def training_crops(coco: CocoDataset, recipe: StandInRecipe) -> tuple[Tensor, Tensor]:
    """(M, 3, S, S) randomly enlarged and shifted crops of every object, ``draws`` each, and
    ``background_draws`` background crops per image; their (M,) labels, K for background."""
    rng = np.random.default_rng(recipe.seed)
    crops, labels = [], []
    background = len(coco.categories)
    for image, boxes, objects in labelled_images(coco):
        drawn = background_boxes(boxes, *image.shape[1:], recipe.background_draws, rng)
        crops.append(crop_regions(image, drawn, recipe.image_size, scales=(1.0,))[0])
        labels.append(torch.full((len(drawn),), background))
        for _ in range(recipe.draws):
            size = boxes[:, 2:] - boxes[:, :2]  # (N, 2)
            shift = torch.from_numpy(rng.uniform(-0.1, 0.1, size.shape)).float() * size
            scale = torch.from_numpy(rng.uniform(1.0, CROP_SCALES[-1], (len(boxes), 1))).float()
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + shift
            drawn = torch.cat([centre - size * scale / 2, centre + size * scale / 2], dim=1)
            crops.append(crop_regions(image, drawn, recipe.image_size, scales=(1.0,))[0])
            labels.append(objects)
    return torch.cat(crops), torch.cat(labels)


def region_accuracy(teacher: StandInTeacher, coco: CocoDataset, *, seed: int = 0) -> dict[str, float]:
    """How well the teacher tells ``coco``'s objects and background apart, each region embedded
    as ViLD embeds a proposal (1x and 1.5x crops summed, renormalised): ``objects``, the top-1
    accuracy of its zero-shot classification over the K categories; ``background``, the share of
    background crops (:func:`background_boxes`, 8 per image) closer to its ``background`` row
    than to every category's."""
    names = [[c["name"]] for c in coco.categories]
    rows = teacher.embed_vocabulary([*names, [BACKGROUND]])  # (K + 1, D), unit rows
    classes = rows[:-1]  # (K, D)
    rng = np.random.default_rng(seed)
    correct, total, rejected, drawn = 0, 0, 0, 0
    for image, boxes, labels in labelled_images(coco):
        embeddings = region_embeddings(teacher, image, boxes)  # (N, D)
        correct += int(((embeddings @ classes.t()).argmax(dim=1) == labels).sum())
        total += len(labels)
        background = region_embeddings(teacher, image, background_boxes(boxes, *image.shape[1:], 8, rng))
        rejected += int(((background @ rows.t()).argmax(dim=1) == len(names)).sum())
        drawn += len(background)
    return {"objects": correct / max(total, 1), "background": rejected / max(drawn, 1)}


def train_stand_in_teacher(train: CocoDataset, recipe: StandInRecipe = StandInRecipe()) -> StandInTeacher:
    """A stand-in teacher trained on crops of ``train``'s objects (module docstring)."""
    generator = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    crops, labels = training_crops(train, recipe)
    teacher = StandInTeacher(
        [*(c["name"] for c in train.categories), BACKGROUND],
        dim=recipe.dim,
        image_size=recipe.image_size,
        width=recipe.width,
    ).train()
    if recipe.logit_scale:
        teacher.logit_scale.data.fill_(math.log(recipe.logit_scale))
        teacher.logit_scale.requires_grad_(False)
    trained = [p for p in teacher.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=recipe.lr, weight_decay=recipe.weight_decay)
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
    metadata = {"recipe": asdict(recipe), "val_region_accuracy": accuracy["objects"],
                "val_background_accuracy": accuracy["background"]}  # fmt: skip
    save_stand_in(teacher, Path(path), metadata=metadata)
    return load_stand_in(path)
