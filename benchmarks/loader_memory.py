"""Memory of the data loader over a long run: it must stay flat (no leak).

    python benchmarks/loader_memory.py [--clips 1000] [--workers 2] [--batch 8]

``ClipDataset`` over every video in ``../shared/data/video`` with two views per sample
(``TwoViews``, 16 frames at stride 2, 112×112: 32 decoded frames per sample), fed through
``make_loader`` with 2 workers. After every batch the resident memory of the main process and
of each worker is read from /proc (RSS, and PSS, which splits pages shared between the forked
processes fairly; PSS also moves with the shared-memory batches in flight, so it is noisier).
Reported: the series, the peaks, the peak of each quarter of the run, and the slope of the
total against clips over the second half (after warm-up), in MiB per 1,000 clips. Writes
benchmarks/results/loader_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _records import write_json

from vvk.data.datasets import BadFiles, open_video_dataset
from vvk.data.loader import make_loader
from vvk.data.samplers import TwoViews
from vvk.testing import shared_data_reason, shared_data_root

RESULTS = Path(__file__).parent / "results" / "loader_memory.json"
MIB = 1024 * 1024


def _kib_field(path: str, name: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def memory(pid: int) -> dict[str, float]:
    """MiB: RSS and PSS of ``pid`` and of its children (the loader workers)."""
    workers = children(pid)
    rss = [_kib_field(f"/proc/{p}/status", "VmRSS") for p in [pid, *workers]]
    pss = [_kib_field(f"/proc/{p}/smaps_rollup", "Pss") for p in [pid, *workers]]
    return {"main_rss": rss[0] / MIB, "workers_rss": sum(rss[1:]) / MIB, "total_pss": sum(pss) / MIB,
            "workers": len(workers)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    root = shared_data_root()
    if root is None:
        raise SystemExit(shared_data_reason())

    data = open_video_dataset(
        root / "video",
        sampler=TwoViews(frames=16, stride=2),
        decoder="pyav",
        size=(112, 112),
        cache_dir=Path(os.environ.get("TMPDIR", "/tmp")) / "vvk-bench-index",
        bad_files=BadFiles(warn=lambda _: None),
    )
    loader = iter(make_loader(data, batch_size=args.batch, num_workers=args.workers, seed=0))
    series = []
    start = time.perf_counter()
    clips = 0
    while clips < args.clips:
        batch = next(loader)
        clips += batch["video"].shape[0]
        del batch
        series.append(
            {"clips": clips, "seconds": round(time.perf_counter() - start, 2), **memory(os.getpid())}
        )

    x = np.array([s["clips"] for s in series], dtype=float)
    rss = np.array([s["main_rss"] + s["workers_rss"] for s in series])
    pss = np.array([s["total_pss"] for s in series])
    half = len(series) // 2

    def slope(y: np.ndarray) -> float:  # MiB per 1,000 clips over the second half
        return round(float(np.polyfit(x[half:], y[half:], 1)[0]) * 1000, 2)

    result = {
        "figure": "data-loader memory over a long run: TwoViews 16x2 at 112x112, batch 8",
        "clips": clips,
        "workers": args.workers,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_total_pss_mib": round(float(pss.max()), 1),
        "peak_main_rss_mib": round(max(s["main_rss"] for s in series), 1),
        "peak_workers_rss_mib": round(max(s["workers_rss"] for s in series), 1),
        "peak_rss_by_quarter_mib": [round(float(q.max()), 1) for q in np.array_split(rss, 4)],
        "peak_pss_by_quarter_mib": [round(float(q.max()), 1) for q in np.array_split(pss, 4)],
        "slope_rss_second_half_mib_per_1000_clips": slope(rss),
        "slope_pss_second_half_mib_per_1000_clips": slope(pss),
        "series": [{k: round(v, 1) if isinstance(v, float) else v for k, v in s.items()} for s in series],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, result)
    print(json.dumps({k: v for k, v in result.items() if k != "series"}, indent=2))


if __name__ == "__main__":
    main()
