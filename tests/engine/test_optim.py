"""Optimizers, weight-decay groups, LARS, the schedule, EMA, the config."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vvk.engine.config import TrainConfig
from vvk.engine.ema import EMA
from vvk.engine.optim import LARS, build_optimizer, lr_at, param_groups
from vvk.errors import VvkError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.pos = nn.Parameter(torch.zeros(5, 4))

    def no_weight_decay(self):
        return {"pos"}


def test_weight_decay_skips_biases_norms_and_listed_names():
    model = Net()
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.1)
    assert sorted(names[id(p)] for p in decay["params"]) == ["conv.weight", "head.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "conv.bias",
        "head.bias",
        "norm.bias",
        "norm.weight",
        "pos",
    ]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("lars", LARS), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    optimizer = build_optimizer(Net(), TrainConfig(optimizer=name, weight_decay=0.05))
    assert isinstance(optimizer, cls)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]


def test_lars_step_matches_the_formula():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5])
    groups = [
        {"params": [w], "weight_decay": 0.1, "lars": True},
        {"params": [b], "weight_decay": 0.0, "lars": False},
    ]
    LARS(groups, lr=2.0, momentum=0.9, eta=0.001).step()
    g = torch.tensor([[0.6, 0.8]]) + 0.1 * torch.tensor([[3.0, 4.0]])  # + wd * w; ||g|| = 1.5
    trust = 0.001 * 5.0 / 1.5
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 2.0 * trust * g)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 2.0 * 0.5]))  # plain SGD for biases


def test_schedule_warmup_cosine_and_constant():
    config = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, config) == pytest.approx(0.1) and lr_at(9, config) == pytest.approx(1.0)
    assert lr_at(10, config) == pytest.approx(1.0)
    assert lr_at(60, config) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert 0.1 < lr_at(109, config) < 0.1005  # the last step is just above the floor
    values = [lr_at(s, config) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    constant = TrainConfig(steps=10, lr=0.3, schedule="constant")
    assert {lr_at(s, constant) for s in range(10)} == {0.3}


def test_ema_is_an_exponential_average_and_copies_buffers():
    model = nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.5)
    history = []
    for value in (1.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
            model.running_mean.fill_(value)
        ema.update(model)
        history.append(ema.module.weight[0].item())
    assert history == [0.5 * 1.0 + 0.5 * 1.0, 0.5 * 1.0 + 0.5 * 3.0]  # starts from the initial 1.0
    assert ema.module.running_mean.tolist() == [3.0, 3.0]
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_config_validation():
    with pytest.raises(VvkError, match="invalid optimizer = 'adam'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(VvkError, match="invalid warmup_steps"):
        TrainConfig(steps=10, warmup_steps=20)
    with pytest.raises(VvkError, match="unknown field"):
        TrainConfig().replace(learning_rate=1)
    assert TrainConfig().replace(lr=0.5).lr == 0.5
    assert TrainConfig(batch_size=4, grad_accum=3).clips_per_step(world_size=2) == 24
    assert math.isclose(TrainConfig().to_json()["lr"], 0.1)


def test_ema_averages_floating_buffers_when_asked_and_copies_counts():
    model = nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.5, average_buffers=True)
    with torch.no_grad():
        model.running_mean.fill_(4.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert ema.module.running_mean.tolist() == [2.0, 2.0]  # 0.5 * 0 + 0.5 * 4
    assert ema.module.num_batches_tracked.item() == 7


def test_nesterov_reaches_the_sgd_step():
    def two_steps(nesterov: bool) -> torch.Tensor:
        model = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            model.weight.fill_(1.0)
        opt = build_optimizer(model, TrainConfig(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=nesterov))
        for _ in range(2):
            opt.zero_grad()
            model(torch.ones(1, 2)).sum().backward()  # gradient 1 for each weight
            opt.step()
        return model.weight.detach()

    # Momentum buffers 1 then 1.9. Plain: 1 - 0.1 * (1 + 1.9); Nesterov steps along g + 0.9 * buf:
    # 1 - 0.1 * ((1 + 0.9) + (1 + 0.9 * 1.9)).
    torch.testing.assert_close(two_steps(False), torch.full((1, 2), 1 - 0.1 * 2.9))
    torch.testing.assert_close(two_steps(True), torch.full((1, 2), 1 - 0.1 * (1.9 + 2.71)))


@pytest.mark.parametrize("changes", [{"optimizer": "adamw"}, {"optimizer": "lars"}, {"momentum": 0.0}])
def test_nesterov_needs_sgd_with_momentum(changes):
    with pytest.raises(VvkError, match="nesterov"):
        TrainConfig(nesterov=True, **changes)
