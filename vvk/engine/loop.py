"""The one training loop every method uses.

::

    from vvk.engine import TrainConfig, train

    def step_fn(model, batch):                  # the collated batch, tensors on the device
        z_a, z_b = model(augment(batch["video"]), augment(batch["video_b"]))
        return {"loss": nt_xent(z_a, z_b), "accuracy": acc(z_a, z_b)}

    train(model=model, step_fn=step_fn, data=dataset, config=TrainConfig(steps=1000),
          run_dir="runs/cvrl-1", method="cvrl")

The contract:

- ``step_fn(model, batch) -> dict[str, Tensor]`` of scalars. With a ``"loss"`` key, that entry
  is the total that is optimised and the others are only logged (accuracies, already-weighted
  parts); without one, the total is the sum of all entries, logged as ``"loss"``.
- ``model`` reaches ``step_fn`` wrapped in DistributedDataParallel when there are several
  processes: call it (its ``forward``), since calling submodules directly skips the gradient
  synchronisation.
- ``data`` is a map-style dataset of dicts (``vvk.data.ClipDataset``); the loop builds the
  loader, so each rank reads different samples and a resumed run continues at the next one.
  Bad files a batch reports under ``"skipped"`` are warned about once and summarised.
- Several processes: run the same program under ``torchrun --nproc_per_node=N``; the
  environment says so (NCCL on GPUs, gloo on the CPU). Only rank 0 logs and writes.
- The run folder holds config, metrics, checkpoints and the summary (``vvk.engine.state``).
  SIGINT/SIGTERM finish the current step, save a checkpoint and return with status
  "interrupted"; ``resume=True`` continues from the latest checkpoint, bit-for-bit as if never
  stopped (on the CPU with a fixed seed); a non-finite loss raises ``NonFiniteLoss`` before the
  bad step touches the weights, keeping the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from vvk.data.datasets import BadFiles, collate
from vvk.data.loader import make_loader
from vvk.engine.config import TrainConfig
from vvk.engine.dist import (
    DistContext,
    any_rank,
    barrier,
    gather_objects,
    init_distributed,
    mean_across_ranks,
    shutdown,
)
from vvk.engine.ema import EMA
from vvk.engine.optim import build_optimizer, lr_at, set_lr
from vvk.engine.report import TrainLog
from vvk.engine.signals import StopRequest
from vvk.engine.state import RunDir, rng_state, seed_all, set_rng_state
from vvk.errors import VvkError

StepFn = Callable[[nn.Module, dict[str, Any]], Mapping[str, torch.Tensor]]


class NonFiniteLoss(VvkError):
    """A loss became NaN or infinite; the run stopped before applying that step."""


@dataclass(frozen=True)
class TrainResult:
    status: str  # "finished" or "interrupted"
    step: int
    losses: dict[str, float]
    run_dir: Path
    summary: dict[str, Any]


def train(
    *,
    model: nn.Module,
    step_fn: StepFn,
    data: Dataset,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    method: str,
    resume: bool = False,
    collate_fn: Callable[[list[Any]], Any] = collate,
    arch: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps (see the module docstring).

    Args:
        method: the method's name, recorded in the run folder; resuming with another is refused.
        arch: ``{"name", "kwargs"}`` to rebuild the model from its checkpoint, when it was not
            made by ``vvk.models.build`` (which records it).
        device: default: this rank's GPU, else the CPU.
    """
    ctx = init_distributed(device)
    try:
        return _train(ctx, model, step_fn, data, config, Path(run_dir), method, resume, collate_fn, arch)
    finally:
        shutdown(ctx)


