"""Do the tiny detectors learn? Box (and mask) AP50 on the built-in example's val split.

    python benchmarks/detection_learning.py [--models retinanet-spinenet-mobile-tiny maskrcnn-spinenet-tiny]
        [--seeds 0 1 2] [--steps N] [--eval-every N] [--set KEY=VALUE ...] [--label NAME]
    python benchmarks/detection_learning.py --models retinanet-spinenet-mobile-tiny --seeds 0 --steps 20 \\
        --label smoke            # a quick check that the script runs

Each model trains from random initialisation with the ``tiny`` preset (``vvk train detector``
without ``--data``: the example's train split, scored on its val split every ``eval_every``
steps and at the end). Recorded per run: the learning curve (every evaluation), the final box
AP / AP50 (and mask AP / AP50 for Mask R-CNN), the training wall time without the evaluations,
the training step time (median over the metrics lines, data loading included) and images/s.
Per model: mean, standard deviation and range of the final AP50 over the seeds, and whether
every seed reached the target (issue 15: box AP50 >= 0.5 within 10 CPU minutes on 2 cores).

Writes benchmarks/results/detection_learning.json (records of earlier invocations are kept,
keyed by ``--label`` or the model's name).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records, spread  # noqa: E402

from vvk.methods.detection.train import learning_curve, train_detector  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "detection_learning.json"
TARGET_AP50 = 0.5
BUDGET_SECONDS = 600.0
WARMUP_LINES = 1  # the first metrics line holds the first steps' start-up costs


def step_seconds(run_dir: Path) -> float:
    """Median seconds per optimizer step over the metrics lines (evaluations excluded)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in lines if "steps_per_s" in r][WARMUP_LINES:]
    return round(1.0 / statistics.median(rates), 4) if rates else float("nan")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_one(model: str, seed: int, work: Path, args) -> dict:
    overrides = [f"train.seed={seed}", *args.set]
    if args.eval_every is not None:
        overrides.append(f"eval_every={args.eval_every}")
    out = work / f"{model}-s{seed}"
    cpu_before = _cpu_seconds()
    started = time.monotonic()
    result = train_detector(model=model, steps=args.steps, overrides=overrides, out=out, progress=False)
    wall = time.monotonic() - started
    cpu = _cpu_seconds() - cpu_before
    curve = learning_curve(out)
    eval_seconds = sum(point["seconds"] for point in curve)
    final = result.evaluation or {}
    record = {
        "model": model,
        "seed": seed,
        "status": result.status,
        "steps": result.step,
        "batch_size": result.preset["train"]["batch_size"],
        "train_seconds": round(wall - eval_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        # CPU time of this process and its loader workers, evaluations included: on a machine
        # other jobs share, a steadier measure of the cost than the wall time.
        "cpu_seconds": round(cpu, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "seconds_per_step": step_seconds(out),
        "final": {k: v for k, v in final.items() if k.endswith(("_AP", "_AP50", "_AP75")) or k == "images"},
        "curve": [{k: v for k, v in p.items() if k == "step" or k.endswith(("_AP", "_AP50"))} for p in curve],
        "skipped_files": result.summary.get("bad_files", {}).get("count", 0),
        "preset": result.preset,
    }
    record["images_per_second"] = round(record["batch_size"] / record["seconds_per_step"], 2)
    return record


def summarise(runs: list[dict]) -> dict:
    """Mean, spread and range of the final AP50s over seeds; whether the target was met."""
    out: dict = {"seeds": [r["seed"] for r in runs]}
    for key in ("bbox_AP50", "bbox_AP", "segm_AP50", "segm_AP"):
        values = [r["final"][key] for r in runs if key in r["final"]]
        if values:
            out[key] = spread(values)
    out["train_seconds_mean"] = round(statistics.mean(r["train_seconds"] for r in runs), 1)
    out["seconds_per_step_mean"] = round(statistics.mean(r["seconds_per_step"] for r in runs), 4)
    out["target"] = f"box AP50 >= {TARGET_AP50} within {BUDGET_SECONDS:.0f} s of training"
    out["target_met_by_every_seed"] = all(
        r["final"].get("bbox_AP50", 0) >= TARGET_AP50 and r["train_seconds"] <= BUDGET_SECONDS for r in runs
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["retinanet-spinenet-mobile-tiny", "maskrcnn-spinenet-tiny"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default: the tiny preset's)"
    )
    parser.add_argument("--eval-every", type=int, default=None, help="steps between evaluations")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override")
    parser.add_argument("--label", default=None, help="results key (default: the model's name)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.label and len(args.models) != 1:
        parser.error("--label names the record of one model")
    work = args.keep or Path(tempfile.mkdtemp(prefix="vvk-detection-bench-"))
    results = {"machine": machine_info(), "models": {}}
    try:
        for model in args.models:
            runs = []
            for seed in args.seeds:
                record = run_one(model, seed, work, args)
                runs.append(record)
                print(json.dumps({k: v for k, v in record.items() if k != "preset"}), flush=True)
            entry = {
                "summary": summarise(runs),
                "runs": runs,
                "overrides": args.set,
                "machine": machine_info(),
            }
            results["models"][args.label or model] = entry
            print(json.dumps({"model": args.label or model, **entry["summary"]}), flush=True)
            save_records(RESULTS, results, "models")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
