"""`vvk eval detections` against pycocotools' own COCOeval: the 12 stats, several results files.

    python benchmarks/detection_eval_parity.py [--seeds 3]

Ground truth: tiny_coco's real annotations (50 images, 470 objects). Results per seed: each
non-crowd object found with probability 0.9, its box jittered (bbox) or its mask shifted by up
to 4 pixels (segm, COCO's results format: masks without boxes), a uniform random score, plus 60
false positives of random categories. Each file is scored by the command as a user runs it
(``python -m vvk eval detections --json``, a fresh process) and by pycocotools directly
(``COCO.loadRes`` + ``COCOeval``); the largest absolute difference over the 12 stats is the
figure, with both wall times. Writes benchmarks/results/detection_eval_parity.json.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
from _records import write_json
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vvk.eval.detection import COCO_STATS
from vvk.testing import shared_data_reason, shared_data_root

RESULTS = Path(__file__).parent / "results" / "detection_eval_parity.json"
TINY = "coco/tiny_coco/annotations/instances_train2017.json"


def perturbed(gt: COCO, *, seed: int, masks: bool) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt.dataset["annotations"]:
        if ann["iscrowd"] or rng.random() < 0.1:
            continue
        record = {
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "score": float(rng.random()),
        }
        if masks:
            mask = np.roll(gt.annToMask(ann), tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
            rle = mask_utils.encode(np.asfortranarray(mask))
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:
            x, y, w, h = ann["bbox"]
            j = rng.normal(0, 0.08, size=4)
            record["bbox"] = [x + j[0] * w, y + j[1] * h, w * math.exp(j[2]), h * math.exp(j[3])]
        out.append(record)
    images, categories = list(gt.imgs.values()), gt.getCatIds()
    for _ in range(60):
        image = images[rng.integers(len(images))]
        x0, y0 = rng.random(2) * [image["width"] * 0.7, image["height"] * 0.7]
        w, h = rng.random(2) * [image["width"] * 0.3, image["height"] * 0.3] + 2
        record = {
            "image_id": image["id"],
            "category_id": int(rng.choice(categories)),
            "score": float(rng.random()),
        }
        if masks:
            mask = np.zeros((image["height"], image["width"]), np.uint8, order="F")
            mask[int(y0) : int(y0 + h), int(x0) : int(x0 + w)] = 1
            rle = mask_utils.encode(mask)
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        else:
            record["bbox"] = [float(x0), float(y0), float(w), float(h)]
        out.append(record)
    return out


def pycocotools_stats(gt_path: Path, dt_path: Path, iou_type: str) -> list[float]:
    with redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(dt_path)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def command_stats(gt_path: Path, dt_path: Path, iou_type: str) -> dict:
    argv = [sys.executable, "-m", "vvk", "eval", "detections", "--gt", str(gt_path), "--dt", str(dt_path)]
    proc = subprocess.run(
        [*argv, "--iou-type", iou_type, "--json"], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    root = shared_data_root()
    if root is None:
        sys.exit(shared_data_reason())
    gt_path = root / TINY
    with redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for iou_type in ("bbox", "segm"):
                dt_path = Path(tmp) / f"{iou_type}-{seed}.json"
                dt_path.write_text(json.dumps(perturbed(gt, seed=seed, masks=iou_type == "segm")))
                started = time.perf_counter()
                reference = pycocotools_stats(gt_path, dt_path, iou_type)
                direct_s = time.perf_counter() - started
                started = time.perf_counter()
                record = command_stats(gt_path, dt_path, iou_type)
                command_s = time.perf_counter() - started
                diff = max(abs(record[k] - v) for k, v in zip(COCO_STATS, reference, strict=True))
                runs.append({
                    "seed": seed, "iou_type": iou_type, "detections": record["detections"],
                    "AP": record["AP"], "max_abs_diff": diff,
                    "pycocotools_s": round(direct_s, 3), "command_s": round(command_s, 3),
                })  # fmt: skip
                print(json.dumps(runs[-1]))
    from _machine import machine_info

    summary = {
        "command": " ".join(["python benchmarks/detection_eval_parity.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "ground_truth": TINY,
        "stats": list(COCO_STATS),
        "max_abs_diff": max(r["max_abs_diff"] for r in runs),
        "runs": runs,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    write_json(RESULTS, summary)
    print(f"max |vvk - pycocotools| over {len(runs)} files x 12 stats: {summary['max_abs_diff']:.3g}")


if __name__ == "__main__":
    main()
