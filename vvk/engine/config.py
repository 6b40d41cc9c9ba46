"""The training configuration: one typed dataclass, resolved into the run folder as JSON.

A method's preset fills the optimizer fields (e.g. ConST-CL: SGD, lr 40.96 ... see
reference/video_ssl.md); the command line overrides single fields. ``lr`` is the peak rate,
reached after ``warmup_steps``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Literal

from vvk.errors import VvkError

Optimizer = Literal["sgd", "lars", "adamw"]
Schedule = Literal["cosine", "constant"]
Precision = Literal["fp32", "bf16", "fp16"]
ReplicaGrads = Literal["mean", "sum"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything the loop needs besides the model, the step and the data.

    Attributes:
        steps: optimizer steps in the whole run (a resumed run continues up to it).
        batch_size: clips per rank per micro-step; one optimizer step sees
            ``batch_size * grad_accum * world_size`` clips.
        grad_accum: micro-steps whose gradients are summed before each optimizer step.
        lr: peak learning rate (after warm-up).
        optimizer: sgd (with momentum), lars (SGD + layer-wise trust ratio, SimCLR's) or adamw.
        momentum: SGD/LARS momentum; AdamW's beta1.
        betas2: AdamW's beta2.
        weight_decay: decoupled for AdamW, L2 for SGD/LARS; never on biases, norms or the
            names a model lists in ``no_weight_decay()``.
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: after warm-up, cosine down to ``lr * min_lr_ratio``, or constant.
        grad_clip: clip the global gradient norm to this (0: off).
        replica_grads: how the gradients of several processes combine. "mean" (DDP's): a step
            is that of one process on the global batch, whatever the number of processes.
            "sum": each process's gradient (of its loss, and of the L2 weight decay of sgd and
            lars) is added up, as ``tf.distribute`` optimizers do for the TF Model Garden tasks
            that do not divide their loss by the replica count (see docs/notes/constcl.md); the
            step then grows with the number of processes, and a rate taken from such a recipe
            means what it meant there only with as many processes as it had replicas.
        ema_decay: keep an exponential moving average of the weights (0: off).
        precision: autocast dtype; fp16 also scales the loss. bf16/fp16 matter on a GPU.
        checkpoint_every: steps between checkpoints (0: only at the end and on a signal).
        keep_checkpoints: how many recent checkpoints stay on disk.
        log_every: steps between metric lines.
        seed: seeds the data order, clip sampling, augmentation and dropout.
        num_workers: data-loader worker processes per rank.
        frame_cache: decode each video once, whole, into the user cache and read clips from
            there (``vvk.data.frame_cache``): for datasets that fit on disk at the frame size.
        tensorboard: also write TensorBoard event files (needs the tensorboard package).
        progress: show a progress bar on stderr (rank 0).
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 0.1
    optimizer: Optimizer = "sgd"
    momentum: float = 0.9
    betas2: float = 0.999
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0
    replica_grads: ReplicaGrads = "mean"
    ema_decay: float = 0.0
    precision: Precision = "fp32"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    num_workers: int = 2
    frame_cache: bool = False
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "grad_accum": self.grad_accum >= 1,
            "lr": self.lr >= 0,
            "optimizer": self.optimizer in ("sgd", "lars", "adamw"),
            "schedule": self.schedule in ("cosine", "constant"),
            "precision": self.precision in ("fp32", "bf16", "fp16"),
            "replica_grads": self.replica_grads in ("mean", "sum"),
            "warmup_steps": 0 <= self.warmup_steps <= self.steps,
            "ema_decay": 0 <= self.ema_decay < 1,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "grad_clip": self.grad_clip >= 0,
            "checkpoint_every": self.checkpoint_every >= 0,
            "keep_checkpoints": self.keep_checkpoints >= 1,
            "log_every": self.log_every >= 1,
            "num_workers": self.num_workers >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            raise VvkError(f"training config: invalid {name} = {getattr(self, name)!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``; unknown field names are a ``VvkError``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise VvkError(f"training config: unknown field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def clips_per_step(self, world_size: int) -> int:
        return self.batch_size * self.grad_accum * world_size
