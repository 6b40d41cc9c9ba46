"""Kernel benchmarks: the tiled contrastive loss and RoIAlign-3D against their plain baselines.

    python benchmarks/kernels.py                  # CPU figures -> benchmarks/results/kernels_cpu.json
    python benchmarks/kernels.py --gpu --out DIR  # GPU figures -> DIR/kernels_gpu.json

CPU (forward + backward, float32; every figure at one thread and at all cores):

- Contrastive, N = 16,384 rows, D = 256: ``contrastive_loss`` (reference backend: tiles with an
  online log-sum-exp) vs the plain formula ``F.cross_entropy(normalize(q) @ normalize(k).T / t,
  arange(N))``. Each measurement runs in a fresh process (``--contrastive-case``), so its peak
  resident memory is its own: the kernel's high-water mark (VmHWM) is reset once the inputs
  exist, and ``extra peak = VmHWM after the step - RSS before it`` (inputs and interpreter
  excluded; gradients, temporaries and the allocator's retained pages included). Plain and
  tiled runs alternate, ``--rounds`` times; the median time and the largest extra peak are
  reported. Then
  N = 65,536, tiled only (the plain logits alone would take 16 GiB).
- RoIAlign-3D, 512 rois on a (2, 256, 8, 28, 28) map: ``roi_align_3d`` with output (2, 7, 7)
  and ``roi_align_tube`` with 8 frames of 7 x 7 (reference backend, the CPU path) vs looping
  ``torchvision.ops.roi_align`` over the frames (plus a mean over each temporal bin for the 3-D
  output, which equals it: the rois span whole frames). Alternating, median of ``--repeats``;
  the largest difference to the loop is reported too.

GPU (records the card): contrastive at D = 512, bf16 - the plain formula at every N up to the
first out-of-memory, Triton at the largest N the plain formula fits and at 65,536, Triton's
peak memory at N = 65,536, 262,144 and 1,048,576 (linear means constant bytes per row), CUDA
at 65,536; RoIAlign-3D Triton / CUDA / reference vs the per-frame torchvision loop. CUDA
events, median of 5 after a warm-up; ``torch.cuda.max_memory_allocated`` above the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from _records import write_json

from vvk.kernels import available_backends, contrastive_loss, roi_align_3d, roi_align_tube

RESULTS = Path(__file__).parent / "results"
MIB = 1024 * 1024


def plain_infonce(q, k, temperature: float):
    """The plain formula: the whole N x N logits matrix, then cross-entropy."""
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def contrastive_case(impl: str, n: int, d: int) -> dict:
    """One forward + backward in this process; its time and its peak resident memory above the inputs.

    Writing 5 to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the current
    RSS, so the peak read afterwards belongs to the step alone, not to imports or set-up.
    """
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(n, d, generator=gen).requires_grad_()
    k = torch.randn(n, d, generator=gen).requires_grad_()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = plain_infonce(q, k, 0.07) if impl == "plain" else contrastive_loss(q, k, 0.07)
    loss.backward()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status_bytes("VmHWM")
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "extra_peak_mib": (peak - before) / MIB,
        "loss": loss.item(),
    }


def _run_case(impl: str, n: int, d: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--contrastive-case", impl, "--n", str(n), "--d", str(d)]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1]
            if proc.stderr.strip()
            else f"exit {proc.returncode}"
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def contrastive_cpu(rounds: int, threads: int, n: int = 16384, d: int = 256, large_n: int = 65536) -> dict:
    runs = {"plain": [], "tiled": []}
    for _ in range(rounds):
        for impl in runs:
            runs[impl].append(_run_case(impl, n, d, threads))
            print(impl, n, runs[impl][-1], flush=True)
    summary = {
        impl: {
            "seconds_median": statistics.median(r["seconds"] for r in rs),
            "seconds": [round(r["seconds"], 2) for r in rs],
            "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in rs),
            "extra_peak_mib": max(r["extra_peak_mib"] for r in rs),
            "loss": rs[0]["loss"],
        }
        for impl, rs in runs.items()
    }
    plain, tiled = summary["plain"], summary["tiled"]
    large = _run_case("tiled", large_n, d, threads)
    print("tiled", large_n, large, flush=True)
    return {
        "n": n,
        "d": d,
        **summary,
        "memory_ratio": tiled["extra_peak_mib"] / plain["extra_peak_mib"],
        "time_ratio": tiled["seconds_median"] / plain["seconds_median"],
        "targets": {"memory_ratio_max": 0.10, "time_ratio_max": 1.5},
        "large": {"n": large_n, "plain_logits_gib": large_n**2 * 4 / 2**30, **large},
    }


def roi_inputs(device: str, dtype=torch.float32, k: int = 512, seed: int = 0) -> dict:
    """512 rois on a (2, 256, 8, 28, 28) map: boxes of 4-18 px, moving up to 1 px a frame in tubes."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 256, 8, 28, 28, generator=gen)
    corner = torch.rand(k, 2, generator=gen) * 14
    size = 4 + torch.rand(k, 2, generator=gen) * 14
    batch = torch.randint(0, 2, (k,), generator=gen)
    drift = torch.cumsum(torch.rand(k, 8, 2, generator=gen) * 2 - 1, dim=1)  # (K, T, 2) random walk
    tube_corner = (corner[:, None] + drift).clamp(0, 27)
    tube = torch.cat([tube_corner, (tube_corner + size[:, None]).clamp(max=28)], dim=2)  # (K, T, 4)
    box = torch.cat([corner, corner + size], dim=1)  # (K, 4) x1 y1 x2 y2
    zeros, frames = torch.zeros(k, 1), torch.full((k, 1), 8.0)
    rois = torch.cat([batch[:, None].float(), zeros, box[:, :2], frames, box[:, 2:]], dim=1)  # (K, 7)
    move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return {"features": move(features), "rois": move(rois), "tube": move(tube), "batch": batch.to(device)}


