"""Copy-Paste throughput against the floor no copy-paste can beat, worker scaling, and what
the augmentation does to the object count and category distribution.

    python benchmarks/copy_paste.py [--size 1024] [--copies 4] [--repeats 5]

Three runs over the same tiny_coco images, the same random draws, the same output size, one
process each, interleaved ``--repeats`` times. The machine is shared with other jobs, so both
wall and CPU seconds (this process and its children) are recorded, and medians reported:

- ``copy_paste``: ``vvk.augment.augment_coco`` (workers=1), the whole command minus printing.
- ``floor_two_images``: for every output, decode the destination and (when the copy pastes
  anything) the source, jitter both, encode the destination as JPEG: every copy that pastes
  must do at least this.
- ``floor_one_image``: decode, jitter and encode the destination only (plain scale jitter).

Then the mask work alone by stage (``mask_work``), the first run's kernel compilation
(``first_run``), ``augment_coco`` with workers 1 and 2 (see ``scaling_runs``), and the
per-category object counts of input and output. Writes benchmarks/results/copy_paste.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _records import write_json

from vvk.augment import CopyPasteOptions, augment_coco
from vvk.augment.copy_paste import paste
from vvk.augment.dataset_writer import build_plan
from vvk.augment.jitter import jitter_image
from vvk.augment.render import Plan, annotation_record, draw_copy, jitter_objects
from vvk.data.coco import find_coco_layout, load_coco
from vvk.data.images import load_rgb, write_jpeg
from vvk.testing import shared_data_reason, shared_data_root

RESULTS = Path(__file__).parent / "results" / "copy_paste.json"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: far steadier than wall time on a
    machine shared with other jobs, and the parallel overhead shows up in it."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args, **kwargs)
    return time.perf_counter() - wall, cpu_seconds() - cpu, result


def self_plan(src: Path, options: CopyPasteOptions) -> Plan:
    """The plan of ``augment_coco(src, ...)`` pasting from the dataset itself."""
    dataset = load_coco(*find_coco_layout(src))
    plan, _, _ = build_plan(dataset, dataset, options)
    return plan


def floor_run(src: Path, options: CopyPasteOptions, out_dir: Path, *, with_source: bool) -> None:
    """Read, jitter and write every output image without any pasting."""
    plan = self_plan(src, options)
    out_dir.mkdir(parents=True)
    for dst in plan.destinations:
        pixels = load_rgb(dst.path, exif_orientation=dst.exif_orientation)
        for copy in range(options.copies):
            draw = draw_copy(plan, dst, copy)
            image = jitter_image(pixels, draw.dst_jitter)
            if with_source and draw.chosen:  # copy-paste reads no source when it pastes nothing
                source = load_rgb(draw.source.path, exif_orientation=draw.source.exif_orientation)
                jitter_image(source, draw.src_jitter)
            write_jpeg(out_dir / f"{dst.id:012d}_cp{copy:02d}.jpg", image)


def mask_work(src: Path, options: CopyPasteOptions, repeats: int) -> dict:
    """Seconds of the mask work of every output on blank frames, so that no image work is
    counted, by stage: ``masks`` (the destination's and the pasted objects' masks in the jittered
    frames: rasterising polygons, resampling RLE), ``paste`` (the masked copy, the union, the
    destination objects' subtraction and occlusion rule) and ``records`` (area, box, RLE string)."""
    import numpy as np

    plan = self_plan(src, options)
    draws = [(dst, draw_copy(plan, dst, copy)) for dst in plan.destinations for copy in range(options.copies)]
    blank = np.zeros((options.size, options.size, 3), np.uint8)
    objects = sum(len(dst.objects) + len(draw.chosen) for dst, draw in draws)

    def one_pass() -> dict[str, float]:
        stages = dict.fromkeys(("masks", "paste", "records"), 0.0)
        for dst, draw in draws:
            t0 = time.perf_counter()
            kept = jitter_objects(dst.objects, draw.dst_jitter)
            pasted = jitter_objects(draw.chosen, draw.src_jitter)
            t1 = time.perf_counter()
            result = paste(blank, kept, blank, pasted, in_place=True)
            t2 = time.perf_counter()
            for inst in result.instances:
                annotation_record(inst, options.mask_format)
            t3 = time.perf_counter()
            stages["masks"] += t1 - t0
            stages["paste"] += t2 - t1
            stages["records"] += t3 - t2
        stages["total"] = sum(stages.values())
        return stages

    one_pass()  # untimed: the kernels are loaded on first use
    passes = [one_pass() for _ in range(repeats)]
    median = {k: statistics.median(p[k] for p in passes) for k in passes[0]}
    return {
        "seconds": [p["total"] for p in passes],
        "median_seconds": median["total"],
        "median_seconds_by_stage": median,
        "objects_jittered": objects,
        "masks_us_per_object": round(1e6 * median["masks"] / objects, 2),
    }


def first_run(src: Path) -> dict:
    """Seconds of a small ``augment_coco`` run (1 copy at 256²) in a fresh process, twice, with a
    fresh numba cache: the first compiles the mask kernels, the second loads them."""
    code = (
        "import sys, time; start = time.perf_counter(); from pathlib import Path;"
        "from vvk.augment import CopyPasteOptions, augment_coco;"
        "augment_coco(Path(sys.argv[1]), Path(sys.argv[2]), options=CopyPasteOptions(size=256));"
        "print(time.perf_counter() - start)"
    )
    with tempfile.TemporaryDirectory(prefix="vvk-bench-numba-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        seconds = []
        for attempt in ("first", "second"):
            out = Path(cache) / f"out-{attempt}"
            command = [sys.executable, "-c", code, str(src), str(out)]
            done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            seconds.append(float(done.stdout.split()[-1]))
    first, second = seconds
    return {"first_seconds": first, "second_seconds": second, "compile_seconds": first - second}


def scaling_runs(src: Path, size: int, repeats: int, work: Path) -> dict:
    """1 and 2 workers at 2 and 8 copies per image. CPU seconds grow linearly with the copies;
    the slope is the work per image, the intercept the fixed cost (spawning workers that import
    torch). Equal slopes for 1 and 2 workers mean the rendering itself scales linearly; the wall
    rate over the last 80% of destinations shows what this (shared) machine gave."""
    runs: dict[str, dict] = {}
    for r in range(repeats):
        for workers in (1, 2):
            for copies in (2, 8):
                marks: list[float] = []
                start = time.perf_counter()
                seconds, cpu_s, _ = timed(
                    augment_coco,
                    src,
                    work / f"s{workers}-{copies}-{r}",
                    options=CopyPasteOptions(copies=copies, size=size, seed=0),
                    workers=workers,
                    progress=lambda done, total, marks=marks, start=start: marks.append(
                        time.perf_counter() - start
                    ),
                )
                first = len(marks) // 5
                rate = (len(marks) - first) * copies / (marks[-1] - marks[first])
                run = runs.setdefault(
                    f"workers={workers},copies={copies}", {"wall": [], "cpu": [], "rate": []}
                )
                run["wall"].append(seconds)
                run["cpu"].append(cpu_s)
                run["rate"].append(rate)
    med = {key: {k: statistics.median(v) for k, v in run.items()} for key, run in runs.items()}
    summary = {"runs": runs, "median": med}
    for workers in (1, 2):
        low, high = med[f"workers={workers},copies=2"], med[f"workers={workers},copies=8"]
        slope = (high["cpu"] - low["cpu"]) / (6 * 50)  # CPU seconds per output image
        summary[f"workers={workers}"] = {
            "cpu_ms_per_image": round(1000 * slope, 2),
            "fixed_cpu_seconds": round(low["cpu"] - slope * 100, 2),
            "steady_images_per_second": round(high["rate"], 2),
        }
    one, two = summary["workers=1"], summary["workers=2"]
    summary["cpu_per_image_2_over_1"] = round(two["cpu_ms_per_image"] / one["cpu_ms_per_image"], 3)
    summary["steady_speedup_1_to_2"] = round(
        two["steady_images_per_second"] / one["steady_images_per_second"], 3
    )
    return summary


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
    parser.add_argument("--scaling-repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # as augment_coco does: one core per process in every run
    root = shared_data_root()
    if root is None:
        raise SystemExit(shared_data_reason())
    src = root / "coco" / "tiny_coco"
    options = CopyPasteOptions(copies=args.copies, size=args.size, seed=0)
    runs = {
        "copy_paste": lambda out: augment_coco(src, out, options=options, workers=1),
        "floor_two_images": lambda out: floor_run(src, options, out, with_source=True),
        "floor_one_image": lambda out: floor_run(src, options, out, with_source=False),
    }
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    summary: dict = {}
    work = Path(tempfile.mkdtemp(prefix="vvk-bench-cp-"))
    try:
        for name, run in runs.items():  # one untimed round: imports, page cache, allocator
            run(work / f"warm-{name}")
        for r in range(args.repeats):
            for name, run in runs.items():
                seconds, cpu_s, result = timed(run, work / f"{name}-{r}")
                wall[name].append(seconds)
                cpu[name].append(cpu_s)
                if name == "copy_paste":
                    summary = result
        masks = mask_work(src, options, args.repeats)
        first = first_run(src)
        distribution = category_table(src, work / "copy_paste-0" / "annotations" / "instances_train2017.json")
        # --scaling-repeats 0 skips the worker runs (a quick check of the ratio alone)
        scaling = scaling_runs(src, args.size, args.scaling_repeats, work) if args.scaling_repeats else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    outputs = summary["images_written"]
    result = {
        "machine": machine(),
        "load_average_at_end": os.getloadavg(),
        "data": "tiny_coco (50 COCO train2017 images)",
        "size": args.size,
        "copies": args.copies,
        "outputs_per_run": outputs,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "median_wall_seconds": med_wall,
        "median_cpu_seconds": med_cpu,
        "images_per_second_wall": {k: round(outputs / v, 2) for k, v in med_wall.items()},
        "ratio_to_floor_two_images": {
            "wall": round(med_wall["copy_paste"] / med_wall["floor_two_images"], 3),
            "cpu": round(med_cpu["copy_paste"] / med_cpu["floor_two_images"], 3),
        },
        "ratio_to_floor_one_image": {
            "wall": round(med_wall["copy_paste"] / med_wall["floor_one_image"], 3),
            "cpu": round(med_cpu["copy_paste"] / med_cpu["floor_one_image"], 3),
        },
        "mask_work": masks,
        "first_run": first,
        "scaling": scaling,
        "summary_of_one_run": summary,
        "categories": distribution,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
