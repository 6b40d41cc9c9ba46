"""Does pretraining learn? Each method's tiny preset on the real clips, then clip retrieval.

    python benchmarks/pretrain.py [--methods cvrl constcl teg vatt] [--budget 600] [--repeats 20]
    python benchmarks/pretrain.py --methods constcl --steps 828 --seed 1 --label constcl-828-s1
    python benchmarks/pretrain.py --methods teg --set color_augment=true --label teg-colour
    python benchmarks/pretrain.py --methods cvrl --probe-only --set train.frame_cache=0 --label cvrl-nocache

For every method:

1. throughput: a short run (``--probe-steps`` steps) of the tiny preset on the real videos of
   ``../shared/data/video`` gives seconds per step and clips per second (forward + backward,
   data loading included; the first two steps are excluded as warm-up);
2. learning: a fresh run of ``budget / seconds-per-step`` steps (≈ ``--budget`` seconds), or of
   ``--steps`` steps, with the preset's seed or ``--seed``;
3. evaluation: ``vvk.eval.retrieval.retrieval_gain`` on the same videos — recall@1/5 of the
   pretrained backbone and of the same architecture at random initialisation, on the same clips
   and the same ``--repeats`` augmentation draws.

Writes benchmarks/results/pretrain.json (summarised in docs/results.md and docs/benchmarks.md),
one record per method, or per ``--label`` (``constcl-seed1``) when one method is run several ways.
The target (issue 6): pretraining beats random initialisation by >= 20 points of recall@1 for
CVRL and ConST-CL.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records  # noqa: E402

from vvk.eval.features import ClipReader, ClipSpec  # noqa: E402
from vvk.eval.retrieval import retrieval_gain  # noqa: E402
from vvk.methods.pretrain import pretrain, resolve_preset  # noqa: E402
from vvk.testing import shared_data_reason, shared_data_root  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "pretrain.json"
WARMUP_STEPS = 2


def seconds_per_step(run_dir: Path) -> float:
    """Median wall time between logged steps, after the warm-up steps."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [(r["step"], r["time"]) for r in lines if "time" in r and r["step"] > WARMUP_STEPS]
    if len(timed) < 2:
        raise SystemExit(f"{run_dir}: too few logged steps to time; raise --probe-steps")
    (s0, t0), (s1, t1) = timed[0], timed[-1]
    return (t1 - t0) / (s1 - s0)


def eval_clips(preset: dict) -> ClipSpec:
    """The evaluation clip shape of a run's resolved preset (TeG: its short clip)."""
    frames = preset.get("frames") or preset["short_frames"]
    stride = preset.get("stride") or preset["short_stride"]
    return ClipSpec(frames=frames, stride=stride, size=preset["size"], crop=preset["crop"])


def run_method(method: str, videos: Path, work: Path, args) -> dict:
    overrides = [f"train.seed={args.seed}"] if args.seed is not None else []
    overrides += args.set  # ablations: preset overrides, as `vvk pretrain --set`
    common = dict(data=videos, preset="tiny", progress=False, captions=_captions(method, videos))
    name = args.label or method
    probe = pretrain(method, out=work / f"{name}-probe", steps=args.probe_steps,
                     overrides=["train.log_every=1", *overrides], **common)  # fmt: skip
    step_s = seconds_per_step(probe.run_dir)
    batch = resolve_preset(method, "tiny").train.batch_size
    speed = {
        "method": method,
        "seconds_per_step": round(step_s, 3),
        "clips_per_second": round(batch / step_s, 2),
        "batch_size": batch,
        "overrides": args.set,
        "frame_cache": probe.preset["train"]["frame_cache"],
        "load_average_1min": round(os.getloadavg()[0], 2),  # other jobs on the machine slow the steps
    }
    if args.probe_only:
        return {**speed, "probe_steps": args.probe_steps, "preset": probe.preset}
    steps = args.steps or max(args.probe_steps, int(args.budget / step_s))
    started = time.monotonic()
    run = pretrain(method, out=work / name, steps=steps, overrides=overrides, **common)
    train_s = time.monotonic() - started
    reader = ClipReader(eval_clips(run.preset))
    gain = retrieval_gain(run.run_dir, videos, reader=reader, repeats=args.repeats)
    losses = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in losses if "loss" in r]
    return {
        **speed,
        "steps": steps,
        "seed": run.preset["train"]["seed"],
        "budget_seconds": None if args.steps else args.budget,
        "load_average_1min": round(os.getloadavg()[0], 2),  # at the end of the run
        "train_seconds": round(train_s, 1),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "recall@1_random": gain["random"]["recall@1"],
        "recall@1_pretrained": gain["pretrained"]["recall@1"],
        "recall@5_random": gain["random"]["recall@5"],
        "recall@5_pretrained": gain["pretrained"]["recall@5"],
        "gain@1_points": round(100 * gain["gain@1"], 1),
        "videos": gain["pretrained"]["videos"],
        "chance@1": gain["pretrained"]["chance@1"],
        "repeats": args.repeats,
        "eval_clips": gain["pretrained"]["clips"],
        "preset": run.preset,
    }


def _captions(method: str, videos: Path) -> Path | None:
    captions = videos / "activitynet" / "captions.tsv"
    return captions if method == "vatt" and captions.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["cvrl", "constcl", "teg", "vatt"])
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per method")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override")
    parser.add_argument("--label", default=None, help="results key (default: the method's name)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    parser.add_argument("--probe-steps", type=int, default=8)
    parser.add_argument("--probe-only", action="store_true", help="throughput only: no learning run")
    parser.add_argument(
        "--repeats", type=int, default=20, help="augmentation draws averaged in the evaluation"
    )
    args = parser.parse_args()
    if args.label and len(args.methods) != 1:
        parser.error("--label names the record of one method")
    data = shared_data_root()
    if data is None:
        raise SystemExit(shared_data_reason())
    videos = data / "video"
    work = args.keep or Path(tempfile.mkdtemp(prefix="vvk-pretrain-bench-"))
    results = {"machine": machine_info(), "budget_seconds": args.budget, "data": str(videos), "methods": {}}
    try:
        for method in args.methods:
            record = run_method(method, videos, work, args)
            results["methods"][args.label or method] = record
            print(json.dumps({k: v for k, v in record.items() if k != "preset"}), flush=True)
            save_records(RESULTS, results, "methods")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
