"""What does `vvk track eval` cost? The OTB evaluator's time on a 100-sequence result folder.

    python benchmarks/tracking_eval_cost.py [--sequences 100] [--repeats 7]
    python benchmarks/tracking_eval_cost.py --sequences 10 --repeats 2 --cli-repeats 1   # smoke

A synthetic OTB folder is made in a temporary directory: ``--sequences`` sequence folders, each
with ``img/`` holding one empty ``NNNN.jpg`` per frame (the evaluator lists the frames, never
opens them) and ``groundtruth_rect.txt`` (tab-separated, as part of OTB is), a box on a random
walk. The lengths are OTB-2015's: the evaluated frames of its 100 targets in pytracking's list
(``visionml/pytracking: pytracking/evaluation/otbdataset.py``, ``endFrame - startFrame + 1``,
less Tiger1's ``initOmit`` 5), 59,035 frames, 71 (Deer) to 3,872 (Doll), median 392;
``--sequences`` other than 100 repeats or cuts that list. A results folder holds one
``<Name>.txt`` per sequence, comma-separated with three decimals as ``vvk track run`` and
got10k write them, each the ground truth jittered, with 2% of lines blank (a lost target: a
failure, not an error; never the last line, since trailing blank lines end a file).

Timed, each as the median of ``--repeats`` runs in this process (files warm in the page cache):

- ``evaluate_otb``: the whole library call (``vvk.eval.tracking``): reading the OTB folder,
  reading the results, the curves; and its parts ``read_otb`` (folder listing and ground truth)
  and ``read_results``;
- ``cli``: ``vvk track eval --data ROOT --results DIR --json`` as a subprocess (``--cli-repeats``
  runs): what a user waits for, Python start-up and imports included.

Writes benchmarks/results/tracking_eval_cost.json with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import write_json  # noqa: E402

from vvk.data.otb import read_otb  # noqa: E402
from vvk.eval.tracking import evaluate_otb, read_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "tracking_eval_cost.json"
# OTB-2015's evaluated frames per target, Basketball ... Woman in pytracking's order (docstring)
OTB100_FRAMES = (
    725, 142, 408, 99, 334, 742, 585, 357, 380, 493, 631, 698, 350, 293, 1161, 602, 1020, 913, 3059, 659,
    393, 252, 472, 291, 140, 327, 120, 347, 225, 150, 471, 537, 252, 71, 215, 127, 1350, 3872, 113, 1145,
    892, 812, 476, 707, 362, 74, 326, 460, 283, 500, 1500, 767, 1128, 1698, 667, 713, 792, 250, 128, 305,
    166, 307, 307, 122, 313, 84, 1336, 1741, 134, 100, 1490, 164, 228, 1000, 1918, 1997, 365, 351, 366, 160,
    435, 400, 473, 473, 81, 392, 175, 376, 945, 1345, 349, 365, 271, 124, 569, 472, 271, 412, 500, 597,
)  # fmt: skip
MISSING = 0.02  # share of blank result lines


def lengths(count: int) -> np.ndarray:
    return np.resize(np.array(OTB100_FRAMES), count)  # repeated or cut to ``count``


def make_folders(root: Path, results: Path, count: int, seed: int) -> dict:
    """The synthetic OTB folder and results folder (module docstring); returns their sizes."""
    rng = np.random.default_rng(seed)
    results.mkdir(parents=True)
    frames = lengths(count)
    for i, n in enumerate(frames):
        name = f"Seq{i:03d}"
        img = root / name / "img"
        img.mkdir(parents=True)
        for k in range(1, n + 1):
            (img / f"{k:04d}.jpg").touch()
        # a box that wanders: centre random walk, size 20..120 px
        centre = 200 + np.cumsum(rng.normal(0, 3, size=(n, 2)), axis=0)
        size = rng.uniform(20, 120, size=2) * np.exp(np.cumsum(rng.normal(0, 0.01, size=(n, 2)), axis=0))
        gt = np.concatenate([centre - size / 2, size], axis=1).round()
        rows = ["\t".join(f"{v:g}" for v in box) for box in gt]
        (root / name / "groundtruth_rect.txt").write_text("\n".join(rows) + "\n")
        predicted = gt + rng.normal(0, 4, size=gt.shape)
        lines = [",".join(f"{v:.3f}" for v in box) for box in predicted]
        # never the last line: trailing blank lines are read as the end of the file (read_boxes)
        for k in np.flatnonzero(rng.random(n - 1) < MISSING):
            lines[k] = ""
        (results / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return {"sequences": count, "frames": int(frames.sum()), "frames_min": int(frames.min()),
            "frames_median": int(np.median(frames)), "frames_max": int(frames.max())}  # fmt: skip


def median_seconds(call, repeats: int) -> dict:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4),
            "repeats": repeats}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cli-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vvk-eval-cost-"))
    try:
        root, results = work / "otb", work / "results"
        started = time.perf_counter()
        sizes = make_folders(root, results, args.sequences, args.seed)
        sizes["made_in_s"] = round(time.perf_counter() - started, 1)
        seqs = read_otb(root)
        report = evaluate_otb(root, results)
        timings = {
            "evaluate_otb": median_seconds(lambda: evaluate_otb(root, results), args.repeats),
            "read_otb": median_seconds(lambda: read_otb(root), args.repeats),
            "read_results": median_seconds(lambda: read_results(results, seqs), args.repeats),
        }
        command = ["vvk", "track", "eval", "--data", str(root), "--results", str(results), "--json"]
        vvk = Path(sys.executable).parent / "vvk"
        if vvk.is_file():
            command[0] = str(vvk)
            run = lambda: subprocess.run(command, check=True, capture_output=True)  # noqa: E731
            timings["cli"] = median_seconds(run, args.cli_repeats)
        per_frame = timings["evaluate_otb"]["median_s"] / sizes["frames"]
        record = {
            "machine": machine_info(),
            "folders": sizes,
            "timings": timings,
            "microseconds_per_frame": round(1e6 * per_frame, 2),
            "check": {
                "success": round(report["success"], 4),
                "precision": round(report["precision"], 4),
                "missing_frames": report["missing_frames"],
            },
            "load_average_1min_end": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(record), flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        write_json(RESULTS, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
