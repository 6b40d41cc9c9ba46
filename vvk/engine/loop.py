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
  SIGINT/SIGTERM finish the current step (with several processes, the next one: the ranks
  agree on it first), save a checkpoint and return with status "interrupted";
  ``resume=True`` continues from the latest checkpoint, bit-for-bit as if never stopped (on the
  CPU with a fixed seed); a non-finite loss raises ``NonFiniteLoss`` before the bad step
  touches the weights, keeping the last good checkpoint.
- Metrics: a line of ``metrics.jsonl`` holds the mean of every value ``step_fn`` returned over
  the steps since the previous line (averaged over ranks), with the learning rate and the
  clipped gradient norm of its own step. Lines are written every ``log_every`` steps, at every
  checkpoint and at the end; ``TrainResult.losses`` is the last line's values.
- Periodic work (an evaluation): ``every=[Every(steps, fn)]`` calls ``fn(model, step)`` every
  ``steps`` steps and after the last one; its values are lines of their own in
  ``metrics.jsonl`` and ``TrainResult.hooks``; it cannot change the training (``vvk.engine.hooks``).

Synchronisation. On a GPU every read of a device value (``.item()``, ``.tolist()``, ...)
makes the host wait for the device, which then idles while the host launches the next work.
The loop reads the device once per optimizer step, and once more when it writes a line:

- The per-step read is one flag, checked after backward and before the update: is every
  gradient finite (``_foreach_norm``; or the clipping norm, computed anyway), and, with several
  processes, did a stop signal reach any rank (``RankVote``: an all-reduce started at the
  beginning of the step, waited for by the device, not the host). DDP has all-reduced the
  gradients, so every rank reads the same flag, without a collective of its own, and all
  stop together: a rank that stopped alone would leave the others waiting in a collective.
- A non-finite loss reaches that flag through its gradients: the loss is multiplied by NaN
  before backward when it is not finite (``_scaled``), so the gradients are NaN on every
  rank even where the loss's own gradients were finite, and the step is refused in time. A
  finite loss with a non-finite gradient is refused the same way (the error names the gradient).
- The values ``step_fn`` returns stay on the device, summed, and are read only for a line:
  one all-reduce and one transfer (as nanoGPT reads its loss only on logging steps). A
  non-finite value that did not reach the gradients (one that is only logged) stops the run
  when it is read, at the latest on the next line, which always comes before a checkpoint, so
  the latest checkpoint stays a good one. Its updates were finite: the weights are too.
- fp16: ``GradScaler`` reads its own overflow flag each step and skips a step whose gradients
  overflowed, which is the normal course of loss scaling, not an error; the loop adds no
  gradient check of its own, and a NaN loss (its step skipped by the scaler) stops the run on
  the next line. With several processes the stop vote is read just before the scaler's
  read, with nothing queued between them: the host waits once.
- ``replica_grads="sum"`` (``TrainConfig``) multiplies the loss by the world size before
  backward, so DDP's average of the gradients is their sum (and ``build_optimizer`` the
  sgd/lars weight decay, which the reference sums with the loss).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    RankVote,
    barrier,
    gather_objects,
    init_distributed,
    mean_across_ranks,
    shutdown,
)
from vvk.engine.ema import EMA
from vvk.engine.hooks import Every, run_hook
from vvk.engine.optim import build_optimizer, lr_at, set_lr
from vvk.engine.report import TrainLog
from vvk.engine.signals import StopRequest
from vvk.engine.state import RunDir, rng_state, seed_all, set_rng_state
from vvk.errors import VvkError

logger = logging.getLogger("vvk.engine")

StepFn = Callable[[nn.Module, dict[str, Any]], Mapping[str, torch.Tensor]]


class NonFiniteLoss(VvkError):
    """A loss (or a gradient) became NaN or infinite; the run stopped before it reached the weights."""


@dataclass(frozen=True)
class TrainResult:
    status: str  # "finished" or "interrupted"
    step: int
    losses: dict[str, float]
    run_dir: Path
    summary: dict[str, Any]
    hooks: dict[str, dict[str, Any]] = field(default_factory=dict)  # each hook's last values


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
    every: Sequence[Every] = (),
) -> TrainResult:
    """Train ``model`` for ``config.steps`` optimizer steps (see the module docstring).

    Args:
        method: the method's name, recorded in the run folder; resuming with another is refused.
        arch: ``{"name", "kwargs"}`` to rebuild the model from its checkpoint, when it was not
            made by ``vvk.models.build`` (which records it).
        device: default: this rank's GPU, else the CPU.
        every: periodic work such as an evaluation (``vvk.engine.hooks.Every``).
    """
    ctx = init_distributed(device)
    try:
        return _train(
            ctx, model, step_fn, data, config, Path(run_dir), method, resume, collate_fn, arch, tuple(every)
        )
    except BaseException as e:
        # The finished frames of a raised step hold the DDP wrapper; clear them so that it can
        # be collected below (the exception keeps its message and line numbers).
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        if ctx.distributed:
            # DDP sits in reference cycles (its hooks hold it): collected by chance later, at
            # interpreter exit its reducer can outlive the process group and abort the process
            # ("terminate called without an active exception"). Collect it while the group lives.
            gc.collect()
        shutdown(ctx)


