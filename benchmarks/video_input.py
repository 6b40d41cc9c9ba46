"""Clip decoding speed: vvk's pipeline against the naive PyAV loop, per process, in one run.

    python benchmarks/video_input.py [--clips 48] [--repeats 3] [--loader-batches 30]

Clips of 16 frames at stride 2, resized to 112×112, drawn from every video in
``../shared/data/video`` (a fixed list of (video, start) pairs; each video's own frame rate):

- ``naive``: open the file with PyAV, decode every frame with ``to_ndarray(format="rgb24")``,
  take the clip's 16 frames, resize them to 112×112 (``torch.nn.functional.interpolate``,
  bilinear): the loop most video code starts from.
- ``vvk_pyav``: ``PyAVDecoder.frames`` (seek to the keyframe, decode up to the last frame,
  convert and resize only the 16 frames, one reformatter per stream).
- ``vvk_torchcodec``: ``TorchCodecDecoder.frames`` (when torchcodec works here).

The three run one after the other on the same clips, ``--repeats`` times (the machine is
shared: medians are reported, and the ratio of each round). The index (metadata) is built once
before timing, as training does. Then data-loader throughput: ``ClipDataset`` + ``make_loader``
with 2 workers and batches of 8 (worker start-up excluded), and with 0 workers (the dataset in
the main process) for reference. Writes
benchmarks/results/video_input.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from _records import write_json

from vvk.data.datasets import BadFiles, ClipDataset
from vvk.data.decoders import available_decoders, get_decoder, torchcodec_status
from vvk.data.index import build_index
from vvk.data.loader import make_loader
from vvk.data.samplers import RandomClip
from vvk.data.sources import VideoItem, find_media
from vvk.testing import shared_data_reason, shared_data_root

RESULTS = Path(__file__).parent / "results" / "video_input.json"
FRAMES, STRIDE, SIZE = 16, 2, (112, 112)


def machine() -> dict[str, object]:
    """The machine, and how busy it is (other jobs share it)."""
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "av": av.__version__,
        "decoders": available_decoders(),
    }


def naive_clip(path: str, positions: np.ndarray) -> torch.Tensor:
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    clip = torch.from_numpy(np.stack([frames[min(i, len(frames) - 1)] for i in positions]))
    # (T, H, W, C) -> (T, C, H, W) for interpolate, then back to (T, h, w, C)
    resized = F.interpolate(clip.permute(0, 3, 1, 2).float(), size=SIZE, mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def decoder_clip(decoder, path: str, positions: np.ndarray, meta) -> np.ndarray:
    return decoder.frames(path, (positions + 0.5) / meta.fps, meta=meta, size=SIZE)


def timed(fn, clips) -> float:
    """Clips per second of ``fn(path, positions, meta)`` over ``clips``."""
    start = time.perf_counter()
    for path, positions, meta in clips:
        fn(path, positions, meta)
    return len(clips) / (time.perf_counter() - start)


def loader_throughput(paths: list[str], index, decoder: str, batches: int, workers: int) -> float:
    data = ClipDataset(
        [VideoItem(p) for p in paths],
        index,
        sampler=RandomClip(frames=FRAMES, stride=STRIDE),
        decoder=decoder,
        size=SIZE,
        bad_files=BadFiles(warn=lambda _: None),
    )
    loader = iter(make_loader(data, batch_size=8, num_workers=workers, seed=1))
    for _ in range(3):  # workers started and warm
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * 8 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-batches", type=int, default=30)
    args = parser.parse_args()
    root = shared_data_root()
    if root is None:
        raise SystemExit(shared_data_reason())
    torch.set_num_threads(1)  # one process, one core: what each data-loader worker gets

    index = build_index(find_media(root / "video"), decoder="pyav")
    usable = [e for e in index if e.ok and e.meta.num_frames >= (FRAMES - 1) * STRIDE + 1]
    rng = np.random.default_rng(0)
    sampler = RandomClip(frames=FRAMES, stride=STRIDE)
    clips = []
    for k in range(args.clips):
        entry = usable[k % len(usable)]  # every video equally often
        clips.append((entry.path, sampler(entry.meta.num_frames, rng).views["video"], entry.meta))

    methods = {"naive": lambda path, positions, meta: naive_clip(path, positions)}
    for name in ("pyav", "torchcodec") if torchcodec_status()[0] else ("pyav",):
        methods[f"vvk_{name}"] = functools.partial(decoder_clip, get_decoder(name))
    rounds = []
    for r in range(args.repeats):
        speeds = {name: timed(fn, clips) for name, fn in methods.items()}
        rounds.append(speeds)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f} clips/s" for k, v in speeds.items()), flush=True)
    median = {name: statistics.median(r[name] for r in rounds) for name in methods}
    ratios = {
        name: statistics.median(r[name] / r["naive"] for r in rounds) for name in methods if name != "naive"
    }

    paths = [e.path for e in usable]
    loader = {  # 0 workers: the same dataset in this process, to see what the workers add
        f"{name}_{workers}_workers": loader_throughput(paths, index, name, args.loader_batches, workers)
        for name in (m.removeprefix("vvk_") for m in methods if m != "naive")
        for workers in (2, 0)
    }

    result = {
        "figure": "clips/s, 16 frames stride 2 at 112x112, one process; loader: 2 (and 0) workers, batch 8",
        "machine": machine(),
        "videos": len(usable),
        "clips_per_round": len(clips),
        "rounds": rounds,
        "median_clips_per_s": median,
        "median_speedup_vs_naive": ratios,
        "target_speedup": 3.0,
        "loader_clips_per_s": loader,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, result)
    print(
        json.dumps(
            {k: result[k] for k in ("median_clips_per_s", "median_speedup_vs_naive", "loader_clips_per_s")},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
