"""What every comparison of ``peers.py`` shares: interleaved timing, the ratio, the record."""

from __future__ import annotations

import importlib.metadata
import statistics
import time
from collections.abc import Callable, Mapping


class Timed(float):
    """What a call that times itself returns (seconds), e.g. a tracker's updates without its first
    frame: ``interleave`` records it instead of the call's wall time."""


def interleave(calls: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list]:
    """Seconds of each call in each of ``rounds`` rounds, the calls taking turns within a round in
    the mapping's order (peer, vvk, ...), after ``warmup`` untimed rounds (imports, caches, the
    allocator): load from other jobs then falls on every side alike."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(warmup + rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            result = call()
            wall = time.perf_counter() - start
            if r >= warmup:
                seconds[name].append(float(result) if isinstance(result, Timed) else wall)
    return seconds


def ratio(peer: list[float], vvk: list[float]) -> dict[str, object]:
    """Peer seconds over vvk seconds, round by round (a round's two runs shared the machine's load)."""
    per_round = [p / v for p, v in zip(peer, vvk, strict=True)]
    return {
        "median": round(statistics.median(per_round), 3),
        "min": round(min(per_round), 3),
        "max": round(max(per_round), 3),
        "per_round": [round(r, 3) for r in per_round],
    }


def record(peer: str, vvk: str, seconds: dict[str, list], agreement: dict, **extra) -> dict:
    """One peer against one vvk path: both sides' seconds per round, their ratio, the agreement
    check. The ratio counts only when the check passed (``counts``)."""
    return {
        "peer": peer,
        "vvk": vvk,
        "peer_seconds": [round(s, 5) for s in seconds[peer]],
        "vvk_seconds": [round(s, 5) for s in seconds[vvk]],
        "ratio_peer_over_vvk": ratio(seconds[peer], seconds[vvk]),
        "agreement": agreement,
        "counts": bool(agreement.get("ok")),
        **extra,
    }


def skipped(peer: str, reason: BaseException | str) -> dict:
    """A peer that does not run here, with the one line that says why (an error: its type too)."""
    lines = str(reason).strip().splitlines()
    line = lines[0] if lines else ""
    return {
        "peer": peer,
        "skipped": f"{type(reason).__name__}: {line}" if isinstance(reason, BaseException) else line,
    }


def version(*distributions: str) -> dict[str, str | None]:
    """Installed versions of ``distributions`` (None when absent)."""
    found: dict[str, str | None] = {}
    for name in distributions:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def relative_error(value, reference) -> float:
    """``max |value - reference| / max |reference|`` of two tensors or arrays (0 when both are 0)."""
    scale = float(abs(reference).max())
    return float(abs(value - reference).max()) / scale if scale else float(abs(value).max())
