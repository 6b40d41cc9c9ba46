"""COCO and LVIS detection AP: pycocotools' ``COCOeval`` and lvis' ``LVISEval`` behind one call.

::

    from vvk.eval.detection import evaluate_detections, load_ground_truth

    scores = evaluate_detections("instances_val2017.json", "results.json", iou_type="bbox")
    scores["AP"], scores.stats            # {"AP": ..., "AP50": ..., ..., "ARl": ...}

    gt = load_ground_truth(val_dataset)   # once; then at every evaluation during training:
    scores = evaluate_detections(gt, [{"image_id": 1, "category_id": 3, "bbox": [x, y, w, h],
                                       "score": 0.9}, ...])

The format is read from the ground truth: LVIS files mark their categories with ``frequency``
and their images with ``neg_category_ids`` / ``not_exhaustive_category_ids``. Both inputs are
checked first (``vvk.eval.detection_inputs``): a problem is one ``VvkError`` naming the file,
record and field, never a crash or a silently wrong score inside the evaluators. The numbers
are the evaluators' own: undefined ones (no ground truth in an area range) are -1, as they
report them. Their printed summaries go to the ``vvk.eval.detection`` logger at DEBUG.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vvk.errors import VvkError
from vvk.eval.detection_inputs import check_ground_truth, check_ground_truth_masks, check_results

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# COCOeval.stats, in its order (pycocotools: cocoeval.py, summarize._summarizeDets): AP over
# IoU .50:.95, at .50, at .75, by area; AR at 1, 10, 100 detections per image, by area.
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# LVISEval.results keys (lvis-dataset/lvis-api: lvis/eval.py, summarize) and their names here.
LVIS_STATS = {
    "AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APs", "APm": "APm", "APl": "APl",
    "APr": "APr", "APc": "APc", "APf": "APf",
    "AR@300": "AR300", "ARs@300": "ARs", "ARm@300": "ARm", "ARl@300": "ARl",
}  # fmt: skip
LVIS_MAX_DETS = 300  # detections kept per image: LVIS's protocol (lvis-api: lvis/results.py)


@dataclass(frozen=True)
class DetectionScores:
    """What one evaluation measured.

    Attributes:
        stats: the evaluator's summary, named (``COCO_STATS``, or ``LVIS_STATS``' values); -1
            where undefined.
        per_category: AP over IoU .50:.95 of each category with ground truth among the images
            evaluated, by category id.
        format: ``"coco"`` or ``"lvis"``.
        iou_type: ``"bbox"`` or ``"segm"``.
        images: images evaluated.
        detections: result records given.
    """

    stats: dict[str, float]
    per_category: dict[int, float]
    format: str
    iou_type: str
    images: int
    detections: int

    def __getitem__(self, name: str) -> float:
        return self.stats[name]

    def as_dict(self) -> dict[str, Any]:
        """A flat, JSON-ready record: format, iou_type, images, detections, then the stats."""
        head = {"format": self.format, "iou_type": self.iou_type, "images": self.images}
        return {**head, "detections": self.detections, **self.stats}


@dataclass
class GroundTruth:
    """A checked instances file, ready for repeated evaluations (``load_ground_truth``).

    Attributes:
        api: the evaluator's index of it (``pycocotools.coco.COCO`` or ``lvis.LVIS``).
        format: ``"coco"`` or ``"lvis"``.
        name: how errors name it (its path, or ``ground_truth``).
        image_sizes: ``(height, width)`` of each image, by id.
        category_ids: its categories' ids.
    """

    api: Any
    format: str
    name: str
    image_sizes: dict[int, tuple[int, int]]
    category_ids: frozenset[int]
    _masks_checked: bool = field(default=False, repr=False)

    def check_masks(self) -> None:
        """Check every segmentation once, before the first mask evaluation."""
        if not self._masks_checked:
            check_ground_truth_masks(self.api.dataset, self.name)
            self._masks_checked = True


def load_ground_truth(source: Any) -> GroundTruth:
    """Read and check ground truth for ``evaluate_detections``.

    Args:
        source: an instances json path (COCO or LVIS), its parsed ``dict``, a
            ``vvk.data.coco.CocoDataset`` (its annotation file is read: the evaluators need
            the file's boxes and areas), a ``pycocotools.coco.COCO`` or ``lvis.LVIS`` (used as
            they are), or a ``GroundTruth`` (returned as it is). Mask evaluation turns the
            ground truth's polygons into RLEs in place (cocoapi's way), in a given dict or
            index too.
    """
    if isinstance(source, GroundTruth):
        return source
    from vvk.data.coco import CocoDataset, read_json

    api = None
    if isinstance(source, str | os.PathLike):
        name, data = str(source), read_json(source)
    elif isinstance(source, CocoDataset):
        name, data = str(source.annotations_path), read_json(source.annotations_path)
    elif isinstance(source, Mapping):
        name, data = "ground_truth", source
    elif isinstance(getattr(source, "dataset", None), dict):  # a COCO or LVIS index
        name, data, api = "ground_truth", source.dataset, source
    else:
        raise VvkError(
            f"ground_truth: expected an instances file, its data, a CocoDataset or a COCO index, "
            f"got {type(source).__name__}",
            params=["ground_truth"],
        )
    kind = check_ground_truth(data, name)
    if api is None or (kind == "lvis") != (type(api).__module__.startswith("lvis")):
        api = _index(data, kind)
    sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in data["images"]}
    categories = frozenset(int(c["id"]) for c in data["categories"])
    return GroundTruth(api=api, format=kind, name=name, image_sizes=sizes, category_ids=categories)


def _index(data: Mapping, kind: str) -> Any:
    """The evaluator's index of ``data``, built without writing or re-reading a file."""
    if kind == "coco":
        from pycocotools.coco import COCO

        api = COCO()
        api.dataset = dict(data)
        with _quiet():
            api.createIndex()
        return api
    lvis = _lvis()
    # LVIS() only takes a path; this is what its __init__ does after reading the file.
    api = object.__new__(lvis.LVIS)
    api.logger = logging.getLogger("lvis.lvis")
    api.dataset = dict(data)
    api._create_index()
    return api


