"""Does DualAdapt adapt? Every method of `vvk federate` on the digit domains or Office-Caltech.

    python benchmarks/federate_adaptation.py [--setting digits|office] [--seeds 0 1 2] [--arms ...]
        [--rounds R] [--size PIXELS] [--jobs N] [--set KEY=VALUE ...] [--label NAME] [--out PATH]
    python benchmarks/federate_adaptation.py --seeds 0 --rounds 1 --set pretrain_steps=5 \
        --set client_steps=2 --set server_steps=2 --label smoke --out /tmp/fed_smoke.json  # smoke

Setting (issue 20): the server holds labelled MNIST (the 2,000 digits of
``domains/digits/MNIST_vs_USPS.mat``); three clients hold one unlabelled target domain each:
USPS (1,800), MNIST-M (the 1,000 test images the shared copy holds) and scikit-learn's 8x8
digits (1,797) upscaled; all at 32x32, 3 channels, values in [0, 1]. Accuracy is measured on
each target's own images (the transductive protocol of unsupervised adaptation: the labels are
read by the evaluation and by the oracle only) after the last round; the table's figure is the
mean over the three targets.

Arms, every one from the same source-pretrained model of a seed (``run_rounds``: the in-process
round loop, whose functions the Flower apps call unchanged), ``--rounds`` rounds of all three
clients, the ``digits`` preset (``vvk.methods.federate.rounds.PRESETS``; ``--set`` changes a
field for every arm):

- ``source-only``: the pretrained model, no round;
- ``fedavg-st``: clients self-train on confident pseudo-labels, FedAvg, no server step;
- ``server-only``: clients only fit feature statistics, the server adapts the classifier;
- ``dualadapt-st``, ``dualadapt-entropy``, ``dualadapt``: DualAdapt with client self-training,
  information maximisation (entropy with the diversity term), or both;
- ``oracle``: clients train on their true labels, FedAvg (the upper bound, federated).

``--setting office``: the same arms on Office-Caltech-10 (``domains/office_caltech10``): source
amazon (958 images), clients caltech10 (1,123), dslr (157), webcam (295), at 128x128 (short side
resized, centre crop), the network ``eff-spinenet-tiny`` (0.27M parameters, the smallest vvk
image backbone) under DualAdapt's head, trained from scratch (no pretrained weights can be
downloaded here), batch 32; ``--set``, ``--rounds`` and ``--size`` make it fit the machine.

Per run: per-target accuracy after every round, the mean over rounds of bytes up and down per
client (payload only: the arrays), client seconds and peak tensor memory per round, and the
run's wall seconds (the arms of a seed share one pretraining, ``pretrain_seconds``, which the
run's seconds leave out). Summary per arm: mean ± sample std over seeds of the mean target accuracy
and per target, and each arm's per-seed difference from ``source-only`` and from ``fedavg-st``.
``--jobs N`` runs N seeds at a time, each a process of one thread. Writes
benchmarks/results/federate_adaptation.json (``--out``), one record per ``--label``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import over_seeds, paired_differences, save_records, spread  # noqa: E402
from _seeds import seed_results  # noqa: E402

from vvk.testing import shared_data_reason, shared_data_root  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "federate_adaptation.json"
SIZE = 32
SOURCE, TARGETS = "mnist", ("usps", "mnist-m", "sklearn-digits")
OFFICE = "domains/office_caltech10"
# --setting -> (source, targets, image side, preset fields): the digits, or Office-Caltech-10 with
# a vvk image backbone trained from scratch (no pretrained weights can be had here)
SETTINGS = {
    "digits": (SOURCE, TARGETS, SIZE, {}),
    "office": (f"{OFFICE}/amazon", tuple(f"{OFFICE}/{d}" for d in ("caltech10", "dslr", "webcam")), 128,
               {"model": "eff-spinenet-tiny", "batch_size": 32}),
}  # fmt: skip
# arm -> (method, preset fields it changes)
ARMS = {
    "source-only": ("source-only", {}),
    "fedavg-st": ("fedavg-st", {}),
    "server-only": ("server-only", {}),
    "dualadapt-st": ("dualadapt", {"client_method": "self-training"}),
    "dualadapt-entropy": ("dualadapt", {"client_method": "entropy"}),
    "dualadapt": ("dualadapt", {"client_method": "both"}),
    "oracle": ("oracle", {}),
}


# (seed, the preset's pretraining fields) -> pretrained_model's result: the arms of a seed run in
# one process one after another (``_seeds.run_seed``) and start from the same pretrained model
_PRETRAINED: dict = {}
PRETRAIN_FIELDS = ("model", "feature_dim", "pretrain_steps", "batch_size", "server_lr", "mixup_alpha")


def run_one(arm: str, seed: int, work: Path, args) -> dict:
    """One arm on one seed: ``run_rounds`` and what its records say."""
    from vvk.data.domains import load_domain
    from vvk.methods.federate.rounds import PRESETS, pretrained_model, run_rounds
    from vvk.methods.overrides import apply_overrides

    method, fields = ARMS[arm]
    source_spec, target_specs, size, setting_fields = SETTINGS[args.setting]
    size = args.size or size
    preset = replace(PRESETS[args.preset], **setting_fields)
    preset = replace(apply_overrides(preset, list(args.overrides)), **fields)
    source = load_domain(_shared(source_spec), size=size)
    targets = [load_domain(_shared(spec), size=size) for spec in target_specs]
    key = (seed, *(getattr(preset, f) for f in PRETRAIN_FIELDS))
    if key not in _PRETRAINED:
        _PRETRAINED[key] = pretrained_model(source, preset, seed=seed)
    started = time.perf_counter()
    records = run_rounds(method, source, targets, rounds=args.rounds, clients_per_round=len(targets),
                         seed=seed, preset=preset, pretrained=_PRETRAINED[key])  # fmt: skip
    seconds = time.perf_counter() - started
    rounds = records[1:]  # record 0 is the pretrained model
    return {
        "seed": seed,
        "method": method,
        "client_method": preset.client_method if method == "dualadapt" else None,
        "accuracy": {k: round(v, 4) for k, v in records[-1].accuracy.items()},
        "mean_accuracy": round(records[-1].mean_accuracy, 4),
        "accuracy_by_round": [round(r.mean_accuracy, 4) for r in records],
        "bytes_up_per_client_round": _mean([b for r in rounds for b in r.bytes_up]),
        "bytes_down_per_client_round": _mean([b for r in rounds for b in r.bytes_down]),
        "client_seconds_per_round": _mean([s for r in rounds for s in r.client_seconds], 3),
        "client_peak_bytes": max((b for r in rounds for b in r.client_peak_bytes), default=None),
        "server_seconds_per_round": _mean([r.server_seconds for r in rounds], 3),
        "pretrain_seconds": round(records[0].server_seconds, 2),
        "dropped": [name for r in rounds for name in r.dropped],
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }


def _shared(spec: str) -> str:
    """A folder domain of the shared data as a path; a named domain (``mnist``) as it is."""
    return str(shared_data_root() / spec) if "/" in spec else spec


def _mean(values: list, digits: int = 0):
    return round(float(np.mean(values)), digits) if values else None


def summarise(runs: list[dict]) -> dict:
    """Per arm: the spread over seeds of the mean target accuracy and of each target's; and the
    per-seed differences from ``source-only`` and ``fedavg-st``."""
    out: dict = {}
    by_arm = {arm: sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"]) for arm in ARMS}
    for arm, mine in by_arm.items():
        if not mine:
            continue
        out[arm] = {"mean_accuracy": over_seeds([r["mean_accuracy"] for r in mine]),
                    **{t: spread([r["accuracy"][t] for r in mine]) for t in mine[0]["accuracy"]},
                    "bytes_up_per_client_round": mine[0]["bytes_up_per_client_round"],
                    "bytes_down_per_client_round": mine[0]["bytes_down_per_client_round"]}  # fmt: skip
        for base in ("source-only", "fedavg-st"):
            diffs = paired_differences(mine, by_arm[base], "mean_accuracy")
            if arm != base and diffs:
                out[arm][f"minus_{base}"] = over_seeds(diffs)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--setting", default="digits", choices=list(SETTINGS))
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--size", type=int, default=None, help="image side (default: the setting's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=1, help="seeds at a time, one thread each")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--label", default=None, help="the record's key (default: <preset>-<rounds>rounds)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    args = parser.parse_args()
    if shared_data_root() is None:
        parser.error(shared_data_reason())
    args.label = args.label or f"{args.setting}-{args.preset}-{args.rounds}rounds" + "".join(
        f"-{o}" for o in args.overrides
    )
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [arm for arm in ARMS if arm in args.arms]
    results: dict = {"machine": machine_info(), "records": {}}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vvk-federate-bench-") as work:
        for seed_runs in seed_results(run_one, arms, args.seeds, Path(work), args, key="arm", jobs=args.jobs):
            runs.extend({"arm": arm, **record} for arm, record in seed_runs)
            results["records"][args.label] = {
                "summary": summarise(runs),
                "runs": sorted(runs, key=lambda r: (r["seed"], list(ARMS).index(r["arm"]))),
                "protocol": {"setting": args.setting, "source": SETTINGS[args.setting][0],
                             "targets": list(SETTINGS[args.setting][1]),
                             "size": args.size or SETTINGS[args.setting][2],
                             "setting_fields": SETTINGS[args.setting][3], "rounds": args.rounds,
                             "clients_per_round": len(SETTINGS[args.setting][1]), "preset": args.preset,
                             "overrides": args.overrides, "loop": "vvk.methods.federate.rounds.run_rounds"},
                "machine": machine_info(),
            }  # fmt: skip
            save_records(args.out, results, "records")  # after every seed: a stopped run keeps its seeds
    print(json.dumps({"label": args.label, **results["records"][args.label]["summary"]}), flush=True)


if __name__ == "__main__":
    main()