def _train(
    ctx: DistContext, model, step_fn, data, config, run_dir, method, resume, collate_fn, arch
) -> TrainResult:
    run = RunDir.prepare(run_dir, method=method, config=config, resume=resume, is_main=ctx.is_main)
    seed_all(config.seed + ctx.rank)  # augmentation and dropout differ per rank; data order is seeded apart
    model.to(ctx.device).train()
    optimizer = build_optimizer(model, config)
    ema = EMA(model, config.ema_decay) if config.ema_decay else None
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.precision == "fp16")
    saved = _restore(run, ctx, model, ema, optimizer, scaler) if resume else None
    step = saved["step"] if saved else 0
    net = DistributedDataParallel(model, device_ids=_device_ids(ctx)) if ctx.distributed else model
    per_rank_step = config.batch_size * config.grad_accum
    loader = make_loader(
        data, batch_size=config.batch_size, num_workers=config.num_workers, rank=ctx.rank,
        world_size=ctx.world_size, seed=config.seed, start=step * per_rank_step, collate_fn=collate_fn,
        pin_memory=ctx.device.type == "cuda",
    )  # fmt: skip
    batches = iter(loader)  # workers start and prefetch here
    if saved:
        set_rng_state(saved["rng"][min(ctx.rank, len(saved["rng"]) - 1)])
    bad_files = getattr(data, "bad_files", None)
    bad_files = BadFiles() if bad_files is None else bad_files
    log = TrainLog(run, config, active=ctx.is_main, world_size=ctx.world_size, start_step=step)
    state = {"model": model, "optimizer": optimizer, "scaler": scaler, "ema": ema, "arch": arch}
    losses: dict[str, float] = {}
    status = "finished"
    with StopRequest() as stop, contextlib.closing(log):
        while step < config.steps:
            lr = set_lr(optimizer, lr_at(step, config))
            sums: dict[str, torch.Tensor] = {}
            for micro in range(config.grad_accum):
                batch = next(batches)
                bad_files.merge(batch.pop("skipped", ()))
                batch = _to_device(batch, ctx.device)
                # DDP all-reduces gradients in backward; only the last micro-step needs it.
                last = micro == config.grad_accum - 1
                with contextlib.nullcontext() if last or not ctx.distributed else net.no_sync():
                    with autocast(ctx.device, config.precision):
                        out = dict(step_fn(net, batch))
                        total = out.pop("loss") if "loss" in out else sum(out.values())
                    scaler.scale(total / config.grad_accum).backward()
                for name, value in {"loss": total, **out}.items():
                    sums[name] = sums.get(name, 0.0) + value.detach().float() / config.grad_accum
            # One all-reduce and one device sync per step: every rank sees the same numbers.
            reduced = mean_across_ranks(torch.stack(list(sums.values())), ctx)
            losses = dict(zip(sums, reduced.tolist(), strict=True))
            _stop_if_not_finite(losses, step + 1, run)
            scaler.unscale_(optimizer)
            grad_norm = (
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip).item()
                if config.grad_clip
                else None
            )
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            log.step(step, losses, lr=lr, grad_norm=grad_norm)
            stopping = any_rank(stop.requested is not None, ctx)
            if stopping or _checkpoint_due(step, config):
                _checkpoint(run, ctx, step, keep=config.keep_checkpoints, **state)
            if stopping:
                status = "interrupted"
                break
        bad = _merge_bad_files(gather_objects(bad_files.summary(), ctx))
        summary = log.finish(status=status, step=step, losses=losses, bad_files=bad)
    return TrainResult(status, step, losses, run.path, summary)


def _checkpoint_due(step: int, config: TrainConfig) -> bool:
    every = config.checkpoint_every
    return step == config.steps or (every > 0 and step % every == 0)


def _checkpoint(
    run: RunDir, ctx: DistContext, step: int, *, model, optimizer, scaler, ema, arch, keep: int
) -> None:
    rngs = gather_objects(rng_state(), ctx)  # collective: every rank takes part, rank 0 writes
    if ctx.is_main:
        trainer = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rngs,
        }
        run.save(step, model=model, trainer=trainer, ema=ema and ema.module, arch=arch, keep=keep)
    barrier(ctx)


def _restore(run: RunDir, ctx: DistContext, model, ema, optimizer, scaler) -> dict[str, Any] | None:
    folder = run.latest()
    if folder is None:
        if ctx.is_main:
            sys.stderr.write(
                f"vvk: warning: --resume: {run.path} has no checkpoint yet; starting at step 0\n"
            )
        return None
    saved = run.load(folder, model=model, ema=ema and ema.module, device=ctx.device)
    if ctx.is_main:
        run.trim_metrics(saved["step"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    if len(saved["rng"]) != ctx.world_size and ctx.is_main:
        sys.stderr.write(
            f"vvk: warning: resuming {len(saved['rng'])}-process checkpoint with {ctx.world_size} processes: "
            "the data order continues differently\n"
        )
    return saved


def _stop_if_not_finite(losses: dict[str, float], step: int, run: RunDir) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        where = run.latest()
        keep = f"the last good checkpoint is {where}" if where else "no checkpoint was written yet"
        values = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLoss(f"non-finite loss at step {step} ({values}); stopped before applying it; {keep}")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def autocast(device: torch.device, precision: str):
    """The autocast context of a ``TrainConfig.precision`` (fp32: none; fp16 only on a GPU)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise VvkError("precision fp16 needs a GPU (use bf16 or fp32 on the CPU)")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _device_ids(ctx: DistContext) -> list[int] | None:
    return [ctx.device.index] if ctx.device.type == "cuda" else None


def _merge_bad_files(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    merged = BadFiles(warn=lambda _line: None)
    for s in summaries:
        merged.merge(s["files"])
    return merged.summary()
