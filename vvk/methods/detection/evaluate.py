"""Scoring a detector on a COCO validation set, during training and after.

::

    from vvk.methods.detection.evaluate import evaluate_detector

    scores = evaluate_detector(model, val_coco)   # {"bbox_AP": ..., "bbox_AP50": ..., "segm_AP": ...}

The model runs in eval mode on the images as they are (it resizes them to its ``image_size``
and maps its outputs back to each image's pixels); ``to_coco_results`` turns its outputs into
COCO result records (``[x, y, w, h]`` boxes in original pixels, the dataset's category ids,
masks as compressed RLE for mask models), which ``vvk.eval.detection`` scores against the
ground truth with pycocotools. Images that cannot be read are left out of the scoring, and
counted. With several processes each one predicts its share of the images and rank 0 scores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from vvk.data.coco import CocoDataset
from vvk.data.detection import DetectionImages, categories_of
from vvk.engine import autocast

logger = logging.getLogger("vvk.methods")

MASK_THRESHOLD = 0.5  # mask probabilities above this are the object (torchvision's, tf-models')


def to_coco_results(
    outputs: Sequence[dict[str, Tensor]], image_ids: Sequence[int], categories: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """COCO result records of a detector's eval-mode ``outputs`` for ``image_ids``: label ``l``
    is ``categories[l - 1]``; masks (``(N, 1, H, W)`` probabilities), when present, become RLE."""
    from pycocotools import mask as mask_utils

    ids = np.array([int(c["id"]) for c in categories])
    records = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().float().cpu()  # (N, 4) XYXY
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        category_ids = ids[out["labels"].detach().cpu().numpy() - 1].tolist()
        rles: list[Any] = [None] * len(scores)
        if "masks" in out and len(scores):
            binary = (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)  # (N, H, W)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # wants (H, W, N)
        for box, score, category_id, rle in zip(xywh, scores, category_ids, rles, strict=True):
            record = {"image_id": int(image_id), "category_id": category_id, "bbox": box, "score": score}
            if rle is not None:
                record["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            records.append(record)
    return records


@torch.no_grad()
def predict_coco(
    model: nn.Module,
    coco: CocoDataset,
    *,
    batch_size: int = 8,
    precision: str = "fp32",
    max_images: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[list[dict[str, Any]], list[int], list[dict[str, str]]]:
    """``(results, image ids predicted, skipped-image records)`` of ``model`` on this rank's
    share of ``coco``'s images (the first ``max_images``; 0: all)."""
    model.eval()
    device = next(model.parameters()).device
    images = DetectionImages(coco)
    count = len(images) if max_images <= 0 else min(max_images, len(images))
    shard = Subset(images, range(rank, count, world_size))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    results: list[dict[str, Any]] = []
    done: list[int] = []
    skipped: list[dict[str, str]] = []
    for batch in loader:
        skipped.extend(record for _, info in batch for record in info["skipped"])
        batch = [(image, info) for image, info in batch if image is not None]
        if not batch:
            continue
        with autocast(device, precision):
            outputs = model([image.to(device) for image, _ in batch])
        ids = [info["image_id"] for _, info in batch]
        results.extend(to_coco_results(outputs, ids, model.categories))
        done.extend(ids)
    return results, done, skipped


