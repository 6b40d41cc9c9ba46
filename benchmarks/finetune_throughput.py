"""Per-step training throughput of ``vvk finetune`` on the CPU: steps/s of the tiny and rs presets.

    python benchmarks/finetune_throughput.py                        # tiny and rs, one thread
    python benchmarks/finetune_throughput.py --presets tiny --steps 10 --batch-size 8

One batch of real decoded clips (the shared data's videos when ``VVK_TEST_DATA`` or
``../shared/data`` holds them, else vvk's built-in example set), at each preset's clip size,
goes through ``vvk finetune``'s training step (random resized crop and flip, the classifier,
label-smoothed cross-entropy, backward, the preset's optimizer at its first warm-up rates,
gradient clipping and EMA when the preset has them) ``--warmup`` times, then ``--steps`` timed
times, in the preset's precision, on ``--threads`` CPU threads. The data loader is left out:
this is what the model costs, not what a disk can feed. rs runs at its recipe's size (RS-50,
32 x 224², bf16) with ``--batch-size`` clips, not the recipe's 64 per process.

Writes ``finetune_throughput.json`` into ``--out`` (default ``benchmarks/results``).
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

from vvk.data import RandomClip, collate, open_video_dataset  # noqa: E402
from vvk.engine import autocast  # noqa: E402
from vvk.engine.ema import EMA  # noqa: E402
from vvk.engine.optim import build_optimizer, lr_at, set_lr  # noqa: E402
from vvk.methods.finetune.model import build_classifier, classification_step, train_augment  # noqa: E402
from vvk.methods.finetune.preset import resolve_finetune_preset  # noqa: E402
from vvk.models import count_params  # noqa: E402
from vvk.testing import shared_data_root  # noqa: E402


def default_data() -> Path:
    root = shared_data_root()
    if root is not None and (root / "video").is_dir():
        return root / "video"
    from vvk.examples.synthetic import example_dir

    return example_dir()


def one_batch(config, data: Path, batch_size: int) -> tuple[dict, int]:
    """``batch_size`` labelled clips at the preset's clip size, collated; and the class count."""
    with tempfile.TemporaryDirectory() as cache:
        dataset = open_video_dataset(
            data, sampler=RandomClip(frames=config.frames, stride=config.stride), size=config.size,
            cache_dir=cache, seed=0,
        )  # fmt: skip
        batch = collate([dataset[i % len(dataset)] for i in range(batch_size)])
    batch.pop("skipped", None)
    return batch, max(2, len(dataset.classes))


def measure(config, batch: dict, num_classes: int, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_classifier(config, num_classes=num_classes, arch={"name": config.backbone, "kwargs": {}})
    model.train()
    optimizer = build_optimizer(model, config.train)
    ema = EMA(model, config.train.ema_decay) if config.train.ema_decay else None
    augment, smoothing = train_augment(config), config.label_smoothing
    device = torch.device("cpu")
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        set_lr(optimizer, lr_at(i, config.train))
        with autocast(device, config.train.precision):
            loss = classification_step(model, batch, augment=augment, label_smoothing=smoothing)["loss"]
        loss.backward()
        if config.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    loss = float(loss.detach())
    if not math.isfinite(loss):
        raise SystemExit(f"non-finite loss {loss}: the measurement is not of a working step")
    times.sort()
    median = times[len(times) // 2]
    return {
        "steps_per_second": round(1 / median, 4),
        "clips_per_second": round(len(batch["label"]) / median, 3),
        "seconds_per_step_median": round(median, 4),
        "seconds_per_step_min": round(times[0], 4),
        "loss_last": round(loss, 4),
        "params": count_params(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "rs"])
    parser.add_argument("--batch-size", type=int, default=2, help="clips per step, every preset")
    parser.add_argument("--data", type=Path, default=None, help="labelled videos (default: see above)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = args.data or default_data()
    results = {}
    for name in args.presets:
        config = resolve_finetune_preset(name, batch_size=args.batch_size)
        batch, num_classes = one_batch(config, data, args.batch_size)
        results[name] = {
            "backbone": config.backbone,
            "clip": {"frames": config.frames, "stride": config.stride, "crop": config.crop},
            "precision": config.train.precision,
            "batch_size": args.batch_size,
            **measure(config, batch, num_classes, args.warmup, args.steps),
        }
        print(json.dumps({name: results[name]}), flush=True)
    record = {
        "machine": machine_info(),
        "threads": args.threads,
        "data": str(data),
        "warmup": args.warmup,
        "steps": args.steps,
        "command": " ".join(["python benchmarks/finetune_throughput.py", *sys.argv[1:]]),
        "presets": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "finetune_throughput.json", record)


if __name__ == "__main__":
    main()
