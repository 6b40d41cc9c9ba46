"""A built-in instance-segmentation example set that needs no download: handwritten digits
pasted onto photographs, in COCO format.

The objects are scikit-learn's 1,797 8×8 UCI digits (``sklearn.datasets.load_digits``, classes
"0".."9"), upscaled bicubically and thresholded for their masks; the backgrounds are crops of
the sample photographs that ship inside scikit-image. Each image holds a few digits at random
sizes, some overlapping: a later digit hides part of an earlier one, whose mask, box and area
then describe only what stays visible (COCO's convention for occluded objects). A digit takes a
random colour that stands out from the photo under it, or the photo's own negative, so it is
learnable but not a flat template.

Generalisation is measured honestly: val digits are a fixed, disjoint part of the 1,797 (per
class), and val backgrounds come from a band of each photo that train crops never touch.

Layout (each split a COCO dataset folder that ``vvk.data.coco.find_coco_layout`` reads)::

    <cache>/examples/digits-on-photos-<spec key>/
        train/annotations/instances_train.json   train/images/000001.jpg ...
        train10/...   the first 10% of train (same images, ids and annotations): low-data runs
        val/...
        manifest.json   written last: its presence marks a complete set

Generated once (about 3 s of one core for the default 400 + 100 images at 256², 13 MB) into a hidden
folder that is renamed into place, so an interrupted generation never leaves a set that
``detection_example_dir`` accepts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vvk.data.images import write_jpeg
from vvk.paths import cache_dir

NAME = "digits-on-photos"
CATEGORIES = tuple({"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10))
# Sample photographs bundled with scikit-image (no pooch download), colour and grey. "page" and
# "text" are left out: their glyphs would be unlabelled digit-like objects.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "cell",
    "clock",
    "brick",
    "grass",
    "gravel",
)
# A digit's upscaled ink (0..1) at or above this is inside its mask; 0.4 keeps the thin strokes
# of the 8×8 originals connected at every size.
INK_THRESHOLD = 0.4
# A pasted digit may hide at most this share of any earlier one (placement is redrawn otherwise):
# an object that is mostly hidden would be an unrecognisable label.
MIN_VISIBLE = 0.5
PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class DetectionExampleSpec:
    """What to generate; every field enters the cache key, so a changed spec regenerates."""

    train_images: int = 400
    val_images: int = 100
    size: int = 256  # square canvas, pixels
    min_objects: int = 2
    max_objects: int = 6
    min_scale: int = 16  # the longer side of a digit's patch, pixels (its tight box is ~80% of it)
    max_scale: int = 96
    low_data_fraction: float = 0.1  # the ``train10`` split: this share of train, from the start
    val_fraction: float = 0.2  # of each class's digits, held out for val
    val_photo_fraction: float = 0.3  # of each photo's longer side, held out for val backgrounds
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self}")
        if not 8 <= self.min_scale <= self.max_scale <= self.size:
            raise ValueError(f"need 8 <= min_scale <= max_scale <= size, got {self}")
        if self.size < 32 or self.train_images < 1 or self.val_images < 1:
            raise ValueError(f"need size >= 32 and at least one train and one val image, got {self}")
        fractions = (self.val_fraction, self.val_photo_fraction)
        if not (0 < self.low_data_fraction <= 1 and all(0 < f < 1 for f in fractions)):
            raise ValueError(f"need low_data_fraction in (0, 1] and val fractions in (0, 1), got {self}")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    @property
    def low_data_split(self) -> str:
        """Name of the low-data split: ``train10`` for a fraction of 0.1."""
        return f"train{round(100 * self.low_data_fraction)}"

    @property
    def low_data_images(self) -> int:
        return max(1, round(self.train_images * self.low_data_fraction))


def detection_example_path(spec: DetectionExampleSpec = DetectionExampleSpec()) -> Path:
    """Where the example set of ``spec`` lives in the cache, made or not."""
    return cache_dir() / "examples" / f"{NAME}-{spec.key()}"


def detection_example_dir(spec: DetectionExampleSpec = DetectionExampleSpec()) -> Path:
    """The root holding ``train/``, ``train10/`` and ``val/`` for ``spec``, generated on first use."""
    dest = detection_example_path(spec)
    if not (dest / "manifest.json").is_file():
        generate_detection_example(dest, spec)
    return dest


def generate_detection_example(
    dest: str | os.PathLike, spec: DetectionExampleSpec = DetectionExampleSpec()
) -> Path:
    """Write the example set to ``dest``: built in a hidden folder beside it, then renamed.

    ``dest`` is replaced when it exists without a ``manifest.json`` (not a complete set); a
    complete one that another process renamed into place first is kept.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_stages(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        _write_example(tmp, spec)
        _move_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _remove_stale_stages(dest: Path, max_age_s: float = 3600.0) -> None:
    """Remove hidden stages of ``dest`` left by killed runs (old enough not to be in progress)."""
    now = time.time()
    for stage in dest.parent.glob(f".{dest.name}.*.tmp"):
        try:
            if now - stage.stat().st_mtime > max_age_s:
                shutil.rmtree(stage, ignore_errors=True)
        except OSError:
            pass


def _move_into_place(tmp: Path, dest: Path) -> None:
    if dest.exists() and not (dest / "manifest.json").is_file():
        # Not a complete set (nothing vvk renames into place lacks the manifest): set it aside.
        trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        os.replace(dest, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, dest)
    except OSError:
        if not (dest / "manifest.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: keep its copy


# --------------------------------------------------------------------------------------------
# Sources: digits split by class, photos split by region


def load_digit_pools(spec: DetectionExampleSpec) -> dict[str, list[np.ndarray]]:
    """Indices into ``load_digits()`` by split and class: ``{"train": [idx of "0", ...], "val": ...}``.

    A fixed per-class share (``spec.val_fraction``) goes to val, so val digits are handwriting
    the model never saw in training.
    """
    from sklearn.datasets import load_digits

    target = load_digits().target
    rng = np.random.default_rng([spec.seed, 1])
    pools: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(target == digit))
        n_val = max(1, round(len(idx) * spec.val_fraction))
        pools["val"].append(np.sort(idx[:n_val]))
        pools["train"].append(np.sort(idx[n_val:]))
    return pools


def _digit_ink() -> np.ndarray:
    """(1797, 8, 8) float32 ink in 0..1."""
    from sklearn.datasets import load_digits

    return (load_digits().images / 16.0).astype(np.float32)


def load_photos() -> dict[str, np.ndarray]:
    """The background photographs as (H, W, 3) uint8 (grey ones replicated to three channels)."""
    import skimage.data

    photos = {}
    for name in PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        photos[name] = np.ascontiguousarray(img[:, :, :3])
    return photos


def photo_region(shape: tuple[int, ...], split: str, val_fraction: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the part of a photo that ``split`` crops from.

    Val takes the last ``val_fraction`` of the photo's longer side, train the rest, so no val
    background pixel was seen in training.
    """
    height, width = shape[:2]
    if width >= height:
        cut = round(width * (1 - val_fraction))
        return (0, 0, cut, height) if split == "train" else (cut, 0, width, height)
    cut = round(height * (1 - val_fraction))
    return (0, 0, width, cut) if split == "train" else (0, cut, width, height)


def crop_background(
    photo: np.ndarray, region: tuple[int, int, int, int], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random square crop inside ``region``, resized to (size, size, 3), maybe mirrored.

    Crops are at least ``size / 2`` wide where the region allows, so train and val backgrounds
    (whose regions differ in size) are enlarged, hence blurred, alike.
    """
    from PIL import Image

    x0, y0, x1, y1 = region
    short = min(x1 - x0, y1 - y0)
    side = int(rng.integers(min(short, size // 2), short + 1))
    cx = x0 + int(rng.integers(0, x1 - x0 - side + 1))
    cy = y0 + int(rng.integers(0, y1 - y0 - side + 1))
    flip = bool(rng.random() < 0.5)
    crop = Image.fromarray(photo[cy : cy + side, cx : cx + side]).resize((size, size), Image.BILINEAR)
    image = np.asarray(crop)
    if flip:
        image = image[:, ::-1]
    return np.ascontiguousarray(image), {"crop": [cx, cy, side], "flip": flip}


# --------------------------------------------------------------------------------------------
# One image


def digit_alpha(ink: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A (8, 8) digit upscaled into a (height, width) patch: (alpha float32, mask bool), cropped
    tight, so never larger than the patch.

    The digit gets a one-pixel empty border before upscaling, so the bicubic ramp stays inside
    the patch and the strokes fade out smoothly instead of being cut at the 8×8 frame.
    """
    from PIL import Image

    padded = np.pad(ink, 1)  # (10, 10)
    size = (max(4, width), max(4, height))
    up = np.asarray(Image.fromarray(padded, mode="F").resize(size, Image.BICUBIC))  # (height, width)
    mask = up >= INK_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:  # an 8×8 digit too faint to survive the threshold (none in sklearn's set)
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), bool)
    sl = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # The soft edge ramps from 0 at ink 0.2 to 1 at ink 0.6, so alpha >= 0.5 exactly on the mask.
    alpha = np.clip((up[sl] - (INK_THRESHOLD - 0.2)) / 0.4, 0.0, 1.0).astype(np.float32)
    return alpha, mask[sl]


def visible_masks(masks: list[np.ndarray]) -> list[np.ndarray]:
    """What stays visible of each full-canvas mask when they are pasted in order (later on top).

    An empty result means the object is fully hidden; callers drop it.
    """
    visible = []
    covered = np.zeros_like(masks[0], dtype=bool) if masks else None
    for mask in reversed(masks):
        visible.append(mask & ~covered)
        covered |= mask
    return visible[::-1]


def _fill(background: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The digit's pixels (h, w, 3) float: a contrasting colour with a gentle shading, or the
    photo's negative (when the photo there is not mid-grey)."""
    under = background.astype(np.float32)  # (h, w, 3)
    mean = under[mask].mean(axis=0)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    negative = 255.0 - under
    if rng.random() < 0.4 and abs(float((negative[mask] - under[mask]).mean(axis=0) @ luma)) >= 60:
        return negative
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if abs(float((colour - mean) @ luma)) >= 60:
            break
    else:  # a background no random colour stood out from: go to the far end of the grey scale
        colour = np.full(3, 255.0 if float(mean @ luma) < 128 else 0.0, np.float32)
    h, w = mask.shape
    ramp = np.linspace(-1, 1, max(h, w), dtype=np.float32)
    shade = 1.0 + rng.uniform(-0.15, 0.15) * (ramp[:h, None] + ramp[None, :w]) / 2  # (h, w)
    return colour * shade[:, :, None]


def _sample_digit(
    ink: np.ndarray, pools: list[np.ndarray], spec: DetectionExampleSpec, rng: np.random.Generator
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(label 0..9, index into load_digits, alpha, mask) of one randomly scaled digit."""
    label = int(rng.integers(10))
    index = int(rng.choice(pools[label]))
    # Log-uniform scale: as many digits per octave of size, small ones as common as large ones.
    scale = float(np.exp(rng.uniform(np.log(spec.min_scale), np.log(spec.max_scale))))
    aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))  # width / height
    height, width = (scale, scale * aspect) if aspect <= 1 else (scale / aspect, scale)
    alpha, mask = digit_alpha(ink[index], round(height), round(width))
    return label, index, alpha, mask


def _place(
    mask: np.ndarray, full: list[np.ndarray], spec: DetectionExampleSpec, rng: np.random.Generator
) -> tuple[int, int, np.ndarray] | None:
    """(y, x, full-canvas mask) of a position where ``mask`` leaves every earlier object at least
    ``MIN_VISIBLE`` of its pixels; None when no try found one."""
    h, w = mask.shape
    for _ in range(PLACEMENT_TRIES):
        y = int(rng.integers(0, spec.size - h + 1))
        x = int(rng.integers(0, spec.size - w + 1))
        canvas = np.zeros((spec.size, spec.size), bool)
        canvas[y : y + h, x : x + w] = mask
        visible = visible_masks([*full, canvas])
        if all(v.sum() >= MIN_VISIBLE * f.sum() for v, f in zip(visible[:-1], full, strict=True)):
            return y, x, canvas
    return None


def compose_image(
    background: np.ndarray,
    ink: np.ndarray,
    pools: list[np.ndarray],
    spec: DetectionExampleSpec,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Paste digits onto ``background`` (size, size, 3) uint8.

    Returns the image and, per object still visible, ``{"label", "digit_index", "mask"}`` with
    the visible full-canvas bool mask, in paste order.
    """
    image = background.astype(np.float32)
    objects: list[dict[str, Any]] = []
    full: list[np.ndarray] = []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        label, index, alpha, mask = _sample_digit(ink, pools, spec, rng)
        placed = _place(mask, full, spec, rng) if mask.any() else None
        if placed is None:
            continue
        y, x, canvas = placed
        h, w = mask.shape
        region = image[y : y + h, x : x + w]  # (h, w, 3) view
        fg = _fill(region, mask, rng)
        region += alpha[:, :, None] * (fg - region)
        full.append(canvas)
        objects.append({"label": label, "digit_index": index})
    for obj, visible in zip(objects, visible_masks(full), strict=True):
        obj["mask"] = visible
    kept = [obj for obj in objects if obj["mask"].any()]
    return np.clip(np.round(image), 0, 255).astype(np.uint8), kept


# --------------------------------------------------------------------------------------------
# Writing


def annotation_fields(mask: np.ndarray) -> dict[str, Any]:
    """COCO ``segmentation`` (compressed RLE), ``area`` and tight integer ``bbox`` of a bool mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    bbox = [x0, y0, int(cols[-1]) + 1 - x0, int(rows[-1]) + 1 - y0]
    segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return {"segmentation": segmentation, "area": int(mask.sum()), "bbox": bbox}


def _render_split(
    folder: Path, split: str, count: int, spec: DetectionExampleSpec, sources: dict[str, Any]
) -> tuple[list[dict], list[dict]]:
    """Render and write ``count`` images of ``split`` into ``folder/images``; their COCO records."""
    (folder / "images").mkdir(parents=True)
    names = list(sources["photos"])
    images, annotations = [], []
    for i in range(count):
        # One generator per image: an image depends only on (seed, split, index).
        rng = np.random.default_rng([spec.seed, 2, 0 if split == "train" else 1, i])
        photo_name = names[int(rng.integers(len(names)))]
        photo = sources["photos"][photo_name]
        region = photo_region(photo.shape, split, spec.val_photo_fraction)
        background, crop = crop_background(photo, region, spec.size, rng)
        image, objects = compose_image(background, sources["ink"], sources["pools"][split], spec, rng)
        image_id, file_name = i + 1, f"{i + 1:06d}.jpg"
        write_jpeg(folder / "images" / file_name, image)
        background_record = {"photo": photo_name, **crop}
        images.append(
            {"id": image_id, "file_name": file_name, "width": spec.size, "height": spec.size}
            | {"background": background_record}
        )
        for obj in objects:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": obj["label"] + 1}
                | annotation_fields(obj["mask"])
                | {"iscrowd": 0, "digit_index": obj["digit_index"]}
            )
    return images, annotations


def _write_instances(folder: Path, split: str, images: list[dict], annotations: list[dict], key: str) -> None:
    data = {
        "info": {"description": f"vvk built-in example '{NAME}', split {split}", "version": key},
        "licenses": [],
        "categories": list(CATEGORIES),
        "images": images,
        "annotations": annotations,
    }
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(data) + "\n")


def _write_subset(
    src: Path, dst: Path, split: str, images: list[dict], annotations: list[dict], key: str
) -> dict[str, int]:
    """A split made of some of ``src``'s images, with their ids and annotations unchanged."""
    ids = {im["id"] for im in images}
    kept = [a for a in annotations if a["image_id"] in ids]
    (dst / "images").mkdir(parents=True)
    for im in images:
        shutil.copyfile(src / "images" / im["file_name"], dst / "images" / im["file_name"])
    _write_instances(dst, split, images, kept, key)
    return {"images": len(images), "annotations": len(kept)}


def _write_example(root: Path, spec: DetectionExampleSpec) -> None:
    sources = {"photos": load_photos(), "ink": _digit_ink(), "pools": load_digit_pools(spec)}
    low = spec.low_data_split
    counts = {}
    for split, count in (("train", spec.train_images), ("val", spec.val_images)):
        images, annotations = _render_split(root / split, split, count, spec, sources)
        _write_instances(root / split, split, images, annotations, spec.key())
        counts[split] = {"images": len(images), "annotations": len(annotations)}
        if split == "train":
            low_images = images[: spec.low_data_images]
            counts[low] = _write_subset(root / split, root / low, low, low_images, annotations, spec.key())
    manifest = {
        "name": NAME,
        "spec": asdict(spec),
        "splits": counts,
        "categories": list(CATEGORIES),
        "sources": {"digits": "sklearn.datasets.load_digits", "photos": list(PHOTOS)},
    }
    # Written last: a folder without it is not a complete set.
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
