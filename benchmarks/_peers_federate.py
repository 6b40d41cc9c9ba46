"""``peers.py --only federate``: a round of ``vvk federate`` against the same round under Flower's
stock ``FedAvg`` strategy.

Both run plain FedAvg, vvk's ``fedavg-st`` baseline (each client self-trains the global model's
``client_trains`` part on its unlabelled domain; the server averages by sample count), in Flower's
Simulation Runtime on this machine with ``--num-cpus`` Ray CPUs, on the digits setting of
``federate_overhead.py`` (source MNIST; clients USPS, MNIST-M, scikit-learn's digits; every client
in every round), from the same source-pretrained model:

- ``vvk federate``: ``vvk.federated.simulate`` (vvk's ServerApp: clients named and seeded, each
  update decoded and checked, FedAvg in float64 in a fixed order, a checkpoint per round);
- ``Flower FedAvg``: a ServerApp that runs ``flwr.serverapp.strategy.FedAvg.start`` and a ClientApp
  that does the same client work (``client_work("fedavg-st", ...)``, vvk's per-client seeds) on
  the same saved client data and replies with the whole state and its sample count.

Each side scores the global model on the targets after every round (vvk's server does; the stock
side in FedAvg's ``evaluate_fn``), so a round is: send, client work, reply, aggregate, evaluate.
The figure: seconds between two consecutive evaluations, median over the run's rounds; the
pretraining and Ray's start are left out. A measurement round runs both engines once.

Agreement. The two engines cannot agree bit for bit after the first round, and should not be
asked to: Flower's FedAvg multiplies each reply's float32 arrays by its weight factor and sums
them in float32 in the order the replies arrived (``aggregate_arrayrecords``); vvk sums in
float64 in the clients' sorted order. Round 1 agrees to float32 rounding (1.2e-7 relative), but
the next rounds self-train from those two models, and a pseudo-label crossing the confidence
threshold turns rounding into a different model (1% apart after 2 rounds, 13% after 3, here;
the stock run itself changes that much with the order of the replies). So the check is a replay:
the stock side records the order of the replies in each round (a ``FedAvg`` subclass that only
looks), and vvk's in-process client work (``client_work``, the same seeds) with Flower's
arithmetic in that order must give the stock run's global model to 1e-6 relative in its floating
entries and its accuracies exactly. That proves the stock side did vvk's work and differs only in
the mean's arithmetic. The distance between the two engines' final models is reported beside it.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _peers_common import record, relative_error, version
from federate_adaptation import SIZE, SOURCE, TARGETS

PEER, VVK = "Flower FedAvg", "vvk federate"
METHOD = "fedavg-st"


def stock_apps(files: list[str], preset, *, seed: int, rounds: int, evaluate_fn):
    """(ServerApp, ClientApp) of Flower's stock FedAvg. The ClientApp's functions are nested so
    that Ray's workers, which cannot import this script, receive them by value."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from vvk.federated.client import SavedClients
    from vvk.methods.federate.models import build_model
    from vvk.methods.federate.rounds import client_seed, client_work, round_seed

    class ObservedFedAvg(FedAvg):
        """Stock FedAvg that notes each round's reply order (the order its float32 sum runs in)."""

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            evaluate_fn.orders.append(
                [int(m.content["config"]["position"]) for m in replies if m.has_content()]
            )
            return super().aggregate_train(server_round, replies)

    nodes = SavedClients(tuple(files))
    client_app, server_app = ClientApp(), ServerApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        data = nodes(context)
        model = build_model(preset.model, len(data.classes), feature_dim=preset.feature_dim)
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        position = int(context.node_config["partition-id"])  # = vvk's position: every client, sorted
        r = int(message.content["config"]["server-round"])
        update = client_work(
            METHOD, model, data.client, preset, seed=client_seed(round_seed(seed, r), position)
        )
        state = model.state_dict() | update.state
        reply = {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord({"num-examples": update.num_samples}),
            "config": ConfigRecord({"position": position}),  # for the replay; FedAvg reads no config
        }
        return Message(content=RecordDict(reply), reply_to=message)

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        model = evaluate_fn.start()  # the pretrained model, as vvk's server makes it
        strategy = ObservedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=len(files),
            min_available_nodes=len(files),
        )
        arrays = ArrayRecord(model.state_dict())
        result = strategy.start(
            grid=grid,
            initial_arrays=arrays,
            num_rounds=rounds,
            train_config=ConfigRecord(),
            evaluate_fn=evaluate_fn,
        )
        evaluate_fn.final = result.arrays.to_torch_state_dict()

    return server_app, client_app