def evaluate_detector(model: nn.Module, coco: CocoDataset, **options: Any) -> dict[str, Any]:
    """Box (and, for mask models, mask) AP of ``model`` on ``coco`` (see the module docstring);
    ``options`` are ``predict_coco``'s (batch size, precision, first images, workers)."""
    from vvk.eval.detection import load_ground_truth

    started = time.perf_counter()
    results, done, skipped = predict_coco(model, coco, **options)
    scores = score(load_ground_truth(coco), results, done, masks=has_masks(model))
    return {**scores, "images": len(done), "skipped_images": len(skipped),
            "eval_seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


def has_masks(model: nn.Module) -> bool:
    """Whether a detector predicts masks (a Mask R-CNN)."""
    heads = getattr(model, "roi_heads", None)
    return bool(heads is not None and heads.has_mask())


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_on_rank_zero(part: Any) -> list[Any] | None:
    """Every rank's ``part`` on rank 0, in rank order; None on the others. Without a process
    group: ``[part]``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [part]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts if dist.get_rank() == 0 else None


def merge_parts(parts: Sequence[tuple[list, list, list]]) -> tuple[list, list, list]:
    """The ranks' ``(results, image ids, skipped records)`` of ``predict_coco`` as one."""
    return tuple([item for part in parts for item in part[k]] for k in range(3))  # type: ignore[return-value]


def score(
    ground_truth: Any,
    results: list[dict[str, Any]],
    image_ids: Sequence[int],
    *,
    masks: bool,
    splits: Mapping[str, Sequence[int]] | None = None,
) -> dict:
    """``{"bbox_AP", "bbox_AP50", ..., "segm_AP", ...}`` of ``results`` on ``image_ids`` (the AP
    stats of ``vvk.eval.detection``, COCO's or LVIS's; -1 where undefined): ``ground_truth`` is what
    ``evaluate_detections`` takes, a ``GroundTruth`` to score often against the same file.
    ``splits`` adds the AP over each named set of category ids: ``{"novel": [...]}`` gives
    ``novel_bbox_AP``, ``novel_bbox_AP50``, ...."""
    from vvk.eval.detection import evaluate_detections

    scores: dict[str, float] = {}
    if not image_ids:  # every image failed to read: nothing was scored
        return scores
    subsets: dict[str, Sequence[int] | None] = {"": None, **{f"{k}_": v for k, v in (splits or {}).items()}}
    for iou_type in ("bbox", "segm") if masks else ("bbox",):
        for prefix, categories in subsets.items():
            found = evaluate_detections(
                ground_truth, results, iou_type=iou_type, image_ids=image_ids, category_ids=categories
            )
            kept = {name: value for name, value in found.stats.items() if name.startswith("AP")}  # not AR
            scores.update({f"{prefix}{iou_type}_{name}": round(value, 6) for name, value in kept.items()})
    return scores


def check_same_categories(train: CocoDataset, val: CocoDataset) -> None:
    """Scores need the val set to name the categories the model learned, by the same ids."""
    from vvk.errors import VvkError

    ours, theirs = categories_of(train), categories_of(val)
    if ours != theirs:
        first = next((a, b) for a, b in zip([*ours, None], [*theirs, None], strict=False) if a != b)
        raise VvkError(
            f"val={val.annotations_path}: its categories are not those of the training data "
            f"(first difference: {first[0]} vs {first[1]})",
            hint="evaluate on a split of the same dataset", params=("val",),
        )  # fmt: skip


class ValEvaluation:
    """The in-training evaluation (a ``vvk.engine.Every`` function): every rank predicts its
    share of the images, rank 0 scores them all; the other ranks return None. ``ground_truth``:
    ``coco``'s, read and checked already (``vvk.eval.detection.load_ground_truth``)."""

    def __init__(
        self,
        coco: CocoDataset,
        *,
        batch_size: int,
        precision: str,
        max_images: int,
        num_workers: int,
        ground_truth: Any = None,
        vocabulary: Callable[[nn.Module], AbstractContextManager] | None = None,
        splits: Mapping[str, Sequence[int]] | None = None,
    ):
        self.coco, self.batch_size, self.precision = coco, batch_size, precision
        self.vocabulary, self.splits = vocabulary, splits
        self.max_images, self.num_workers = max_images, num_workers
        self._warned: set[str] = set()
        self._ground_truth = ground_truth  # None: read and checked at the first evaluation

    def __call__(self, model: nn.Module, step: int) -> dict[str, Any] | None:
        rank, world = rank_and_world()
        started = time.perf_counter()
        with self.vocabulary(model) if self.vocabulary is not None else nullcontext():
            part = predict_coco(
                model, self.coco, batch_size=self.batch_size, precision=self.precision,
                max_images=self.max_images, num_workers=self.num_workers, rank=rank, world_size=world,
            )  # fmt: skip
        parts = gather_on_rank_zero(part)
        if parts is None:
            return None
        results, done, skipped = merge_parts(parts)
        for record in skipped:
            if record["path"] not in self._warned:  # once per file, not at every evaluation
                self._warned.add(record["path"])
                logger.warning("val image %s: %s; left out of the scores", record["path"], record["detail"])
        if self._ground_truth is None:
            from vvk.eval.detection import load_ground_truth

            self._ground_truth = load_ground_truth(self.coco)
        scores = score(self._ground_truth, results, done, masks=has_masks(model), splits=self.splits)
        return {**scores, "images": len(done), "skipped_images": len(skipped),
                "eval_seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