def _lvis():
    """The lvis package (imported on first use: it imports OpenCV and matplotlib)."""
    try:
        import lvis
    except ImportError as e:  # also a cv2 without its system libraries (libGL)
        raise VvkError(
            f"LVIS evaluation needs the lvis package, which failed to import ({e})",
            hint="pip install lvis; without libGL: apt-get install libgl1, or swap opencv-python "
            "for opencv-python-headless",
        ) from None
    return lvis


def evaluate_detections(
    ground_truth: Any,
    results: str | os.PathLike | Sequence[Mapping[str, Any]],
    *,
    iou_type: str = "bbox",
    image_ids: Iterable[int] | None = None,
    category_ids: Iterable[int] | None = None,
    results_name: str | None = None,
) -> DetectionScores:
    """COCO AP (``COCOeval``) or LVIS AP (``LVISEval``) of detection results.

    Args:
        ground_truth: anything ``load_ground_truth`` takes; pass a ``GroundTruth`` to evaluate
            often against the same data without reading and checking it each time.
        results: a COCO results json path, or its records: ``{"image_id", "category_id",
            "bbox": [x, y, w, h], "score"}`` plus ``"segmentation"`` (an RLE, compressed or not,
            or polygons) for masks; numpy scalars are fine. Never changed.
        iou_type: ``"bbox"`` or ``"segm"``.
        image_ids: evaluate on these images only (default: every image of the ground truth;
            an image without results then counts its objects as missed).
        category_ids: average over these categories only (e.g. the novel ones of an
            open-vocabulary split).
        results_name: how errors name in-memory ``results`` (default ``results``).
    """
    if iou_type not in IOU_TYPES:
        raise VvkError(f"iou_type={iou_type}: expected bbox or segm", params=["iou_type"])
    gt = load_ground_truth(ground_truth)
    if iou_type == "segm":
        gt.check_masks()
    if isinstance(results, str | os.PathLike):
        from vvk.data.coco import read_json

        raw, name = read_json(results), str(results)
    else:
        raw, name = results, results_name or "results"
    records = check_results(
        raw, images=gt.image_sizes, categories=gt.category_ids, iou_type=iou_type, name=name, gt_name=gt.name
    )
    images = _subset(image_ids, gt.image_sizes, "image_ids", f"an image of {gt.name}")
    categories = _subset(category_ids, gt.category_ids, "category_ids", f"a category of {gt.name}")
    run = _run_lvis if gt.format == "lvis" else _run_coco
    stats, per_category, evaluated = run(gt.api, records, iou_type, images, categories)
    return DetectionScores(
        stats=stats,
        per_category=per_category,
        format=gt.format,
        iou_type=iou_type,
        images=evaluated,
        detections=len(records),
    )


