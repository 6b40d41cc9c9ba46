"""What the training loop itself costs per step: its device reads and the step time, two versions.

    python benchmarks/loop_overhead.py                  # CPU: this tree vs the loop before its last change
    python benchmarks/loop_overhead.py --candidate HEAD --baseline HEAD~3 --rounds 7
    python benchmarks/loop_overhead.py --device cuda --baseline DIR --out DIR   # gpu_check.sh

One small training run goes through ``vvk.engine.train`` of two versions of vvk: an MLP
(``--width``, 4 hidden layers) regressing random in-memory vectors, batches of 64, SGD with
momentum, gradient clipping, a metrics line every 10 steps, no data-loader workers - so the
model costs little and the loop's own per-step work shows. The versions: ``--candidate``
(default: this working tree) and ``--baseline`` (default: the commit before the latest commit
that changed vvk/engine/loop.py), each a git revision exported with ``git archive`` into a
temporary folder, a folder holding a ``vvk`` package, or ``none`` (the candidate alone).

Each version runs in fresh processes (``--worker``), alternating, ``--rounds`` times. A round
reports the median time between the starts of consecutive steps after ``--warmup`` steps (on a
GPU, the host's pace, which is the device's once the queue is full), and the mean over all
timed steps, logging steps included. Then a short run counts the loop's device reads per step
with ``vvk/engine/host_reads.py`` of this tree (reads inside the step function excluded; on the
CPU every tensor counts as the device's), split into plain steps and metrics-line steps; on a
GPU also the synchronising calls ``torch.cuda.set_sync_debug_mode`` reports. The figure is the
ratio of the median step times, candidate / baseline, in the same invocation.

Writes ``loop_overhead.json`` (``loop_overhead_gpu.json`` on a GPU) into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

from _records import write_json

ROOT = Path(__file__).resolve().parents[1]
LOG_EVERY = 10


def export(revision: str, into: Path) -> Path:
    """``vvk/`` of ``revision`` in ``into`` (git archive: no worktree, nothing touched here)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "vvk"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def resolve(version: str, scratch: Path, name: str) -> tuple[Path, str]:
    """``(folder holding vvk/, description)`` of a revision, a folder or "worktree"."""
    if version == "worktree":
        return ROOT, "worktree"
    if (Path(version) / "vvk").is_dir():
        return Path(version).resolve(), f"folder {version}"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{version}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return export(commit, scratch / name), commit


