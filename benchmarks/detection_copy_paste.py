"""Does Copy-Paste help in the low-data regime? The same tiny detector on the built-in example's
10% training split, with and without ``--copy-paste``, same steps and seeds.

    python benchmarks/detection_copy_paste.py [--model maskrcnn-spinenet-tiny] [--seeds 0 1 2]
        [--steps N] [--set KEY=VALUE ...] [--label NAME] [--merge]
    python benchmarks/detection_copy_paste.py --seeds 0 --steps 10 --label smoke   # runs at all?

For each seed, two runs from the same random initialisation and data order (``train.seed``)
differ only in the preset field ``copy_paste`` (both train without flips, as the demo does);
both are scored on the example's val split at the end (and every ``eval_every`` steps: the
curves are kept). The paper's claim (Ghiasi et al. 2021, Table / Fig. on 10% COCO) is that
the gain is largest with little data. Reported: each seed's final box AP / AP50 (and mask AP /
AP50 for Mask R-CNN) without and with Copy-Paste, the per-seed differences, and their mean,
standard deviation and range.

Writes benchmarks/results/detection_copy_paste.json (records of earlier invocations are kept,
keyed by ``--label`` or the model's name).
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
from _records import save_records, spread  # noqa: E402

from vvk.examples.digits_on_photos import DetectionExampleSpec, detection_example_dir  # noqa: E402
from vvk.methods.detection.train import DEMO_OVERRIDES, learning_curve, train_detector  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "detection_copy_paste.json"
METRICS = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")


def run_pair(model: str, seed: int, root: Path, work: Path, args) -> dict:
    """The two runs of one seed; their final scores and curves."""
    record: dict = {"seed": seed}
    spec = DetectionExampleSpec()
    for name, paste in (("plain", False), ("copy_paste", True)):
        out = work / f"{model}-s{seed}-{name}"
        started = time.monotonic()
        result = train_detector(
            model=model, data=root / spec.low_data_split, val=root / "val", steps=args.steps,
            copy_paste=paste, overrides=[*DEMO_OVERRIDES, f"train.seed={seed}", *args.set], out=out,
            progress=False,
        )  # fmt: skip
        final = result.evaluation or {}
        record[name] = {
            "status": result.status,
            "steps": result.step,
            "seconds": round(time.monotonic() - started, 1),
            "final": {k: final[k] for k in METRICS if k in final},
            "curve": [
                {k: v for k, v in p.items() if k == "step" or k in METRICS} for p in learning_curve(out)
            ],
        }
    record["difference"] = {
        k: round(record["copy_paste"]["final"][k] - record["plain"]["final"][k], 4)
        for k in METRICS
        if k in record["plain"]["final"]
    }
    record["preset"] = result.preset
    return record


def summarise(pairs: list[dict]) -> dict:
    """Mean, spread and range over seeds of each score, without and with Copy-Paste, and of the
    per-seed differences (with minus without)."""
    out: dict = {"seeds": [p["seed"] for p in pairs]}
    for key in METRICS:
        if key not in pairs[0]["difference"]:
            continue
        out[key] = {}
        for part, values in (
            ("plain", [p["plain"]["final"][key] for p in pairs]),
            ("copy_paste", [p["copy_paste"]["final"][key] for p in pairs]),
            ("difference", [p["difference"][key] for p in pairs]),
        ):
            out[key][part] = spread(values)
    return out


def _recipe(preset: dict) -> dict:
    """A pair's preset less its seed: what seeds split over processes must share."""
    return {**preset, "train": {k: v for k, v in preset["train"].items() if k != "seed"}}


def earlier_pairs(label: str, like: dict) -> list[dict]:
    """The seed pairs the results file holds under ``label`` that trained with ``like``'s recipe
    (a record from an older preset is replaced, not mixed in)."""
    earlier = json.loads(RESULTS.read_text())["runs"].get(label, {}) if RESULTS.is_file() else {}
    return [p for p in earlier.get("pairs", []) if _recipe(p["preset"]) == _recipe(like["preset"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="maskrcnn-spinenet-tiny")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default: the tiny preset's)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override")
    parser.add_argument("--label", default=None, help="results key (default: the model's name)")
    parser.add_argument(
        "--merge", action="store_true",
        help="keep the seeds the record of this label holds from the same recipe (seeds split "
        "over processes, one per core)",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    root = detection_example_dir()
    work = args.keep or Path(tempfile.mkdtemp(prefix="vvk-copy-paste-bench-"))
    results = {"machine": machine_info(), "runs": {}}
    try:
        pairs = []
        for seed in args.seeds:
            pair = run_pair(args.model, seed, root, work, args)
            pairs.append(pair)
            print(json.dumps({k: v for k, v in pair.items() if k != "preset"}), flush=True)
        label = args.label or args.model
        if args.merge:
            kept = [p for p in earlier_pairs(label, pairs[0]) if p["seed"] not in args.seeds]
            pairs = sorted([*kept, *pairs], key=lambda p: p["seed"])
        entry = {"model": args.model, "data": str(root / DetectionExampleSpec().low_data_split),
                 "summary": summarise(pairs), "pairs": pairs, "overrides": args.set,
                 "machine": machine_info()}  # fmt: skip
        results["runs"][label] = entry
        print(json.dumps({"label": label, **entry["summary"]}), flush=True)
        save_records(RESULTS, results, "runs")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
