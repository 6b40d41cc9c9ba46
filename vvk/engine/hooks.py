"""Periodic work inside the training loop, such as an evaluation on a validation set.

::

    def evaluate(model, step):                  # the plain module, in train mode
        model.eval()
        return {"box_AP": ...}                   # written to metrics.jsonl as a line of its own

    train(..., every=[Every(steps=500, fn=evaluate, name="val")])

The loop calls ``fn(model, step)`` after optimizer step ``step`` when ``step`` is a multiple of
``steps`` and, with ``at_end``, after the last step of the run, before that step's checkpoint
(so a resumed run never evaluates a step twice, nor skips one). It does not call it after an
interrupted step: a stop signal asks for a quick checkpoint. Its guarantees:

- ``fn`` runs on every rank (it may share work with collectives, e.g. each rank evaluating a
  shard and rank 0 scoring); the values rank 0 returns (a dict of JSON values, or None) make a
  line ``{"step": step, "hook": name, **values, "seconds": ...}`` of ``metrics.jsonl``, and the
  last values of each hook are in ``TrainResult.hooks`` and ``summary.json``.
- The random number generators (Python, numpy, torch, CUDA) are saved before the call and
  restored after it, and the model is put back in train mode: a run with hooks trains exactly
  as one without (bit for bit on the CPU with a fixed seed).
- The time it takes is left out of the throughput of the next metrics line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from vvk.engine.state import rng_state, set_rng_state

HookFn = Callable[[nn.Module, int], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Every:
    """Call ``fn(model, step)`` every ``steps`` optimizer steps (0: only at the end) and, with
    ``at_end``, after the last step; ``name`` tells its metrics lines apart."""

    steps: int
    fn: HookFn
    name: str = "eval"
    at_end: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"Every.steps must be >= 0, got {self.steps}")

    def due(self, step: int, last: int) -> bool:
        return (self.steps > 0 and step % self.steps == 0) or (self.at_end and step == last)


def run_hook(hook: Every, model: nn.Module, step: int) -> tuple[dict[str, Any] | None, float]:
    """``hook.fn(model, step)`` with the RNG states kept and train mode restored; returns its
    values and the seconds it took."""
    started = time.perf_counter()
    saved = rng_state()
    try:
        values = hook.fn(model, step)
    finally:
        set_rng_state(saved)
        model.train()
    return (dict(values) if values is not None else None), time.perf_counter() - started
