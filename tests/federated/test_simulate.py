"""vvk.federated.simulate: the ServerApp and ClientApp through Flower's Simulation Runtime, each
client a Ray actor of its own process. One Ray start-up per test (about 10 s on one core).

What is equal to run_rounds, and why: the server is the same code in this process; each client
runs ``client_work`` on a model rebuilt from the arrays it received (bit-exact float32 copies)
with the seed the server sent, on the same data, with the same number of threads (the tests run
under OMP_NUM_THREADS=1, which the Ray workers inherit); replies are put back in the chosen
order before FedAvg. So the global model after every round is bit-identical, which is stronger
than (and implies) the same accuracies. With different thread counts on the two sides CPU
kernels may sum in another order and the two runs would differ in the last bits."""

from __future__ import annotations

import functools

from fed_helpers import NAMES, fail_on_round, fail_queries, fields, same_states

from vvk.federated import simulate
from vvk.methods.federate.rounds import choose_clients, run_rounds

KW = {"rounds": 2, "clients_per_round": 2, "clients_per_target": 2, "seed": 0, "preset": "tiny"}


def test_simulate_runs_what_run_rounds_runs(domains, models):
    source, targets = domains
    seen = []
    records = simulate("dualadapt", source, targets, **KW, num_cpus=1, on_round=seen.append)
    expected = run_rounds("dualadapt", source, targets, **KW)
    assert seen == records and [r.round for r in records] == [0, 1, 2]
    assert [fields(r) for r in records] == [fields(r) for r in expected]
    assert same_states(models["serve"], models["run_rounds"])  # every round's global model, bit for bit
    assert all(s > 0 for r in records[1:] for s in r.client_seconds)


def test_a_client_whose_clientapp_raises_is_dropped_and_the_run_finishes(domains, tmp_path, caplog):
    source, targets = domains
    first = int(choose_clients(4, 2, 1, seed=0)[0][0])  # a client of round 1 (its partition id)
    mod = functools.partial(fail_on_round, first, "1")  # its ClientApp raises on round 1's message
    out = tmp_path / "run"
    records = simulate("dualadapt", source, targets, **KW, num_cpus=1, out=out, mods=[mod])
    assert [r.round for r in records] == [0, 1, 2]
    assert records[1].dropped == [NAMES[first]] and records[1].client_seconds[0] == 0.0
    assert records[2].dropped == []
    line = next(m for m in caplog.messages if "dropped for the round" in m)
    assert line.startswith(f"round 1: client {NAMES[first]} dropped for the round: replied with error")
    assert f"client {first} crashed" in line
    assert (out / "checkpoints" / "latest").read_text() == "step-00000002\n"


def test_nodes_that_cannot_say_their_client_end_the_wait_at_once(domains, caplog):
    """The start waits up to START_TIMEOUT_S for slow actors, but not for nodes that have all
    failed to answer: a simulation's nodes are all there from the start. (Waiting the timeout
    would outlast the test's time limit.)"""
    source, targets = domains
    records = simulate("fedavg-st", source, targets, **{**KW, "rounds": 1}, num_cpus=1, mods=[fail_queries])
    assert [r.round for r in records] == [0, 1]
    assert sorted(records[1].dropped) == sorted(records[1].clients) and len(records[1].clients) == 2
    line = next(m for m in caplog.messages if m.startswith("no node holds clients"))
    assert "(every node has answered or failed)" in line
