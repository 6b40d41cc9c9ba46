"""Distributed set-up from the environment torchrun provides (RANK, WORLD_SIZE, LOCAL_RANK).

``torchrun --nproc_per_node=N -m ...`` gives N processes; NCCL joins them on GPUs, gloo on the
CPU. Without those variables the run is a single process and nothing here communicates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process group was created here and is torn down here

    @property
    def is_main(self) -> bool:
        """Only the main process logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the torchrun job if there is one. ``device`` defaults to this rank's GPU, else CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistContext(rank, world_size, local_rank, device, owns)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def mean_across_ranks(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean over ranks of a float tensor (the same on every rank)."""
    if ctx.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= ctx.world_size
    return values


class RankVote:
    """Whether any rank raised a flag (a stop signal may reach only some of them), agreed on by
    every rank without blocking: ``post`` starts an all-reduce of this rank's flag, ``result``
    waits for it (on a GPU the stream waits, not the host) and returns the agreed flag as a
    device tensor, 1.0 or 0.0, for the caller to read along with its own flags. Every rank
    posts once per step, in the same order as its other collectives."""

    def __init__(self, ctx: DistContext):
        self._flag = torch.zeros((), device=ctx.device)
        self._work: dist.Work | None = None

    def post(self, flag: bool) -> None:
        self._flag.fill_(float(flag))  # a kernel argument: no host-to-device copy to wait for
        self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, async_op=True)

    def result(self) -> torch.Tensor:
        if self._work is not None:
            self._work.wait()
            self._work = None
        return self._flag


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``obj`` of every rank, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
