"""Two-process cases of the training loop for test_distributed.py, in one gloo process group:

    torchrun --standalone --nproc_per_node=2 tests/engine/replicas.py OUT

- ``mean``, ``sum``: three SGD steps (momentum, L2) of a linear embedding under NT-Xent with
  keys gathered across ranks (``vvk.methods.losses.nt_xent``), on 8 samples that one step covers
  whole (4 per rank), with ``replica_grads`` "mean" and "sum". The test repeats them in one
  process on batches of 8 (``single``).
- ``signal``: SIGTERM reaches rank 1 only, during step 2.
- ``nan-loss``: rank 1's loss is NaN at step 3 (checkpoints every 2 steps).
- ``nan-logged``: a value rank 1 only logs is NaN at step 3 (checkpoints every 2, lines every 5).

Each rank writes ``OUT/<case>-rank<r>.json`` (status and step, or the ``NonFiniteLoss`` message;
whether the weights are finite; the device reads of each step) and ``OUT/<case>-rank<r>.pt``
(the weights at the end).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from vvk.engine import NonFiniteLoss, TrainConfig, train
from vvk.engine.host_reads import HostReads
from vvk.methods.losses import nt_xent

SAMPLES = 8


class Points(Dataset):
    """``SAMPLES`` fixed random 6-vectors, keyed like ClipDataset."""

    def __init__(self):
        self.x = torch.randn(SAMPLES, 6, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return SAMPLES

    def __getitem__(self, key):
        return {"x": self.x[key[0]]}


class TwoViews(nn.Module):
    """One linear embedding of two views of each point (the second: its features reversed)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embed(x), self.embed(x.flip(-1))  # 2 x (N, 4)


def make_model() -> TwoViews:
    torch.manual_seed(0)
    return TwoViews()


def contrastive_step(model, batch):
    z_a, z_b = model(batch["x"])
    return {"loss": nt_xent(z_a, z_b, 0.5)}


def config(**changes) -> TrainConfig:
    """The mean/sum cases' settings; ``batch_size`` is per rank."""
    settings = dict(
        steps=3, batch_size=SAMPLES // 2, lr=0.5, momentum=0.9, weight_decay=0.01, schedule="constant",
        checkpoint_every=0, log_every=3, num_workers=0, progress=False,
    )  # fmt: skip
    return TrainConfig(**{**settings, **changes})


def _faulty_step(rank: int, case: str):
    """The step function of the signal and NaN cases: rank 1 misbehaves at step 2 or 3."""
    calls = 0

    def step(model, batch):
        nonlocal calls
        calls += 1
        out = contrastive_step(model, batch)
        if rank == 1 and case == "signal" and calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        if rank == 1 and case == "nan-loss" and calls == 3:
            out["loss"] = out["loss"] * float("nan")
        bad = rank == 1 and case == "nan-logged" and calls == 3
        return {**out, "logged": torch.tensor(float("nan") if bad else 1.0)}

    return step


CASES = {
    "mean": {"config": config()},
    "sum": {"config": config(replica_grads="sum")},
    "signal": {"config": config(steps=6), "faulty": True},
    "nan-loss": {"config": config(steps=6, checkpoint_every=2), "faulty": True},
    "nan-logged": {"config": config(steps=6, checkpoint_every=2, log_every=5), "faulty": True},
}


def run_case(case: str, out: Path, rank: int) -> None:
    settings = CASES[case]
    step_fn = _faulty_step(rank, case) if settings.get("faulty") else contrastive_step
    calls, inside = [0], [False]

    def counted(model, batch):
        calls[0] += 1
        inside[0] = True
        try:
            return step_fn(model, batch)
        finally:
            inside[0] = False

    def on_read():
        # The loop's reads, by the step whose step_fn ran last (0: the set-up). The loss's own
        # (the contrastive kernel checks its positives) are the method's, not the loop's.
        if not inside[0]:
            reads.update([calls[0]])

    model, reads, record = make_model(), Counter(), {}
    try:
        with HostReads("cpu", on_read=on_read):
            result = train(
                model=model, step_fn=counted, data=Points(), config=settings["config"],
                run_dir=out / case, method="replicas",
            )  # fmt: skip
        record.update(status=result.status, step=result.step)
    except NonFiniteLoss as e:
        record.update(status="non-finite", error=str(e))
    weights = model.state_dict()
    record.update(finite=all(bool(torch.isfinite(w).all()) for w in weights.values()), reads=reads)
    torch.save(weights, out / f"{case}-rank{rank}.pt")
    (out / f"{case}-rank{rank}.json").write_text(json.dumps(record))


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # one group for every case; train() joins it
    rank = dist.get_rank()
    out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        run_case(case, out, rank)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
