"""COCO instance annotations: finding, reading, validating, decoding and writing.

Structural problems in an annotation file (bad JSON, a missing or mistyped field) are a
``VvkError`` naming the file and the position or field. Problems with single records (an
annotation pointing at an unknown image or category, a degenerate polygon, a missing image
file) are skipped and counted in ``CocoDataset.issues``, because one bad record in a
100k-image dataset should not stop a run; callers report those counts.

An image's ``file_name`` must name a file inside the images folder (``vvk.data.paths.inside``:
no absolute path, no ``..`` or link leading out). An image that breaks this is skipped with its
annotations and counted as ``image_outside_folder``: a dataset can never make vvk read, and
copy into its output, a file from elsewhere on the disk.

Images are read through ``vvk.data.images``.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vvk.data.paths import PathOutside, inside
from vvk.errors import VvkError


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int
    license: int | None = None


@dataclass(frozen=True)
class CocoAnnotation:
    id: int
    image_id: int
    category_id: int
    segmentation: Any  # list of polygons, or an RLE dict
    iscrowd: bool


@dataclass
class CocoDataset:
    """One instances file with its images folder, records validated, bad ones set aside.

    ``images`` keeps the file's order; ``annotations`` maps an image id to its usable
    annotations (file order); ``issues`` counts what was skipped, by reason.
    """

    annotations_path: Path
    images_dir: Path
    images: dict[int, CocoImage]
    annotations: dict[int, list[CocoAnnotation]]
    categories: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)
    licenses: list[Any] = field(default_factory=list)
    issues: Counter = field(default_factory=Counter)

    @property
    def split(self) -> str:
        """``train2017`` for ``instances_train2017.json``; the file stem otherwise."""
        stem = self.annotations_path.stem
        return stem[len("instances_") :] if stem.startswith("instances_") and stem != "instances_" else stem

    def image_path(self, image: CocoImage) -> Path:
        """Where the image's file is; inside ``images_dir`` for every image ``load_coco`` kept."""
        return self.images_dir / image.file_name

    def category_names(self) -> dict[int, str]:
        return {c["id"]: c["name"] for c in self.categories}


# --------------------------------------------------------------------------------------------
# Finding a dataset on disk