def default_baseline() -> str:
    last = subprocess.run(
        ["git", "-C", str(ROOT), "rev-list", "-n", "1", "HEAD", "--", "vvk/engine/loop.py"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return f"{last}^"


# ---- the worker: one version, one process --------------------------------------------------


def _train_run(torch, engine, device, args, steps: int, on_step, run_dir: Path) -> None:
    """``steps`` optimizer steps of the MLP; ``on_step()`` at the start of each."""
    from torch import nn

    class Vectors(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x, self.y = (
                torch.randn(1024, args.width, generator=g),
                torch.randn(1024, args.width, generator=g),
            )

        def __len__(self):
            return len(self.x)

        def __getitem__(self, key):
            index = key[0] if isinstance(key, tuple) else key
            return {"x": self.x[index], "y": self.y[index]}

    torch.manual_seed(0)
    layers = [m for _ in range(4) for m in (nn.Linear(args.width, args.width), nn.ReLU())]
    model = nn.Sequential(*layers, nn.Linear(args.width, args.width))

    def step_fn(net, batch):
        on_step()
        return {"loss": (net(batch["x"]) - batch["y"]).pow(2).mean()}

    config = engine.TrainConfig(
        steps=steps, batch_size=64, lr=0.01, momentum=0.9, weight_decay=1e-4, grad_clip=1.0,
        schedule="constant", log_every=LOG_EVERY, checkpoint_every=0, num_workers=0, progress=False,
    )  # fmt: skip
    engine.train(model=model, step_fn=step_fn, data=Vectors(), config=config, run_dir=run_dir,
                 method="loop-overhead", device=device)  # fmt: skip


def _timed(torch, engine, device, args, scratch: Path) -> dict:
    starts: list[float] = []

    def on_step():
        starts.append(time.perf_counter())

    _train_run(torch, engine, device, args, args.warmup + args.steps + 1, on_step, scratch / "timed")
    gaps = [b - a for a, b in zip(starts[args.warmup :], starts[args.warmup + 1 :], strict=False)]
    return {"median_step_ms": statistics.median(gaps) * 1e3, "mean_step_ms": statistics.fmean(gaps) * 1e3}


def _reads(torch, engine, device, args, scratch: Path) -> dict:
    """Device reads (and, on a GPU, synchronising calls) per step; the step function makes none."""
    spec = importlib.util.spec_from_file_location("host_reads", ROOT / "vvk" / "engine" / "host_reads.py")
    host_reads = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_reads)
    step, reads, syncs = [0], Counter(), Counter()  # by the step whose step_fn ran last

    def on_step():
        step[0] += 1

    def count(counter):
        counter.update([step[0]])

    steps = 2 * LOG_EVERY + 1  # the last step writes the final checkpoint: not counted
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *a, **k: count(syncs) if "synchroniz" in str(message) else None
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with host_reads.HostReads(device, on_read=lambda: count(reads)):
                _train_run(torch, engine, device, args, steps, on_step, scratch / "reads")
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    plain = [s for s in range(1, steps) if s % LOG_EVERY]
    lines = [s for s in range(1, steps) if not s % LOG_EVERY]
    record = {
        "reads_per_plain_step": statistics.fmean(reads[s] for s in plain),
        "reads_per_line_step": statistics.fmean(reads[s] for s in lines),
    }
    if device.type == "cuda":
        record["cuda_syncs_per_plain_step"] = statistics.fmean(syncs[s] for s in plain)
        record["cuda_syncs_per_line_step"] = statistics.fmean(syncs[s] for s in lines)
    return record


def worker(args) -> None:
    sys.path.insert(0, str(args.worker))
    import torch

    import vvk.engine as engine

    if not Path(engine.__file__).resolve().is_relative_to(args.worker.resolve()):
        raise SystemExit(f"imported {engine.__file__}, not the version in {args.worker}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as scratch:
        record = _timed(torch, engine, device, args, Path(scratch))
        if args.count_reads:
            record.update(_reads(torch, engine, device, args, Path(scratch)))
    print(json.dumps(record))


# ---- the driver ------------------------------------------------------------------------------


def run_worker(tree: Path, args, count_reads: bool) -> dict:
    options = {"--device": args.device, "--width": args.width, "--steps": args.steps, "--warmup": args.warmup,
               "--threads": args.threads}  # fmt: skip
    command = [
        sys.executable,
        __file__,
        "--worker",
        str(tree),
        *(str(x) for kv in options.items() for x in kv),
    ]
    if count_reads:
        command.append("--count-reads")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env)
    if proc.returncode:
        raise SystemExit(f"worker for {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", default="worktree", help="worktree, a git revision or a folder")
    parser.add_argument("--baseline", default=None, help="a git revision, a folder, or none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count-reads", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import machine_info

    baseline = args.baseline or default_baseline()
    with tempfile.TemporaryDirectory() as scratch:
        versions = {"candidate": resolve(args.candidate, Path(scratch), "candidate")}
        if baseline != "none":
            versions["baseline"] = resolve(baseline, Path(scratch), "baseline")
        rounds: dict[str, list[dict]] = {name: [] for name in versions}
        for i in range(args.rounds):
            order = list(versions) if i % 2 == 0 else list(reversed(versions))  # neither always first
            for name in order:
                rounds[name].append(run_worker(versions[name][0], args, count_reads=i == 0))
    result = {
        "machine": machine_info(),
        "device": args.device,
        "model": f"MLP, 4 hidden layers of {args.width}, batch 64, SGD, clipping, log every {LOG_EVERY}",
        "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads,
    }  # fmt: skip
    for name, (_, described) in versions.items():
        medians = [r["median_step_ms"] for r in rounds[name]]
        result[name] = {
            "version": described,
            "median_step_ms": round(statistics.median(medians), 4),
            "round_medians_ms": [round(m, 4) for m in medians],
            "mean_step_ms": round(statistics.median(r["mean_step_ms"] for r in rounds[name]), 4),
            **{k: v for k, v in rounds[name][0].items() if "per" in k},
        }
    if "baseline" in result:
        result["step_time_ratio"] = round(
            result["candidate"]["median_step_ms"] / result["baseline"]["median_step_ms"], 4
        )
    args.out.mkdir(parents=True, exist_ok=True)
    name = "loop_overhead_gpu.json" if args.device.startswith("cuda") else "loop_overhead.json"
    write_json(args.out / name, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