class StockEvaluation:
    """FedAvg's ``evaluate_fn``: vvk's evaluation of each global model, and when it came."""

    def __init__(self, source, targets, preset, seed: int):
        from vvk.methods.federate.rounds import eval_sets

        self.source, self.preset, self.seed = source, preset, seed
        self.evals = eval_sets(source, targets)
        self.model, self.stamps, self.accuracy = None, [], []
        self.initial, self.final, self.orders = None, None, []  # states; reply positions per round

    def start(self):
        from vvk.methods.federate.rounds import pretrained_model

        self.model, _ = pretrained_model(self.source, self.preset, seed=self.seed)
        self.initial = copy.deepcopy(self.model.state_dict())
        return self.model

    def __call__(self, server_round: int, arrays):
        from flwr.app import MetricRecord

        from vvk.methods.federate.rounds import evaluate

        self.model.load_state_dict(arrays.to_torch_state_dict())
        self.accuracy.append(evaluate(self.model, self.evals, torch.device("cpu")))
        self.stamps.append(time.perf_counter())
        return MetricRecord(self.accuracy[-1])


def run_stock(source, targets, preset, *, seed: int, rounds: int, num_cpus: int) -> dict:
    from flwr.simulation import run_simulation

    from vvk.federated.client import ClientData, save_client
    from vvk.methods.federate.rounds import make_clients

    evaluation = StockEvaluation(source, targets, preset, seed)
    with tempfile.TemporaryDirectory(prefix="vvk-peers-fedavg-") as tmp:
        files = []
        for i, client in enumerate(make_clients(targets, seed=seed)):
            files.append(str(Path(tmp) / f"client-{i}.safetensors"))
            save_client(ClientData(client, tuple(source.classes)), files[-1])
        server, client = stock_apps(files, preset, seed=seed, rounds=rounds, evaluate_fn=evaluation)
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": num_cpus}}
        run_simulation(server, client, num_supernodes=len(files), backend_config=backend)
    return {
        "stamps": evaluation.stamps,
        "accuracy": evaluation.accuracy,
        "state": evaluation.final,
        "initial": evaluation.initial,
        "orders": evaluation.orders,
    }


def flower_mean(states: list[tuple[dict, int]], order: list[int]) -> dict:
    """Flower's ``aggregate_arrayrecords`` arithmetic on torch state dicts: each state times its
    weight factor n / sum(n), in the state's own dtype (numpy scalars are weak), summed in ``order``."""
    total = sum(n for _, n in states)
    sums: dict = {}
    for i in order:
        state, n = states[i]
        for k, v in state.items():
            term = v.numpy() * (n / total)
            sums[k] = term if k not in sums else sums[k] + term
    return {k: torch.from_numpy(np.asarray(v)) for k, v in sums.items()}


def replay_stock(source, targets, preset, *, seed: int, initial: dict, orders: list[list[int]]) -> dict:
    """The stock run recomputed in this process: vvk's client work and seeds, every client in every
    round (positions = sorted clients, as the stock ClientApp takes them), Flower's mean in the
    recorded reply ``orders``."""
    from vvk.methods.federate.models import build_model
    from vvk.methods.federate.rounds import (
        client_seed,
        client_work,
        eval_sets,
        evaluate,
        make_clients,
        round_seed,
    )

    clients = make_clients(targets, seed=seed)
    evals = eval_sets(source, targets)
    model = build_model(preset.model, len(source.classes), feature_dim=preset.feature_dim)
    model.load_state_dict(initial)
    accuracy = [evaluate(model, evals, torch.device("cpu"))]
    for r, order in enumerate(orders, 1):
        seed_r = round_seed(seed, r)
        updates = [
            client_work(METHOD, model, c, preset, seed=client_seed(seed_r, i)) for i, c in enumerate(clients)
        ]
        state = model.state_dict()
        model.load_state_dict(flower_mean([(state | u.state, u.num_samples) for u in updates], order))
        accuracy.append(evaluate(model, evals, torch.device("cpu")))
    return {"accuracy": accuracy, "state": model.state_dict()}


