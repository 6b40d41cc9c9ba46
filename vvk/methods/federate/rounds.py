"""DualAdapt's rounds, in one process: the presets, the clients, one round of a method
(``federated_round``) and the whole run from source pretraining (``run_rounds``).

A round is split where a network would split it: ``client_work`` is what one client does, and
``server_round`` what the server does with the updates that came back (validate, drop, FedAvg,
server step). ``federated_round`` calls both in this process; the Flower apps of
``vvk.federated`` call the same two on either side of the wire, with the same seeds
(``round_seed``, ``client_seed``) and the same choice of clients (``choose_clients``).

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

import copy
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

    clients, names = [], iter(client_names([d.name for d in targets], clients_per_target=clients_per_target))
    for domain in targets:
        parts = [domain] if clients_per_target == 1 else partition(domain, clients_per_target, seed=seed)
        clients += [Client(next(names), *part.tensors()) for part in parts]
    return clients


def client_names(domains: Sequence[str], *, clients_per_target: int = 1) -> list[str]:
    """The names ``make_clients`` gives, in its order, from the target domains' names alone."""
    if clients_per_target == 1:
        return list(domains)
    return [f"{d}-{k}" for d in domains for k in range(clients_per_target)]


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


def client_trains(method: str, preset: DualAdaptPreset) -> str | None:
    """The part of the model whose state entries a client of ``method`` sends back (``model``, or a
    child module such as ``features``), or None when it sends statistics only: what the server
    expects of a reply."""
    check_choice("method", method, METHODS)
    if method in ("dualadapt", "fedavg-st"):
        return preset.client_trains
    return "model" if method == "oracle" else None


@dataclass
class ClientFailure:
    """A chosen client whose update the server cannot use this round: no reply (it died, or timed
    out), an error reply, or content that does not decode. Its ``nbytes``: what arrived of it."""

    reason: str
    nbytes: int = 0


def round_seed(seed: int, round: int) -> int:
    """The seed of round ``round`` of a run seeded ``seed``: all of a round's randomness comes from it."""
    return derive_seed(seed, round)


def client_seed(round_seed: int, position: int) -> int:
    """The seed of the client at ``position`` among the round's chosen clients (sorted)."""
    return derive_seed(round_seed, position)


def choose_clients(num_clients: int, clients_per_round: int, rounds: int, seed: int) -> list[np.ndarray]:
    """The clients of rounds 1..``rounds`` (sorted indices into the client list), drawn without
    replacement within a round from one generator seeded by ``seed``: round r's choice depends on
    ``seed`` and r only, so a resumed run (or the Flower server) draws what run_rounds draws."""
    if not 1 <= clients_per_round <= num_clients:
        raise VvkError(f"clients_per_round={clients_per_round}: must be 1..{num_clients} (the clients)",
                       params=("clients_per_round",))  # fmt: skip
    rng = np.random.default_rng(derive_seed(seed, "clients"))
    return [np.sort(rng.choice(num_clients, clients_per_round, replace=False)) for _ in range(rounds)]


def federated_round(
    method: str, model: nn.Module, source: tuple[Tensor, Tensor], clients: Sequence[Client],
    preset: DualAdaptPreset, *, round: int, seed: int, device=None,
) -> RoundRecord:  # fmt: skip
    """One round of ``method`` on ``model`` (updated in place), without evaluation: clients work
    from the global model in this process, then ``server_round``. ``seed``: the round's seed."""
    down = state_nbytes(model.state_dict())  # clients keep nothing between rounds: all of it
    updates = [client_work(method, model, c, preset, seed=client_seed(seed, i), device=device)
               for i, c in enumerate(clients)]  # fmt: skip
    return server_round(method, model, source, [c.name for c in clients], updates, preset, round=round,
                        seed=seed, bytes_down=[down] * len(clients), device=device)  # fmt: skip


def server_round(
    method: str, model: nn.Module, source: tuple[Tensor, Tensor], names: Sequence[str],
    updates: Sequence[ClientUpdate | ClientFailure], preset: DualAdaptPreset, *, round: int, seed: int,
    bytes_down: Sequence[int], bytes_up: Sequence[int] | None = None, device=None,
) -> RoundRecord:  # fmt: skip
    """The server's side of a round, given what the chosen clients ``names`` sent: ``model`` is
    updated in place. The in-process loop and the Flower ServerApp both call this, so a round is
    the same code whichever carried the updates.

    A ``ClientFailure``, or statistics that fail ``FeatureStats.validate``, drop their client for
    the round (one log line each); FedAvg merges the rest, then the server step where the method
    has one (on the source alone when every client was dropped). ``bytes_up``: the payload that
    arrived per client (default: each update's ``nbytes``); ``seed``: the round's seed.
    """
    start = time.perf_counter()
    num_classes, dim = model.classifier.out_features, model.classifier.in_features
    kept, dropped = [], []
    for name, u in zip(names, updates, strict=True):
        reason = u.reason if isinstance(u, ClientFailure) else None
        if reason is None and u.stats is not None:
            try:
                u = replace(u, stats=u.stats.validate(num_classes, dim))
            except BadFeatureStats as e:
                reason = str(e)
        if reason is not None:
            logger.warning(f"round {round}: client {name} dropped for the round: {reason}")
            dropped.append(name)
        else:
            kept.append(u)
    if kept and method in ("dualadapt", "fedavg-st", "oracle"):
        merged = model.state_dict() | fedavg([(u.state, u.num_samples) for u in kept])
        model.load_state_dict(merged)
    if method in ("dualadapt", "server-only"):
        p = preset
        server_step(model, *source, [u.stats for u in kept], steps=p.server_steps, batch_size=p.batch_size,
                    lr=p.server_lr, mixup_alpha=p.mixup_alpha, seed=derive_seed(seed, "server"),
                    trains=p.server_trains, device=device)  # fmt: skip
    failed = [isinstance(u, ClientFailure) for u in updates]
    return RoundRecord(
        round=round,
        clients=list(names),
        bytes_up=list(bytes_up) if bytes_up is not None else [u.nbytes for u in updates],
        bytes_down=list(bytes_down),
        client_seconds=[0.0 if f else u.seconds for u, f in zip(updates, failed, strict=True)],
        client_peak_bytes=[0 if f else u.peak_memory_bytes for u, f in zip(updates, failed, strict=True)],
        server_seconds=time.perf_counter() - start,
        dropped=dropped,
    )


