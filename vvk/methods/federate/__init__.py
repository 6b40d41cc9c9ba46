"""Federated methods: the framework-free core of DualAdapt (federated multi-target domain
adaptation; Yao et al., WACV 2022).

- ``dualadapt``: the method (what is reconstructed and what is unverified), the client and
  server steps;
- ``stats``: the per-class feature statistics that clients send, their checks and their fit;
- ``models``: the network, its predictions, FedAvg of state dicts and their bytes;
- ``rounds``: the presets, one round of each method and the in-process round loop;
- ``memory``: the seconds and peak tensor memory of a client's work;
- ``run``: ``vvk federate``'s run (domains read and checked, settings, the Flower simulation).

Everything that crosses the wire is a state dict of tensors or ``FeatureStats`` arrays, so the
Flower apps (``vvk.federated``: a ``ServerApp`` and a ``ClientApp``) wrap these functions
unchanged; only ``run.federate`` imports Flower, when it is called."""

from vvk.methods.federate.dualadapt import (
    ClientUpdate,
    client_adapt,
    client_feature_stats,
    client_stats,
    client_supervised,
    information_maximisation_loss,
    server_step,
)
from vvk.methods.federate.models import DigitNet, accuracy, build_model, fedavg, predict, state_nbytes
from vvk.methods.federate.rounds import (
    METHODS,
    PRESETS,
    Client,
    DualAdaptPreset,
    RoundRecord,
    federated_round,
    make_clients,
    run_rounds,
)
from vvk.methods.federate.stats import BadFeatureStats, FeatureStats, fit_feature_stats

__all__ = [
    "METHODS",
    "PRESETS",
    "BadFeatureStats",
    "Client",
    "ClientUpdate",
    "DigitNet",
    "DualAdaptPreset",
    "FeatureStats",
    "RoundRecord",
    "accuracy",
    "build_model",
    "client_adapt",
    "client_feature_stats",
    "client_stats",
    "client_supervised",
    "fedavg",
    "fit_feature_stats",
    "federated_round",
    "information_maximisation_loss",
    "make_clients",
    "predict",
    "run_rounds",
    "server_step",
    "state_nbytes",
]
