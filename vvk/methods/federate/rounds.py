"""DualAdapt's rounds, in one process: the presets, the clients, one round of a method
(``federated_round``) and the whole run from source pretraining (``run_rounds``).

A round, for ``method``:

- ``dualadapt``: clients adapt and fit statistics -> FedAvg of the adapted parts -> server step;
- ``fedavg-st``: clients self-train -> FedAvg (no statistics, no server step);
- ``server-only``: clients fit statistics of the global model's features -> server step;
- ``oracle``: clients train on their true labels -> FedAvg (an upper bound, federated);
- ``source-only``: no round; the model pretrained on the source, which every method starts from.

What a round records (``RoundRecord``): accuracy per target after it; per client, bytes down
(the whole state dict: clients keep nothing between rounds) and up (the state entries it trained
plus its statistics' arrays; payload only, no framing), wall seconds, and the peak of the tensor
memory its work allocated (``vvk.methods.federate.memory.measure``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from vvk.errors import VvkError
from vvk.methods.federate.dualadapt import (
    ClientUpdate,
    check_choice,
    client_adapt,
    client_stats,
    client_supervised,
    server_step,
)
from vvk.methods.federate.models import accuracy, build_model, fedavg, state_nbytes
from vvk.methods.federate.stats import BadFeatureStats

logger = logging.getLogger("vvk.federate")

METHODS = ("dualadapt", "source-only", "fedavg-st", "server-only", "oracle")


@dataclass(frozen=True)
class DualAdaptPreset:
    """The settings of a run; ``run_rounds`` is where they become arguments. ``digits`` is sized
    for MNIST -> USPS / MNIST-M at 32x32 in minutes on a CPU; the paper's settings are unknown
    here, so none of these is the paper's. ``tiny`` runs a round in about a second, for tests.
    ``client_trains`` applies to ``dualadapt`` and ``fedavg-st``; the oracle trains the model."""

    model: str = "digit-cnn"
    feature_dim: int = 128
    pretrain_steps: int = 400
    client_method: str = "both"
    client_steps: int = 50
    client_lr: float = 0.01
    client_trains: str = "features"
    confidence: float = 0.9
    server_steps: int = 100
    server_lr: float = 0.01
    server_trains: str = "classifier"
    mixup_alpha: float = 1.0
    components: int = 1
    diagonal: bool = True
    batch_size: int = 64


PRESETS = {
    "digits": DualAdaptPreset(),
    "tiny": DualAdaptPreset(feature_dim=16, pretrain_steps=4, client_steps=2, server_steps=2, batch_size=16),
}


@dataclass
class Client:
    """One client's data: ``X`` (N, 3, S, S), and ``y`` (N,) which only the oracle reads."""

    name: str
    X: Tensor
    y: Tensor


@dataclass
class RoundRecord:
    """One round: per-target accuracy after it, and per-client traffic and compute, in the order
    of ``clients``. Round 0 is the source-pretrained model (its server_seconds the pretraining)."""

    round: int
    accuracy: dict[str, float] = field(default_factory=dict)
    clients: list[str] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    client_seconds: list[float] = field(default_factory=list)
    client_peak_bytes: list[int] = field(default_factory=list)
    server_seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)

    @property
    def mean_accuracy(self) -> float:
        return float(np.mean(list(self.accuracy.values()))) if self.accuracy else float("nan")

    def to_dict(self) -> dict:
        return asdict(self) | {"mean_accuracy": self.mean_accuracy}


def make_clients(targets: Sequence, *, clients_per_target: int = 1, seed: int = 0) -> list[Client]:
    """Each target domain (a ``DomainDataset``) as ``clients_per_target`` clients (iid parts)."""
    from vvk.data.domains import partition

    clients = []
    for domain in targets:
        parts = [domain] if clients_per_target == 1 else partition(domain, clients_per_target, seed=seed)
        for k, part in enumerate(parts):
            name = domain.name if clients_per_target == 1 else f"{domain.name}-{k}"
            clients.append(Client(name, *part.tensors()))
    return clients


def client_work(method: str, model: nn.Module, client: Client, preset: DualAdaptPreset, *, seed: int,
                device=None) -> ClientUpdate:  # fmt: skip
    """What one client of ``method`` does in a round, from the global ``model`` (left unchanged)."""
    p = preset
    train = {"steps": p.client_steps, "batch_size": p.batch_size, "lr": p.client_lr}
    train |= {"seed": seed, "device": device}
    gmm = {"components": p.components, "diagonal": p.diagonal}
    if method == "dualadapt":
        return client_adapt(model, client.X, method=p.client_method, confidence=p.confidence,
                            trains=p.client_trains, **train, **gmm)  # fmt: skip
    if method == "fedavg-st":
        return client_adapt(model, client.X, method="self-training", confidence=p.confidence,
                            trains=p.client_trains, stats=False, **train)  # fmt: skip
    if method == "server-only":
        return client_stats(model, client.X, seed=seed, device=device, **gmm)
    if method == "oracle":
        return client_supervised(model, client.X, client.y, trains="model", **train)
    raise VvkError(f"method={method}: no client work (one of {', '.join(METHODS[2:])} or dualadapt)",
                   params=("method",))  # fmt: skip


