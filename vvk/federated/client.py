"""The DualAdapt ``ClientApp``: one client's side of a round, behind Flower's Message API.

A train message carries the global model and the task (``vvk.federated.wire``); the handler
rebuilds the model from the arrays, runs ``vvk.methods.federate.rounds.client_work`` (the very
function the in-process loop runs) on the data this node holds, and replies with the update. A
query message asks the node which client it is (its name, as ``make_clients`` names it): the
server learns which node holds which client that way, since Flower's node ids say nothing.

Which data a node holds is the ``ClientData`` callable's business, given the node's ``Context``:

- ``NodeDomains`` (deployment; ``client_app``): the node config names a target domain,
  ``target=SPEC`` (any ``vvk.data.domains.load_domain`` spec: ``usps``, a folder, ``FILE.mat:X``)
  with ``part=K`` when the run splits each target into ``clients-per-target`` parts, or
  ``partition-id=I``, the I-th client of the run's ``targets`` (Flower's usual node key, for
  nodes that share one data folder). Optional: ``data-path`` (``load_domain``'s ``path=``),
  ``size``, ``device``. The run config gives ``targets``, ``clients-per-target``, ``seed``, ``size``.
- ``SavedClients`` (simulation): the client of simulation node ``partition-id``, saved to a file
  by ``simulate`` (a Ray actor receives the ClientApp pickled with every message, so data must not
  travel inside it).

Data is loaded once per process and cached (``_LOADED``): a simulation actor serves every round
from memory. A deployed SuperNode starts one ``flwr-clientapp`` process per message, so there it
is read again each round (folder domains come from vvk's decoded-images cache).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from vvk.errors import VvkError
from vvk.methods.federate.models import build_model
from vvk.methods.federate.rounds import Client, client_work, make_clients

from .wire import decode_task, encode_update

logger = logging.getLogger("vvk.federate")

CLIENT_INFO = "client"  # the query reply's ConfigRecord: name, classes
CLIENT_SIZE = "size"  # the query reply's MetricRecord: num-samples


@dataclass(frozen=True)
class ClientData:
    """What a node holds: its ``Client`` (name, ``X`` (N, 3, S, S), ``y`` (N,)) and the class names."""

    client: Client
    classes: tuple[str, ...]


_LOADED: dict[tuple, ClientData] = {}


def _cached(key: tuple, load: Callable[[], ClientData]) -> ClientData:
    if key not in _LOADED:
        _LOADED[key] = load()
    return _LOADED[key]


def _config_int(config, key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if (
        isinstance(value, bool)
        or value is None
        or not isinstance(value, (int, str))
        or not str(value).isdigit()
    ):
        raise VvkError(f"{key}={value!r}: expected a non-negative integer in the node or run config")
    return int(value)


# --- simulation: clients saved to files ----------------------------------------------------------


def save_client(data: ClientData, path: str | os.PathLike) -> None:
    """Write one client's data to ``path`` (safetensors, atomic) for ``SavedClients``."""
    import json

    from safetensors.torch import save_file

    from vvk.atomic import atomic_path

    c = data.client
    meta = {"name": c.name, "classes": json.dumps(list(data.classes))}
    with atomic_path(path) as tmp:
        save_file({"X": c.X.contiguous(), "y": c.y.contiguous()}, str(tmp), metadata=meta)