def find_coco_layout(
    root: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """(annotations json, images folder) of a COCO dataset.

    ``root`` is a dataset folder (``annotations/instances_<split>.json`` + ``<split>/``, or
    ``instances_*.json`` + ``images/`` side by side) or an ``instances_*.json`` file.
    ``images`` / ``annotations`` override what is found.
    """
    root = Path(root)
    if not root.exists():
        raise VvkError(f"{root}: no such file or folder")
    ann = Path(annotations) if annotations is not None else _find_annotations(root)
    if not ann.is_file():
        raise VvkError(f"{ann}: no such annotation file")
    img_dir = Path(images) if images is not None else _find_images_dir(root, ann)
    if not img_dir.is_dir():
        raise VvkError(f"{img_dir}: no such images folder")
    return ann, img_dir


def _find_annotations(root: Path) -> Path:
    if root.is_file():
        return root
    candidates = sorted(root.glob("annotations/instances_*.json")) + sorted(root.glob("instances_*.json"))
    if not candidates:
        raise VvkError(
            f"{root}: no instances_*.json found in {root}/annotations or {root}",
            hint="give the file with --annotations",
        )
    if len(candidates) > 1:
        names = ", ".join(str(c.relative_to(root)) for c in candidates)
        raise VvkError(f"{root}: several annotation files ({names})", hint="choose one with --annotations")
    return candidates[0]


def _find_images_dir(root: Path, ann: Path) -> Path:
    split = ann.stem[len("instances_") :] if ann.stem.startswith("instances_") else ann.stem
    base = root if root.is_dir() else ann.parent
    for folder in (base / split, ann.parent.parent / split, base / "images", ann.parent / "images", base):
        if folder.is_dir() and folder.name != "annotations" and any(folder.iterdir()):
            return folder
    raise VvkError(f"{root}: no images folder '{split}' or 'images' found", hint="give it with --images")


# --------------------------------------------------------------------------------------------
# Reading and validating


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a syntax error is one line naming the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VvkError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise VvkError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise VvkError(f"{path}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None


def load_coco(annotations_path: str | os.PathLike, images_dir: str | os.PathLike) -> CocoDataset:
    """Read and validate an instances file; usable records in, bad ones counted in ``issues``."""
    path = Path(annotations_path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise VvkError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    issues: Counter = Counter()
    listed = _read_images(path, _list_field(path, data, "images"))
    images = {image_id: image for image_id, image in listed.items() if _inside(images_dir, image.file_name)}
    outside = listed.keys() - images.keys()
    issues["image_outside_folder"] = len(outside)
    categories = _read_categories(path, _list_field(path, data, "categories"))
    known_categories = {c["id"] for c in categories}
    annotations: dict[int, list[CocoAnnotation]] = {image_id: [] for image_id in images}
    seen_ids: set[int] = set()
    for i, raw in enumerate(_list_field(path, data, "annotations")):
        ann = _read_annotation(path, i, raw, seen_ids)
        if ann.image_id in outside:
            continue  # skipped with its image, which is counted
        reason = _annotation_problem(ann, images.get(ann.image_id), known_categories)
        if reason:
            issues[reason] += 1
            continue
        annotations[ann.image_id].append(ann)
    issues["images_without_objects"] = sum(1 for anns in annotations.values() if not anns)
    return CocoDataset(
        annotations_path=path,
        images_dir=Path(images_dir),
        images=images,
        annotations=annotations,
        categories=categories,
        info=data.get("info") if isinstance(data.get("info"), dict) else {},
        licenses=data.get("licenses") if isinstance(data.get("licenses"), list) else [],
        issues=+issues,
    )


def _inside(images_dir: str | os.PathLike, file_name: str) -> bool:
    try:
        inside(images_dir, file_name)
    except PathOutside:
        return False
    return True


def _list_field(path: Path, data: dict, key: str) -> list:
    if key not in data:
        raise VvkError(f"{path}: missing top-level field '{key}'")
    if not isinstance(data[key], list):
        raise VvkError(f"{path}: field '{key}' must be a list, got {type(data[key]).__name__}")
    return data[key]


def _field(path: Path, where: str, raw: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(raw, dict):
        raise VvkError(f"{path}: {where} must be an object, got {type(raw).__name__}")
    if key not in raw:
        raise VvkError(f"{path}: {where}: missing field '{key}'")
    value = raw[key]
    # bool is an int in Python; an id of `true` is still a mistake.
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise VvkError(f"{path}: {where}.{key}: expected {names}, got {json.dumps(value)[:40]}")
    return value


def _read_images(path: Path, raws: list) -> dict[int, CocoImage]:
    images: dict[int, CocoImage] = {}
    for i, raw in enumerate(raws):
        where = f"images[{i}]"
        image = CocoImage(
            id=_field(path, where, raw, "id", int),
            file_name=_field(path, where, raw, "file_name", str),
            width=_field(path, where, raw, "width", int),
            height=_field(path, where, raw, "height", int),
            license=raw.get("license") if isinstance(raw.get("license"), int) else None,
        )
        if image.width <= 0 or image.height <= 0:
            raise VvkError(f"{path}: {where}: width and height must be positive")
        if image.id in images:
            raise VvkError(f"{path}: {where}.id: duplicate image id {image.id}")
        images[image.id] = image
    return images


def _read_categories(path: Path, raws: list) -> list[dict[str, Any]]:
    seen: set[int] = set()
    for i, raw in enumerate(raws):
        cid = _field(path, f"categories[{i}]", raw, "id", int)
        _field(path, f"categories[{i}]", raw, "name", str)
        if cid in seen:
            raise VvkError(f"{path}: categories[{i}].id: duplicate category id {cid}")
        seen.add(cid)
    return [dict(raw) for raw in raws]


def _read_annotation(path: Path, i: int, raw: Any, seen_ids: set[int]) -> CocoAnnotation:
    where = f"annotations[{i}]"
    ann_id = _field(path, where, raw, "id", int)
    if ann_id in seen_ids:
        raise VvkError(f"{path}: {where}.id: duplicate annotation id {ann_id}")
    seen_ids.add(ann_id)
    return CocoAnnotation(
        id=ann_id,
        image_id=_field(path, where, raw, "image_id", int),
        category_id=_field(path, where, raw, "category_id", int),
        segmentation=raw.get("segmentation"),
        iscrowd=bool(raw.get("iscrowd", 0)),
    )


def _annotation_problem(
    ann: CocoAnnotation, image: CocoImage | None, known_categories: set[int]
) -> str | None:
    """Why this annotation cannot be used (a key of ``CocoDataset.issues``), or None."""
    if image is None:
        return "annotation_unknown_image"
    if ann.category_id not in known_categories:
        return "annotation_unknown_category"
    seg = ann.segmentation
    if not seg:
        return "annotation_without_mask"
    if isinstance(seg, dict):
        ok = isinstance(seg.get("counts"), str | list) and seg.get("size") == [image.height, image.width]
        return None if ok else "annotation_bad_segmentation"
    if not isinstance(seg, list) or not all(_is_polygon(p) for p in seg):
        return "annotation_bad_segmentation"
    xs = [x for p in seg for x in p[0::2]]
    ys = [y for p in seg for y in p[1::2]]
    if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= image.width or min(ys) >= image.height:
        return "annotation_outside_image"
    if sum(abs(polygon_area(p)) for p in seg) == 0:
        return "annotation_zero_area"
    return None


def _is_polygon(p: Any) -> bool:
    return (
        isinstance(p, list)
        and len(p) >= 6
        and len(p) % 2 == 0
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in p)
    )


def polygon_area(flat: list[float]) -> float:
    """Signed shoelace area of a flat ``[x0, y0, x1, y1, ...]`` polygon."""
    xs = np.asarray(flat[0::2], dtype=np.float64)
    ys = np.asarray(flat[1::2], dtype=np.float64)
    return 0.5 * float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))


# --------------------------------------------------------------------------------------------
# Masks


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A polygon list or RLE (compressed or not) as an ``(H, W)`` bool mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def rle_area_and_box(rle: dict[str, Any]) -> tuple[int, list[int]]:
    """Pixel count and tight ``[x, y, w, h]`` box of a compressed RLE, as pycocotools sees it."""
    from pycocotools import mask as mask_utils

    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return int(mask_utils.area(coded)), [int(v) for v in mask_utils.toBbox(coded)]


def check_instances(annotations_path: str | os.PathLike, images_dir: str | os.PathLike) -> list[str]:
    """Consistency problems of an instances file, one line each (empty when it is sound).

    Every image file exists with the listed size; ids are unique; every annotation points at a
    known image and category, its mask decodes inside its image, its ``area`` is the mask's
    pixel count (> 0) and its ``bbox`` is the mask's tight box. That last check is strict: it
    holds for what vvk writes, while original COCO boxes (made from polygons) differ by
    fractions of a pixel.
    """
    from PIL import Image

    path, images_dir = Path(annotations_path), Path(images_dir)
    data = read_json(path)
    problems = []
    images = {}
    for im in data.get("images", []):
        images[im["id"]] = im
        if not _inside(images_dir, im["file_name"]):
            problems.append(f"image {im['id']}: {im['file_name']} is outside {images_dir}")
            continue
        try:
            with Image.open(images_dir / im["file_name"]) as f:
                if f.size != (im["width"], im["height"]):
                    problems.append(
                        f"image {im['id']}: file is {f.size}, json says {(im['width'], im['height'])}"
                    )
        except OSError:
            problems.append(f"image {im['id']}: cannot open {im['file_name']}")
    categories = {c["id"] for c in data.get("categories", [])}
    ids = [a["id"] for a in data.get("annotations", [])]
    if len(ids) != len(set(ids)) or len(images) != len(data.get("images", [])):
        problems.append("duplicate image or annotation ids")
    for ann in data.get("annotations", []):
        problems.extend(f"annotation {ann['id']}: {p}" for p in _annotation_problems(ann, images, categories))
    return problems


def _annotation_problems(ann: dict, images: dict[int, dict], categories: set[int]) -> list[str]:
    image = images.get(ann["image_id"])
    if image is None:
        return [f"unknown image {ann['image_id']}"]
    problems = [] if ann["category_id"] in categories else [f"unknown category {ann['category_id']}"]
    seg = ann["segmentation"]
    if isinstance(seg, dict) and seg.get("size") != [image["height"], image["width"]]:
        return [*problems, f"mask size {seg.get('size')} is not the image's"]
    mask = decode_segmentation(seg, image["height"], image["width"])
    area, box = int(mask.sum()), tight_box(mask)
    if area == 0 or ann["area"] <= 0:
        return [*problems, "zero area"]
    if ann["area"] != area:
        problems.append(f"area {ann['area']} but the mask has {area} pixels")
    bbox = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    if list(ann["bbox"]) != bbox:
        problems.append(f"bbox {ann['bbox']} but the mask's tight box is {bbox}")
    return problems


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (x0, y0, x1, y1) of a bool mask in pixel edges (x1, y1 exclusive); None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