def _train(
    ctx: DistContext, model, step_fn, data, config, run_dir, method, resume, collate_fn, arch, every
) -> TrainResult:
    run = RunDir.prepare(run_dir, method=method, config=config, resume=resume, is_main=ctx.is_main)
    seed_all(config.seed + ctx.rank)  # augmentation and dropout differ per rank; data order is seeded apart
    model.to(ctx.device).train()
    optimizer = build_optimizer(model, config, world_size=ctx.world_size)
    ema = (
        EMA(model, config.ema_decay, average_buffers=config.ema_buffers == "average")
        if config.ema_decay
        else None
    )
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
    meter, guard = _Meter(ctx, start=step), _Guard(ctx, check_grads=config.precision != "fp16")
    losses: dict[str, float] = {}
    hooked: dict[str, dict[str, Any]] = {}
    status = "finished"
    with StopRequest() as stop, contextlib.closing(log):
        while step < config.steps:
            lr = set_lr(optimizer, lr_at(step, config))
            guard.post(stop.requested is not None)
            names, values = _forward_backward(net, step_fn, batches, bad_files, scaler, config, ctx)
            scaler.unscale_(optimizer)
            grad_norm = (
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip) if config.grad_clip else None
            )
            non_finite, stopping = guard.read(model, grad_norm, stop.requested is not None)
            if non_finite:
                raise _refused_step(names, values, step + 1, run, ctx)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            meter.add(names, values, grad_norm)
            checkpoint = stopping or _checkpoint_due(step, config)
            if checkpoint or step % config.log_every == 0 or step == config.steps:
                losses = _write_line(log, meter, run, step, lr)
            if not stopping:
                _run_hooks(every, model, step, config.steps, log, hooked)
            log.advance(step)
            if checkpoint:
                _checkpoint(run, ctx, step, keep=config.keep_checkpoints, **state)
            if stopping:
                status = "interrupted"
                break
        bad = _merge_bad_files(gather_objects(bad_files.summary(), ctx))
        summary = log.finish(status=status, step=step, losses=losses, bad_files=bad, hooks=hooked)
    return TrainResult(status, step, losses, run.path, summary, hooked)


def _run_hooks(
    every: tuple[Every, ...], model: nn.Module, step: int, last: int, log: TrainLog, hooked: dict
) -> None:
    """The hooks due after ``step``, each logged as a line of its own (``vvk.engine.hooks``)."""
    for hook in every:
        if hook.due(step, last):
            values, seconds = run_hook(hook, model, step)
            if values is not None:
                hooked[hook.name] = values
                log.record(step, {"hook": hook.name, **values}, seconds=seconds)


def _forward_backward(
    net: nn.Module,
    step_fn: StepFn,
    batches,
    bad_files: BadFiles,
    scaler,
    config: TrainConfig,
    ctx: DistContext,
) -> tuple[list[str], torch.Tensor]:
    """The micro-steps of one optimizer step, their gradients summed in ``.grad``. Returns the
    names of the values ``step_fn`` returned (the total first, as "loss") and their mean over
    the micro-steps, (K,) on the device."""
    replicas = ctx.world_size if config.replica_grads == "sum" else 1  # DDP then averages R x g_r
    scale = replicas / config.grad_accum
    names: list[str] | None = None
    sums: torch.Tensor | None = None
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
            scaler.scale(_scaled(total, scale)).backward()
        names = _same_names(names, ["loss", *out])
        values = torch.stack([v.detach().float() for v in (total, *out.values())])  # (K,)
        sums = values if sums is None else sums + values
    return names, sums / config.grad_accum


def _scaled(total: torch.Tensor, scale: float) -> torch.Tensor:
    """``total * scale`` when ``total`` is finite, else ``total * NaN``, whose gradients are all
    NaN: DDP all-reduces them, so a NaN loss on one rank reaches every rank's gradient check in
    the same step, with no collective of its own (one factor: the step's scale or the poison)."""
    return total * (total.detach().float() * 0.0 + scale)  # 0 * (NaN or inf) is NaN


