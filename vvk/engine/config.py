"""The training configuration: one typed dataclass, resolved into the run folder as JSON.

A method's preset fills the optimizer fields (e.g. ConST-CL: SGD, lr 40.96 ... see
reference/video_ssl.md); the command line overrides single fields. ``lr`` is the peak rate,
reached after ``warmup_steps``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from vvk.errors import VvkError

Optimizer = Literal["sgd", "lars", "adamw"]
Schedule = Literal["cosine", "constant", "step"]
Precision = Literal["fp32", "bf16", "fp16"]
ReplicaGrads = Literal["mean", "sum"]
EmaBuffers = Literal["copy", "average"]
_CHOICES = {
    "optimizer": Optimizer,
    "ema_buffers": EmaBuffers,
    "schedule": Schedule,
    "precision": Precision,
    "replica_grads": ReplicaGrads,
}


class InvalidField(VvkError):
    """A configuration field outside its range. ``path`` names the field; ``vvk.methods.overrides``
    prefixes it with the fields that hold this one (``train.lr``) to name the ``--set`` key."""

    def __init__(self, owner: str, name: str, value: Any, rule: str):
        super().__init__(f"{owner}: invalid {name} = {value!r} (must be {rule})")
        self.owner, self.path, self.value, self.rule = owner, name, value, rule


# What each rule of ``check_ranges`` accepts; a tuple value must satisfy it in every element.
_RULES: dict[str, Callable[[Any], bool]] = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
}


def check_ranges(config: Any, rules: Mapping[str, Iterable[str]]) -> None:
    """Raise ``InvalidField`` for the first field of ``config`` outside its rule: ``{rule: names}``
    with a rule of ``_RULES``. None (a field's "not set") passes every rule.
    Called from ``__post_init__`` of the training config and of every method preset, so a bad
    value is refused where it is made (``--set``, a preset, Python) with the field's name."""
    owner = _owner(config)
    for rule, names in rules.items():
        for name in names:
            value = getattr(config, name)
            values = value if isinstance(value, tuple) else (value,)
            if not all(v is None or _RULES[rule](v) for v in values):
                raise InvalidField(owner, name, value, rule)


def check(config: Any, name: str, ok: bool, rule: str) -> None:
    """``InvalidField`` for ``name`` unless ``ok``: a rule that relates fields (crop <= size)."""
    if not ok:
        raise InvalidField(_owner(config), name, getattr(config, name), rule)


def _owner(config: Any) -> str:
    return "training config" if isinstance(config, TrainConfig) else type(config).__name__


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
        nesterov: Nesterov momentum (sgd only; Keras SGD's ``nesterov=True``).
        betas2: AdamW's beta2.
        weight_decay: decoupled for AdamW, L2 for SGD/LARS; never on biases, norms or the
            names a model lists in ``no_weight_decay()``.
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: after warm-up, cosine down to ``lr * min_lr_ratio``, constant, or step: ``lr``
            times ``decay_rate`` for each point of ``decay_at`` passed (the TF detection recipes).
        decay_at: with the step schedule, where the rate drops, as fractions of ``steps`` (so a
            shorter run keeps the recipe's shape), e.g. (0.9, 0.95).
        decay_rate: with the step schedule, the factor of each drop.
        grad_clip: clip the global gradient norm to this (0: off).
        replica_grads: how the gradients of several processes combine. "mean" (DDP's): a step
            is that of one process on the global batch, whatever the number of processes.
            "sum": each process's gradient (of its loss, and of the L2 weight decay of sgd and
            lars) is added up, as ``tf.distribute`` optimizers do for the TF Model Garden tasks
            that do not divide their loss by the replica count (see docs/notes/constcl.md); the
            step then grows with the number of processes, and a rate taken from such a recipe
            means what it meant there only with as many processes as it had replicas.
        ema_decay: keep an exponential moving average of the weights (0: off).
        ema_buffers: the average's floating buffers (batch-norm statistics) are copied from the
            model, or averaged like the weights (TF's ``ExponentialMovingAverage`` over all
            variables, as the Model Garden's ``trainable_weights_only: false`` does).
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
    nesterov: bool = False
    betas2: float = 0.999
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.0
    decay_at: tuple[float, ...] = ()
    decay_rate: float = 0.1
    grad_clip: float = 0.0
    replica_grads: ReplicaGrads = "mean"
    ema_decay: float = 0.0
    ema_buffers: EmaBuffers = "copy"
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
        check_ranges(
            self,
            {
                ">= 1": ("steps", "batch_size", "grad_accum", "keep_checkpoints", "log_every"),
                ">= 0": ("lr", "weight_decay", "grad_clip", "checkpoint_every", "num_workers"),
                "in [0, 1)": ("momentum", "betas2", "ema_decay"),
                "in [0, 1]": ("min_lr_ratio", "decay_at", "decay_rate"),
            },
        )
        for name, kind in _CHOICES.items():
            check(self, name, getattr(self, name) in get_args(kind), f"one of {', '.join(get_args(kind))}")
        check(self, "warmup_steps", 0 <= self.warmup_steps <= self.steps, f"in [0, steps = {self.steps}]")
        sgd = self.optimizer == "sgd" and self.momentum > 0
        check(self, "nesterov", not self.nesterov or sgd, "true only with optimizer sgd and momentum > 0")

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
