"""The ServerApp's loop (vvk.federated.server.serve) and the ClientApp, exchanging real Flower
messages through an in-process Grid (fed_helpers.LocalGrid): the same run as run_rounds, clients
that fail or lie dropped by name, checkpoints and resuming. Ray runs in test_simulate.py."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
from fed_helpers import NAMES, fail_on_round, fields, same_states, saved_app
from flwr.app import Array, ArrayRecord, Message, RecordDict

import vvk.federated.server as server_module
from vvk.errors import VvkError
from vvk.federated.server import plan_run, serve
from vvk.federated.wire import STATE, STATS
from vvk.methods.federate.rounds import choose_clients, run_rounds

KW = {"rounds": 3, "clients_per_round": 2, "clients_per_target": 2, "seed": 0, "preset": "tiny"}


def _plan(domains, method="dualadapt", **kwargs):
    source, targets = domains
    kw = KW | kwargs
    return plan_run(method, source, [d.name for d in targets], eval_targets=targets, **kw)


@pytest.mark.parametrize("method", ["dualadapt", "fedavg-st", "server-only", "oracle"])
def test_the_server_over_flower_messages_runs_what_run_rounds_runs(
    domains, tmp_path, local_grid, models, method
):
    app, n = saved_app(tmp_path, domains)
    records = serve(local_grid(app, n), _plan(domains, method))
    expected = run_rounds(method, *domains, **KW)
    assert [fields(r) for r in records] == [fields(r) for r in expected]
    assert same_states(models["serve"], models["run_rounds"])  # bit for bit, round by round
    assert all(s > 0 for r in records[1:] for s in r.client_seconds)
    assert all(b > 0 for r in records[1:] for b in r.client_peak_bytes)


def test_clients_that_crash_or_never_reply_are_dropped_and_named(domains, tmp_path, local_grid, caplog):
    first, second = choose_clients(4, 2, 1, seed=0)[0]  # round 1's clients (partitions)
    app, n = saved_app(tmp_path, domains, mods=[functools.partial(fail_on_round, int(first), "1")])
    grid = local_grid(app, n, silent=[int(second)])
    records = serve(grid, _plan(domains, rounds=2, reply_timeout=7.0))
    names = NAMES
    r1 = records[1]
    assert r1.dropped == [names[first], names[second]] and len(records) == 3
    assert r1.client_seconds == [0.0, 0.0] and r1.bytes_up == [0, 0] and r1.bytes_down[0] > 0
    lines = [m for m in caplog.messages if "dropped for the round" in m]
    assert lines[0] == (f"round 1: client {names[first]} dropped for the round: replied with error 2: "
                        f"RuntimeError: client {first} crashed")  # fmt: skip
    assert lines[1] == (f"round 1: client {names[second]} dropped for the round: no reply within 7 s "
                        "(the client died, or timed out)")  # fmt: skip
    assert len(lines) == 2 + len(records[2].dropped)
    assert 7.0 in grid.timeouts


def _poison(partition: int, part: int, reply: Message) -> Message:
    """Replace partition ``partition``'s reply by one that would wreck the model: a huge (finite)
    extractor and statistics of 5 classes, not 4."""
    if part != partition or STATE not in reply.content:  # its train replies only
        return reply
    content = dict(reply.content)
    huge = {k: a.numpy() for k, a in content[STATE].items()}
    huge = {k: np.full(v.shape, 1e30 if v.dtype.kind == "f" else 10**15, v.dtype) for k, v in huge.items()}
    content[STATE] = ArrayRecord({k: Array(v) for k, v in huge.items()})
    stats = {k: a.numpy() for k, a in content[STATS].items()}
    content[STATS] = ArrayRecord({k: Array(np.concatenate([v, v[:1]])) for k, v in stats.items()})
    return Message(RecordDict(content), reply_to=_original(reply))


def _original(reply: Message) -> Message:
    sent = Message(RecordDict(), dst_node_id=reply.metadata.src_node_id, message_type="train")
    sent.metadata.__dict__["_message_id"] = reply.metadata.reply_to_message_id
    return sent


def test_a_poisoned_reply_counts_as_no_reply(domains, tmp_path, local_grid, models, caplog):
    bad = int(choose_clients(4, 2, 1, seed=0)[0][0])
    app, n = saved_app(tmp_path, domains)
    poisoned = serve(local_grid(app, n, tamper=functools.partial(_poison, bad)), _plan(domains, rounds=2))
    silent = serve(local_grid(app, n, silent=[bad]), _plan(domains, rounds=2))
    assert poisoned[1].dropped == silent[1].dropped == [poisoned[1].clients[0]]
    assert "means has shape (5, 1, 16), expected (4, 1, 16)" in caplog.text
    assert [r.accuracy for r in poisoned] == [r.accuracy for r in silent]
    half = len(models["serve"]) // 2
    assert same_states(models["serve"][:half], models["serve"][half:])  # nothing of it in the model
    assert poisoned[1].bytes_up[0] > 0  # what arrived is counted


def test_a_stopped_server_resumes_from_its_last_round(
    domains, tmp_path, local_grid, models, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, "vvk.federate")
    app, n = saved_app(tmp_path, domains)
    whole = serve(local_grid(app, n), _plan(domains))
    out = tmp_path / "run"

    def stop_after_round_2(record):
        if record.round == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        serve(local_grid(app, n), _plan(domains, out=out), on_round=stop_after_round_2)
    monkeypatch.setattr(server_module, "pretrained_model", None)  # a resumed run does not pretrain
    seen = []
    resumed = serve(local_grid(app, n), _plan(domains, out=out), on_round=seen.append)
    assert f"{out}: resuming after round 2 (step-00000002)" in caplog.messages
    assert [r.round for r in seen] == [3]
    assert [fields(r) for r in resumed] == [fields(r) for r in whole]
    assert same_states(models["serve"][-1:], models["serve"][3:4])  # round 3, both ways
    assert (out / "records.json").is_file() and (
        out / "checkpoints" / "latest"
    ).read_text() == "step-00000003\n"
    again = serve(local_grid(app, n), _plan(domains, out=out))  # finished: nothing to do
    assert [fields(r) for r in again] == [fields(r) for r in whole]


def test_a_run_folder_of_other_settings_is_refused(domains, tmp_path, local_grid):
    app, n = saved_app(tmp_path, domains)
    serve(local_grid(app, n), _plan(domains, rounds=1, out=tmp_path / "run"))
    with pytest.raises(VvkError, match=r"holds a federated run with other settings \(seed\)"):
        serve(local_grid(app, n), _plan(domains, rounds=1, seed=1, out=tmp_path / "run"))


def test_a_client_without_a_node_is_dropped_when_chosen(domains, tmp_path, local_grid, caplog):
    absent = int(choose_clients(4, 2, 1, seed=0)[0][1])  # chosen in round 1, never connects
    name = NAMES[absent]
    app, n = saved_app(tmp_path, domains, skip=absent)
    records = serve(local_grid(app, n), _plan(domains, node_timeout=0.2))
    assert f"no node holds clients {name} after 0.2 s" in caplog.text
    assert f"round 1: client {name} dropped for the round: no node holds it" in caplog.text
    for r in records[1:]:
        assert r.dropped == [c for c in r.clients if c == name]
        assert [d for c, d in zip(r.clients, r.bytes_down, strict=True) if c == name] in ([], [0])
    assert name in records[1].clients and len(records) == 4


def test_a_client_whose_node_is_replaced_is_found_on_the_new_node(domains, tmp_path, local_grid):
    moved = int(choose_clients(4, 2, 3, seed=0)[1][1])  # a client of round 2, whose SuperNode
    app, n = saved_app(tmp_path, domains)  # restarts after round 1 under a new node id
    grid = local_grid(app, n)

    def restart(record):
        if record.round == 1:
            grid.move(moved, 999)

    records = serve(grid, _plan(domains), on_round=restart)
    assert [r.dropped for r in records[1:]] == [[], [], []]
    assert (999, "query") in grid.delivered and (999, "train") in grid.delivered
