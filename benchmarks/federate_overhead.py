"""What does Flower cost? The same DualAdapt run through Flower's simulation and without it.

    python benchmarks/federate_overhead.py [--rounds 3] [--seed 0] [--num-cpus 1] [--out PATH]
    python benchmarks/federate_overhead.py --rounds 1 --set pretrain_steps=5 --set client_steps=2 \
        --set server_steps=2 --out /tmp/fed_overhead_smoke.json      # smoke: the figures mean nothing

The digits setting of ``benchmarks/federate_adaptation.py`` (source MNIST; clients USPS, MNIST-M,
scikit-learn's digits at 32x32; the ``digits`` preset, ``--set`` to change it), one seed, run
twice in this process:

- ``in-process``: ``vvk.methods.federate.rounds.run_rounds``, the clients one after another;
- ``flower``: ``vvk.federated.simulate`` (``vvk federate``'s engine): a ServerApp and a ClientApp in
  Flower's simulation runtime, each client's update serialised, sent and checked; ``--num-cpus``
  Ray CPUs (default 1: the clients one at a time, as in-process, so that the difference is
  Flower's, not parallelism).

Per engine: seconds from the call to the source model's record (start-up and pretraining), the
pretraining's own seconds, and per round the wall seconds between two records (clients, wire,
aggregation, server step, evaluation); the per-round overhead is flower minus in-process, and the
two runs' accuracies are reported side by side (the same code on the same seed). Torch threads:
``--threads`` (default 1, in this process and, through OMP_NUM_THREADS, in Ray's workers).
Writes benchmarks/results/federate_overhead.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import write_json  # noqa: E402
from federate_adaptation import SIZE, SOURCE, TARGETS  # noqa: E402

from vvk.testing import shared_data_reason, shared_data_root  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "federate_overhead.json"


def timed(run) -> dict:
    """Call ``run(on_round)`` and time its records as they come."""
    stamps: list[float] = []
    start = time.perf_counter()
    records = run(lambda record: stamps.append(time.perf_counter()))
    per_round = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "seconds_to_source_model": round(stamps[0] - start, 2),
        "pretrain_seconds": round(records[0].server_seconds, 2),
        "seconds_per_round": [round(s, 2) for s in per_round],
        "seconds_per_round_median": round(statistics.median(per_round), 2) if per_round else None,
        "client_seconds_per_round": round(
            sum(sum(r.client_seconds) for r in records[1:]) / max(len(per_round), 1), 2
        ),
        "accuracy_by_round": [{k: round(v, 4) for k, v in r.accuracy.items()} for r in records],
        "bytes_up_per_client_round": statistics.mean(b for r in records[1:] for b in r.bytes_up)
        if per_round
        else None,
        "total_seconds": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="dualadapt")
    parser.add_argument("--num-cpus", type=int, default=1, help="Ray CPUs of the simulation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shared_data_root() is None:
        parser.error(shared_data_reason())
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # Ray's workers start with it
    torch.set_num_threads(args.threads)

    from vvk.data.domains import load_domain
    from vvk.federated import simulate
    from vvk.methods.federate.rounds import run_rounds
    from vvk.methods.federate.run import resolve_settings

    preset = resolve_settings("digits", args.overrides)
    source = load_domain(SOURCE, size=SIZE)
    targets = [load_domain(name, size=SIZE) for name in TARGETS]
    common = {"rounds": args.rounds, "clients_per_round": len(targets), "seed": args.seed, "preset": preset}

    def in_process(on_round):
        return run_rounds(args.method, source, targets, on_round=on_round, **common)

    def flower(on_round, work: Path):
        return simulate(args.method, source, targets, out=work / "run", num_cpus=args.num_cpus,
                        on_round=on_round, **common)  # fmt: skip

    results = {"in-process": timed(in_process)}
    with tempfile.TemporaryDirectory(prefix="vvk-fed-overhead-") as work:
        results["flower"] = timed(lambda on_round: flower(on_round, Path(work)))
    a, b = results["in-process"], results["flower"]
    report = {
        "machine": machine_info(),
        "setting": {
            "source": SOURCE,
            "targets": list(TARGETS),
            "method": args.method,
            "rounds": args.rounds,
            "seed": args.seed,
            "preset": replace(preset).__dict__,
            "threads": args.threads,
            "ray_cpus": args.num_cpus,
        },  # fmt: skip
        "engines": results,
        "overhead_seconds_per_round": round(b["seconds_per_round_median"] - a["seconds_per_round_median"], 2)
        if a["seconds_per_round_median"] is not None
        else None,
        "overhead_start_seconds": round(
            (b["seconds_to_source_model"] - b["pretrain_seconds"])
            - (a["seconds_to_source_model"] - a["pretrain_seconds"]),
            2,
        ),
        "same_accuracies": a["accuracy_by_round"] == b["accuracy_by_round"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("overhead_seconds_per_round", "overhead_start_seconds", "same_accuracies")
            }
        )
    )


if __name__ == "__main__":
    main()
