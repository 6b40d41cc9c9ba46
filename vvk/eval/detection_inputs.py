"""Checking the two inputs of a detection evaluation before cocoapi or lvis sees them.

pycocotools and lvis trust their inputs: a results file that is an object, an image or
category id they do not know, a string id, a NaN box or a missing field ends in an
``AssertionError`` or ``KeyError`` deep inside them, or in a silently wrong score (a box of
negative width gets a negative area and is dropped from every area range; a ground-truth
annotation with id 0 is never counted as matched, because the matching stores ids and tests
them for truth); and an RLE mask whose run lengths do not add up to the image makes
``pycocotools.mask.iou`` loop forever. Each such problem here is one ``VvkError`` naming the
file, the record and the field.

What goes on to the evaluator is a fresh list of plain records (ints, floats, compressed
RLE masks): callers' lists are never changed, although cocoapi annotates what it is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from vvk.errors import VvkError

RESULTS_HINT = "a COCO results file is a JSON list of {image_id, category_id, bbox: [x, y, w, h], score}"
LVIS_IMAGE_FIELDS = ("neg_category_ids", "not_exhaustive_category_ids")
LVIS_FREQUENCIES = ("r", "c", "f")


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(where: str, raw: Mapping, key: str) -> int:
    """An id: an integer (an integral float such as ``3.0`` is taken as one; JSON writers make
    those, and cocoapi matches them as Python does). A string id never matches an int."""
    if key not in raw:
        raise VvkError(f"{where}: missing field '{key}'")
    value = raw[key]
    if isinstance(value, str):
        raise VvkError(f"{where}: {key} {_show(value)} is a string, expected an integer")
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise VvkError(f"{where}: {key}: expected an integer, got {_show(value)}")


def _number(where: str, raw: Mapping, key: str) -> float:
    if key not in raw:
        raise VvkError(f"{where}: missing field '{key}'")
    value = raw[key]
    if not isinstance(value, Real) or isinstance(value, bool):
        raise VvkError(f"{where}: {key}: expected a number, got {_show(value)}")
    if not math.isfinite(value):
        raise VvkError(f"{where}: {key} is {value}, expected a finite number")
    return float(value)


def _box(where: str, value: Any) -> list[float]:
    """An ``[x, y, w, h]`` box of finite numbers with no negative side. A zero side is kept:
    cocoapi scores such a box as a detection that matches nothing, and a detector can clip a
    box to zero width at the image border."""
    ok = isinstance(value, list | tuple) and len(value) == 4
    if not ok or not all(isinstance(v, Real) and not isinstance(v, bool) for v in value):
        raise VvkError(f"{where}: bbox: expected [x, y, width, height], got {_show(value)}")
    box = [float(v) for v in value]
    for name, v in zip(("x", "y", "width", "height"), box, strict=True):
        if not math.isfinite(v):
            raise VvkError(f"{where}: bbox {name} is {v} (bbox is [x, y, width, height])")
    for name, v in (("width", box[2]), ("height", box[3])):
        if v < 0:
            raise VvkError(f"{where}: bbox {name} {v:g} is negative (bbox is [x, y, width, height])")
    return box


# --------------------------------------------------------------------------------------------
# Masks


def rle_counts(counts: str | bytes) -> np.ndarray | None:
    """The run lengths of a compressed COCO RLE string, or None when it is malformed.

    The coding is pycocotools' ``rleFrString`` (``cocodataset/cocoapi:
    common/maskApi.c``): each run is little-endian 5-bit groups offset by 48, 0x20 set on all
    but a run's last group, 0x10 of that last group the sign; runs from the fourth on are
    stored as the difference to the run two before. Decoded here, with numpy, because the C
    code checks nothing (a run left open reads past the string's end).
    """
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except UnicodeEncodeError:
        return None
    chunks = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if chunks.size == 0 or chunks.min() < 0 or chunks.max() > 63 or chunks[-1] & 0x20:
        return None
    ends = np.flatnonzero((chunks & 0x20) == 0)  # the last group of each run
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 12:  # 60 bits: more than any image's pixel count needs
        return None
    position = np.arange(chunks.size) - np.repeat(starts, lengths)  # group index within its run
    values = np.add.reduceat((chunks & 0x1F) << (5 * position), starts)
    negative = (chunks[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    runs = values.copy()
    # runs[i] = values[i] + runs[i - 2] from i = 3 on: a running sum along each parity.
    runs[3::2] = np.cumsum(values[1::2])[1:]
    runs[4::2] = np.cumsum(values[2::2])[1:]
    return runs


def _rle_problem(segmentation: Mapping, height: int, width: int) -> str | None:
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, Integral) for v in size)):
        return f"RLE size: expected [height, width], got {_show(size)}"
    if list(size) != [height, width]:
        return f"RLE size {list(size)} is not the image's [{height}, {width}]"
    if isinstance(counts, list):
        runs = np.asarray(counts) if all(isinstance(v, Integral) for v in counts) else None
    elif isinstance(counts, str | bytes):
        runs = rle_counts(counts)
    else:
        return f"RLE counts: expected a string or a list of integers, got {_show(counts)}"
    if runs is None or (runs.size and runs.min() < 0):
        return "RLE counts: malformed"
    if int(runs.sum()) != height * width:
        return f"RLE counts cover {int(runs.sum())} pixels, the image has {height * width}"
    return None


def _is_polygon(p: Any) -> bool:
    return (
        isinstance(p, list | tuple)
        and len(p) >= 6  # pycocotools reads a 4-number "polygon" as a box
        and len(p) % 2 == 0
        and all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in p)
    )


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why pycocotools cannot use ``segmentation`` (polygons or an RLE) on a height×width image."""
    if isinstance(segmentation, Mapping):
        return _rle_problem(segmentation, height, width)
    if isinstance(segmentation, list | tuple) and segmentation and all(map(_is_polygon, segmentation)):
        return None
    return f"expected polygons [[x0, y0, x1, y1, x2, y2, ...], ...] or an RLE, got {_show(segmentation)}"


def compressed_rle(segmentation: Any, height: int, width: int) -> dict:
    """A checked segmentation as one compressed RLE, the only mask form cocoapi and lvis accept
    in results."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, Mapping) and not isinstance(segmentation["counts"], list):
        return {"size": [height, width], "counts": segmentation["counts"]}
    if isinstance(segmentation, Mapping):
        return mask_utils.frPyObjects(dict(segmentation), height, width)
    polygons = [[float(v) for v in p] for p in segmentation]
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


# --------------------------------------------------------------------------------------------
# Ground truth


def _list_field(name: str, data: Mapping, key: str) -> list:
    if key not in data:
        raise VvkError(f"{name}: missing top-level field '{key}'")
    if not isinstance(data[key], list):
        raise VvkError(f"{name}: field '{key}' must be a list, got {type(data[key]).__name__}")
    return data[key]


def _object(where: str, raw: Any) -> Mapping:
    if not isinstance(raw, Mapping):
        raise VvkError(f"{where}: expected an object, got {_show(raw)}")
    return raw


def is_lvis(data: Mapping) -> bool:
    """LVIS marks its categories with ``frequency`` and its images with the federated lists."""
    categories = data.get("categories") if isinstance(data.get("categories"), list) else []
    images = data.get("images") if isinstance(data.get("images"), list) else []
    return any(isinstance(c, Mapping) and "frequency" in c for c in categories) or any(
        isinstance(im, Mapping) and any(k in im for k in LVIS_IMAGE_FIELDS) for im in images
    )


def check_ground_truth(data: Any, name: str) -> str:
    """Check an instances file's structure for cocoapi or lvis; return ``"coco"`` or ``"lvis"``.

    Masks are checked separately (``check_ground_truth_masks``): box evaluation never reads them.
    """
    if not isinstance(data, Mapping):
        raise VvkError(f"{name}: expected a JSON object at the top level, got {type(data).__name__}")
    lvis = is_lvis(data)
    marker = "an LVIS file: its categories have 'frequency' or its images the federated lists"
    for i, raw in enumerate(_list_field(name, data, "images")):
        where = f"{name}: images[{i}]"
        image = _object(where, raw)
        _integer(where, image, "id")
        for key in ("height", "width"):
            if _integer(where, image, key) <= 0:
                raise VvkError(f"{where}: {key} must be positive")
        for key in LVIS_IMAGE_FIELDS if lvis else ():
            ids = image.get(key)
            if not isinstance(ids, list) or not all(isinstance(v, Integral) for v in ids):
                raise VvkError(f"{where}: {key}: expected a list of category ids ({marker})")
    for i, raw in enumerate(_list_field(name, data, "categories")):
        where = f"{name}: categories[{i}]"
        _integer(where, _object(where, raw), "id")
        if lvis and raw.get("frequency") not in LVIS_FREQUENCIES:
            got = _show(raw["frequency"]) if "frequency" in raw else "none"
            raise VvkError(f"{where}: frequency: expected 'r', 'c' or 'f' ({marker}), got {got}")
    for i, raw in enumerate(_list_field(name, data, "annotations")):
        _check_gt_annotation(f"{name}: annotations[{i}]", _object(f"{name}: annotations[{i}]", raw), lvis)
    return "lvis" if lvis else "coco"


def _check_gt_annotation(where: str, ann: Mapping, lvis: bool) -> None:
    ann_id = _integer(where, ann, "id")
    if ann_id <= 0:
        raise VvkError(
            f"{where}: id {ann_id}: annotation ids must be positive "
            "(cocoapi and lvis take a match with id 0 for no match)"
        )
    _integer(where, ann, "image_id")
    _integer(where, ann, "category_id")
    if "bbox" not in ann:
        raise VvkError(f"{where}: missing field 'bbox'")
    _box(where, ann["bbox"])
    if _number(where, ann, "area") < 0:
        raise VvkError(f"{where}: area {ann['area']} is negative")
    if not lvis and ann.get("iscrowd", None) not in (0, 1):  # True/False are 1/0 here, as cocoapi reads them
        got = _show(ann["iscrowd"]) if "iscrowd" in ann else "none"
        raise VvkError(f"{where}: iscrowd: expected 0 or 1, got {got}")


def check_ground_truth_masks(data: Mapping, name: str) -> None:
    """Every annotation's segmentation is usable on its image (for mask evaluation)."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in sizes:
            continue  # never evaluated: cocoapi and lvis only read the annotations of listed images
        where = f"{name}: annotations[{i}]"
        if "segmentation" not in ann:
            raise VvkError(
                f"{where}: missing field 'segmentation' (mask evaluation needs one on every record)"
            )
        problem = segmentation_problem(ann["segmentation"], *sizes[ann["image_id"]])
        if problem:
            raise VvkError(f"{where}: segmentation: {problem}")


# --------------------------------------------------------------------------------------------
# Results


def check_results(
    raw: Any,
    *,
    images: Mapping[int, tuple[int, int]],
    categories: Collection[int],
    iou_type: str,
    name: str,
    gt_name: str,
) -> list[dict]:
    """Checked copies of detection results, ready for cocoapi or lvis.

    Args:
        raw: the parsed results (a list of records).
        images: ``(height, width)`` of each ground-truth image, by id.
        categories: the ground truth's category ids.
        iou_type: ``"bbox"`` or ``"segm"``.
        name, gt_name: how errors name the results and the ground truth.

    Box evaluation takes a record's ``bbox``, or the box of its mask when it has none. Mask
    evaluation takes its ``segmentation`` and drops the box, so that the area ranges (small,
    medium, large) use the mask's area as the ground truth does: cocoapi takes a result's area
    from its box when there is one (the fix of ``facebookresearch/detectron2:
    detectron2/evaluation/coco_evaluation.py``, ``_evaluate_predictions_on_coco``).
    """
    if isinstance(raw, Mapping):
        looks = " (this looks like a ground-truth instances file)" if "annotations" in raw else ""
        raise VvkError(f"{name}: expected a JSON list of detections, got an object{looks}", hint=RESULTS_HINT)
    if not isinstance(raw, list | tuple):
        raise VvkError(
            f"{name}: expected a JSON list of detections, got {type(raw).__name__}", hint=RESULTS_HINT
        )
    category_set = set(categories)
    return [
        _result(f"{name}: record {i}", record, images, category_set, iou_type, gt_name)
        for i, record in enumerate(raw)
    ]


def _result(
    where: str,
    raw: Any,
    images: Mapping[int, tuple[int, int]],
    categories: set[int],
    iou_type: str,
    gt_name: str,
) -> dict:
    record = _object(where, raw)
    image_id = _integer(where, record, "image_id")
    if image_id not in images:
        raise VvkError(f"{where}: image_id {image_id} is not an image of {gt_name}")
    category_id = _integer(where, record, "category_id")
    if category_id not in categories:
        raise VvkError(f"{where}: category_id {category_id} is not a category of {gt_name}")
    out = {"image_id": image_id, "category_id": category_id, "score": _number(where, record, "score")}
    height, width = images[image_id]
    if iou_type == "bbox" and "bbox" in record:
        out["bbox"] = _box(where, record["bbox"])
        return out
    if "segmentation" not in record:
        if iou_type == "segm":
            raise VvkError(
                f"{where}: missing field 'segmentation' (mask evaluation needs a mask on every record)"
            )
        raise VvkError(f"{where}: missing field 'bbox' (and no 'segmentation' to take a box from)")
    problem = segmentation_problem(record["segmentation"], height, width)
    if problem:
        raise VvkError(f"{where}: segmentation: {problem} (image {image_id})")
    rle = compressed_rle(record["segmentation"], height, width)
    if iou_type == "segm":
        out["segmentation"] = rle
    else:
        from pycocotools import mask as mask_utils

        out["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
    return out