def _finite(x: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite(x)`` in two kernels instead of five: ``0 * x`` is 0 or NaN."""
    return x * 0 == 0


def _same_names(names: list[str] | None, now: list[str]) -> list[str]:
    if names is not None and now != names:
        raise VvkError(f"step_fn returned {now} after {names}: it must return the same values every step")
    return now


class _Guard:
    """The one device read of an optimizer step (module docstring, "Synchronisation"): are the
    gradients finite, and did any rank get a stop signal. Every rank reads the same answers."""

    def __init__(self, ctx: DistContext, *, check_grads: bool):
        self.check_grads = check_grads
        self.vote = RankVote(ctx) if ctx.distributed else None

    def post(self, stop_requested: bool) -> None:
        """At the start of a step: share this rank's stop request."""
        if self.vote is not None:
            self.vote.post(stop_requested)

    def read(
        self, model: nn.Module, grad_norm: torch.Tensor | None, stop_requested: bool
    ) -> tuple[bool, bool]:
        """After backward (and clipping): ``(gradients not finite, stop after this step)``."""
        finite = _all_finite(model, grad_norm) if self.check_grads else None
        if self.vote is None:
            return finite is not None and not finite.item(), stop_requested
        if finite is None:
            return False, bool(self.vote.result().item())
        ok, stop = torch.stack([finite.float(), self.vote.result()]).tolist()  # (2,): one read
        return not ok, bool(stop)


def _all_finite(model: nn.Module, grad_norm: torch.Tensor | None) -> torch.Tensor | None:
    """0-d bool on the device: is every gradient entry finite (None: there are no gradients)."""
    if grad_norm is not None:  # clipping's 2-norm: NaN or inf with any such entry (or past float range)
        return _finite(grad_norm)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    # The largest |entry| of each tensor: NaN propagates, and unlike a 2-norm it cannot overflow.
    return _finite(torch.stack(torch._foreach_norm(grads, math.inf))).all() if grads else None


class _Meter:
    """The values of the steps since the last metrics line, summed on the device; ``read``
    averages them over steps and ranks in one all-reduce and one transfer."""

    def __init__(self, ctx: DistContext, *, start: int):
        self.ctx = ctx
        self.since = start + 1  # the first step of the current line
        self.names: list[str] | None = None
        self._sums: torch.Tensor | None = None
        self._steps = 0
        self._grad_norm: torch.Tensor | None = None

    def add(self, names: list[str], values: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        self.names = _same_names(self.names, names)
        self._sums = values if self._sums is None else self._sums + values
        self._steps += 1
        self._grad_norm = grad_norm

    def read(self) -> tuple[dict[str, float], float | None]:
        """``(the values' means, the last step's gradient norm)``; starts the next line."""
        parts = [self._sums / self._steps]  # (K,)
        if self._grad_norm is not None:
            parts.append(self._grad_norm.detach().float().reshape(1))
        means = mean_across_ranks(torch.cat(parts), self.ctx).tolist()  # the line's one read
        self.since += self._steps
        self._sums, self._steps = None, 0
        grad_norm = means[len(self.names)] if self._grad_norm is not None else None
        return dict(zip(self.names, means, strict=False)), grad_norm


def _write_line(log: TrainLog, meter: _Meter, run: RunDir, step: int, lr: float) -> dict[str, float]:
    """Read the values of the steps since the last line and log them; a non-finite one stops the
    run instead (its line is not written: metrics.jsonl stays plain JSON)."""
    first = meter.since
    losses, grad_norm = meter.read()
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        steps = f"step {step}" if first == step else f"steps {first}-{step}"
        raise NonFiniteLoss(
            f"non-finite loss in {steps} ({_values(bad)}; read with the metrics); no non-finite "
            f"gradient reached the weights; {_kept(run)}"
        )
    log.line(step, losses, lr=lr, grad_norm=grad_norm)
    return losses


def _refused_step(names: list[str], values: torch.Tensor, step: int, run: RunDir, ctx: DistContext):
    """The error for a step whose gradients are not finite. Every rank is here (the flag is the
    same on all), so the collective that averages the step's values is matched."""
    now = dict(zip(names, mean_across_ranks(values, ctx).tolist(), strict=True))
    bad = {k: v for k, v in now.items() if not math.isfinite(v)}
    what = "loss" if bad else "gradient"
    return NonFiniteLoss(
        f"non-finite {what} at step {step} ({_values(bad or now)}); stopped before applying it; {_kept(run)}"
    )


def _values(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in values.items())


def _kept(run: RunDir) -> str:
    where = run.latest()
    return f"the last good checkpoint is {where}" if where else "no checkpoint was written yet"


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
            logger.warning("resume: %s has no checkpoint yet; starting at step 0", run.path)
        return None
    saved = run.load(folder, model=model, ema=ema and ema.module, device=ctx.device)
    if ctx.is_main:
        run.trim_metrics(saved["step"])
    decays = [group["weight_decay"] for group in optimizer.param_groups]
    optimizer.load_state_dict(saved["optimizer"])
    for group, decay in zip(optimizer.param_groups, decays, strict=True):
        group["weight_decay"] = decay  # this run's: with replica_grads="sum" it depends on the world size
    scaler.load_state_dict(saved["scaler"])
    if len(saved["rng"]) != ctx.world_size and ctx.is_main:
        logger.warning(
            "resuming a %d-process checkpoint with %d processes: the data order continues differently",
            len(saved["rng"]), ctx.world_size,
        )  # fmt: skip
    return saved


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
