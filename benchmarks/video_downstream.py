"""Which pretraining helps downstream? Fine-tuning and action localization on the action example set.

    python benchmarks/video_downstream.py [--seeds 0 1 2] [--arms ...] [--pretrain-steps N]
        [--finetune-steps M] [--localization-steps K] [--jobs J] [--label NAME] [--out PATH]
    python benchmarks/video_downstream.py --seeds 0 --arms cvrl random-r3d-tiny --pretrain-steps 4 \
        --finetune-steps 2 --localization-steps 2 --label smoke --out /tmp/downstream.json  # smoke

Data (issue 21): the built-in example set with sprite actions
(``vvk.examples.synthetic.action_example_dir``; ``--videos-per-class``, ``--frames``,
``--size``): a camera pans or zooms over a photograph (4 classes) while sprites move left,
right, up or down, grow or stay still (6 actions, AVA-format boxes at every whole second). The
set's own split holds out the last quarter of each class: ``train.csv`` / ``val.csv`` and
``annotations/{train,val}.csv``.

Arms, per seed (``train.seed`` of the pretraining, and the seed of every later step):

- ``constcl``, ``cvrl``, ``teg``: the method's ``tiny`` preset pretrained on the training
  videos (no labels) for ``--pretrain-steps`` steps, then its backbone evaluated;
- ``random-r3d-tiny``, ``random-r3d-y-tiny``: the architectures of CVRL/TeG and of ConST-CL's
  tiny presets at random initialisation (seeded).

Each backbone is then scored, with the same budgets, on:

(a) fine-tuning (``vvk finetune --preset tiny --set flip=0``: the whole network,
    ``--finetune-steps`` steps; no flips, since a mirrored pan-left is a pan-right) on the
    training videos' camera-motion classes; top-1 on the held-out videos, with the preset's
    multi-view testing;
(b) action localization with ground-truth boxes (``vvk eval action-localization``, ``tiny``
    preset with ``--localization-steps`` steps, frames decoded at ``--localization-size``: at
    the set's 64 px a stride-32 ``res5`` is 2 x 2 cells, too coarse for a sprite's box; a
    linear RoI head on the frozen backbone, the local branch ``res5_1`` for ConST-CL's Y
    backbone); frame-mAP at IoU 0.5 on the held-out videos' key frames.

Writes benchmarks/results/video_downstream.json (``--out``), one record per ``--label``: every
run, and per arm the mean ± std over seeds of each score and its per-seed difference from the
random initialisation of the same architecture.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import over_seeds, paired_differences, save_records  # noqa: E402
from _seeds import seed_results  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "video_downstream.json"
# arm -> (pretraining method or None, the architecture, the random arm it is compared with)
ARMS = {
    "constcl": ("constcl", "r3d-y-tiny", "random-r3d-y-tiny"),
    "cvrl": ("cvrl", "r3d-tiny", "random-r3d-tiny"),
    "teg": ("teg", "r3d-tiny", "random-r3d-tiny"),
    "random-r3d-tiny": (None, "r3d-tiny", None),
    "random-r3d-y-tiny": (None, "r3d-y-tiny", None),
}
SCORES = ("finetune_top1", "localization_frame_map")


def example_set(args) -> Path:
    from vvk.examples.synthetic import SyntheticSpec, action_example_dir

    spec = SyntheticSpec(videos_per_class=args.videos_per_class, frames=args.frames, size=args.size)
    return action_example_dir(replace(spec, actions=True))


def run_one(arm: str, seed: int, work: Path, args) -> dict:
    """One arm on one seed: pretrain (or not), fine-tune, localize."""
    from vvk.eval.features import load_backbone
    from vvk.methods.finetune.train import finetune
    from vvk.methods.localization.evaluate import action_localization
    from vvk.methods.localization.preset import PRESETS as LOCALIZATION
    from vvk.methods.pretrain import pretrain

    method, arch, _ = ARMS[arm]
    root = example_set(args)
    record: dict = {"seed": seed, "arch": arch}
    weights = None
    if method is not None:
        started = time.perf_counter()
        run = pretrain(method, data=root / "train.csv", preset="tiny", steps=args.pretrain_steps,
                       overrides=[f"train.seed={seed}"], out=work / f"{arm}-{seed}",
                       progress=False)  # fmt: skip
        weights = run.run_dir
        record["pretrain_seconds"] = round(time.perf_counter() - started, 1)
        record["pretrain_steps"] = args.pretrain_steps
    started = time.perf_counter()
    tuned = finetune(data=root / "train.csv", val=root / "val.csv", weights=weights,
                     backbone=None if weights else arch, preset="tiny", steps=args.finetune_steps, seed=seed,
                     overrides=["flip=0"], out=work / f"{arm}-{seed}-finetune", progress=False)  # fmt: skip
    record["finetune_seconds"] = round(time.perf_counter() - started, 1)
    record["finetune_top1"] = round(tuned.evaluation["top1"], 4)
    record["finetune_schemes"] = tuned.evaluation["schemes"]
    record["finetune_chance"] = tuned.evaluation["chance"]
    backbone, _ = load_backbone(weights, seed=seed) if weights else load_backbone(backbone=arch, seed=seed)
    preset = replace(LOCALIZATION["tiny"], steps=args.localization_steps, size=args.localization_size)
    started = time.perf_counter()
    localized = action_localization(backbone, root, annotations=root / "annotations" / "val.csv",
                                    train_annotations=root / "annotations" / "train.csv",
                                    label_map=root / "annotations" / "label_map.pbtxt", preset=preset,
                                    seed=seed, device="cpu")  # fmt: skip
    record["localization_seconds"] = round(time.perf_counter() - started, 1)
    record["localization_frame_map"] = round(localized["frame_mAP"], 4)
    record["localization_per_class"] = {k: round(v, 4) for k, v in localized["per_class"].items()}
    record["threads"] = torch.get_num_threads()
    return record


def summarise(runs: list[dict]) -> dict:
    """Per arm: each score's spread over seeds, and its per-seed difference from the random
    initialisation of the same architecture."""
    out: dict = {}
    for arm, (_, _, baseline) in ARMS.items():
        mine = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if not mine:
            continue
        out[arm] = {score: over_seeds([r[score] for r in mine]) for score in SCORES}
        random = [r for r in runs if r["arm"] == baseline]
        for score in SCORES:
            if diffs := paired_differences(mine, random, score):
                out[arm][f"{score}_minus_random"] = over_seeds(diffs)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--localization-steps", type=int, default=300)
    parser.add_argument("--localization-size", type=int, default=128, help="short side of its clips")
    parser.add_argument("--videos-per-class", type=int, default=16)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=1, help="seeds at a time, one thread each")
    parser.add_argument("--label", default=None, help="the record's key")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    args = parser.parse_args()
    args.label = args.label or (
        f"pre{args.pretrain_steps}-ft{args.finetune_steps}-loc{args.localization_steps}at{args.localization_size}"
        f"-{args.videos_per_class}x{args.frames}f{args.size}px"
    )
    return args


def main() -> None:
    args = parse_args()
    root = example_set(args)  # made once, before any worker starts
    arms = [arm for arm in ARMS if arm in args.arms]
    results: dict = {"machine": machine_info(), "records": {}}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vvk-downstream-bench-") as work:
        for seed_runs in seed_results(run_one, arms, args.seeds, Path(work), args, key="arm", jobs=args.jobs):
            runs.extend({"arm": arm, **record} for arm, record in seed_runs)
            results["records"][args.label] = {
                "summary": summarise(runs),
                "runs": sorted(runs, key=lambda r: (r["seed"], list(ARMS).index(r["arm"]))),
                "protocol": {"data": str(root), "videos_per_class": args.videos_per_class,
                             "frames": args.frames, "size": args.size, "pretrain_steps": args.pretrain_steps,
                             "finetune_steps": args.finetune_steps,
                             "localization_steps": args.localization_steps,
                             "localization_size": args.localization_size, "finetune_preset": "tiny",
                             "finetune_overrides": ["flip=0"],
                             "localization_preset": "tiny", "pretrain_preset": "tiny"},
                "machine": machine_info(),
            }  # fmt: skip
            save_records(args.out, results, "records")  # after every seed: a stopped run keeps its seeds
    print(json.dumps({"label": args.label, **results["records"][args.label]["summary"]}), flush=True)


if __name__ == "__main__":
    main()
