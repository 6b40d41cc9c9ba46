"""Running a benchmark's seeds: one after another, or several at once in processes of one thread."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

RunOne = Callable[[str, int, Path, Any], dict]  # (name, seed, work folder, args) -> the run's record


def run_seed(run_one: RunOne, names: Sequence[str], seed: int, work: Path, args: Any, key: str) -> list:
    """``[(name, record)]`` of every name on one seed, in order, each printed as it ends."""
    records = []
    for name in names:
        records.append((name, run_one(name, seed, work, args)))
        print(json.dumps({key: name, **records[-1][1]}), flush=True)
    return records


def _one_thread() -> None:
    torch.set_num_threads(1)


def seed_results(
    run_one: RunOne, names: Sequence[str], seeds: Sequence[int], work: Path, args: Any, *, key: str, jobs: int
) -> Iterator[list]:
    """Each seed's :func:`run_seed` records as the seed ends: in this process, or ``jobs`` seeds
    at a time, each in a spawned process on one thread (their seconds then count a shared
    machine). ``run_one`` must be importable by the workers (a module-level function)."""
    if jobs == 1:
        yield from (run_seed(run_one, names, seed, work, args, key) for seed in seeds)
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # read by the spawned workers' libraries when they start
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_one_thread) as pool:
        futures = [pool.submit(run_seed, run_one, names, seed, work, args, key) for seed in seeds]
        yield from (future.result() for future in as_completed(futures))
