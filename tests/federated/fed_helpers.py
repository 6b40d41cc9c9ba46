"""Helpers of the Flower layer's tests: a ClientApp over saved clients, a Grid that delivers
messages to a ClientApp in this process (the server's logic without Ray's start-up), a
fault-injecting Flower mod, and comparisons of runs. A module of its own (not the conftest) so
that Ray workers can import the mod, which reaches them pickled by reference."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from vvk.federated.client import ClientData, SavedClients, make_client_app, save_client
from vvk.methods.federate.rounds import make_clients

NAMES = ["t1-0", "t1-1", "t2-0", "t2-1"]  # the clients of the two targets, two parts each


def saved_app(tmp_path, domains, *, mods=(), skip=None, seed=0):
    """The ClientApp of the targets' 4 clients, saved to files (but client ``skip``)."""
    source, targets = domains
    clients = [c for i, c in enumerate(make_clients(targets, clients_per_target=2, seed=seed)) if i != skip]
    files = []
    for i, c in enumerate(clients):
        files.append(str(tmp_path / f"client-{i}.safetensors"))
        save_client(ClientData(c, tuple(source.classes)), files[-1])
    return make_client_app(SavedClients(tuple(files)), device="cpu", mods=mods), len(clients)


class LocalGrid(Grid):
    """Node ``100 + i`` is simulation partition ``i``; ``send_and_receive`` calls ``app`` on each
    message in turn, as Flower's runtimes do: an exception becomes an error reply. ``silent``
    partitions never reply to a train message (a client that died); ``tamper(partition, reply)``
    returns the reply to deliver instead."""

    def __init__(self, app, num_nodes: int, *, silent=(), tamper: Callable | None = None):
        self.app, self.silent, self.tamper = app, set(silent), tamper
        self.partition = {100 + i: i for i in range(num_nodes)}
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )  # fmt: skip
            for node, i in self.partition.items()
        }
        self.timeouts: list[float | None] = []
        self.delivered: list[tuple[int, str]] = []  # (node, message type) of each message delivered

    def move(self, partition: int, node: int) -> None:
        """Partition ``partition``'s SuperNode leaves; a new one, ``node``, holds the same data."""
        old = next(n for n, p in self.partition.items() if p == partition)
        del self.partition[old]
        self.partition[node] = partition
        self.contexts[node] = Context(run_id=1, node_id=node, node_config=self.contexts.pop(old).node_config,
                                      state=RecordDict(), run_config={})  # fmt: skip

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.partition)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        replies = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = m.metadata.dst_node_id
            self.delivered.append((node, m.metadata.message_type))
            if self.partition[node] in self.silent and m.metadata.message_type == "train":
                continue  # it answered which client it is, then died
            try:
                reply = self.app(m, self.contexts[node])
            except Exception as e:
                reply = Message(Error(code=2, reason=f"{type(e)}:<'{e}'>"), reply_to=m)
            if self.tamper is not None:
                reply = self.tamper(self.partition[node], reply)
            replies.append(reply)
        return replies


def same_states(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))  # fmt: skip


def fields(record):
    return (record.round, record.accuracy, record.clients, record.bytes_up, record.bytes_down, record.dropped)


def fail_on_round(partition: int, round: str, message, context, call_next):
    """A Flower mod: this partition's ClientApp raises on that round's train message."""
    if context.node_config["partition-id"] == partition and message.metadata.group_id == round:
        raise RuntimeError(f"client {partition} crashed")
    return call_next(message, context)


def fail_queries(message, context, call_next):
    """A Flower mod: every ClientApp raises on the server's question which client it holds."""
    if message.metadata.message_type == "query":
        raise RuntimeError("cannot load its client")
    return call_next(message, context)
