"""Copy-Paste throughput against the floor no copy-paste can beat, worker scaling, and what
the augmentation does to the object count and category distribution.

    python benchmarks/copy_paste.py [--size 1024] [--copies 4] [--repeats 5]

Three runs over the same tiny_coco images, the same random draws, the same output size, one
process each, interleaved ``--repeats`` times (the machine is shared: medians are reported):

- ``copy_paste``: ``vvk.augment.augment_coco`` (workers=1), the whole command minus printing.
- ``floor_two_images``: for every output, decode the destination and the source, jitter both,
  encode the destination as JPEG: every copy-paste must do at least this.
- ``floor_one_image``: decode, jitter and encode the destination only (plain scale jitter).

Then ``augment_coco`` with workers 1 and 2 (spawned processes, start-up included), and the
per-category object counts of input and output. Writes benchmarks/results/copy_paste.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from vvk.augment import CopyPasteOptions, augment_coco
from vvk.augment.dataset_writer import build_plan
from vvk.augment.jitter import jitter_image
from vvk.augment.render import draw_copy
from vvk.data.coco import find_coco_layout, load_coco, load_rgb, write_jpeg
from vvk.testing import shared_data_reason, shared_data_root

RESULTS = Path(__file__).parent / "results" / "copy_paste.json"


def floor_run(src: Path, options: CopyPasteOptions, out_dir: Path, *, with_source: bool) -> float:
    """Seconds to read, jitter and write every output image without any pasting."""
    start = time.perf_counter()
    dataset = load_coco(*find_coco_layout(src))
    plan, _, _ = build_plan(dataset, dataset, options)
    out_dir.mkdir(parents=True)
    for dst in plan.destinations:
        pixels = load_rgb(dst.path, exif_orientation=dst.exif_orientation)
        for copy in range(options.copies):
            draw = draw_copy(plan, dst, copy)
            image = jitter_image(pixels, draw.dst_jitter)
            if with_source:
                source = load_rgb(draw.source.path, exif_orientation=draw.source.exif_orientation)
                jitter_image(source, draw.src_jitter)
            write_jpeg(out_dir / f"{dst.id:012d}_cp{copy:02d}.jpg", image)
    return time.perf_counter() - start


def copy_paste_run(
    src: Path, options: CopyPasteOptions, out_dir: Path, *, workers: int
) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = augment_coco(src, out_dir, options=options, workers=workers)
    return time.perf_counter() - start, summary


def category_table(src: Path, output_json: Path) -> list[dict]:
    dataset = load_coco(*find_coco_layout(src))
    names = dataset.category_names()
    before = Counter(names[a.category_id] for anns in dataset.annotations.values() for a in anns)
    after = Counter(names[a["category_id"]] for a in json.loads(output_json.read_text())["annotations"])
    rows = [
        {"category": name, "input": before[name], "output": after[name]}
        for name in sorted(set(before) | set(after), key=lambda n: (-before[n], n))
    ]
    rows.append({"category": "(all)", "input": sum(before.values()), "output": sum(after.values())})
    return rows


def machine() -> dict:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scaling-copies", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # as augment_coco does: one core per process in every run
    root = shared_data_root()
    if root is None:
        raise SystemExit(shared_data_reason())
    src = root / "coco" / "tiny_coco"
    options = CopyPasteOptions(copies=args.copies, size=args.size, seed=0)
    times: dict[str, list[float]] = {"copy_paste": [], "floor_two_images": [], "floor_one_image": []}
    work = Path(tempfile.mkdtemp(prefix="vvk-bench-cp-"))
    try:
        # One untimed round first: imports, page cache and allocator warm-up.
        floor_run(src, options, work / "warm-f", with_source=True)
        copy_paste_run(src, options, work / "warm-cp", workers=1)
        for r in range(args.repeats):
            times["floor_one_image"].append(floor_run(src, options, work / f"f1-{r}", with_source=False))
            times["floor_two_images"].append(floor_run(src, options, work / f"f2-{r}", with_source=True))
            seconds, summary = copy_paste_run(src, options, work / f"cp-{r}", workers=1)
            times["copy_paste"].append(seconds)
        distribution = category_table(src, work / "cp-0" / "annotations" / "instances_train2017.json")
        scaling_options = CopyPasteOptions(copies=args.scaling_copies, size=args.size, seed=0)
        scaling: dict[int, list[float]] = {1: [], 2: []}
        for r in range(max(3, args.repeats // 2)):
            for workers in (1, 2):
                seconds, _ = copy_paste_run(src, scaling_options, work / f"s{workers}-{r}", workers=workers)
                scaling[workers].append(seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    outputs = summary["images_written"]
    result = {
        "machine": machine(),
        "data": "tiny_coco (50 COCO train2017 images)",
        "size": args.size,
        "copies": args.copies,
        "outputs_per_run": outputs,
        "seconds": times,
        "median_seconds": med,
        "images_per_second": {k: round(outputs / v, 2) for k, v in med.items()},
        "ratio_copy_paste_to_floor_two_images": round(med["copy_paste"] / med["floor_two_images"], 3),
        "ratio_copy_paste_to_floor_one_image": round(med["copy_paste"] / med["floor_one_image"], 3),
        "scaling": {
            "copies": args.scaling_copies,
            "seconds": scaling,
            "median_seconds": {w: statistics.median(v) for w, v in scaling.items()},
            "speedup_1_to_2": round(statistics.median(scaling[1]) / statistics.median(scaling[2]), 3),
        },
        "summary_of_one_run": summary,
        "categories": distribution,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
