"""Inference speed of vvk's RetinaNets next to torchvision's detectors: images/s and ratios.

    python benchmarks/detection_inference.py                          # CPU, fp32, batch 1
    python benchmarks/detection_inference.py --runs 21 --threads 1    # steadier, one core
    python benchmarks/detection_inference.py --device cuda --dtype bf16 --batch-size 8   # gpu_check

The pairs issue 15 asks for, each at one input size, random weights (``weights=None,
weights_backbone=None`` for torchvision's), in one process:

- ``retinanet-spinenet-mobile-49`` vs torchvision's ``ssdlite320_mobilenet_v3_large`` at 384²
  (SSDlite's fixed 320² resize is set to 384²);
- ``retinanet-spinenet-49`` vs torchvision's ``retinanet_resnet50_fpn`` at 640².

Each timed call is the whole ``model(images)`` in eval mode under ``torch.inference_mode``:
normalisation, (no-op) resizing, network, decoding, NMS and the mapping back to the input's
pixels. The input is a batch of ``--batch-size`` random images of exactly the pair's size. The
models run interleaved (one call of each per round) after ``--warmup`` rounds, so load from
other jobs falls on all of them alike; the figure is the median over ``--runs`` rounds. With
random weights the score thresholds decide how much post-processing runs: the RetinaNets
(focal-loss prior 0.01, threshold 0.05) keep nothing, SSDlite (softmax over 91 classes,
threshold 0.001) keeps its top 300 per class into NMS, as it would at the start of training.
vvk's models run as ``vvk detect`` runs them, their batch norms folded into the convs.

Writes ``detection_inference.json`` (CPU fp32) or ``detection_inference_<device>_<dtype>.json``
into ``--out`` (default ``benchmarks/results``), with the machine and its load average at the
start and the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import write_json  # noqa: E402

import vvk.models  # noqa: E402
from vvk.models.layers import fold_batch_norms  # noqa: E402
from vvk.models.profile import count_macs, count_params  # noqa: E402

PAIRS = [("retinanet-spinenet-mobile-49", "ssdlite320_mobilenet_v3_large", 384),
         ("retinanet-spinenet-49", "retinanet_resnet50_fpn", 640)]  # fmt: skip


def torchvision_detector(builder: str, size: int) -> nn.Module:
    model = torchvision.models.get_model(builder, weights=None, weights_backbone=None)
    # Same input for every model: a `size` square, kept at that size by each transform.
    model.transform.min_size, model.transform.max_size = (size,), size
    if model.transform.fixed_size is not None:  # SSDlite resizes to a fixed 320²
        model.transform.fixed_size = (size, size)
    return model


def macs_of(model: nn.Module, images: list[torch.Tensor]) -> int:
    """vvk's detectors: their ``profile_forward`` (the network without post-processing, what
    ``vvk models list`` reports); torchvision's: one counted call of the whole model."""
    if hasattr(model, "profile_forward"):
        return count_macs(model, torch.stack(images))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() // 2


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    calls: dict[str, Callable[[], object]], device, warmup: int, runs: int
) -> dict[str, list]:
    """Seconds per call of each entry, one call of each per round."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + runs):
        for name, call in calls.items():
            synchronize(device)
            started = time.perf_counter()
            call()
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()
    machine = machine_info()
    torch.manual_seed(0)

    rows, calls = [], {}
    for vvk_name, tv_name, size in PAIRS:
        images = [torch.rand(3, size, size) for _ in range(args.batch_size)]
        for source, name, model in (
            ("vvk", vvk_name, vvk.models.build(vvk_name)),
            ("torchvision", tv_name, torchvision_detector(tv_name, size)),
        ):
            model.eval()
            rows.append({"name": name, "source": source, "input": [3, size, size],
                         "params": count_params(model), "macs": macs_of(model, images)})  # fmt: skip
            if source == "vvk":
                fold_batch_norms(model)  # as `vvk detect` runs it (counted before: the registry's)
            model.to(device)
            on_device = [img.to(device) for img in images]

            def call(model=model, on_device=on_device):
                with torch.inference_mode(), autocast:
                    return model(on_device)

            calls[name] = call
    times = time_interleaved(calls, device, args.warmup, args.runs)
    for row in rows:
        median = statistics.median(times[row["name"]])
        row["seconds_per_batch_median"] = round(median, 5)
        row["seconds_per_batch_min"] = round(min(times[row["name"]]), 5)
        row["images_per_second"] = round(args.batch_size / median, 3)
    speed = {row["name"]: row["images_per_second"] for row in rows}
    ratios = [
        {"vvk": v, "torchvision": t, "input": s, "vvk_over_torchvision": round(speed[v] / speed[t], 3)}
        for v, t, s in PAIRS
    ]
    machine["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    result = {
        "machine": machine,
        "device": str(device),
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "runs": args.runs,
        "models": rows,
        "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if (device.type, args.dtype) == ("cpu", "fp32") else f"_{device.type}_{args.dtype}"
    write_json(args.out / f"detection_inference{suffix}.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