def pretrained_model(
    source, preset: DualAdaptPreset, *, seed: int, device="cpu"
) -> tuple[nn.Module, RoundRecord]:
    """The model every method starts from for ``seed``: built under ``seed``, trained on the
    ``source`` domain (a ``DomainDataset``) by ``preset.pretrain_steps`` server steps. Returns it
    (on ``device``, in eval mode) and round 0's record, without accuracy."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(preset.model, len(source.classes), feature_dim=preset.feature_dim).to(device)
    p = preset
    pretrain = server_step(model, *source.tensors(), [], steps=p.pretrain_steps, batch_size=p.batch_size,
                           lr=p.server_lr, mixup_alpha=p.mixup_alpha, seed=derive_seed(seed, "pre"),
                           trains="model", device=device)  # fmt: skip
    return model, RoundRecord(0, server_seconds=pretrain["seconds"])


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
    pretrained: tuple[nn.Module, RoundRecord] | None = None,
) -> list[RoundRecord]:
    """Pretrain on ``source`` and run ``rounds`` rounds of ``method`` in this process.

    ``source`` and ``targets`` are ``DomainDataset``s with the same classes; accuracy is measured
    per ``eval_targets`` domain (default: the targets themselves, the transductive protocol of
    unsupervised adaptation). Every method starts from the same pretrained model for a ``seed``;
    ``source-only`` stops there (one record). ``on_round`` sees each record as it is made.
    ``pretrained``: what ``pretrained_model`` returned for this ``source``, ``preset`` and
    ``seed`` (copied, not changed), so that several methods share one pretraining.
    """
    check_choice("method", method, METHODS)
    preset = resolve_preset(preset)
    if rounds < 0:
        raise VvkError(f"rounds={rounds}: must be >= 0", params=("rounds",))
    device = torch.device(device)
    clients = make_clients(targets, clients_per_target=clients_per_target, seed=seed)
    run = rounds if method != "source-only" else 0
    schedule = choose_clients(len(clients), clients_per_round, run, seed)
    evals = eval_sets(source, eval_targets if eval_targets is not None else targets)
    if pretrained is None:
        model, first = pretrained_model(source, preset, seed=seed, device=device)
    else:
        model, first = copy.deepcopy(pretrained[0]).to(device), replace(pretrained[1])
    first.accuracy = evaluate(model, evals, device)
    records = [first]
    if on_round is not None:
        on_round(first)
    xy = source.tensors()
    for r, chosen in enumerate(schedule, 1):
        record = federated_round(method, model, xy, [clients[i] for i in chosen], preset, round=r,
                                 seed=round_seed(seed, r), device=device)  # fmt: skip
        record.accuracy = evaluate(model, evals, device)
        records.append(record)
        if on_round is not None:
            on_round(record)
    return records


def resolve_preset(preset: str | DualAdaptPreset) -> DualAdaptPreset:
    """``preset`` itself, or the one of ``PRESETS`` it names."""
    if isinstance(preset, DualAdaptPreset):
        return preset
    if preset not in PRESETS:
        raise VvkError(f"preset={preset}: must be one of {', '.join(PRESETS)}", params=("preset",))
    return PRESETS[preset]


def eval_sets(source, domains: Sequence) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (X, y)}`` of the evaluation ``domains``, checked against ``source``'s classes."""
    sets = {}
    for d in domains:
        if list(d.classes) != list(source.classes):
            raise VvkError(f"{d.name}: its classes differ from the source's ({source.name})")
        if d.name in sets:
            raise VvkError(f"{d.name}: two evaluation domains share this name")
        sets[d.name] = d.tensors()
    return sets


def evaluate(model: nn.Module, evals: Mapping[str, tuple[Tensor, Tensor]], device) -> dict[str, float]:
    """Accuracy of ``model`` per evaluation set."""
    return {name: accuracy(model, X, y, device=device) for name, (X, y) in evals.items()}


def derive_seed(seed: int, *keys: int | str) -> int:
    """A seed of its own for each (seed, round, client...), stable across runs."""
    words = [seed, *(k if isinstance(k, int) else int.from_bytes(k.encode()[:8], "little") for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])
