"""Per-step training throughput of ``vvk eval action-localization`` on the CPU: the RoI head's
training steps of the tiny and default presets, linear and transformer heads.

    python benchmarks/localization_throughput.py                    # every case, one thread
    python benchmarks/localization_throughput.py --cases tiny --steps 5
    python benchmarks/localization_throughput.py --cases default --batch-size 4   # if a step > ~30 s

Cases: ``tiny`` is the tiny preset (8 frames, short side 64) on ``r3d-tiny``, its backbone
frozen and, as a second run, trained too (``finetune_backbone=True``); ``default`` is the default
preset (16 frames, stride 2, short side 256, 8 key frames a step) on ``r3d-50``, frozen. Each
runs with every head of ``--heads``. Backbones are at random initialisation (as ``--backbone
NAME``): the cost does not depend on the weights. Training is fp32, as the protocol runs it.

The training step is not callable on its own (it is the body of ``train_localizer``'s loop), so
``vvk.methods.localization.train.train_localizer`` itself is timed: ``--warmup`` steps in one
call, then ``--steps`` steps in a second, timed call, on a fixed set of ``--batch-size`` real
key frames of UCF101-24 (``VVK_TEST_DATA``'s ``video/ucf24``, read by ``vvk.data.ava.read_ucf24``
through ``vvk.methods.localization.data``), spread over its videos. The clips are decoded
beforehand and held in memory, so data loading is left out; with exactly one batch of key frames
every step sees the same clips and boxes. A step's time is the interval between the loader's
fetches of consecutive batches (the last one: to the call's return), so it holds the forward,
the loss, backward and the optimizer step, plus the loader's collate of the in-memory clips
(padding and stacking; measured alone as ``collate_seconds``) and, on the first timed step, the
optimizer's state initialisation (the median leaves it out; ``seconds_per_step_mean`` is the
whole timed call over ``--steps``). Key frames and boxes per second are of the median step.

Writes ``localization_throughput.json`` into ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import write_json  # noqa: E402

from vvk.errors import VvkError  # noqa: E402
from vvk.eval.features import load_backbone  # noqa: E402
from vvk.methods.localization import PRESETS  # noqa: E402
from vvk.methods.localization.data import (  # noqa: E402
    KeyFrameClips,
    clip_decoder,
    collate_key_frames,
    load_annotations,
    open_videos,
)
from vvk.methods.localization.head import build_localizer  # noqa: E402
from vvk.methods.localization.train import train_localizer  # noqa: E402
from vvk.models import count_params  # noqa: E402
from vvk.testing import shared_data_reason, shared_data_root  # noqa: E402

# case -> (preset, backbone, finetune_backbone values run)
CASES = {
    "tiny": ("tiny", "r3d-tiny", (False, True)),
    "default": ("default", "r3d-50", (False,)),
}
ANNOTATIONS = "pyannot_with_class_names.pkl"


class FixedKeyFrames(Dataset):
    """Decoded key-frame samples held in memory; the time of every fetch is recorded."""

    def __init__(self, samples: list[dict[str, Any]]):
        self.samples, self.fetched = samples, []

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.fetched.append(time.perf_counter())
        return self.samples[index]


def default_data() -> Path:
    root = shared_data_root()
    if root is None or not (root / "video" / "ucf24" / ANNOTATIONS).is_file():
        raise SystemExit(f"UCF101-24 clips and {ANNOTATIONS} not found: {shared_data_reason()}")
    return root / "video" / "ucf24"


def key_frames(data: Path, annotations: Path, cache: str):
    """(videos, key frames of ``annotations`` matched to them, class ids in order)."""
    videos = open_videos(data, cache_dir=cache)
    found = load_annotations(annotations, videos=videos)
    if not found.frames:
        raise SystemExit(f"{annotations}: no key frame of the videos in {data}")
    return videos, found, sorted(found.classes)


def one_batch(preset, videos, found, classes: list[int], batch_size: int) -> list[dict[str, Any]]:
    """``batch_size`` decoded key-frame samples at the preset's clip, evenly spaced over the key
    frames (sorted by video: so over the videos); no frame cache, nothing written."""
    clips = KeyFrameClips(found, videos, classes=classes, frames=preset.frames, stride=preset.stride,
                          size=preset.size, decoder=clip_decoder("auto"))  # fmt: skip
    n = len(clips)
    picked = [round(i * (n - 1) / max(1, batch_size - 1)) for i in range(batch_size)]
    return [clips[i] for i in picked]


def measure(
    preset, backbone_name: str, samples, *, num_classes: int, multi_label: bool, warmup: int, steps: int
) -> dict:
    backbone, _ = load_backbone(backbone=backbone_name, seed=0)
    torch.manual_seed(0)  # the head's initialisation, as action_localization
    model = build_localizer(backbone, num_classes=num_classes, preset=preset)
    data = FixedKeyFrames(samples)
    run = dataclasses.replace(preset, batch_size=len(samples), num_workers=0, frame_cache=False)
    try:
        if warmup:
            train_localizer(
                model, data, preset=dataclasses.replace(run, steps=warmup), multi_label=multi_label
            )
        data.fetched.clear()
        started = time.perf_counter()
        losses = train_localizer(
            model, data, preset=dataclasses.replace(run, steps=steps), multi_label=multi_label
        )
        ended = time.perf_counter()
    except VvkError as e:
        raise SystemExit(f"{e}: the measurement is not of a working step") from None
    starts = data.fetched[:: len(samples)]  # one batch per epoch: its first fetch starts the step
    assert len(starts) == steps, (len(starts), steps)
    times = sorted(b - a for a, b in zip(starts, [*starts[1:], ended], strict=True))
    median, mean = times[len(times) // 2], (ended - started) / steps
    collated = time.perf_counter()
    batch = collate_key_frames(samples)
    collate_seconds = time.perf_counter() - collated
    boxes = len(batch["boxes"])
    return {
        "frame_hw": list(batch["video"].shape[-2:]),
        "boxes_per_step": boxes,
        "steps_per_second": round(1 / median, 4),
        "key_frames_per_second": round(len(samples) / median, 3),
        "boxes_per_second": round(boxes / median, 3),
        "seconds_per_step_median": round(median, 4),
        "seconds_per_step_min": round(times[0], 4),
        "seconds_per_step_mean": round(mean, 4),
        "collate_seconds": round(collate_seconds, 4),
        "loss_last": round(losses[-1], 4),
        "backbone_params": count_params(model.backbone, trainable_only=False),
        "trainable_params": count_params(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument(
        "--heads", nargs="+", choices=["linear", "transformer"], default=["linear", "transformer"]
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="key frames per step, every case (default: the preset's)"
    )
    parser.add_argument("--data", type=Path, default=None, help="UCF101-24 videos (default: see above)")
    parser.add_argument("--annotations", type=Path, default=None, help=f"default: DATA/{ANNOTATIONS}")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--steps and --batch-size must be at least 1, --warmup at least 0")

    torch.set_num_threads(args.threads)
    data = args.data or default_data()
    annotations = args.annotations or data / ANNOTATIONS
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        videos, found, classes = key_frames(data, annotations, cache)
        for case in args.cases:
            preset_name, backbone, finetune = CASES[case]
            base = PRESETS[preset_name]
            batch_size = args.batch_size or base.batch_size
            samples = one_batch(base, videos, found, classes, batch_size)
            for head in args.heads:
                for tuned in finetune:
                    preset = dataclasses.replace(base, head=head, finetune_backbone=tuned)
                    name = f"{case}-{head}" + ("-finetune" if tuned else "")
                    measured = measure(
                        preset, backbone, samples, num_classes=len(classes), multi_label=found.multi_label,
                        warmup=args.warmup, steps=args.steps,
                    )  # fmt: skip
                    results[name] = {
                        "preset": preset_name,
                        "backbone": backbone,
                        "head": head,
                        "finetune_backbone": tuned,
                        "clip": {"frames": preset.frames, "stride": preset.stride, "size": preset.size},
                        "precision": "fp32",
                        "optimizer": preset.optimizer,
                        "batch_size": batch_size,
                        "preset_batch_size": base.batch_size,
                        **measured,
                    }
                    if batch_size != base.batch_size:
                        note = (
                            f"--batch-size {batch_size}: not the preset's {base.batch_size} key frames a step"
                        )
                        results[name]["note"] = note
                    print(json.dumps({name: results[name]}), flush=True)
    record = {
        "machine": machine_info(),
        "threads": args.threads,
        "data": str(data),
        "annotations": str(annotations),
        "key_frames_available": len(found.frames),
        "warmup": args.warmup,
        "steps": args.steps,
        "timing": "train_localizer timed over --steps steps on one in-memory batch (module docstring)",
        "command": " ".join(["python benchmarks/localization_throughput.py", *sys.argv[1:]]),
        "cases": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "localization_throughput.json", record)


if __name__ == "__main__":
    main()