def run_vvk(source, targets, preset, *, seed: int, rounds: int, num_cpus: int) -> dict:
    from safetensors.torch import load_file

    from vvk.engine.state import RunDir
    from vvk.federated import simulate

    stamps, accuracy = [], []

    def on_round(r) -> None:
        stamps.append(time.perf_counter())
        accuracy.append(r.accuracy)

    with tempfile.TemporaryDirectory(prefix="vvk-peers-federate-") as tmp:
        simulate(
            METHOD,
            source,
            targets,
            rounds=rounds,
            clients_per_round=len(targets),
            seed=seed,
            preset=preset,
            out=Path(tmp) / "run",
            num_cpus=num_cpus,
            on_round=on_round,
        )
        state = load_file(RunDir(Path(tmp) / "run").latest() / "model.safetensors")
    return {"stamps": stamps, "accuracy": accuracy, "state": state}


def _round_seconds(stamps: list[float]) -> float:
    return statistics.median(
        b - a for a, b in zip(stamps, stamps[1:], strict=False)
    )  # (round r-1, round r) pairs


def _worst_floating(a: dict, b: dict) -> float:
    return max(relative_error(a[k].double(), b[k].double()) for k, v in b.items() if v.is_floating_point())


def agreement(stock: dict, ours: dict, replay: dict) -> dict:
    same_accuracy = stock["accuracy"] == replay["accuracy"]
    worst = _worst_floating(replay["state"], stock["state"])
    return {
        "ok": worst <= 1e-6 and same_accuracy,
        "tolerance": (
            "stock run vs its replay (vvk's client work, Flower's float32 mean in the recorded reply "
            "order): 1e-6 relative (floating entries), accuracies equal"
        ),
        "max_relative_error": worst,
        "same_accuracies": same_accuracy,
        "reply_orders": stock["orders"],
        "engines_max_relative_error": _worst_floating(ours["state"], stock["state"]),
        "engines_same_accuracies": stock["accuracy"] == ours["accuracy"],
        "engines_note": "float32 vs float64 mean, amplified by self-training after round 1",
    }


def run(*, rounds: int, fl_rounds: int, seed: int, preset_overrides: list[str], num_cpus: int) -> dict:
    from vvk.data.domains import load_domain
    from vvk.methods.federate.run import resolve_settings

    preset = resolve_settings("digits", preset_overrides)
    source = load_domain(SOURCE, size=SIZE)
    targets = [load_domain(name, size=SIZE) for name in TARGETS]
    setting = {"rounds": fl_rounds, "seed": seed, "num_cpus": num_cpus}
    seconds: dict[str, list[float]] = {PEER: [], VVK: []}
    for _ in range(rounds):  # each engine's start-up (Ray, pretraining) is outside its round times
        stock = run_stock(source, targets, preset, **setting)
        ours = run_vvk(source, targets, preset, **setting)
        seconds[PEER].append(_round_seconds(stock["stamps"]))
        seconds[VVK].append(_round_seconds(ours["stamps"]))
    replay = replay_stock(
        source, targets, preset, seed=seed, initial=stock["initial"], orders=stock["orders"]
    )
    check = agreement(stock, ours, replay)
    return {
        "unit": "seconds per federated round (median of the run's rounds), one run per measurement round",
        "method": METHOD,
        "setting": {**setting, "source": SOURCE, "targets": list(TARGETS), "preset": preset.__dict__},
        "comparisons": [record(PEER, VVK, seconds, check, versions=version("flwr", "ray"))],
    }