def load_client(path: str | os.PathLike) -> ClientData:
    """The ``ClientData`` that ``save_client`` wrote."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        X, y = f.get_tensor("X"), f.get_tensor("y")
    return ClientData(Client(meta["name"], X, y), tuple(json.loads(meta["classes"])))


@dataclass(frozen=True)
class SavedClients:
    """Simulation data: node ``partition-id`` holds the client saved at ``files[partition-id]``."""

    files: tuple[str, ...]

    def __call__(self, context: Context) -> ClientData:
        pid = _config_int(context.node_config, "partition-id")
        if pid >= len(self.files):
            raise VvkError(f"partition-id={pid}: this simulation has {len(self.files)} clients")
        path = self.files[pid]
        return _cached(("file", path), lambda: load_client(path))


# --- deployment: domains named by the node and run configs -------------------------------------


@dataclass(frozen=True)
class NodeDomains:
    """Deployment data, from the node config (``target`` [+ ``part``], or ``partition-id``) and
    the run config (``targets``, ``clients-per-target``, ``seed``, ``size``); the module
    docstring has the keys."""

    def __call__(self, context: Context) -> ClientData:
        node, run = context.node_config, context.run_config
        parts = _config_int(run, "clients-per-target", 1)
        seed = _config_int(run, "seed", 0)
        size = _config_int(node, "size", _config_int(run, "size", 32))
        path = node.get("data-path") or None
        if "target" in node:
            spec, part = str(node["target"]), _config_int(node, "part", 0)
        elif "partition-id" in node:
            targets = str(run.get("targets", "")).split()
            pid = _config_int(node, "partition-id")
            if pid >= len(targets) * parts:
                raise VvkError(f"partition-id={pid}: the run has {len(targets) * parts} clients "
                               f"({len(targets)} targets x {parts})")  # fmt: skip
            spec, part = targets[pid // parts], pid % parts
        else:
            raise VvkError("node config: give target=SPEC (and part=K), or partition-id=I",
                           hint="flower-supernode --node-config 'target=\"usps\"'")  # fmt: skip
        if part >= parts:
            raise VvkError(f"part={part}: the run splits each target into {parts} parts (clients-per-target)")
        key = ("domain", spec, path, size, parts, seed, part)
        return _cached(
            key, lambda: _domain_client(spec, path=path, size=size, parts=parts, seed=seed, part=part)
        )


def _domain_client(spec: str, *, path, size: int, parts: int, seed: int, part: int) -> ClientData:
    from vvk.data.domains import load_domain

    domain = load_domain(spec, size=size, path=path)
    # make_clients itself, so that a node holds exactly what the in-process loop's client holds
    client = make_clients([domain], clients_per_target=parts, seed=seed)[part]
    return ClientData(client, tuple(domain.classes))


# --- the app ---------------------------------------------------------------------------------


def _device(context: Context, device: str | None) -> torch.device:
    name = device or context.node_config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(name))


def handle_train(message: Message, context: Context, data: Callable[[Context], ClientData],
                 device: str | None = None) -> Message:  # fmt: skip
    """One round of this client: the global model from the message -> ``client_work`` -> reply."""
    held = data(context)
    state, task = decode_task(message.content)
    if task.classes != held.classes:
        raise VvkError(f"{held.client.name}: its classes {list(held.classes)[:5]} differ from the "
                       f"server's {list(task.classes)[:5]}")  # fmt: skip
    dev = _device(context, device)
    model = build_model(task.preset.model, task.num_classes, feature_dim=task.preset.feature_dim)
    model.load_state_dict(state)  # strict: every entry of the global model
    model.to(dev).eval()
    update = client_work(task.method, model, held.client, task.preset, seed=task.seed, device=dev)
    return Message(encode_update(update), reply_to=message)


def handle_query(message: Message, context: Context, data: Callable[[Context], ClientData]) -> Message:
    """Which client this node is: its name and classes, and how many samples it holds."""
    held = data(context)
    info = ConfigRecord({"name": held.client.name, "classes": list(held.classes)})
    size = MetricRecord({"num-samples": len(held.client.y)})
    return Message(RecordDict({CLIENT_INFO: info, CLIENT_SIZE: size}), reply_to=message)


def make_client_app(
    data: Callable[[Context], ClientData], *, device: str | None = None, mods: Sequence = ()
) -> ClientApp:
    """A ``ClientApp`` serving train and query messages from the client ``data`` gives.

    ``device``: where clients train (default: the node config's ``device``, else CUDA when there
    is one). ``mods``: Flower mods wrapped around both handlers (``flwr.clientapp.mod``), e.g. to
    inject faults in a test. ``data`` must pickle (a simulation ships the app to Ray actors)."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return handle_train(message, context, data, device)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return handle_query(message, context, data)

    return app


client_app = make_client_app(NodeDomains())
"""The deployed ClientApp (``vvk.federated.client:client_app``): data from the node config."""