def _loop_3d(x, rois):
    rois2 = rois[:, [0, 2, 3, 5, 6]]
    frames = [torchvision.ops.roi_align(x[:, :, t], rois2, 7, 1.0, -1, True) for t in range(x.shape[2])]
    return torch.stack(frames, 2).unflatten(2, (2, -1)).mean(3)  # (K, C, 8, 7, 7) -> (K, C, 2, 7, 7)


def _loop_tube(x, tube, batch):
    frames = []
    for t in range(x.shape[2]):
        rois2 = torch.cat([batch[:, None].to(tube.dtype), tube[:, t]], dim=1)
        frames.append(torchvision.ops.roi_align(x[:, :, t], rois2, 7, 1.0, -1, True))
    return torch.stack(frames, 2)


def roi_variants(inputs: dict, backends: list[str]) -> dict:
    """name -> forward function of the features, for the 3-D and the tube op."""
    rois, tube, batch = inputs["rois"], inputs["tube"], inputs["batch"]
    variants = {
        "3d/torchvision_loop": lambda x: _loop_3d(x, rois),
        "tube/torchvision_loop": lambda x: _loop_tube(x, tube, batch),
    }
    for b in backends:
        variants[f"3d/{b}"] = lambda x, b=b: roi_align_3d(x, rois, (2, 7, 7), backend=b)
        variants[f"tube/{b}"] = lambda x, b=b: roi_align_tube(x, tube, batch, 7, backend=b)
    return variants


def _fwd_bwd(fn, features):
    x = features.detach().requires_grad_()
    out = fn(x)
    out.backward(torch.ones_like(out))
    return out.detach()


def roi_benchmark(device: str, backends: list[str], repeats: int, timer) -> dict:
    inputs = roi_inputs(device)
    variants = roi_variants(inputs, backends)
    outputs = {name: _fwd_bwd(fn, inputs["features"]) for name, fn in variants.items()}  # warm-up
    times, cpu_times = {name: [] for name in variants}, {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            cpu_start = time.process_time()
            times[name].append(timer(lambda fn=fn: _fwd_bwd(fn, inputs["features"])))
            cpu_times[name].append(time.process_time() - cpu_start)
    result = {"rois": 512, "features": [2, 256, 8, 28, 28], "repeats": repeats, "target_speedup_min": 1.0}
    for name, ts in times.items():
        op, impl = name.split("/")
        loop = f"{op}/torchvision_loop"
        entry = {
            "seconds_median": statistics.median(ts),
            "cpu_seconds_median": statistics.median(cpu_times[name]),
        }
        if impl != "torchvision_loop":
            entry["speedup_vs_loop"] = statistics.median(times[loop]) / entry["seconds_median"]
            entry["max_abs_diff_vs_loop"] = (outputs[name] - outputs[loop]).abs().max().item()
        result[name] = entry
        print(name, entry, flush=True)
    return result


def _wall_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cuda_seconds(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


class Sections:
    """Runs named sections in order; records each result or error and saves the JSON after each.

    Past ``budget_s`` the remaining sections are recorded as skipped, so a time limit outside
    this script (benchmarks/gpu_check.sh) still leaves every finished figure on disk.
    """

    def __init__(self, path: Path, budget_s: float, results: dict):
        self.path, self.deadline, self.results = path, time.monotonic() + budget_s, results

    def run(self, name: str, fn, into: dict | None = None):
        into = self.results if into is None else into
        if time.monotonic() > self.deadline:
            into[name] = {"skipped": "time budget (--budget-s) spent"}
        else:
            try:
                into[name] = fn()
            except Exception as error:  # noqa: BLE001 - every failure is reported, the rest still runs
                into[name] = {
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-2000:],
                }
                print(name, "failed:", error, flush=True)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        self.save()
        return into[name]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.results)


