"""ViLD's distillation targets, computed once: ``vvk detect embed-regions``.

For every image of a COCO dataset: up to ``max_regions`` proposals (a trained detector's RPN,
:func:`detector_proposals`, or boxes from a COCO results file, :func:`file_proposals`), crops at
1x and 1.5x each box, the teacher's embeddings of both summed and renormalised
(:func:`region_embeddings`). The ViLD paper describes this step; the official code read the
results from files it never released.

On disk (``REGIONS/``)::

    regions.json              what was embedded: teacher, scales, proposals, the dataset's images
    shard-00000.safetensors   "boxes/<image_id>" (R, 4) float32 XYXY pixels of the original image,
    shard-00001.safetensors   "embeddings/<image_id>" (R, D) float16 unit vectors
    ...

Shards hold ``shard_images`` consecutive images of the dataset's order, each written atomically
and then recorded in ``regions.json`` (atomically too), so an interrupted run loses at most the
shard in progress and a second run with the same settings continues after the last recorded one.
``RegionStore`` reads them for training and checks that they were made from the training data's
images and by the teacher the run asks for.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vvk.atomic import atomic_path, atomic_write_text
from vvk.data.coco import CocoDataset
from vvk.errors import VvkError
from vvk.methods.vild.crops import CROP_SCALES, crop_regions
from vvk.methods.vild.teacher import Teacher

logger = logging.getLogger("vvk.vild")

MANIFEST = "regions.json"
FORMAT = 1
MAX_REGIONS = 300  # proposals per image (paper §4: "we use 300 pre-computed proposals per image")
SHARD_IMAGES = 256

Proposals = Callable[[int, Tensor], Tensor]  # (image id, (3, H, W) image) -> (R, 4) XYXY boxes


def region_embeddings(teacher: Teacher, image: Tensor, boxes: Tensor, *, batch: int = 256) -> Tensor:
    """(R, D) unit embeddings of ``boxes`` in ``image`` (3, H, W, 0..1): the teacher's embeddings
    of the 1x and 1.5x crops, summed, renormalised."""
    if boxes.numel() == 0:
        return image.new_zeros((0, teacher.dim))
    device = next(teacher.parameters()).device  # crops are cut where the teacher runs
    crops = crop_regions(image.to(device), boxes.to(device), teacher.image_size)  # (2, R, 3, S, S)
    flat = crops.flatten(0, 1)  # (2R, 3, S, S)
    embedded = torch.cat([teacher.embed_images(flat[i : i + batch]) for i in range(0, len(flat), batch)])
    return F.normalize(embedded.view(len(CROP_SCALES), len(boxes), -1).sum(dim=0), dim=-1)  # (R, D)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _images_record(coco: CocoDataset) -> list[list[Any]]:
    """``[[id, file_name, width, height, bytes], ...]`` in the dataset's order: what a store was
    made of. The file size tells two splits apart that number and name their images alike, at
    the cost of a stat per image (reading every file to hash it would cost as much as the run)."""
    return [
        [i, im.file_name, im.width, im.height, _file_size(coco.image_path(im))]
        for i, im in coco.images.items()
    ]


@dataclass(frozen=True)
class RegionSettings:
    """What a regions folder was made with: a second run must match to continue it."""

    teacher: str
    dim: int
    proposals: str
    max_regions: int = MAX_REGIONS
    scales: tuple[float, ...] = CROP_SCALES
    shard_images: int = SHARD_IMAGES

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "scales": list(self.scales)}  # as JSON reads it back


@dataclass(frozen=True)
class EmbedResult:
    out: Path
    images: int  # embedded by this run
    regions: int  # embedded by this run
    skipped: int  # images that could not be read (recorded with no regions)
    resumed_from: int  # images already in the folder
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def regions_per_second(self) -> float:
        return self.regions / self.seconds if self.seconds else 0.0


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VvkError(f"{path}: unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise VvkError(f"{path}: not a regions manifest of this vvk (format {FORMAT})")
    return manifest


def _start(out: Path, settings: RegionSettings, images: list[list[Any]]) -> dict[str, Any]:
    """The manifest to continue: the folder's own when it matches, else a new one; a folder
    that holds something else is an error, never overwritten."""
    manifest = _read_manifest(out)
    if manifest is None:
        if out.exists() and any(out.iterdir()):
            raise VvkError(f"out={out}: exists and is not a regions folder", hint="choose a new folder")
        return {"format": FORMAT, **settings.record(), "images": images, "shards": [], "complete": False}
    for key, value in settings.record().items():
        if manifest.get(key) != value:
            raise VvkError(
                f"out={out}: made with {key}={manifest.get(key)}, this run has {value}",
                hint="use a new folder, or the settings it was made with",
            )
    if manifest["images"] != images:
        raise VvkError(f"out={out}: made from other images than this dataset's", hint="use a new folder")
    return manifest


def embed_regions(
    coco: CocoDataset,
    proposals: Proposals,
    teacher: Teacher,
    out: str | os.PathLike,
    *,
    proposals_name: str,
    max_regions: int = MAX_REGIONS,
    shard_images: int = SHARD_IMAGES,
    progress: Callable[[int, int], None] | None = None,
) -> EmbedResult:
    """Embed the proposals of every image of ``coco`` into ``out`` (module docstring).

    Args:
        proposals: gives each image's boxes, best first; the first ``max_regions`` are kept.
        proposals_name: where the proposals come from, recorded (a run folder or a file).
        progress: called with (images done, images in all) after each image.
    """
    from vvk.data.detection import DetectionImages

    out = Path(out)
    settings = RegionSettings(teacher=teacher.name, dim=teacher.dim, proposals=proposals_name,
                              max_regions=max_regions, shard_images=shard_images)  # fmt: skip
    images = _images_record(coco)
    manifest = _start(out, settings, images)
    out.mkdir(parents=True, exist_ok=True)
    done = sum(len(shard["image_ids"]) for shard in manifest["shards"])
    started, embedded, regions, skipped = time.monotonic(), 0, 0, 0
    readable = DetectionImages(coco)  # the dataset's order, as ``images``
    teacher.eval()
    for first in range(done, len(images), shard_images):
        tensors: dict[str, Tensor] = {}
        ids = [row[0] for row in images[first : first + shard_images]]
        for position in range(first, first + len(ids)):
            pixels, info = readable[position]  # (3, H, W) in 0..1, or None: recorded with no region
            for record in info["skipped"]:
                logger.warning(
                    "%s: %s; no regions for it", record["path"], record["detail"] or record["problem"]
                )
            if pixels is None:
                skipped += 1
                boxes, embedding = torch.zeros((0, 4)), torch.zeros((0, teacher.dim))
            else:
                boxes = proposals(info["image_id"], pixels)[:max_regions].float()
                embedding = region_embeddings(teacher, pixels, boxes)
            tensors[f"boxes/{info['image_id']}"] = boxes.cpu().contiguous()
            tensors[f"embeddings/{info['image_id']}"] = embedding.half().cpu().contiguous()
            embedded, regions = embedded + 1, regions + len(boxes)
            if progress is not None:
                progress(position + 1, len(images))
        _write_shard(out, len(manifest["shards"]), tensors)
        manifest["shards"].append({"file": _shard_name(len(manifest["shards"])), "image_ids": ids})
        manifest["complete"] = first + len(ids) == len(images)
        atomic_write_text(out / MANIFEST, json.dumps(manifest) + "\n")
    if not manifest["complete"]:  # nothing left to do (an empty dataset, or all done before)
        manifest["complete"] = True
        atomic_write_text(out / MANIFEST, json.dumps(manifest) + "\n")
    return EmbedResult(
        out=out,
        images=embedded,
        regions=regions,
        skipped=skipped,
        resumed_from=done,
        seconds=time.monotonic() - started,
    )


def _write_shard(out: Path, index: int, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_path(out / _shard_name(index)) as tmp:
        save_file(tensors, str(tmp))


class RegionStore:
    """The regions of a finished ``embed-regions`` folder, by image id: ``store[image_id]`` is
    ``(boxes (R, 4) float32, embeddings (R, D) float32)``, the first ``max_regions`` (best first;
    None: all) of what the folder holds; an image it does not hold is a KeyError.

    ``check(coco, teacher=...)`` refuses a folder made from other images or by another teacher.
    """

    def __init__(self, root: str | os.PathLike, *, max_regions: int | None = None):
        self.root, self.max_regions = Path(root), max_regions
        manifest = _read_manifest(self.root)
        if manifest is None:
            raise VvkError(
                f"regions={root}: no {MANIFEST} (not made by `vvk detect embed-regions`)", params=("regions",)
            )
        if not manifest.get("complete"):
            raise VvkError(
                f"regions={root}: incomplete",
                hint="run `vvk detect embed-regions` again to finish it",
                params=("regions",),
            )
        self.manifest = manifest
        self.teacher, self.dim = manifest["teacher"], int(manifest["dim"])
        self._shard_of = {i: shard["file"] for shard in manifest["shards"] for i in shard["image_ids"]}
        self._files: dict[str, Any] = {}

    def check(self, coco: CocoDataset, *, teacher: str | None = None) -> None:
        if teacher is not None and teacher != self.teacher:
            raise VvkError(
                f"regions={self.root}: embedded by teacher {self.teacher}, this run uses {teacher}",
                params=("regions",),
            )
        recorded = {row[0]: row for row in self.manifest["images"]}
        for row in _images_record(coco):
            image_id, image = row[0], coco.images[row[0]]
            if recorded.get(image_id) != row:
                raise VvkError(
                    f"regions={self.root}: made from another dataset (image {image_id}, {image.file_name}, "
                    f"is {'not there' if image_id not in recorded else 'another image there'})",
                    params=("regions",),
                )

    def __contains__(self, image_id: int) -> bool:
        return image_id in self._shard_of

    def __len__(self) -> int:
        return len(self._shard_of)

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard_of)

    def __getitem__(self, image_id: int) -> tuple[Tensor, Tensor]:
        from safetensors import safe_open

        name = self._shard_of[image_id]
        if name not in self._files:
            self._files[name] = safe_open(str(self.root / name), "pt")
        shard = self._files[name]
        kept = slice(self.max_regions)
        boxes, embeddings = shard.get_tensor(f"boxes/{image_id}"), shard.get_tensor(f"embeddings/{image_id}")
        return boxes[kept], embeddings[kept].float()

    def __getstate__(self) -> dict[str, Any]:  # loader workers open their own file handles
        return {**self.__dict__, "_files": {}}


def file_proposals(path: str | os.PathLike) -> Proposals:
    """Proposals from a COCO results file (``[{"image_id", "bbox": [x, y, w, h], "score"}]``, what
    ``vvk detect --json`` writes), best score first per image."""
    from vvk.data.coco import read_json

    rows = read_json(Path(path))
    if not isinstance(rows, list):
        raise VvkError(f"proposals={path}: expected a JSON list of COCO results", params=("proposals",))
    by_image: dict[int, list[tuple[float, list[float]]]] = {}
    for k, row in enumerate(rows):
        try:
            x, y, w, h = (float(v) for v in row["bbox"])
            by_image.setdefault(int(row["image_id"]), []).append(
                (float(row.get("score", 1.0)), [x, y, x + w, y + h])
            )
        except (KeyError, TypeError, ValueError):
            raise VvkError(
                f"proposals={path}: entry {k} lacks a valid image_id or bbox", params=("proposals",)
            ) from None

    def boxes(image_id: int, image: Tensor) -> Tensor:
        ranked = sorted(by_image.get(image_id, ()), key=lambda r: -r[0])
        return torch.tensor([b for _, b in ranked], dtype=torch.float32).reshape(-1, 4)

    return boxes


def detector_proposals(model, *, device: str | torch.device = "cpu") -> Proposals:
    """The class-agnostic RPN proposals of a trained Mask R-CNN (its test-time settings: 1000
    per image after NMS 0.7), in the image's own pixels, best first."""
    model = model.eval().to(device)

    @torch.no_grad()
    def boxes(image_id: int, image: Tensor) -> Tensor:
        image_list, _ = model.transform([image.to(device)])
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        original = [tuple(image.shape[-2:])]
        return model.transform.postprocess([{"boxes": proposals[0]}], image_list.image_sizes, original)[0][
            "boxes"
        ].cpu()

    return boxes


def proposals_from(spec: str | os.PathLike, *, device: str | torch.device = "cpu") -> Proposals:
    """``--proposals``: a COCO results file (``.json``), or a trained two-stage detector (a
    ``vvk train detector`` run folder or checkpoint of a Mask R-CNN or ViLD model) whose RPN
    proposes."""
    path = Path(spec)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise VvkError(f"proposals={spec}: no such file", params=("proposals",))
        return file_proposals(path)
    from vvk.methods.detection.train import detector_file
    from vvk.models import load

    model = load(detector_file(spec), tasks={"detection"})
    if not hasattr(model, "rpn"):
        raise VvkError(
            f"proposals={spec}: a {type(model).__name__} has no RPN; give a Mask R-CNN or ViLD run",
            params=("proposals",),
        )
    return detector_proposals(model, device=device)
