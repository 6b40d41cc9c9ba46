"""Training step time of the detection presets: seconds per step, images/s, peak memory.

    python benchmarks/detection_train_step.py --device cuda --dtype bf16      # gpu_check: paper presets
    python benchmarks/detection_train_step.py --preset tiny --runs 3          # CPU: does it run?

Each family's preset of ``--preset`` (paper: SpineNet-49 RetinaNet at 640², batch 16 per
process; the Copy-Paste Mask R-CNN R50-FPN at 1024², batch 8), built as ``vvk train detector``
builds it (``build_detector``: 80 COCO categories, the preset's stochastic depth and batch-norm
momentum), random initialisation. A step is what the training loop does: the detector's losses
on a batch (``detection_step``) under autocast when ``--dtype bf16``, their sum's backward, an
SGD step with the preset's rate and momentum. The batch is fixed and synthetic: random pixels at
the preset's canvas, ``--objects`` random boxes per image (with their masks for Mask R-CNN), so
the figure is the network's and the losses', not the data loader's (``vvk.data.detection``
costs are in the CPU learning runs). The median over ``--runs`` steps after ``--warmup``.

Writes ``detection_train_step_<preset>_<device>_<dtype>.json`` into ``--out`` (default
``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import write_json  # noqa: E402
from detection_inference import synchronize  # noqa: E402

from vvk.methods.detection.preset import FAMILIES, PRESETS  # noqa: E402
from vvk.methods.detection.train import build_detector, detection_step  # noqa: E402
from vvk.models.detectors.common import coco_categories  # noqa: E402


def synthetic_batch(batch_size: int, size: int, objects: int, masks: bool, generator) -> dict:
    """``batch_size`` random (3, size, size) images, each with ``objects`` random boxes (sides
    1/16 to 1/2 of the canvas) of random COCO labels, and their box-filling masks."""
    images = torch.rand(batch_size, 3, size, size, generator=generator)
    targets = []
    for _ in range(batch_size):
        wh = (torch.rand(objects, 2, generator=generator) * 7 / 16 + 1 / 16) * size
        xy = torch.rand(objects, 2, generator=generator) * (size - wh)
        boxes = torch.cat([xy, xy + wh], dim=1).floor()  # (N, 4) XYXY
        target = {"boxes": boxes, "labels": torch.randint(1, 81, (objects,), generator=generator)}
        if masks:
            canvas = torch.zeros(objects, size, size, dtype=torch.uint8)
            for mask, (x0, y0, x1, y1) in zip(canvas, boxes.int().tolist(), strict=True):
                mask[y0:y1, x0:x1] = 1
            target["masks"] = canvas
        targets.append(target)
    return {"images": images, "targets": targets}


def time_steps(model, batch, optimizer, autocast, device, warmup: int, runs: int) -> list[float]:
    times = []
    for i in range(warmup + runs):
        synchronize(device)
        started = time.perf_counter()
        with autocast:
            losses = detection_step(model, batch)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def measure(family: str, args, device: torch.device) -> dict:
    preset = PRESETS[args.preset][family]
    batch_size = args.batch_size or preset.train.batch_size
    model = build_detector(preset, coco_categories()).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=preset.train.lr, momentum=preset.train.momentum)
    batch = synthetic_batch(
        batch_size, preset.image_size, args.objects, family == "maskrcnn", torch.Generator().manual_seed(0)
    )
    batch = {"images": batch["images"].to(device), "targets": batch["targets"]}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(model, batch, optimizer, autocast, device, args.warmup, args.runs)
    median = statistics.median(times)
    record = {
        "model": preset.model,
        "image_size": preset.image_size,
        "batch_size": batch_size,
        "seconds_per_step_median": round(median, 4),
        "seconds_per_step_range": [round(min(times), 4), round(max(times), 4)],
        "images_per_second": round(batch_size / median, 2),
    }
    if device.type == "cuda":
        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=list(PRESETS))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--objects", type=int, default=8, help="boxes per image (COCO: 7.3 on average)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    result = {
        "machine": machine_info(),
        "preset": args.preset,
        "device": str(device),
        "dtype": args.dtype,
        "objects_per_image": args.objects,
        "warmup": args.warmup,
        "runs": args.runs,
        "families": {family: measure(family, args, device) for family in args.families},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"detection_train_step_{args.preset}_{device.type}_{args.dtype}.json"
    write_json(path, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
