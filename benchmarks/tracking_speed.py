"""How fast does `vvk track` track? Frames/s of SiamFC's per-frame update, CPU threads (and GPU).

    python benchmarks/tracking_speed.py                          # tiny and paper, 1 and 2 threads
    python benchmarks/tracking_speed.py --presets tiny --threads 1 --frames 20 --rounds 1   # smoke

What one timed call is: ``SiamFCTracker.update(frame)`` (``vvk.methods.tracking.tracker``) on a
decoded frame already in memory, as ``vvk track`` calls it for every frame after the first: the
three search crops (255², SiamFC-3S) cut and resized from the frame, the backbone and head on
them, cross-correlation with the exemplar kernel, the 16× bicubic upsampling, the cosine window
and the box update. Decoding is excluded (as got10k and ``vvk track`` time trackers); the first
frame's ``init`` (one 127² exemplar) is not timed.

Networks (``--presets``), at random initialisation (speed does not depend on the weights):

- ``tiny``: ``random:tiny``, r3d-tiny's res3 (stride 8), the tracker of the test suite and of
  ``docs/results.md``;
- ``paper``: ``random:paper``, r3d-50 (31.7M parameters, a ResNet-50 in 3D) with res4 and res5
  dilated to stride 8 and 512-wide branch convs (VFS's protocol, ConST-CL's OTB network).

Frames: the 196 frames of VOT ``bag`` (480×360, ``tracking/vot/bag/imgs``), tracked from its
first box in order, so the crops follow a real target. For each network and thread count, after
``--warmup`` updates, ``--frames`` updates are timed one by one in each of ``--rounds`` rounds
(each round restarts from frame 1); the figure is the median seconds per update, as frames/s.
Thread counts run interleaved per round (``torch.set_num_threads``), so load from other jobs
falls on both alike. With CUDA present, the same on the GPU (synchronised per call).

Writes benchmarks/results/tracking_speed.json (``--out``) with the machine and its load average;
the runs of presets not given this time stay in it, each with the machine it was measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import write_json  # noqa: E402

from vvk.data.images import load_rgb  # noqa: E402
from vvk.methods.tracking.io import load_tracker  # noqa: E402
from vvk.methods.tracking.tracker import SiamFCTracker  # noqa: E402
from vvk.testing import shared_data_reason, shared_data_root  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "tracking_speed.json"
FIRST_BOX = (312.0, 143.4, 110.0, 102.2)  # bag's first polygon as got10k's rule boxes it (tracking_otb.py)


def load_frames(data: Path, count: int) -> list[torch.Tensor]:
    """The first ``count`` frames of VOT bag, decoded, as (3, H, W) uint8 tensors."""
    folder = data / "tracking" / "vot" / "bag" / "imgs"
    paths = sorted(folder.glob("*.jpg"))[:count]
    return [torch.from_numpy(load_rgb(str(p))).permute(2, 0, 1).contiguous() for p in paths]


def time_updates(model, frames: list[torch.Tensor], device: torch.device, warmup: int) -> list[float]:
    """Seconds of each ``update`` after the first ``warmup`` ones, from a fresh ``init``."""
    tracker = SiamFCTracker(model)
    tracker.init(frames[0].to(device), FIRST_BOX)
    seconds = []
    for i, frame in enumerate(frames[1:]):
        frame = frame.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        tracker.update(frame)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - started)
    return seconds


def describe(model) -> dict:
    features = model.features
    return {
        "backbone": type(features.backbone).__name__,
        "feature": features.feature,
        "clip_frames": features.clip_frames,
        "branch_channels": model.exemplar_conv.out_channels if model.exemplar_conv is not None else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def figure(seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    return {"frames_per_second": round(1 / median, 2), "ms_per_frame_median": round(1000 * median, 2),
            "ms_per_frame_min": round(1000 * min(seconds), 2), "updates_timed": len(seconds)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--frames", type=int, default=None,
                        help="updates timed per round (default: 60 for tiny, 10 for paper)")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    args = parser.parse_args()
    data = shared_data_root()
    if data is None:
        parser.error(shared_data_reason())
    machine = machine_info()
    # the runs of presets not measured this time stay, each with its own machine and load
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    kept = {key: {"machine": earlier.get("machine"), **run} for key, run in earlier.get("runs", {}).items()
            if run["preset"] not in args.presets}  # fmt: skip
    results: dict = {"machine": machine, "box": FIRST_BOX, "runs": kept}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for preset in args.presets:
        count = args.frames or (60 if preset == "tiny" else 10)
        frames = load_frames(data, count + args.warmup + 1)
        for device in devices:
            model, _ = load_tracker(f"random:{preset}", device=device)
            settings = args.threads if device.type == "cpu" else [torch.get_num_threads()]
            times: dict[int, list[float]] = {n: [] for n in settings}
            for _ in range(args.rounds):
                for n in settings:
                    torch.set_num_threads(n)
                    times[n].extend(time_updates(model, frames, device, args.warmup))
            for n in settings:
                key = f"{preset}-{device.type}" + (f"-{n}thread" if device.type == "cpu" else "")
                record = {"preset": preset, "device": str(device), "threads": n, **describe(model),
                          **figure(times[n]), "frame_size": list(frames[0].shape[1:]),
                          "load_average_1min": round(os.getloadavg()[0], 2)}  # fmt: skip
                results["runs"][key] = record
                print(json.dumps({"run": key, **record}), flush=True)
    results["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
