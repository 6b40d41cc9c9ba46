"""The DualAdapt ``ServerApp``: the round loop of ``run_rounds``, with clients reached through
Flower's Message API.

Why ``@app.main()`` with ``grid.send_and_receive`` rather than a subclass of Flower 1.42's
``flwr.serverapp.strategy.FedAvg``: its ``start`` owns the loop (a train and an evaluate
exchange per round, no hook to checkpoint or resume), ``configure_train`` samples nodes at
random by node id, and ``aggregate_train`` first checks that all replies agree in their records
(``validate_message_reply_consistency``), raising ``InconsistentMessageReplies`` for the whole
round when one does not: one malformed reply would end the run. Here the round must be
``server_round`` (statistics validated, bad clients dropped one by one, FedAvg in a fixed order,
then the server step), the clients must be those ``choose_clients`` draws from the run seed, by
client name, each with its own seed, and every round must checkpoint. A subclass would override
``start``, ``configure_train`` and ``aggregate_train`` and keep nothing of FedAvg; a main
function states the loop and calls the same functions as the in-process loop.

One run (``serve``):

1. resume from ``out``'s last checkpoint, or pretrain on the source (``pretrained_model``,
   round 0) and checkpoint;
2. find the clients: query every node for the client it holds (its name, classes), waiting up
   to ``node_timeout`` for all of the run's clients; found again at any round where a chosen
   client has no node, or its node left;
3. each round: the chosen clients (``choose_clients``) get the global model and their task, and
   ``grid.send_and_receive`` waits up to ``reply_timeout``; replies are put in the chosen order,
   each decoded and checked (``wire.decode_reply``: an error reply, no reply, or malformed
   content becomes a ``ClientFailure``); ``server_round`` drops those with one log line each and
   updates the model; the server evaluates on its evaluation sets, checkpoints, then calls
   ``on_round``.

Bytes down are the payload of the arrays sent to each client (0 for a chosen client with no
node: nothing was sent), bytes up the payload that came back; client seconds and peak memory are
what the client measured and replied (0 for a client that did not reply).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from vvk.errors import VvkError
from vvk.methods.federate.dualadapt import check_choice
from vvk.methods.federate.models import build_model
from vvk.methods.federate.rounds import (
    METHODS,
    ClientFailure,
    DualAdaptPreset,
    RoundRecord,
    choose_clients,
    client_names,
    client_seed,
    client_trains,
    eval_sets,
    evaluate,
    pretrained_model,
    resolve_preset,
    round_seed,
    server_round,
)

from .checkpoints import RoundCheckpoints
from .client import CLIENT_INFO
from .wire import Task, decode_reply, encode_task, last_line, record_nbytes, state_record

logger = logging.getLogger("vvk.federate")

_POLL_S = 0.5  # between looks for SuperNodes that have not connected yet
_QUERY_MIN_S = 30.0  # the least a node is given to answer which client it holds (it loads its data)


@dataclass
class ServerPlan:
    """Everything the server needs for a run (``plan_run`` makes and checks one).

    Attributes:
        source: the labelled source ``DomainDataset`` (pretraining and the server step).
        clients: the run's client names, in ``make_clients`` order (``choose_clients`` indexes it).
        evals: ``{name: (X (N, 3, S, S), y (N,))}`` the server measures accuracy on each round.
        out: the run folder (checkpoints, resume), or None for none.
        reply_timeout: seconds a round waits for replies (None: for ever).
        node_timeout: seconds the start waits for every client's node to connect and answer.
        expected_nodes: how many nodes the run will ever have, where that is known (a
            simulation's SuperNodes): the start stops waiting once that many have connected and
            each has answered or failed. None (a deployment): nodes may connect at any time.
    """

    method: str
    source: object
    clients: tuple[str, ...]
    evals: dict[str, tuple[Tensor, Tensor]]
    rounds: int
    clients_per_round: int
    seed: int
    preset: DualAdaptPreset
    out: Path | None = None
    device: str = "cpu"
    reply_timeout: float | None = 1800.0
    node_timeout: float = 300.0
    expected_nodes: int | None = None

    def identity(self) -> dict:
        """What a resumed run must share with the run in ``out``."""
        return {"method": self.method, "seed": self.seed, "preset": asdict(self.preset),
                "clients": list(self.clients), "clients_per_round": self.clients_per_round,
                "source": getattr(self.source, "name", ""), "classes": list(self.source.classes)}  # fmt: skip


def plan_run(
    method: str,
    source,
    target_names: Sequence[str],
    *,
    rounds: int,
    clients_per_round: int,
    seed: int,
    preset: str | DualAdaptPreset = "digits",
    clients_per_target: int = 1,
    eval_targets: Sequence = (),
    out: str | Path | None = None,
    device: str = "cpu",
    reply_timeout: float | None = 1800.0,
    node_timeout: float = 300.0,
    expected_nodes: int | None = None,
) -> ServerPlan:
    """A checked ``ServerPlan``: the same checks as ``run_rounds``. ``target_names``: the target
    domains' names (the clients are named after them); ``eval_targets``: ``DomainDataset``s."""
    check_choice("method", method, METHODS)
    if rounds < 0:
        raise VvkError(f"rounds={rounds}: must be >= 0", params=("rounds",))
    if clients_per_target < 1:
        raise VvkError(
            f"clients_per_target={clients_per_target}: must be >= 1", params=("clients_per_target",)
        )
    clients = tuple(client_names(list(target_names), clients_per_target=clients_per_target))
    if len(set(clients)) != len(clients):
        raise VvkError(f"targets: two share a name ({', '.join(target_names)})", params=("targets",))
    run = rounds if method != "source-only" else 0
    choose_clients(len(clients), clients_per_round, 0, seed)  # checks clients_per_round
    return ServerPlan(
        method=method,
        source=source,
        clients=clients,
        evals=eval_sets(source, eval_targets),
        rounds=run,
        clients_per_round=clients_per_round,
        seed=seed,
        preset=resolve_preset(preset),
        out=Path(out) if out is not None else None,
        device=str(device),
        reply_timeout=reply_timeout,
        node_timeout=node_timeout,
        expected_nodes=expected_nodes,
    )


class _Nodes:
    """Which node holds which client, learnt by asking (a query message)."""

    def __init__(self, grid: Grid, plan: ServerPlan):
        self.grid, self.plan = grid, plan
        self.by_name: dict[str, int] = {}
        self.asked: set[int] = set()

    def hold(self, names: Sequence[str]) -> bool:
        """Whether each of ``names`` has a node, still connected."""
        live = set(self.grid.get_node_ids())
        return all(self.by_name.get(n) in live for n in names)

    def find(self, wait: float) -> bool:
        """Ask every node not asked yet, until each client has a node, ``wait`` seconds passed, or
        no node can come any more (``settled``). A node that does not answer is asked again at
        the next ``find``, not within this one. Returns whether it stopped for the last reason."""
        deadline = time.monotonic() + wait
        unanswered: set[int] = set()
        while True:
            live = set(self.grid.get_node_ids())
            self.by_name = {n: node for n, node in self.by_name.items() if node in live}  # nodes that left
            new = sorted(live - self.asked - unanswered)
            unanswered |= self._ask(new, timeout=max(deadline - time.monotonic(), _QUERY_MIN_S))
            self.asked |= set(new) - unanswered
            if set(self.plan.clients) <= set(self.by_name) or time.monotonic() >= deadline:
                return False
            if self.settled(live, unanswered):
                return True
            time.sleep(_POLL_S)

    def settled(self, live: set[int], unanswered: set[int]) -> bool:
        """Whether every node the run will have (``plan.expected_nodes``, where known) is
        connected and has answered or failed: waiting longer finds nothing."""
        expected = self.plan.expected_nodes
        return expected is not None and len(live) >= expected and live <= self.asked | unanswered

    def _ask(self, nodes: list[int], timeout: float) -> set[int]:
        """Query ``nodes`` for their clients; the nodes that did not answer."""
        if not nodes:
            return set()
        messages = [
            Message(RecordDict(), dst_node_id=n, message_type="query", group_id="clients") for n in nodes
        ]
        replies = {r.metadata.src_node_id: r for r in self.grid.send_and_receive(messages, timeout=timeout)}
        classes, unanswered = list(self.plan.source.classes), set()
        for node in nodes:
            reply = replies.get(node)
            if reply is None or reply.has_error():
                why = (
                    "no reply"
                    if reply is None
                    else f"error {reply.error.code}: {last_line(reply.error.reason)}"
                )
                logger.warning(f"node {node}: cannot tell which client it holds ({why}); asked again later")
                unanswered.add(node)
                continue
            info = reply.content.get(CLIENT_INFO)
            name = info.get("name") if isinstance(info, ConfigRecord) else None
            if name not in self.plan.clients:
                logger.warning(f"node {node}: holds client {name!r}, not one of this run's; ignored")
            elif list(info.get("classes", [])) != classes:
                logger.warning(f"node {node}: client {name} has other classes than the source; ignored")
            elif name in self.by_name:
                logger.warning(
                    f"node {node}: client {name} is already held by node {self.by_name[name]}; ignored"
                )
            else:
                self.by_name[name] = node
        return unanswered


def serve(
    grid: Grid, plan: ServerPlan, on_round: Callable[[RoundRecord], None] | None = None
) -> list[RoundRecord]:
    """Run ``plan`` through ``grid``: the whole run, or its remainder when ``plan.out`` holds a
    checkpoint of it. Returns every round's record from round 0; ``on_round`` sees each new one.
    (``grid`` is not touched when no round is left to run: ``source-only``, or a finished run.)"""
    device = torch.device(plan.device)
    schedule = choose_clients(len(plan.clients), plan.clients_per_round, plan.rounds, plan.seed)
    store = RoundCheckpoints(plan.out, plan.identity()) if plan.out is not None else None
    if store is not None and store.check():
        model = build_model(plan.preset.model, len(plan.source.classes), feature_dim=plan.preset.feature_dim)
        model = model.to(device).eval()
        records = store.load(model, device)
    else:
        model, first = pretrained_model(plan.source, plan.preset, seed=plan.seed, device=device)
        first.accuracy = evaluate(model, plan.evals, device)
        records = [first]
        _finish_round(store, model, records, on_round)
    if len(records) > plan.rounds:
        return records
    nodes = _Nodes(grid, plan)
    settled = nodes.find(plan.node_timeout)
    missing = [n for n in plan.clients if n not in nodes.by_name]
    if missing:
        when = "(every node has answered or failed)" if settled else f"after {plan.node_timeout:g} s"
        logger.warning(f"no node holds clients {', '.join(missing)} {when}: "
                       "they are dropped from the rounds that choose them")  # fmt: skip
    xy = plan.source.tensors()
    for r in range(len(records), plan.rounds + 1):
        names = [plan.clients[i] for i in schedule[r - 1]]
        if not nodes.hold(names):
            nodes.find(0.0)
        record = _round(grid, plan, model, xy, names, nodes.by_name, r, device)
        record.accuracy = evaluate(model, plan.evals, device)
        records.append(record)
        _finish_round(store, model, records, on_round)
    return records


def _finish_round(store, model, records, on_round) -> None:
    if store is not None:
        store.start()
        store.save(model, records)
    if on_round is not None:
        on_round(records[-1])


def _round(grid: Grid, plan: ServerPlan, model, xy, names: list[str], by_name: dict[str, int], r: int,
           device) -> RoundRecord:  # fmt: skip
    """Round ``r`` with the chosen clients ``names``: send, wait, decode, ``server_round``."""
    seed = round_seed(plan.seed, r)
    global_state = model.state_dict()
    arrays = state_record(global_state)
    down = record_nbytes(arrays)
    classes = tuple(plan.source.classes)
    messages, sent = [], {}
    for pos, name in enumerate(names):
        node = by_name.get(name)
        if node is None:
            continue
        task = Task(plan.method, r, client_seed(seed, pos), plan.preset, len(classes), classes)
        messages.append(
            Message(encode_task(arrays, task), dst_node_id=node, message_type="train", group_id=str(r))
        )
        sent[name] = node
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(messages, timeout=plan.reply_timeout)}
    part = client_trains(plan.method, plan.preset)
    prefix = "" if part == "model" else f"{part}."
    expected = {k: v for k, v in global_state.items() if part is not None and k.startswith(prefix)}
    stats = plan.method in ("dualadapt", "server-only")
    updates, bytes_up, bytes_down = [], [], []
    for name in names:
        if name not in sent:
            updates.append(ClientFailure("no node holds it (it never connected, or left)"))
            bytes_up.append(0)
            bytes_down.append(0)
            continue
        update, nbytes = decode_reply(
            replies.get(sent[name]), expected, stats=stats, timeout=plan.reply_timeout
        )
        updates.append(update)
        bytes_up.append(nbytes)
        bytes_down.append(down)
    return server_round(plan.method, model, xy, names, updates, plan.preset, round=r, seed=seed,
                        bytes_down=bytes_down, bytes_up=bytes_up, device=device)  # fmt: skip