def federated_round(
    method: str, model: nn.Module, source: tuple[Tensor, Tensor], clients: Sequence[Client],
    preset: DualAdaptPreset, *, round: int, seed: int, device=None,
) -> RoundRecord:  # fmt: skip
    """One round of ``method`` on ``model`` (updated in place), without evaluation: clients work
    from the global model, statistics that fail ``FeatureStats.validate`` drop their client for
    the round (logged), FedAvg merges the rest, then the server step where the method has one."""
    down = state_nbytes(model.state_dict())  # clients keep nothing between rounds: all of it
    updates = [client_work(method, model, c, preset, seed=_derive(seed, i), device=device)
               for i, c in enumerate(clients)]  # fmt: skip
    start = time.perf_counter()
    num_classes, dim = model.classifier.out_features, model.classifier.in_features
    kept, dropped = [], []
    for c, u in zip(clients, updates, strict=True):
        try:
            kept.append(u if u.stats is None else replace(u, stats=u.stats.validate(num_classes, dim)))
        except BadFeatureStats as e:
            logger.warning(f"round {round}: client {c.name} dropped for the round: {e}")
            dropped.append(c.name)
    if kept and method in ("dualadapt", "fedavg-st", "oracle"):
        merged = model.state_dict() | fedavg([(u.state, u.num_samples) for u in kept])
        model.load_state_dict(merged)
    if method in ("dualadapt", "server-only"):
        p = preset
        server_step(model, *source, [u.stats for u in kept], steps=p.server_steps, batch_size=p.batch_size,
                    lr=p.server_lr, mixup_alpha=p.mixup_alpha, seed=_derive(seed, "server"),
                    trains=p.server_trains, device=device)  # fmt: skip
    return RoundRecord(
        round=round,
        clients=[c.name for c in clients],
        bytes_up=[u.nbytes for u in updates],
        bytes_down=[down] * len(clients),
        client_seconds=[u.seconds for u in updates],
        client_peak_bytes=[u.peak_memory_bytes for u in updates],
        server_seconds=time.perf_counter() - start,
        dropped=dropped,
    )


def run_rounds(
    method: str,
    source,
    targets: Sequence,
    *,
    rounds: int,
    clients_per_round: int,
    seed: int,
    preset: str | DualAdaptPreset = "digits",
    clients_per_target: int = 1,
    eval_targets: Sequence | None = None,
    device="cpu",
    on_round: Callable[[RoundRecord], None] | None = None,
) -> list[RoundRecord]:
    """Pretrain on ``source`` and run ``rounds`` rounds of ``method`` in this process.

    ``source`` and ``targets`` are ``DomainDataset``s with the same classes; accuracy is measured
    per ``eval_targets`` domain (default: the targets themselves, the transductive protocol of
    unsupervised adaptation). Every method starts from the same pretrained model for a ``seed``;
    ``source-only`` stops there (one record). ``on_round`` sees each record as it is made.
    """
    check_choice("method", method, METHODS)
    preset = _preset(preset)
    if rounds < 0:
        raise VvkError(f"rounds={rounds}: must be >= 0", params=("rounds",))
    device = torch.device(device)
    clients = make_clients(targets, clients_per_target=clients_per_target, seed=seed)
    if not 1 <= clients_per_round <= len(clients):
        raise VvkError(f"clients_per_round={clients_per_round}: must be 1..{len(clients)} (the clients)",
                       params=("clients_per_round",))  # fmt: skip
    evals = _eval_sets(source, eval_targets if eval_targets is not None else targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(preset.model, len(source.classes), feature_dim=preset.feature_dim).to(device)
    xy = source.tensors()
    pretrain = server_step(model, *xy, [], steps=preset.pretrain_steps, batch_size=preset.batch_size,
                           lr=preset.server_lr, mixup_alpha=preset.mixup_alpha, seed=_derive(seed, "pre"),
                           trains="model", device=device)  # fmt: skip
    records = [RoundRecord(0, _evaluate(model, evals, device), server_seconds=pretrain["seconds"])]
    if on_round is not None:
        on_round(records[0])
    rng = np.random.default_rng(_derive(seed, "clients"))
    for r in range(1, (rounds if method != "source-only" else 0) + 1):
        chosen = np.sort(rng.choice(len(clients), clients_per_round, replace=False))
        record = federated_round(method, model, xy, [clients[i] for i in chosen], preset, round=r,
                                 seed=_derive(seed, r), device=device)  # fmt: skip
        record.accuracy = _evaluate(model, evals, device)
        records.append(record)
        if on_round is not None:
            on_round(record)
    return records


def _preset(preset: str | DualAdaptPreset) -> DualAdaptPreset:
    if isinstance(preset, DualAdaptPreset):
        return preset
    if preset not in PRESETS:
        raise VvkError(f"preset={preset}: must be one of {', '.join(PRESETS)}", params=("preset",))
    return PRESETS[preset]


def _eval_sets(source, domains: Sequence) -> dict[str, tuple[Tensor, Tensor]]:
    sets = {}
    for d in domains:
        if list(d.classes) != list(source.classes):
            raise VvkError(f"{d.name}: its classes differ from the source's ({source.name})")
        if d.name in sets:
            raise VvkError(f"{d.name}: two evaluation domains share this name")
        sets[d.name] = d.tensors()
    return sets


def _evaluate(model: nn.Module, evals: Mapping[str, tuple[Tensor, Tensor]], device) -> dict[str, float]:
    return {name: accuracy(model, X, y, device=device) for name, (X, y) in evals.items()}


def _derive(seed: int, *keys: int | str) -> int:
    """A seed of its own for each (seed, round, client...), stable across runs."""
    words = [seed, *(k if isinstance(k, int) else int.from_bytes(k.encode()[:8], "little") for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])
