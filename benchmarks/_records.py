"""Writing a benchmark's JSON and summarising its figures over seeds."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vvk.atomic import atomic_write_text


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON in ``path``, written whole or not at all: a benchmark killed
    while writing leaves the file it had before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def save_records(path: Path, results: dict, key: str) -> None:
    """Write ``results`` to ``path``, keeping the records under ``results[key]`` that earlier
    invocations wrote there (read now, so that runs of one script in parallel each add theirs;
    a record of the same name is replaced)."""
    earlier = json.loads(path.read_text()).get(key, {}) if path.is_file() else {}
    write_json(path, {**results, key: {**earlier, **results[key]}})


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and range of ``values``."""
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.mean(values), 4), "std": round(deviation, 4),
            "min": min(values), "max": max(values)}  # fmt: skip


def over_seeds(values: Sequence[float]) -> dict:
    """``spread(values)`` with the values themselves, seed by seed."""
    return {**spread(values), "per_seed": list(values)}


def paired_differences(runs: Sequence[dict], baseline: Sequence[dict], key: str) -> list[float]:
    """``run[key] - baseline[key]`` for each run whose seed the baseline ran too, in ``runs``'
    order, to 4 decimals."""
    by_seed = {r["seed"]: r for r in baseline}
    return [round(r[key] - by_seed[r["seed"]][key], 4) for r in runs if r["seed"] in by_seed]
