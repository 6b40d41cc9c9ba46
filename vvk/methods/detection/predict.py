"""Detection on image files: the library side of ``vvk detect``.

::

    from vvk.methods.detection.predict import detect_images, find_images

    images = find_images(["photos/"])       # folders searched recursively, sorted; or image paths
    summary = detect_images(images, weights="runs/d1", min_score=0.3, out="dets.jsonl",
                            on_records=print, on_problem=lambda image, why: print(image.path, why))

or step by step: ``load_detector`` (a run folder, a checkpoint or a weights name),
``predict_images`` (``Prediction`` per image, in input order, bad files included with their
``problem``), ``records_of`` (JSON records), ``results_file`` and ``write_drawing``.

Images are decoded as vvk decodes every image (``vvk.data.images``): 8-bit RGB whatever the file
stores, turned upright by its EXIF orientation. The detector resizes each image to its canvas and
maps its outputs back (torchvision's ``GeneralizedRCNNTransform.postprocess``, which also pastes
Mask R-CNN's masks at the image's size), so boxes and masks are in the pixels of the upright image.

A record is ``{"image", "category", "category_id", "score", "bbox": [x, y, w, h]}`` (boxes to
0.01 px, scores to 1e-5), plus ``"segmentation"`` (COCO RLE, ``counts`` a str; mask probabilities
above 0.5) for mask models; the ``coco-results`` format holds ``{"image_id", "category_id",
"bbox", "score"(, "segmentation")}`` records in one JSON list, what pycocotools' ``loadRes`` reads.
The detector's own score threshold and per-image cap are set to ``min_score`` and ``max_dets``
(as detectron2's demo sets its test threshold), then both are applied to its output again.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vvk.errors import VvkError
from vvk.methods.detection.outputs import FORMATS, check_outputs, results_file, write_drawing
from vvk.models.layers import fold_batch_norms

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MASK_THRESHOLD = 0.5  # mask probabilities above this are the object (torchvision's, tf-models')
BOX_DECIMALS = 2  # boxes to 0.01 px: far below a pixel, and short lines
SCORE_DECIMALS = 5
RUN_CHECKPOINT = "model.safetensors"  # in a run's checkpoint folder (vvk.engine.state)

Categories = list[dict[str, Any]]


@dataclass(frozen=True)
class ImageFile:
    """One input image.

    Attributes:
        path: as given, or the folder as given joined with the path found under it.
        name: the path relative to the folder all inputs share (unique among them): where
            ``write_drawing`` writes its drawing.
        folder: the folder argument it was found in (None: named directly).
    """

    path: str
    name: str
    folder: str | None = None


@dataclass
class Prediction:
    """What the detector found in one image, in the upright image's pixels; ``problem`` is why the
    file could not be read (then nothing else is set)."""

    image: ImageFile
    problem: str | None = None
    size: tuple[int, int] = (0, 0)  # (width, height)
    boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))  # (N, 4) XYXY, by score
    scores: Tensor = field(default_factory=lambda: torch.zeros(0))  # (N,)
    labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))  # (N,) in 1..K
    masks: Tensor | None = None  # (N, H, W) bool, mask models only
    pixels: Tensor | None = None  # (3, H, W) uint8, when asked for (drawing)
    query: str | None = None  # what a query-modulated detector was asked (labels: its index + 1)


# --------------------------------------------------------------------------------------------
# Inputs


def find_images(
    inputs: Sequence[str | os.PathLike], *, listed: Sequence[str | os.PathLike] = ()
) -> list[ImageFile]:
    """The images ``inputs`` name, then those ``listed``. An input folder stands for the image
    files under it (recursively, by extension, sorted; hidden entries skipped; links to folders
    not followed), anything else for one image; ``listed`` paths (read from a list, e.g. stdin)
    are images whatever they are: a folder there fails when it is read, as a missing or
    unreadable file does, alone."""
    entries: list[tuple[str, str | None]] = []  # (path, folder argument)
    for given in map(os.fspath, inputs):
        if os.path.isdir(given):
            found = _images_under(given)
            if not found:
                extensions = " ".join(sorted(IMAGE_EXTENSIONS))
                raise VvkError(f"images={given}: no image files in it ({extensions})", params=("images",))
            entries += [(path, given) for path in found]
        else:
            entries.append((given, None))
    entries += [(os.fspath(path), None) for path in listed]
    if not entries:
        raise VvkError("images: no images given", params=("images",))
    roots = [os.path.abspath(folder or os.path.dirname(path) or ".") for path, folder in entries]
    common = os.path.commonpath(roots)
    return [
        ImageFile(path, os.path.relpath(os.path.abspath(path), common), folder) for path, folder in entries
    ]


def _images_under(folder: str) -> list[str]:
    found = []
    for where, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(where, f)
            for f in files
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ]
    return sorted(found, key=lambda p: Path(p).parts)


class ImageProblem(Exception):
    """An image file that cannot be used; the message says why."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, upright by its EXIF orientation; raises ``ImageProblem``."""
    from PIL import Image, UnidentifiedImageError

    from vvk.data.images import ImageReadError, load_rgb, probe_image

    if os.path.isdir(path):
        raise ImageProblem("a folder, not an image file")
    if not os.path.lexists(path):
        raise ImageProblem("no such file")
    try:
        probe = probe_image(path)
        return load_rgb(path, exif_orientation=probe.exif_orientation)
    except ImageReadError as e:
        # The reader names only the decoder's error type; the error it raised from (its context)
        # says what is wrong, e.g. "image file is truncated (3 bytes not processed)".
        cause = e.__context__
        if str(e) == "missing" or isinstance(cause, FileNotFoundError):
            raise ImageProblem("no such file (a broken link?)") from None
        if isinstance(cause, UnidentifiedImageError):
            raise ImageProblem("not an image file (no decoder recognises it)") from None
        detail = (str(cause).splitlines() or [""])[0][:200] if cause else ""
        name = type(cause).__name__ if cause else str(e)
        raise ImageProblem(f"cannot be decoded ({name}{': ' + detail if detail else ''})") from None
    except Image.DecompressionBombError as e:
        raise ImageProblem(f"too large to decode ({e})") from None


