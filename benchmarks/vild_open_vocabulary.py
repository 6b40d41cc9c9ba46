"""Does ViLD detect categories it never saw boxed? Novel and base AP50 on the built-in example.

    python benchmarks/vild_open_vocabulary.py [--methods vild-text vild-image vild vild-ensemble
        supervised] [--seeds 0 1 2] [--steps N] [--label NAME] [--jobs N]

The built-in example (10 digit classes) with three digits held out as novel (``7,8,9``: their
boxes leave the training targets, their pixels stay). The teacher is the stand-in
(``vvk.methods.vild.stand_in``: a small CNN and a table of class embeddings trained CLIP-style
on crops of all ten digits), and the regions are the built-in ones (a base-only ``vild-text``
RPN's proposals, embedded once). Every method trains ``vild-spinenet-tiny`` with the same
steps and seed (``vvk train detector --method M``); ``supervised`` is the upper bound, the
same detector trained on all ten digits with boxes (``--method vild-text`` without novel
categories). Each run is scored on the val split over the novel and the base digits apart.

Writes benchmarks/results/vild_open_vocabulary.json: per method and seed the final
``novel_bbox_AP50`` / ``base_bbox_AP50`` (and AP, masks), how many confident novel detections
per image are mistakes (``split_scores``) and how closely the image branch follows the teacher
on its training regions (``image_branch_scores``), then per method the mean and spread
over seeds and the issue's targets (ViLD's novel AP50 >= 3x ViLD-text's; ensemble >= ViLD).
``--jobs N`` trains N seeds at once, each in its own process on one thread (their seconds then
count a shared machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records, spread  # noqa: E402
from _seeds import seed_results  # noqa: E402

from vvk.methods.detection.train import train_detector  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "vild_open_vocabulary.json"
METHODS = ("vild-text", "vild-image", "vild", "vild-ensemble", "supervised")
KEYS = (
    "novel_bbox_AP50",
    "base_bbox_AP50",
    "novel_bbox_AP",
    "base_bbox_AP",
    "novel_segm_AP50",
    "base_segm_AP50",
)


def run_one(method: str, seed: int, work: Path, args) -> dict:
    out = work / f"{method}-s{seed}"
    overrides = [f"train.seed={seed}", "eval_every=0", *args.set]
    if method == "supervised":  # every digit boxed: the same detector and classifier, no novel ones
        method, overrides = "vild-text", [*overrides, "vild.novel="]
    started = time.monotonic()
    result = train_detector(method=method, steps=args.steps, overrides=overrides, out=out, progress=False)
    seconds = time.monotonic() - started
    final = split_scores(result.detector_path)
    image_branch = image_branch_scores(result.detector_path, result.preset["vild"]["max_regions"])
    return {"seed": seed, "steps": result.step, "seconds": round(seconds, 1), **final, **image_branch}


def split_scores(detector: Path, confident: float = 0.5) -> dict:
    """AP over the held-out digits and over the others (for ``supervised``, a detector trained on
    all ten), and ``confident_novel_mistakes``: detections per val image scored ``confident`` or
    more as a novel digit where no object of that digit is (IoU < 0.5): background, or a base
    digit, taken for a novel one."""
    from torchvision.ops import box_convert, box_iou

    from vvk.augment.jitter import source_box
    from vvk.data.detection import open_coco
    from vvk.examples.digits_on_photos import detection_example_dir
    from vvk.methods.detection.evaluate import predict_coco, score
    from vvk.methods.vild.split import base_and_novel, novel_categories
    from vvk.methods.vild.train import DEMO_NOVEL
    from vvk.models import load

    val = open_coco(detection_example_dir() / "val", what="val")
    splits = base_and_novel(val.categories, novel_categories(DEMO_NOVEL, val.categories))
    results, done, _ = predict_coco(load(detector), val, batch_size=16)
    final = score(val, results, done, masks=True, splits=splits)
    mistakes = 0
    for r in results:
        if r["score"] < confident or r["category_id"] not in splits["novel"]:
            continue
        image = val.images[r["image_id"]]
        same = [a for a in val.annotations[image.id] if a.category_id == r["category_id"]]
        truth = torch.tensor([source_box(a.segmentation, image.height, image.width) for a in same])
        box = box_convert(torch.tensor([r["bbox"]]), "xywh", "xyxy")
        mistakes += not same or float(box_iou(box, truth.float().reshape(-1, 4)).max()) < 0.5
    return {**{k: final.get(k) for k in KEYS}, "confident_novel_mistakes": round(mistakes / len(done), 3)}


@torch.no_grad()
def image_branch_scores(detector: Path, max_regions: int, images: int = 40) -> dict:
    """The image branch (the ensemble's own head; the text head's projection otherwise) on the
    distilled regions of the first ``images`` training images: ``teacher_cosine``, the mean
    cosine of its embeddings with the teacher's; ``image_branch_right``, the share of the regions
    on an object whose nearest category embedding is that object's (the teacher's own share:
    benchmarks/vild_regions.py)."""
    from vild_regions import region_objects

    from vvk.data.detection import open_coco, read_image
    from vvk.examples.digits_on_photos import detection_example_dir
    from vvk.methods.vild.demo import demo_regions
    from vvk.methods.vild.teacher import load_teacher
    from vvk.methods.vild.train import DEMO_NOVEL
    from vvk.models import load

    model = load(detector).eval()
    heads, store = model.roi_heads, demo_regions(load_teacher(model.teacher), teacher_spec=model.teacher,
                                                 novel_spec=DEMO_NOVEL, max_regions=max_regions)  # fmt: skip
    train = open_coco(detection_example_dir() / "train")
    classes = heads.classifier.embeddings  # (K, D), every category
    cosine, count, right, on_object = 0.0, 0, 0, 0
    for image_id in list(store)[:images]:
        boxes, teacher = store[image_id]  # (R, 4) in the image's pixels, (R, D)
        pixels = torch.from_numpy(read_image(train, train.images[image_id])).permute(2, 0, 1).float() / 255
        canvas, _ = model.transform([pixels])
        scale = (torch.tensor(canvas.image_sizes[0]) / torch.tensor(pixels.shape[1:])).flip(0).repeat(2)
        pooled = heads.box_roi_pool(model.backbone(canvas.tensors), [boxes * scale], canvas.image_sizes)
        student = heads._image_embeddings(pooled, heads.box_head(pooled))  # (R, D)
        on, labels, _ = region_objects(train, image_id, boxes)
        cosine, count = cosine + float((student * teacher).sum()), count + len(boxes)
        right += int(((student[on] @ classes.t()).argmax(dim=1) == labels).sum())
        on_object += int(on.sum())
    right = round(right / max(on_object, 1), 3)
    return {"teacher_cosine": round(cosine / count, 3), "image_branch_right": right}


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary = {
        method: {
            key: spread([r[key] for r in rows if r.get(key) is not None])
            for key in (*KEYS[:2], "confident_novel_mistakes", "image_branch_right")
        }
        for method, rows in runs.items()
    }
    novel = {m: summary[m]["novel_bbox_AP50"]["mean"] for m in summary}
    if {"vild", "vild-text"} <= novel.keys():
        summary["vild_over_vild_text_novel"] = round(novel["vild"] / max(novel["vild-text"], 1e-6), 2)
        summary["target_vild_3x_vild_text"] = novel["vild"] >= 3 * novel["vild-text"]
    if {"vild", "vild-ensemble"} <= novel.keys():
        summary["target_ensemble_at_least_vild"] = novel["vild-ensemble"] >= novel["vild"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default: the tiny preset's)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override")
    parser.add_argument("--label", default="default", help="results key")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one thread each")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vvk-vild-bench-"))
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    try:
        for records in seed_results(
            run_one, args.methods, args.seeds, work, args, key="method", jobs=args.jobs
        ):  # seed-major: a stopped run keeps its whole seeds
            for method, record in records:
                runs[method].append(record)
            entry = {"steps": args.steps, "overrides": args.set, "runs": runs, "summary": summarise(runs),
                     "machine": machine_info()}  # fmt: skip
            save_records(RESULTS, {"results": {args.label: entry}}, "results")
        print(json.dumps(entry["summary"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
