"""Optimizers (SGD, LARS, AdamW) with weight decay only where it belongs, and the LR schedule.

The schedule is a pure function of the step (``lr_at``), so a resumed run needs no scheduler
state: the step is the state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from vvk.engine.config import TrainConfig
from vvk.models.checkpoint import unwrap


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; biases, norm scales (every parameter with fewer than 2
    dimensions) and the names the model lists in ``no_weight_decay()`` (timm's convention, e.g.
    position embeddings) without decay, and without LARS adaptation."""
    model = unwrap(model)
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al. 2017, as SimCLR/CVRL use it).

    For each parameter of a group with ``lars=True``: ``g <- g + wd * w``, then
    ``g <- g * eta * ||w|| / ||g||`` (when both norms are positive), then the momentum update.
    Groups with ``lars=False`` (biases, norms) take plain SGD steps.
    """

    def __init__(
        self,
        params: Iterable,
        *,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
    ):
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "lars": True}
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, 1.0)
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.clone(g).detach()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, config: TrainConfig, *, world_size: int = 1) -> torch.optim.Optimizer:
    """The configured optimizer over ``param_groups``; ``world_size`` processes train together.

    With ``replica_grads="sum"`` the L2 weight decay of sgd and lars is multiplied by the world
    size: where that convention comes from, the L2 term is part of every replica's loss, so
    its gradient is summed with the rest (AdamW's decoupled decay is no gradient, and stays).
    """
    coupled = config.replica_grads == "sum" and config.optimizer != "adamw"
    groups = param_groups(model, config.weight_decay * (world_size if coupled else 1))
    if config.optimizer == "sgd":
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.optimizer == "lars":
        return LARS(groups, lr=config.lr, momentum=config.momentum)
    for g in groups:
        g.pop("lars")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, config.betas2))


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up to ``lr`` over
    ``warmup_steps``, then cosine towards ``lr * min_lr_ratio``, reached just after the last
    step (so no step is wasted at the floor), constant, or step-wise: times ``decay_rate`` from
    step ``round(f * steps)`` on, for each ``f`` of ``decay_at``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "step":
        drops = sum(step >= round(f * config.steps) for f in config.decay_at)
        return config.lr * config.decay_rate**drops
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
