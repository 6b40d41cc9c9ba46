"""What does ViLD distil on the built-in example? The regions' objects and the teacher's geometry.

    python benchmarks/vild_regions.py [--teacher stand-in|FILE] [--keep 25 50 100 300] [--images 200]

For the built-in regions (the best proposals per training image of a base-only ``vild-text``
RPN, embedded by the teacher, the built-in stand-in or a stand-in file: ``vvk.methods.vild.demo``),
over the first ``--images``
training images and for the first N regions of each image (``vild.max_regions``):

- ``on_object``: the share of regions with IoU >= 0.5 to an object (the rest teach background);
- ``objects_covered``: the share of objects with such a region;
- ``teacher_right``: of the regions on an object, the share whose nearest category embedding is
  that object's category (what a perfect student of the teacher would get right);
- ``nearest_class_cosine``: the mean cosine of a region's embedding to its nearest category
  embedding (how much of the vector says the category);
- ``cosine_to_mean``: the mean cosine of a region's embedding to the mean of all regions'
  (how much of it is one direction shared by all).

Writes benchmarks/results/vild_regions.json, keyed by the teacher's name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "vild_regions.json"


def region_objects(coco, image_id: int, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Which of an image's (R, 4) region ``boxes`` lie on an object (IoU >= 0.5): the (R,) mask,
    the (R_on,) category index (the file's order) of each such region's best object, and the
    (N,) mask of the image's objects that such a region covers."""
    from vvk.augment.jitter import source_box

    image = coco.images[image_id]
    annotations = [a for a in coco.annotations.get(image_id, ()) if not a.iscrowd]
    truth = torch.tensor([source_box(a.segmentation, image.height, image.width) for a in annotations])
    index = {c["id"]: k for k, c in enumerate(coco.categories)}
    labels = torch.tensor([index[a.category_id] for a in annotations], dtype=torch.long)
    overlap = box_iou(boxes, truth.float().reshape(-1, 4))  # (R, N)
    on = (overlap >= 0.5).any(dim=1)  # (R,)
    best = overlap[on].argmax(dim=1) if len(labels) else torch.zeros(0, dtype=torch.long)
    return on, labels[best], (overlap >= 0.5).any(dim=0)


def region_statistics(spec: str, keep: list[int], images: int) -> tuple[str, dict[str, dict[str, float]]]:
    from vvk.data.detection import open_coco
    from vvk.examples.digits_on_photos import detection_example_dir
    from vvk.methods.vild.demo import demo_regions
    from vvk.methods.vild.teacher import load_teacher
    from vvk.methods.vild.train import DEMO_NOVEL
    from vvk.methods.vild.vocabulary import vocabulary_embeddings

    train = open_coco(detection_example_dir() / "train")
    teacher = load_teacher(spec)
    store = demo_regions(teacher, teacher_spec=spec, novel_spec=DEMO_NOVEL)
    classes = vocabulary_embeddings(teacher, [[c["name"]] for c in train.categories])  # (K, D)
    figures = {}
    for n in keep:
        on_object = regions = covered = objects = right = 0
        kept = []
        for image_id in list(store)[:images]:
            boxes, embedded = (t[:n] for t in store[image_id])  # (R, 4), (R, D)
            on, labels, covers = region_objects(train, image_id, boxes)
            right += int(((embedded[on] @ classes.t()).argmax(dim=1) == labels).sum())
            on_object, regions = on_object + int(on.sum()), regions + len(boxes)
            covered, objects = covered + int(covers.sum()), objects + len(covers)
            kept.append(embedded)
        embedded = torch.cat(kept)  # (all regions, D)
        mean = F.normalize(embedded.mean(dim=0), dim=0)
        figures[str(n)] = {
            "on_object": round(on_object / regions, 3),
            "objects_covered": round(covered / objects, 3),
            "teacher_right": round(right / max(on_object, 1), 3),
            "nearest_class_cosine": round(float((embedded @ classes.t()).amax(dim=1).mean()), 3),
            "cosine_to_mean": round(float((embedded @ mean).mean()), 3),
        }
    return teacher.name, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="stand-in", help="the built-in stand-in, or a stand-in file")
    parser.add_argument("--keep", nargs="+", type=int, default=[25, 50, 100, 300])
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    name, figures = region_statistics(args.teacher, args.keep, args.images)
    save_records(RESULTS, {"results": {name: {**figures, "images": args.images}},
                           "machine": machine_info()}, "results")  # fmt: skip
    print(name, figures)


if __name__ == "__main__":
    main()