def _gpu_step(impl: str, n: int, d: int, dtype, reps: int = 5, warmup: bool = True) -> dict:
    """Median fwd+bwd seconds and peak memory above the inputs, for one implementation and N."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen).requires_grad_()

    def step():
        loss = plain_infonce(q, k, 0.07) if impl == "plain" else contrastive_loss(q, k, 0.07, backend=impl)
        loss.backward()
        q.grad = k.grad = None

    if warmup:
        step()  # Triton compile / extension build, allocator warm-up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = [_cuda_seconds(step) for _ in range(reps)]
    peak = torch.cuda.max_memory_allocated() - base
    return {
        "n": n,
        "seconds_median": statistics.median(times),
        "peak_mib": peak / MIB,
        "bytes_per_row": peak / n,
    }


def contrastive_gpu(
    sections: Sections,
    result: dict,
    d: int = 512,
    dtype=torch.bfloat16,
    plain_sizes=(16384, 32768, 65536, 131072),
    sweep=(65536, 262144, 1048576),
) -> None:
    """Fills ``result`` (a part of ``sections.results``, so each figure is saved as it comes)."""
    result.update(d=d, dtype=str(dtype), target_time_ratio_max=1.2)
    fits = None
    for n in plain_sizes:  # up to the first out-of-memory
        entry = sections.run(f"plain@{n}", lambda n=n: _gpu_step("plain", n, d, dtype), result)
        if "seconds_median" not in entry:
            break
        fits = n
    result["plain_largest_n"] = fits
    for n in sorted({sweep[0], fits} - {None}):
        entry = sections.run(f"triton@{n}", lambda n=n: _gpu_step("triton", n, d, dtype, reps=3), result)
        if n == fits and "seconds_median" in entry:
            entry["time_ratio_vs_plain"] = entry["seconds_median"] / result[f"plain@{n}"]["seconds_median"]
    for n in sweep:  # one run each: at 1M rows a forward + backward is ~4 PFLOP
        step = lambda n=n: _gpu_step("triton", n, d, dtype, reps=1, warmup=False)  # noqa: E731
        sections.run(f"triton_memory@{n}", step, result)
    if available_backends()["cuda"]["usable"]:  # last: the FMA kernels are the slow ones
        sections.run(f"cuda@{sweep[0]}", lambda: _gpu_step("cuda", sweep[0], d, dtype, reps=1), result)


def gpu_main(sections: Sections, repeats: int, quick: bool) -> None:
    results = sections.results
    results["backends"] = available_backends()
    if not torch.cuda.is_available():
        results["error"] = "no CUDA device"
        return
    results["card"] = torch.cuda.get_device_name()
    results["torch"], results["cuda"] = torch.__version__, torch.version.cuda
    backends = ["reference", "triton"] + (["cuda"] if available_backends()["cuda"]["usable"] else [])
    sections.run("roi_align_3d", lambda: roi_benchmark("cuda", backends, repeats, _cuda_seconds))
    sizes = dict(plain_sizes=(2048, 4096), sweep=(4096, 8192)) if quick else {}
    results["contrastive"] = {}
    contrastive_gpu(sections, results["contrastive"], **sizes)


def cpu_main(sections: Sections, rounds: int, repeats: int, quick: bool, only: str | None) -> None:
    """Each figure at one thread and at all cores (torchvision's CPU roi_align is single-threaded;
    on a shared machine, OpenMP threads of many small GEMMs wait on each other at every barrier)."""
    results = sections.results
    results.update(machine=_cpu_name(), cores=os.cpu_count())
    sizes = dict(n=2048, large_n=4096) if quick else {}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        if only in (None, "roi_align_3d"):
            run = lambda: roi_benchmark("cpu", ["reference"], repeats, _wall_seconds)  # noqa: E731
            sections.run(f"roi_align_3d@{threads}_threads", _with_load(run))
        if only in (None, "contrastive"):
            run = lambda threads=threads: contrastive_cpu(rounds, threads, **sizes)  # noqa: E731
            sections.run(f"contrastive@{threads}_threads", _with_load(run))


def _with_load(fn):
    """``fn`` whose result also records the machine's 1-minute load average before and after."""

    def run() -> dict:
        before = os.getloadavg()[0]
        return {**fn(), "load_average_1min": [before, os.getloadavg()[0]]}

    return run


def _cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="GPU figures instead of CPU figures")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating plain/tiled contrastive runs (CPU)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="alternating RoIAlign runs")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="skip sections past this time")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: checks the script, not the targets"
    )
    parser.add_argument(
        "--only", choices=("roi_align_3d", "contrastive"), help="run one op (CPU), updating the JSON"
    )
    parser.add_argument("--contrastive-case", choices=("plain", "tiled"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=16384, help=argparse.SUPPRESS)
    parser.add_argument("--d", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contrastive_case:
        torch.set_num_threads(args.threads)
        print(json.dumps(contrastive_case(args.contrastive_case, args.n, args.d)))
        return
    path = args.out / ("kernels_gpu.json" if args.gpu else "kernels_cpu.json")
    previous = json.loads(path.read_text()) if args.only and path.exists() else {}
    sections = Sections(path, args.budget_s, previous)
    if args.gpu:
        gpu_main(sections, args.repeats, args.quick)
    else:
        cpu_main(sections, args.rounds, args.repeats, args.quick, args.only)
    sections.save()
    print(json.dumps(sections.results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