def _subset(ids: Iterable[int] | None, known: Iterable[int], param: str, what: str) -> list[int] | None:
    if ids is None:
        return None
    chosen, known = sorted({int(i) for i in ids}), set(known)
    if not chosen:
        raise VvkError(f"{param}=[]: nothing to evaluate", params=[param])
    unknown = [i for i in chosen if i not in known]
    if unknown:
        raise VvkError(f"{param}: {unknown[0]} is not {what}", params=[param])
    return chosen


def _run_coco(gt, records: list[dict], iou_type: str, images, categories):
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        dt = gt.loadRes(records) if records else _empty_coco_results(gt)
        evaluator = COCOeval(gt, dt, iou_type)
        if images is not None:
            evaluator.params.imgIds = images
        if categories is not None:
            evaluator.params.catIds = categories
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(COCO_STATS, evaluator.stats, strict=True)}
    # precision: (IoU thresholds, recall points, categories, area ranges, max dets); area "all"
    # and the largest max dets are what AP uses.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    params = evaluator.params
    return stats, _per_category(precision, params.catIds), len(params.imgIds)


def _empty_coco_results(gt):
    """What ``COCO.loadRes`` would build for no results (it fails on an empty list)."""
    from pycocotools.coco import COCO

    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"])}
    dt.dataset["annotations"] = []
    dt.createIndex()
    return dt


def _run_lvis(gt, records: list[dict], iou_type: str, images, categories):
    lvis = _lvis()
    with _quiet(), _numpy_float_alias():
        if records:
            dt = lvis.LVISResults(gt, records, max_dets=LVIS_MAX_DETS)
        else:  # LVISResults fails on an empty list; this is what it builds otherwise
            dt = object.__new__(lvis.LVISResults)
            dt.logger = logging.getLogger("lvis.results")
            dt.dataset = {**gt.dataset, "annotations": []}
            dt._create_index()
        evaluator = lvis.LVISEval(gt, dt, iou_type)
        if images is not None:
            evaluator.params.img_ids = images
        if categories is not None:
            evaluator.params.cat_ids = categories
        evaluator.run()
    stats = {LVIS_STATS[key]: float(v) for key, v in evaluator.results.items()}
    precision = evaluator.eval["precision"][:, :, :, 0]  # (IoU, recall, categories, area); area "all"
    params = evaluator.params
    return stats, _per_category(precision, params.cat_ids), len(params.img_ids)


def _per_category(precision: np.ndarray, category_ids: Sequence[int]) -> dict[int, float]:
    """Mean precision over IoU thresholds and recall points of each category (index 2), as the
    evaluators average AP; -1 marks a category without ground truth, left out."""
    out = {}
    for k, category_id in enumerate(category_ids):
        values = precision[:, :, k]
        values = values[values > -1]
        if values.size:
            out[int(category_id)] = float(values.mean())
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """pycocotools prints its progress and summary; lvis logs at INFO and warns that in-memory
    results are taken as they are (they were checked). Both go to this module's logger."""
    captured = io.StringIO()
    lvis_logger = logging.getLogger("lvis")
    level = lvis_logger.level
    lvis_logger.setLevel(logging.ERROR)
    try:
        with redirect_stdout(captured), warnings.catch_warnings():
            # lvis calls Logger.warn, deprecated since Python 3.3
            warnings.filterwarnings("ignore", "The 'warn' method is deprecated", DeprecationWarning)
            yield
    finally:
        lvis_logger.setLevel(level)
        if captured.getvalue().strip():
            logger.debug("evaluator output:\n%s", captured.getvalue().rstrip())


@contextmanager
def _numpy_float_alias() -> Iterator[None]:
    """``np.float`` while lvis runs: lvis 0.5.3, its last release, calls it in
    ``LVISEval.accumulate``, and NumPy 1.24 removed it (fixed upstream in
    lvis-dataset/lvis-api#39, never released)."""
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float
