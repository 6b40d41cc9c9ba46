"""Fixtures of the Flower layer's tests: tiny synthetic domains, an in-process Grid, and a spy on
the models the in-process loop and the server evaluate (fed_helpers holds the classes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vvk.data.domains import DomainDataset


def square_domain(name: str, n: int, *, shift: float, noise: float, seed: int) -> DomainDataset:
    """4 classes, each a bright 8x8 quadrant of a 16x16 image (N, 1, 16, 16), washed towards grey
    by ``shift`` and noised: the tiny preset learns some of it in a few steps."""
    labels = np.arange(n) % 4
    px = torch.zeros(n, 1, 16, 16)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        px[i, 0, r * 8 : (r + 1) * 8, q * 8 : (q + 1) * 8] = 1.0
    px = (
        px * (1 - shift)
        + shift * 0.5
        + noise * torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    )
    return DomainDataset(name=name, classes=list("abcd"), labels=labels, size=16, pixels=px.clamp(0, 1))


@pytest.fixture(scope="session")
def domains() -> tuple[DomainDataset, list[DomainDataset]]:
    """A source of 64 images and two targets of 40, shifted differently."""
    source = square_domain("src", 64, shift=0.0, noise=0.3, seed=0)
    targets = [square_domain("t1", 40, shift=0.3, noise=0.3, seed=1),
               square_domain("t2", 40, shift=0.5, noise=0.5, seed=2)]  # fmt: skip
    return source, targets


@pytest.fixture
def local_grid(monkeypatch):
    """``local_grid(app, num_nodes, silent=..., tamper=...)``: a ``fed_helpers.LocalGrid`` (with
    the task identity Flower's ``Message`` needs set for the test)."""
    from fed_helpers import LocalGrid
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    return LocalGrid


@pytest.fixture
def models(monkeypatch):
    """Every model the in-process loop and the server evaluate, in order, as state-dict copies
    (the server's too when it runs in a simulation's thread: it is this process)."""
    import vvk.federated.server as server_module
    from vvk.methods.federate import rounds

    seen = {"run_rounds": [], "serve": []}

    def spy(key, real):
        def evaluate(model, evals, device):
            seen[key].append({k: v.clone() for k, v in model.state_dict().items()})
            return real(model, evals, device)

        return evaluate

    monkeypatch.setattr(rounds, "evaluate", spy("run_rounds", rounds.evaluate))
    monkeypatch.setattr(server_module, "evaluate", spy("serve", server_module.evaluate))
    return seen
