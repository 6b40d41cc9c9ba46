"""Where ``vvk detect`` puts what it finds: a results file (JSON lines, or one COCO results list)
written atomically, and drawings of each image with its boxes, masks and labels
(``torchvision.utils``). ``check_outputs`` refuses, before anything runs, an output inside an input
folder or one that would replace an input image.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from vvk.atomic import atomic_path
from vvk.data.paths import real_path
from vvk.errors import VvkError

if TYPE_CHECKING:
    from vvk.methods.detection.predict import Categories, ImageFile, Prediction

FORMATS = ("jsonl", "coco-results")


def coco_result(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a COCO result (``image_id`` required): what pycocotools' ``loadRes`` reads;
    plus a query detector's ``query`` (``vvk eval detections --queries`` scores those files)."""
    keys = ("image_id", "query", "category_id", "bbox", "score", "segmentation")
    return {k: record[k] for k in keys if k in record}


@contextmanager
def results_file(path: str | os.PathLike, *, format: str = "jsonl") -> Iterator[Callable[[list[dict]], None]]:
    """A writer of records into ``path``: JSON lines, or (``coco-results``) one JSON list of COCO
    results. The file appears, complete, when the block ends; an error or Ctrl-C inside leaves
    ``path`` as it was (``vvk.atomic``)."""
    if format not in FORMATS:
        raise VvkError(f"format={format}: expected one of {', '.join(FORMATS)}", params=("format",))
    coco = format == "coco-results"
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        first = True

        def write(records: list[dict]) -> None:
            nonlocal first
            for record in records:
                if coco:
                    f.write(("[\n" if first else ",\n") + json.dumps(coco_result(record)))
                else:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                first = False

        yield write
        if coco:
            f.write("[]\n" if first else "\n]\n")


def drawing_path(out_dir: str | os.PathLike, image: ImageFile) -> Path:
    """Where ``image``'s drawing goes: ``out_dir/<name>``, a JPEG or PNG as the input is (other
    formats: ``<name>.jpg``)."""
    name = Path(image.name)
    if name.suffix.lower() not in (".jpg", ".jpeg", ".png"):
        name = name.with_name(name.name + ".jpg")
    return Path(out_dir) / name


def check_outputs(
    images: Sequence[ImageFile],
    *,
    draw: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> None:
    """Refuse, before anything runs, outputs inside (or equal to) a folder of the inputs and
    outputs that would replace an input image."""
    folders = {real_path(image.folder) for image in images if image.folder is not None}
    inputs = {real_path(image.path) for image in images}
    for param, target in (("draw", draw), ("out", out)):
        if target is None:
            continue
        where = real_path(target)
        for folder in folders:
            if where == folder or where.startswith(folder.rstrip(os.sep) + os.sep):
                raise VvkError(
                    f"{param}={os.fspath(target)}: inside the input folder {folder}; "
                    "vvk never writes into its input",
                    params=(param,),
                )
        if where in inputs:
            raise VvkError(f"{param}={os.fspath(target)}: is one of the input images", params=(param,))
    if out is not None and os.path.isdir(out):
        raise VvkError(f"out={os.fspath(out)}: is a folder; give a file name", params=("out",))
    if draw is not None:
        if os.path.exists(draw) and not os.path.isdir(draw):
            raise VvkError(f"draw={os.fspath(draw)}: not a folder", params=("draw",))
        for image in images:
            if real_path(drawing_path(draw, image)) in inputs:
                raise VvkError(
                    f"draw={os.fspath(draw)}: the drawing of {image.path} would replace an input image",
                    params=("draw",),
                )


def draw_prediction(prediction: Prediction, categories: Categories) -> Tensor:
    """(3, H, W) uint8: the image with its masks, boxes and ``name score`` labels drawn
    (torchvision.utils), one colour per category."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    if prediction.pixels is None:
        raise ValueError("predict_images(keep_pixels=True) keeps the pixels a drawing needs")
    image = prediction.pixels
    labels = prediction.labels.tolist()
    colors = [_PALETTE[(label - 1) % len(_PALETTE)] for label in labels]
    if prediction.masks is not None and len(labels):
        image = draw_segmentation_masks(image, prediction.masks, alpha=0.45, colors=colors)
    if len(labels):
        text = [
            f"{categories[label - 1]['name']} {s:.2f}"
            for label, s in zip(labels, prediction.scores.tolist(), strict=True)
        ]
        width = max(1, round(max(prediction.size) / 320))  # visible on large images, not blocky on small
        image = draw_bounding_boxes(
            image, prediction.boxes, labels=text, colors=colors, width=width, fill_labels=True,
            label_background_colors=colors,
        )  # fmt: skip
    return image


# Distinct, saturated colours (matplotlib's tab10), by label.
_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def write_drawing(prediction: Prediction, categories: Categories, out_dir: str | os.PathLike) -> Path:
    """Write ``draw_prediction`` to ``drawing_path`` (atomically); returns the path."""
    from PIL import Image

    from vvk.data.images import write_jpeg

    dest = drawing_path(out_dir, prediction.image)
    pixels = draw_prediction(prediction, categories).permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)
    with atomic_path(dest) as tmp:
        if dest.suffix.lower() == ".png":
            Image.fromarray(pixels).save(tmp, format="PNG")
        else:
            write_jpeg(tmp, pixels)
    return dest
