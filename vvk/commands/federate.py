"""``vvk federate``: federated multi-target domain adaptation (DualAdapt) on Flower."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from vvk.commands._options import JsonOpt, as_flags
from vvk.commands._output import Output
from vvk.errors import VvkError

# the library's names (vvk.methods.federate: METHODS, CLIENT_METHODS, PRESETS), spelt out so that
# `--help` imports no torch; tests/commands/test_federate_cli.py checks that they agree
METHODS = ("dualadapt", "source-only", "fedavg-st", "server-only", "oracle")
CLIENT_METHODS = ("self-training", "entropy", "both")
PRESETS = ("digits", "tiny")

_FLAGS = {"source": "--source", "targets": "--targets", "method": "--method", "rounds": "--rounds",
          "clients_per_round": "--clients-per-round", "clients_per_target": "--clients-per-target",
          "preset": "--preset", "backbone": "--backbone", "client_method": "--client-method",
          "size": "--size", "out": "--out", "model": "--backbone"}  # fmt: skip


def federate(
    more_targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="[TARGET]...", show_default=False, help="More target domains."),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            metavar="DOMAIN",
            show_default=False,
            help="The labelled source, on the server: DIR/<class>/<image>, mnist, usps, mnist-m, "
            "sklearn-digits or FILE.mat:X,Y.",
        ),
    ] = None,
    targets: Annotated[
        list[str] | None,
        typer.Option(
            "--targets",
            metavar="DOMAIN...",
            show_default=False,
            help="Unlabelled target domains, one client each.",
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(click_type=click.Choice(METHODS), help="DualAdapt or a baseline.")
    ] = "dualadapt",
    client_method: Annotated[
        str | None,
        typer.Option(
            click_type=click.Choice(CLIENT_METHODS),
            show_default=False,
            help="DualAdapt's client loss (the preset's: both).",
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=0, help="Federated rounds after the source pretraining.")] = 10,
    clients_per_round: Annotated[
        int | None, typer.Option(min=1, show_default=False, help="Clients in each round (default: all).")
    ] = None,
    clients_per_target: Annotated[int, typer.Option(min=1, help="Split each target into N clients.")] = 1,
    backbone: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            show_default=False,
            help="digit-cnn or a vvk image backbone (`vvk models list`); the preset's by default.",
        ),
    ] = None,
    preset: Annotated[
        str, typer.Option(click_type=click.Choice(PRESETS), help="Settings; tiny is for tests.")
    ] = "digits",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a preset field, e.g. client_steps=20."),
    ] = None,
    size: Annotated[
        int | None, typer.Option(min=8, show_default=False, help="Image side (32 digits, 128 backbones).")
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Seeds the model, the clients' choice and their work.")
    ] = 0,
    out: Annotated[
        Path | None, typer.Option(metavar="RUN", show_default=False, help="Run folder (default: runs/...).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Adapt a model from a labelled source domain to unlabelled target domains held by clients
    (FMTDA, DualAdapt: Yao et al., WACV 2022), as a Flower simulation on this machine.

    The server trains on the source; every round, the clients adapt the global model on their
    own images and send the adapted weights and per-class feature statistics (no images), the
    server averages the weights (FedAvg) and adapts the classifier on source features mixed with
    samples of the clients' statistics. Baselines run the same way: source-only, fedavg-st
    (clients self-train, FedAvg), server-only (no client adaptation), oracle (clients train on
    their labels). One line per round: accuracy per target (the targets' labels are read only to
    score), bytes per client, seconds. RUN keeps a checkpoint after every round; the same command
    with the same RUN resumes after the last complete round. The method is a reconstruction:
    the paper's text could not be read (docs/results.md says what was measured).

    EXAMPLES: vvk federate --source mnist --targets usps mnist-m sklearn-digits --rounds 10
              vvk federate --source oc10/amazon --targets oc10/dslr oc10/webcam --backbone eff-spinenet-tiny
              vvk federate --source mnist --targets usps --method fedavg-st --out runs/st --json
    """
    from vvk.methods.federate.run import federate as run

    human = Output(json_output)
    domains = list(targets or []) + list(more_targets or [])
    if source is None:
        raise VvkError("--source: the labelled source domain is needed", hint="e.g. --source mnist")
    with as_flags(**_FLAGS):
        result = run(
            source, domains, method=method, rounds=rounds, clients_per_round=clients_per_round,
            clients_per_target=clients_per_target, preset=preset, overrides=list(overrides or []),
            backbone=backbone, client_method=client_method, size=size, seed=seed, out=out,
            on_round=lambda record: _round_line(human, record, rounds),
        )  # fmt: skip
    summary = result.summary()
    human.record(summary)
    human.note(f"run: {result.out}")


def _round_line(human: Output, record, rounds: int) -> None:
    """One line per round on stderr (a JSON line with --json)."""
    if human.json_mode:
        human.record({"round": record.round, **record.to_dict()})
        return
    scores = "  ".join(f"{name} {acc:.3f}" for name, acc in record.accuracy.items())
    head = "source model" if record.round == 0 else f"round {record.round}/{rounds}"
    line = f"{head}: {scores}  mean {record.mean_accuracy:.3f}"
    if record.round:
        n = max(len(record.clients), 1)
        line += (f"  ·  per client: up {sum(record.bytes_up) / n / 1e6:.2f} MB, down "
                 f"{sum(record.bytes_down) / n / 1e6:.2f} MB, {sum(record.client_seconds) / n:.1f} s"
                 f"  ·  server {record.server_seconds:.1f} s")  # fmt: skip
        if record.dropped:
            line += f"  ·  dropped: {', '.join(record.dropped)}"
    human.note(line)