def make_server_app(plan: ServerPlan, *, on_round: Callable[[RoundRecord], None] | None = None,
                    records: list[RoundRecord] | None = None) -> ServerApp:  # fmt: skip
    """A ``ServerApp`` that serves ``plan`` and appends the run's records to ``records``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result = serve(grid, plan, on_round)
        if records is not None:
            records.extend(result)

    return app


# --- deployment: the plan from the run config ------------------------------------------------

RUN_CONFIG_DEFAULTS = {
    "method": "dualadapt",
    "source": "mnist",
    "targets": "usps",
    "eval-targets": "",
    "size": 32,
    "rounds": 10,
    "clients-per-round": 1,
    "clients-per-target": 1,
    "seed": 0,
    "preset": "digits",
    "out": "",
    "device": "cpu",
    "reply-timeout": 1800.0,
    "node-timeout": 300.0,
}
"""The run config keys the deployed ServerApp reads (and ``NodeDomains`` shares), with defaults."""


def plan_from_run_config(config) -> ServerPlan:
    """The ``ServerPlan`` of a deployed run: domains are ``load_domain`` specs, space-separated.
    The server reads the source, and the targets for their names and as the default evaluation
    sets (folder domains are decoded only when evaluated)."""
    from vvk.data.domains import load_domain

    c = RUN_CONFIG_DEFAULTS | dict(config)
    size = int(c["size"])
    targets = [load_domain(s, size=size) for s in str(c["targets"]).split()]
    evals = [load_domain(s, size=size) for s in str(c["eval-targets"]).split()] or targets
    return plan_run(
        str(c["method"]),
        load_domain(str(c["source"]), size=size),
        [d.name for d in targets],
        rounds=int(c["rounds"]),
        clients_per_round=int(c["clients-per-round"]),
        seed=int(c["seed"]),
        preset=str(c["preset"]),
        clients_per_target=int(c["clients-per-target"]),
        eval_targets=evals,
        out=str(c["out"]) or None,
        device=str(c["device"]),
        reply_timeout=float(c["reply-timeout"]) or None,
        node_timeout=float(c["node-timeout"]),
    )


server_app = ServerApp()
"""The deployed ServerApp (``vvk.federated.server:server_app``): the plan from the run config."""


@server_app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    _log_to_the_run()
    serve(grid, plan_from_run_config(context.run_config), on_round=_log_round)


def _log_to_the_run() -> None:
    """vvk's log lines (drops, resuming, each round) on stderr, which the SuperLink streams to
    ``flwr run --stream`` and ``flwr log``: a ServerApp process configures no logging of its own."""
    vvk_logger = logging.getLogger("vvk")
    if not vvk_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        vvk_logger.addHandler(handler)
        vvk_logger.setLevel(logging.INFO)


def _log_round(record: RoundRecord) -> None:
    dropped = f", dropped {', '.join(record.dropped)}" if record.dropped else ""
    logger.info(f"round {record.round}: mean accuracy {record.mean_accuracy:.4f} "
                f"({len(record.clients)} clients{dropped})")  # fmt: skip
