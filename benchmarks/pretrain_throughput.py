"""Training throughput of a pretraining method: clips/s of forward + backward + optimizer step.

    python benchmarks/pretrain_throughput.py                       # constcl, paper preset, r3d-50-y
    python benchmarks/pretrain_throughput.py --method cvrl --backbone r3d-rs-50 --batch-size 32
    python benchmarks/pretrain_throughput.py --preset tiny --device cpu --steps 3   # a dry run

The figure issue 6 asks for on a GPU: ``--preset paper`` of ConST-CL (``r3d-50-y``, two views of
16 × 224², the global and the local branch) in the preset's precision (bf16). One batch of real
decoded clips — from ``--data`` or vvk's built-in example set, which needs no download — goes
through the method's training module (augmentation on the device included) ``--warmup`` times,
then ``--steps`` timed times; the data loader is left out, so this is what the model costs, not
what a given disk and CPU can feed. Clips are counted per video (each has two views).

Writes ``pretrain_throughput.json`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import write_json  # noqa: E402

from vvk.data import collate, open_video_dataset  # noqa: E402
from vvk.engine import autocast  # noqa: E402
from vvk.engine.optim import build_optimizer  # noqa: E402
from vvk.methods.pretrain import get_method, resolve_preset  # noqa: E402


def one_batch(method: str, preset, data: Path | None, batch_size: int, device: torch.device) -> dict:
    """``batch_size`` real samples of the method's sampler, collated and moved to ``device``."""
    module = get_method(method)
    if data is None:
        from vvk.examples.synthetic import example_dir

        data = example_dir()
    with tempfile.TemporaryDirectory() as cache:
        dataset = open_video_dataset(
            data, sampler=module.sampler(preset), size=preset.size, cache_dir=cache,
            **module.dataset_options(preset),
        )  # fmt: skip
        if len(dataset) == 0:
            raise SystemExit(f"{data}: no usable videos")
        batch = collate([dataset[i % len(dataset)] for i in range(batch_size)])
    batch.pop("skipped", None)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method: str, preset, batch: dict, device: torch.device, warmup: int, steps: int) -> dict:
    module = get_method(method)
    model = module.build(preset).to(device).train()
    optimizer = build_optimizer(model, preset.train)
    times = []
    for i in range(warmup + steps):
        synchronize(device)
        started = time.perf_counter()
        with autocast(device, preset.train.precision):
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    loss = float(loss.detach())
    if not math.isfinite(loss):
        raise SystemExit(f"non-finite loss {loss}: the measurement is not of a working step")
    times.sort()
    median = times[len(times) // 2]
    record = {
        "seconds_per_step_median": round(median, 4),
        "seconds_per_step_min": round(times[0], 4),
        "clips_per_second": round(preset.train.batch_size / median, 2),
        "loss_last": loss,
    }
    if device.type == "cuda":
        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="constcl")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--backbone", default=None, help="default: the preset's")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per step (one GPU)")
    parser.add_argument("--precision", default=None, help="fp32 | bf16 | fp16 (default: the preset's)")
    parser.add_argument("--data", type=Path, default=None, help="videos (default: the built-in example set)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    overrides = [f"train.precision={args.precision}"] if args.precision else []
    preset = resolve_preset(args.method, args.preset, overrides=overrides, backbone=args.backbone,
                            batch_size=args.batch_size)  # fmt: skip
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its 3-D conv algorithms
    batch = one_batch(args.method, preset, args.data, args.batch_size, device)
    result = {
        "machine": machine_info(),
        "device": str(device),
        "method": args.method,
        "preset": args.preset,
        "backbone": preset.backbone,
        "batch_size": args.batch_size,
        "precision": preset.train.precision,
        "input": {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() >= 4},
        "crop": preset.crop,
        "warmup": args.warmup,
        "steps": args.steps,
        **measure(args.method, preset, batch, device, args.warmup, args.steps),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "pretrain_throughput.json", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
