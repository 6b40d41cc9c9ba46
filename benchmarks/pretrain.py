"""Does pretraining learn? Each method's tiny preset on the real clips, then clip retrieval.

    python benchmarks/pretrain.py [--methods cvrl constcl teg vatt] [--budget 600] [--repeats 5]

For every method:

1. throughput: a short run (``--probe-steps`` steps) of the tiny preset on the real videos of
   ``../shared/data/video`` gives seconds per step and clips per second (forward + backward,
   data loading included; the first two steps are excluded as warm-up);
2. learning: a fresh run of ``budget / seconds-per-step`` steps (≈ ``--budget`` seconds);
3. evaluation: ``vvk.eval.retrieval.retrieval_gain`` on the same videos — recall@1/5 of the
   pretrained backbone and of the same architecture at random initialisation, on the same clips
   and the same ``--repeats`` augmentation draws.

Writes benchmarks/results/pretrain.json (summarised in docs/results.md and docs/benchmarks.md).
The target (issue 6): pretraining beats random initialisation by >= 20 points of recall@1 for
CVRL and ConST-CL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402

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


def eval_clips(method: str) -> ClipSpec:
    """The evaluation clip shape of a method's tiny preset (TeG: its short clip)."""
    preset = resolve_preset(method, "tiny")
    frames = getattr(preset, "frames", None) or getattr(preset, "short_frames", 8)
    stride = getattr(preset, "stride", None) or getattr(preset, "short_stride", 2)
    return ClipSpec(frames=frames, stride=stride, size=preset.size, crop=preset.crop)


def run_method(method: str, videos: Path, work: Path, args) -> dict:
    common = dict(data=videos, preset="tiny", progress=False, captions=_captions(method, videos))
    probe = pretrain(method, out=work / f"{method}-probe", steps=args.probe_steps,
                     overrides=["train.log_every=1"], **common)  # fmt: skip
    step_s = seconds_per_step(probe.run_dir)
    batch = resolve_preset(method, "tiny").train.batch_size
    steps = max(args.probe_steps, int(args.budget / step_s))
    started = time.monotonic()
    run = pretrain(method, out=work / method, steps=steps, **common)
    train_s = time.monotonic() - started
    gain = retrieval_gain(run.run_dir, videos, reader=ClipReader(eval_clips(method)), repeats=args.repeats)
    losses = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in losses if "loss" in r]
    return {
        "method": method,
        "seconds_per_step": round(step_s, 3),
        "clips_per_second": round(batch / step_s, 2),
        "batch_size": batch,
        "steps": steps,
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
    parser.add_argument("--probe-steps", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=5, help="augmentation draws averaged in the evaluation"
    )
    args = parser.parse_args()
    data = shared_data_root()
    if data is None:
        raise SystemExit(shared_data_reason())
    videos = data / "video"
    work = Path(tempfile.mkdtemp(prefix="vvk-pretrain-bench-"))
    results = {"machine": machine_info(), "budget_seconds": args.budget, "data": str(videos), "methods": {}}
    if RESULTS.is_file():  # keep methods measured in earlier invocations
        results["methods"] = json.loads(RESULTS.read_text()).get("methods", {})
    try:
        for method in args.methods:
            record = run_method(method, videos, work, args)
            results["methods"][method] = record
            print(json.dumps({k: v for k, v in record.items() if k != "preset"}), flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