class _ImageReader(Dataset):
    """``reader[i]`` is ``(i, (3, H, W) uint8 or None, problem or None)``."""

    def __init__(self, images: Sequence[ImageFile]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        try:
            pixels = read_image(self.images[i].path)
        except ImageProblem as e:
            return i, None, str(e)
        return i, torch.from_numpy(pixels).permute(2, 0, 1), None  # (H, W, 3) -> (3, H, W)


# --------------------------------------------------------------------------------------------
# The detector and its vocabulary


def checkpoint_of(weights: str | os.PathLike) -> str:
    """The checkpoint a ``weights`` value names: a run folder's exported detector (or, in a run
    that did not finish, its latest checkpoint); anything else as it is (``vvk.models.load``)."""
    from vvk.engine.state import RunDir
    from vvk.methods.detection.train import DETECTOR_FILE

    spec, path = os.fspath(weights), Path(weights)
    if path.is_dir():
        if (path / DETECTOR_FILE).is_file():
            return str(path / DETECTOR_FILE)
        latest = RunDir(path).latest()
        if latest is not None and (latest / RUN_CHECKPOINT).is_file():
            return str(latest / RUN_CHECKPOINT)
        raise VvkError(
            f"weights={spec}: a folder with neither {DETECTOR_FILE} nor a checkpoint (not a detector run)",
            params=("weights",),
        )
    if not os.path.lexists(path) and _names_only_an_architecture(spec):
        raise VvkError(
            f"weights={spec}: a model architecture, not trained weights; a randomly initialised "
            "detector finds nothing",
            hint="give the run folder of a `vvk train detector` run, a checkpoint, or a name from "
            "`vvk weights list`",
            params=("weights",),
        )
    return spec


def _names_only_an_architecture(spec: str) -> bool:
    from vvk.models.registry import list_models
    from vvk.weights import lookup

    return spec in list_models() and lookup(spec) is None


def load_detector(weights: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """The detector ``weights`` names (see ``checkpoint_of``), on ``device``, in eval mode."""
    import vvk.models.detectors  # noqa: F401  (registers the detectors a checkpoint may name)
    from vvk.models import load

    model = load(checkpoint_of(weights), tasks=("detection",), map_location=device)
    missing = [a for a in ("categories", "image_size") if not hasattr(model, a)]
    if missing:
        raise VvkError(f"weights={os.fspath(weights)}: not a vvk detector (no {', '.join(missing)})")
    return model.eval()


def resolve_vocabulary(vocab: str | os.PathLike | None, *, categories: Categories) -> Categories:
    """The category names records carry: ``categories`` (the detector's) when ``vocab`` is None;
    ``"coco"``: COCO's 80 (or its 90 ids when the detector predicts 90); else a file, one name per
    line (ids 1..K) or a JSON list of ``{"id", "name"}`` (or a COCO annotation file: its
    ``categories``). It must have as many categories as the detector predicts: for now a
    vocabulary renames the detector's outputs (label ``l`` is entry ``l - 1``)."""
    from vvk.models.detectors.common import coco_categories

    if vocab is None:
        return list(categories)
    if os.fspath(vocab) == "coco":
        named = coco_categories(reference_ids=len(categories) == 90)
    else:
        named = _read_vocabulary(Path(vocab))
    if len(named) != len(categories):
        raise VvkError(
            f"vocab={os.fspath(vocab)}: {len(named)} categories, but the detector predicts {len(categories)}",
            params=("vocab",),
        )
    return named


def _read_vocabulary(path: Path) -> Categories:
    from vvk.data.coco import read_json
    from vvk.models.detectors.common import check_categories

    if not path.is_file():
        raise VvkError(f"vocab={path}: no such file (or give vocab=coco)", params=("vocab",))
    if path.suffix.lower() != ".json":
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise VvkError(
                f"vocab={path}: cannot read it as text ({type(e).__name__})", params=("vocab",)
            ) from None
        names = [n for n in names if n]
        if not names:
            raise VvkError(f"vocab={path}: no category names in it (one per line)", params=("vocab",))
        return [{"id": i, "name": n} for i, n in enumerate(names, start=1)]
    data = read_json(path)
    if isinstance(data, dict) and "categories" in data:
        data = data["categories"]
    try:
        return check_categories(data)
    except VvkError as e:  # "categories[3].id: ..." -> "vocab=FILE: [3].id: ..."
        raise VvkError(f"vocab={path}: {e.message.removeprefix('categories')}", params=("vocab",)) from None


def set_thresholds(model: nn.Module, *, min_score: float, max_dets: int) -> None:
    """Set the detector's own score threshold to ``min_score`` and per-image cap to ``max_dets``
    (torchvision's RetinaNet keeps them on the model, the R-CNNs on ``roi_heads``). A lower
    threshold or a higher cap would hide nothing asked for; the same output comes from the model's
    defaults filtered afterwards whenever those ask for more: the threshold is applied before NMS,
    which only ever suppresses a box by a higher-scoring one, and the cap keeps the top scores.
    Mask R-CNN then pastes only the masks kept."""
    # torchvision keeps scores above its threshold; min_score keeps those equal to it too. Scores
    # are float32: the float32 just below min_score lets exactly those through.
    below = float(np.nextafter(np.float32(min_score), np.float32(-np.inf)))
    for module in (model, getattr(model, "roi_heads", None)):
        if isinstance(getattr(module, "score_thresh", None), float | int):
            module.score_thresh = below
        if isinstance(getattr(module, "detections_per_img", None), int):
            module.detections_per_img = max_dets


# --------------------------------------------------------------------------------------------
# Prediction


def check_limits(*, min_score: float, max_dets: int, batch_size: int) -> None:
    if not 0.0 <= min_score <= 1.0:
        raise VvkError(f"min_score={min_score}: must be in [0, 1]", params=("min_score",))
    if max_dets < 1:
        raise VvkError(f"max_dets={max_dets}: must be at least 1", params=("max_dets",))
    if batch_size < 1:
        raise VvkError(f"batch_size={batch_size}: must be at least 1", params=("batch_size",))


@torch.no_grad()
def predict_images(
    model: nn.Module,
    images: Sequence[ImageFile],
    *,
    batch_size: int = 4,
    min_score: float = 0.3,
    max_dets: int = 100,
    num_workers: int = 0,
    keep_pixels: bool = False,
    queries: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[Prediction]:
    """One ``Prediction`` per image, in order, ``batch_size`` images per forward pass on the
    model's device; a file that cannot be read yields its ``problem`` and the others go on.

    Args:
        min_score, max_dets: applied after the detector's post-processing (see ``set_thresholds``).
        num_workers: processes decoding images (0: this one).
        keep_pixels: set each prediction's ``pixels`` (for ``write_drawing``).
        queries: ask a query-modulated detector each of these about every image: one
            ``Prediction`` per (image, query), an image's queries in a row, answers to query ``j``
            labelled ``j + 1``; a bad file yields one ``Prediction``, its problem.
        progress: called with (images done, images) after each batch.
    """
    check_limits(min_score=min_score, max_dets=max_dets, batch_size=batch_size)
    set_thresholds(model, min_score=min_score, max_dets=max_dets)
    model.eval()
    device = next(model.parameters()).device
    asked: list[str | None] = list(queries) if queries else [None]
    loader = DataLoader(_ImageReader(images), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    done = 0
    for batch in loader:
        good = [(i, pixels) for i, pixels, _ in batch if pixels is not None]
        inputs = [pixels.to(device).float().div_(255) for _, pixels in good]  # (3, H, W) in 0..1
        answers = [_detect(model, [i for i, _ in good], inputs, query) for query in asked]
        for i, pixels, problem in batch:
            if problem is not None:
                yield Prediction(images[i], problem=problem)
                continue
            for j, (query, outputs) in enumerate(zip(asked, answers, strict=True)):
                prediction = _prediction(images[i], pixels, outputs[i], min_score, max_dets, keep_pixels)
                if query is not None:
                    # the model labels every answer 1, "the queried thing": j + 1 names query j
                    prediction.labels = torch.full_like(prediction.labels, j + 1)
                    prediction.query = query
                yield prediction
        done += len(batch)
        if progress is not None:
            progress(done, len(images))


def _detect(model: nn.Module, index: list[int], inputs: list[Tensor], query: str | None) -> dict[int, dict]:
    """``{image index: detections}`` of one forward pass (asking ``query`` of every image)."""
    if not inputs:
        return {}
    options = {} if query is None else {"queries": [query] * len(inputs)}
    return dict(zip(index, model(inputs, **options), strict=True))


def _prediction(
    image: ImageFile, pixels: Tensor, out: dict[str, Tensor], min_score: float, max_dets: int, keep: bool
) -> Prediction:
    order = out["scores"].argsort(descending=True, stable=True)
    order = order[out["scores"][order] >= min_score][:max_dets]
    masks = None
    if "masks" in out:
        # Threshold before gathering: a bool copy of the full-size masks, not a float one.
        masks = (out["masks"][:, 0] > MASK_THRESHOLD)[order].cpu()  # (N, 1, H, W) -> (N, H, W) bool
    return Prediction(
        image,
        size=(int(pixels.shape[2]), int(pixels.shape[1])),
        boxes=out["boxes"][order].float().cpu(),
        scores=out["scores"][order].float().cpu(),
        labels=out["labels"][order].cpu(),
        masks=masks,
        pixels=pixels if keep else None,
    )


def records_of(
    prediction: Prediction, categories: Categories, *, image_id: int | None = None
) -> list[dict[str, Any]]:
    """The JSON records of one image's detections (none for a bad file): ``{"image",
    ("image_id",) "category", "category_id", "score", "bbox": [x, y, w, h]}`` plus
    ``"segmentation"`` (COCO RLE) for mask models; label ``l`` is ``categories[l - 1]``."""
    if prediction.problem is not None or not len(prediction.scores):
        return []
    corners = prediction.boxes.double().numpy().round(BOX_DECIMALS)  # (N, 4) XYXY
    # x, y, w, h from the rounded corners: x + w stays within the image as x2 did.
    xywh = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1).round(BOX_DECIMALS)
    scores = prediction.scores.double().numpy().round(SCORE_DECIMALS)
    rles = _rles(prediction.masks) if prediction.masks is not None else [None] * len(scores)
    records = []
    for box, score, label, rle in zip(
        xywh.tolist(), scores.tolist(), prediction.labels.tolist(), rles, strict=True
    ):
        category = categories[label - 1]
        record: dict[str, Any] = {"image": prediction.image.path}
        if image_id is not None:
            record["image_id"] = image_id
        if prediction.query is not None:
            record["query"] = prediction.query
        record.update(category=category["name"], category_id=category["id"], score=score, bbox=box)
        if rle is not None:
            record["segmentation"] = rle
        records.append(record)
    return records


def _rles(masks: Tensor) -> list[dict[str, Any]]:
    from pycocotools import mask as mask_utils

    if not len(masks):
        return []
    # pycocotools wants (H, W, N) uint8 in Fortran order: that is (N, W, H) in C order, one copy.
    columns = masks.permute(0, 2, 1).contiguous().numpy().view(np.uint8)  # (N, H, W) -> (N, W, H)
    encoded = mask_utils.encode(columns.transpose(2, 1, 0))  # (H, W, N), Fortran-contiguous
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in encoded]


# --------------------------------------------------------------------------------------------
# COCO image ids


def image_ids_for(images: Sequence[ImageFile], *, gt: str | os.PathLike | None = None) -> list[int]:
    """The COCO image id of each image: looked up in ``gt`` (an annotation file: its
    ``images[].file_name``, matched to the path under the input folder, else to the file's name
    when exactly one image has it), or without ``gt`` the number the file's name is
    (``000000005802.jpg`` -> 5802, COCO's naming). Every image must have one."""
    if gt is None:
        ids = []
        for image in images:
            stem = Path(image.path).stem
            if not re.fullmatch(r"[0-9]+", stem):
                raise VvkError(
                    f"{image.path}: no image id (its file name is not a number)",
                    hint="give gt=FILE, the COCO annotation file whose ids the results must use",
                    params=("gt",),
                )
            ids.append(int(stem))
        return ids
    by_path, by_name = _gt_ids(Path(gt))
    ids = []
    for image in images:
        image_id = by_path.get(Path(image.name).as_posix(), by_name.get(Path(image.path).name))
        if image_id is None:
            raise VvkError(f"gt={os.fspath(gt)}: no image file_name matches {image.path}", params=("gt",))
        ids.append(image_id)
    return ids


def _gt_ids(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """``({file_name: id}, {base name: id})``; a base name that several images share is left out."""
    from vvk.data.coco import read_json

    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise VvkError(f"gt={path}: no 'images' list (not a COCO annotation file)", params=("gt",))
    by_path: dict[str, int] = {}
    names: dict[str, list[int]] = {}
    for i, entry in enumerate(images):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool) or not isinstance(file_name, str):
            raise VvkError(f"gt={path}: images[{i}]: needs an integer 'id' and a 'file_name'", params=("gt",))
        by_path[Path(file_name).as_posix()] = image_id
        names.setdefault(Path(file_name).name, []).append(image_id)
    return by_path, {name: ids[0] for name, ids in names.items() if len(ids) == 1}


# --------------------------------------------------------------------------------------------
# All in one: what ``vvk detect`` runs


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VvkError(f"device={device}: no CUDA device here", hint="use device=cpu", params=("device",))
    return torch.device(device)


def detect_images(
    images: Sequence[ImageFile],
    *,
    weights: str | os.PathLike,
    vocab: str | os.PathLike | None = None,
    min_score: float = 0.3,
    max_dets: int = 100,
    batch_size: int = 4,
    device: str = "auto",
    num_workers: int = 0,
    draw: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    format: str = "jsonl",
    gt: str | os.PathLike | None = None,
    queries: Sequence[str] | None = None,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
    on_problem: Callable[[ImageFile, str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Detect objects in ``images`` with the detector ``weights`` names; returns a summary
    ``{"images", "failed", "detections", "seconds", "images_per_s", "device", "out", "draw"}``.

    Everything is checked before the first image is read (limits, outputs, vocabulary, image ids
    of a ``coco-results`` file). Each image's records go to ``on_records`` and into ``out``
    (``format``: ``jsonl`` or ``coco-results``; written atomically when all is done), its drawing
    into ``draw``; a file that cannot be read goes to ``on_problem`` and counts as failed.
    ``images_per_s`` counts the images read over the time from the first read to the last record.
    ``queries`` (a query-modulated detector's): each image is asked each one, records carry
    ``"query"``, a pair answered with nothing is one record of nulls (``query_detect``), not
    counted in ``detections``; an image's drawing shows the answers to all its queries.
    """
    check_limits(min_score=min_score, max_dets=max_dets, batch_size=batch_size)
    if format not in FORMATS:
        raise VvkError(f"format={format}: expected one of {', '.join(FORMATS)}", params=("format",))
    if format == "coco-results" and out is None:
        raise VvkError("format=coco-results is a file's format: give out=FILE", params=("format", "out"))
    check_outputs(images, draw=draw, out=out)
    ids = image_ids_for(images, gt=gt) if format == "coco-results" or gt is not None else None
    where = pick_device(device)
    model = load_detector(weights, device=where)
    fold_batch_norms(model)  # this model only predicts: a norm layer less per conv block
    categories = _categories(model, vocab=vocab, queries=queries, weights=os.fspath(weights))
    summary = {"images": len(images), "failed": 0, "detections": 0}
    started = time.monotonic()
    with results_file(out, format=format) if out is not None else _discard() as write:
        predictions = predict_images(
            model, images, batch_size=batch_size, min_score=min_score, max_dets=max_dets,
            num_workers=num_workers, keep_pixels=draw is not None, queries=queries, progress=progress,
        )  # fmt: skip
        index, asked = -1, max(1, len(queries or ()))
        parts: list[Prediction] = []  # the current image's predictions, one per query
        for prediction in predictions:
            if prediction.problem is not None:
                index += 1
                summary["failed"] += 1
                if on_problem is not None:
                    on_problem(prediction.image, prediction.problem)
                continue
            index += not parts
            parts.append(prediction)
            image_id = ids[index] if ids else None
            records = records_of(prediction, categories, image_id=image_id)
            summary["detections"] += len(records)
            if not records and prediction.query is not None:
                records = [_unanswered(prediction, image_id)]  # every pair asked is seen
            write(records)
            if on_records is not None:
                on_records(records)
            if len(parts) == asked:
                if draw is not None:
                    write_drawing(_one_prediction(parts), categories, draw)
                parts = []
    seconds = time.monotonic() - started
    speed = round((summary["images"] - summary["failed"]) / seconds, 3) if seconds else None
    return {
        **summary, "seconds": round(seconds, 3), "images_per_s": speed,
        "device": str(where), "out": os.fspath(out) if out is not None else None,
        "draw": os.fspath(draw) if draw is not None else None,
    }  # fmt: skip


def _categories(
    model: nn.Module, *, vocab: str | os.PathLike | None, queries: Sequence[str] | None, weights: str
) -> Categories:
    """What the labels of ``model``'s detections name: the queries asked (checked), the names a
    ViLD detector is given (embedded), or its own categories renamed by ``vocab``."""
    from vvk.methods.detection.query_detect import check_queries, check_unqueried, query_categories

    if queries:
        if vocab is not None:
            raise VvkError("vocab: not with queries (they name what is found)", params=("vocab", "queries"))
        return query_categories(model, check_queries(model, queries, weights=weights))
    check_unqueried(model)
    if vocab is not None and getattr(model, "teacher", None) is not None:  # ViLD: any names, embedded
        from vvk.methods.vild.open_vocabulary import apply_vocabulary

        return apply_vocabulary(model, os.fspath(vocab))
    return resolve_vocabulary(vocab, categories=model.categories)


def _one_prediction(parts: list[Prediction]) -> Prediction:
    """An image's predictions (one per query) as one, for its one drawing."""
    from vvk.methods.detection.query_detect import merged

    return merged(parts) if len(parts) > 1 else parts[0]


def _unanswered(prediction: Prediction, image_id: int | None) -> dict[str, Any]:
    from vvk.methods.detection.query_detect import unanswered_record

    return unanswered_record(prediction.image.path, prediction.query, image_id=image_id)


@contextmanager
def _discard() -> Iterator[Callable[[list[dict]], None]]:
    yield lambda records: None
