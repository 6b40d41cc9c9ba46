"""``simulate``: a whole federated run on one machine, through Flower's Simulation Runtime.

The ServerApp (``server.make_server_app``) runs in a thread of this process, as
``flwr.simulation.run_simulation`` runs it; every client is a virtual SuperNode whose ClientApp
(``client.make_client_app``) runs in a Ray actor, a separate process. So the simulation crosses
the same wire as a deployment (every update is serialised into records and decoded and checked
by the server), which is what it is for; ``run_rounds`` is the same run without the wire.

Each client's data is written once to a temporary file (``client.save_client``) and each actor
loads the files of the nodes it serves once: the ClientApp itself travels to the actor pickled
with every message, so it carries file names, not tensors.

``run_simulation`` is marked deprecated in Flower 1.42 (in favour of ``flwr run`` on an app
project with a local SuperLink); it is still the one way to run a ServerApp and ClientApp given
as Python objects in this process, which is what lets ``simulate`` take in-memory datasets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from vvk.errors import VvkError
from vvk.methods.federate.rounds import DualAdaptPreset, RoundRecord, make_clients

from .checkpoints import RoundCheckpoints
from .client import ClientData, SavedClients, make_client_app, save_client
from .server import make_server_app, plan_run, serve

START_TIMEOUT_S = 1800.0
"""The most the start waits for the SuperNodes to say which client each holds: the answers come
from Ray actors that must start first (import torch and vvk, load the client's data) on the CPUs
given, which a busy machine stretches past a minute. Nodes that all answer, or fail to, end the
wait at once (``ServerPlan.expected_nodes``)."""


def simulate(
    method: str,
    source,
    targets: Sequence,
    *,
    rounds: int,
    clients_per_round: int,
    clients_per_target: int = 1,
    seed: int = 0,
    preset: str | DualAdaptPreset = "digits",
    out: str | os.PathLike | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    eval_targets: Sequence | None = None,
    num_cpus: int | None = None,
    reply_timeout: float | None = 1800.0,
    mods: Sequence = (),
) -> list[RoundRecord]:
    """``run_rounds``' run, with each client a Flower SuperNode of a Ray simulation on this machine.

    The arguments mean what they mean to ``run_rounds`` (``source``, ``targets``,
    ``eval_targets``: ``DomainDataset``s); the records are ``run_rounds``' for the same seed (the
    same accuracies, when client and server run with the same number of threads: see
    tests/federated). Clients train on the CPU, one Ray CPU each, no GPU; the server on the CPU.

    Args:
        out: the run folder: a checkpoint after every round; a simulation restarted with the
            same folder and settings resumes after its last complete round.
        on_round: sees each new record, as it is made (in the server's thread).
        num_cpus: CPUs Ray may use, hence clients working at once (default: all of them).
        reply_timeout: seconds a round waits for its clients; a client that has not replied by
            then is dropped for the round.
        mods: Flower mods around the ClientApp's handlers (fault injection, message logging).
    """
    from flwr.simulation import run_simulation

    evals = eval_targets if eval_targets is not None else targets
    names = [d.name for d in targets]
    plan = plan_run(method, source, names, rounds=rounds, clients_per_round=clients_per_round, seed=seed,
                    preset=preset, clients_per_target=clients_per_target, eval_targets=evals, out=out,
                    device="cpu", reply_timeout=reply_timeout, node_timeout=START_TIMEOUT_S)  # fmt: skip
    plan = replace(plan, expected_nodes=len(plan.clients))  # one SuperNode per client, all from the start
    for d in targets:
        if list(d.classes) != list(source.classes):
            raise VvkError(f"{d.name}: its classes differ from the source's ({source.name})")
    if plan.out is not None:
        RoundCheckpoints(plan.out, plan.identity()).check()  # refuse another run's folder before Ray starts
    if plan.rounds == 0:  # source-only: no client ever works, so no Ray either
        return serve(None, plan, on_round)
    records: list[RoundRecord] = []
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_gpus": 0}}
    if num_cpus is not None:
        backend["init_args"]["num_cpus"] = int(num_cpus)
    clients = make_clients(targets, clients_per_target=clients_per_target, seed=seed)
    pythonpath = os.environ.get("PYTHONPATH")  # Flower's Ray backend rewrites it for its workers
    with tempfile.TemporaryDirectory(prefix="vvk-federate-sim-") as tmp:
        files = []
        for i, c in enumerate(clients):
            files.append(str(Path(tmp) / f"client-{i:04d}.safetensors"))
            save_client(ClientData(c, tuple(source.classes)), files[-1])
        client_app = make_client_app(SavedClients(tuple(files)), device="cpu", mods=mods)
        server_app = make_server_app(plan, on_round=on_round, records=records)
        try:
            with _quiet_runtime():
                run_simulation(server_app, client_app, num_supernodes=len(clients), backend_config=backend)
        finally:
            if pythonpath is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = pythonpath
    return records


class _NotRunSimulationDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("DEPRECATED FEATURE") and "run_simulation" in str(record.args))


@contextlib.contextmanager
def _quiet_runtime() -> Iterator[None]:
    """Two notices that say nothing to a ``vvk federate`` user, off while the simulation runs:
    Flower's deprecation of ``run_simulation`` (called here, not by the user; see the module
    docstring) and Ray's FutureWarning that it will stop hiding GPUs from workers that ask for
    none, which ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` accepts now (clients run on the CPU)."""
    flwr_logger, quiet = logging.getLogger("flwr"), _NotRunSimulationDeprecation()
    flwr_logger.addFilter(quiet)
    before = os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO")
    os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    try:
        yield
    finally:
        flwr_logger.removeFilter(quiet)
        if before is None:
            os.environ.pop("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", None)
        else:
            os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = before
