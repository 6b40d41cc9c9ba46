"""Is a detector's weakness finding objects or naming them? Box AP50 with and without classes.

    python benchmarks/detection_learning.py --keep runs/bench ...     # keep the trained detectors
    python benchmarks/detection_agnostic.py runs/bench/*/detector.safetensors [--label NAME]

Each detector is scored on the built-in example's val split twice: as it is (COCO box AP), and
class-agnostic, where every detection and every ground-truth object gets one category and
overlapping detections of different classes are merged first (NMS at IoU 0.5 across classes,
keeping the highest score). The agnostic AP50 is what the detector would score if it named
every object it finds correctly; its gap to the class-aware AP50 is the cost of the naming.

Writes benchmarks/results/detection_agnostic.json (records of earlier invocations are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.ops import box_convert, nms

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records  # noqa: E402

from vvk.data.coco import read_json  # noqa: E402
from vvk.data.detection import open_coco  # noqa: E402
from vvk.examples.digits_on_photos import detection_example_dir  # noqa: E402
from vvk.methods.detection.evaluate import predict_coco, score  # noqa: E402
from vvk.methods.detection.predict import load_detector  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "detection_agnostic.json"
MERGE_IOU = 0.5


def class_agnostic(results: list[dict], category_id: int) -> list[dict]:
    """``results`` with one category, overlapping boxes of any classes merged by NMS."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for record in results:
        by_image[record["image_id"]].append(record)
    merged = []
    for records in by_image.values():
        boxes = box_convert(torch.tensor([r["bbox"] for r in records]), "xywh", "xyxy")  # (N, 4)
        keep = nms(boxes, torch.tensor([r["score"] for r in records]), MERGE_IOU)
        merged += [{**records[k], "category_id": category_id} for k in keep.tolist()]
    return merged


def score_both(detector: Path, val: Path) -> dict:
    model = load_detector(detector)
    coco = open_coco(val, what="val")
    results, done, _ = predict_coco(model, coco)
    truth = read_json(coco.annotations_path)
    first = truth["categories"][0]["id"]
    one_class = {**truth, "categories": truth["categories"][:1],
                 "annotations": [{**a, "category_id": first} for a in truth["annotations"]]}  # fmt: skip
    aware = score(coco, results, done, masks=False)
    agnostic = score(one_class, class_agnostic(results, first), done, masks=False)
    return {"detector": str(detector), "images": len(done),
            "bbox_AP50": aware["bbox_AP50"], "bbox_AP50_class_agnostic": agnostic["bbox_AP50"],
            "bbox_AP": aware["bbox_AP"], "bbox_AP_class_agnostic": agnostic["bbox_AP"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detectors", nargs="+", type=Path, help="detector.safetensors files or run folders")
    parser.add_argument("--label", default=None, help="results key prefix (default: the run folder's name)")
    args = parser.parse_args()
    val = detection_example_dir() / "val"
    results = {"machine": machine_info(), "detectors": {}}
    for detector in args.detectors:
        path = detector / "detector.safetensors" if detector.is_dir() else detector
        record = score_both(path, val)
        name = path.parent.name if args.label is None else f"{args.label}/{path.parent.name}"
        results["detectors"][name] = record
        print(json.dumps({"name": name, **record}), flush=True)
    save_records(RESULTS, results, "detectors")


if __name__ == "__main__":
    main()
