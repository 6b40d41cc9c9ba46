"""``vvk federate``: federated multi-target domain adaptation (DualAdapt) on Flower."""

from __future__ import annotations

import os
import tempfile
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
# vvk.federated.server.RUN_CONFIG_DEFAULTS' timeouts, spelt out for the same reason (checked by
# tests/federated/test_deploy.py)
NODE_TIMEOUT_S, REPLY_TIMEOUT_S = 300.0, 1800.0
SERVER_GONE_S = 30.0  # a client stops once its server has not answered for this long


SourceOpt = Annotated[
    str | None,
    typer.Option(
        metavar="DOMAIN",
        show_default=False,
        help="The labelled source, on the server: DIR/<class>/<image>, mnist, usps, mnist-m, "
        "sklearn-digits or FILE.mat:X,Y.",
    ),
]
TargetsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--targets",
        metavar="DOMAIN...",
        show_default=False,
        help="Unlabelled target domains, one client each.",
    ),
]
MoreTargetsArg = Annotated[
    list[str] | None, typer.Argument(metavar="[TARGET]...", show_default=False, help="More target domains.")
]
MethodOpt = Annotated[str, typer.Option(click_type=click.Choice(METHODS), help="DualAdapt or a baseline.")]
RoundsOpt = Annotated[int, typer.Option(min=0, help="Federated rounds after the source pretraining.")]
ClientsPerRoundOpt = Annotated[
    int | None, typer.Option(min=1, show_default=False, help="Clients in each round (default: all).")
]
ClientsPerTargetOpt = Annotated[int, typer.Option(min=1, help="Split each target into N clients.")]
PresetOpt = Annotated[
    str, typer.Option(click_type=click.Choice(PRESETS), help="Settings; tiny is for tests.")
]
SizeOpt = Annotated[
    int | None, typer.Option(min=8, show_default=False, help="Image side (32 digits, 128 backbones).")
]
SeedOpt = Annotated[int, typer.Option(min=0, help="Seeds the model, the clients' choice and their work.")]
OutOpt = Annotated[
    Path | None, typer.Option(metavar="RUN", show_default=False, help="Run folder (default: runs/...).")
]


def federate(
    more_targets: MoreTargetsArg = None,
    source: SourceOpt = None,
    targets: TargetsOpt = None,
    method: MethodOpt = "dualadapt",
    client_method: Annotated[
        str | None,
        typer.Option(
            click_type=click.Choice(CLIENT_METHODS),
            show_default=False,
            help="DualAdapt's client loss (the preset's: both).",
        ),
    ] = None,
    rounds: RoundsOpt = 10,
    clients_per_round: ClientsPerRoundOpt = None,
    clients_per_target: ClientsPerTargetOpt = 1,
    backbone: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            show_default=False,
            help="digit-cnn or a vvk image backbone (`vvk models list`); the preset's by default.",
        ),
    ] = None,
    preset: PresetOpt = "digits",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a preset field, e.g. client_steps=20."),
    ] = None,
    size: SizeOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = None,
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

    `vvk federate server` and `vvk federate client` run it across machines instead, with
    Flower's SuperLink and SuperNodes (see their --help). A target domain folder named server
    or client is given as ./server.

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


subcommands = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]})
"""``vvk federate server`` and ``vvk federate client``: a deployed run, across machines."""

InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="No TLS: for this machine alone or a trusted network.")
]


@subcommands.command("server")
def server(
    address: Annotated[
        str,
        typer.Option(
            metavar="HOST:PORT",
            show_default=False,
            help="Where the server listens for its clients (0.0.0.0:PORT: every network).",
        ),
    ],
    more_targets: MoreTargetsArg = None,
    source: SourceOpt = None,
    targets: TargetsOpt = None,
    method: MethodOpt = "dualadapt",
    rounds: RoundsOpt = 10,
    clients_per_round: ClientsPerRoundOpt = None,
    clients_per_target: ClientsPerTargetOpt = 1,
    preset: PresetOpt = "digits",
    size: SizeOpt = None,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    node_timeout: Annotated[
        float, typer.Option(min=0.0, metavar="S", help="How long to wait for every client to connect.")
    ] = NODE_TIMEOUT_S,
    reply_timeout: Annotated[
        float,
        typer.Option(min=0.0, metavar="S", help="How long a round waits for replies (0: for ever)."),
    ] = REPLY_TIMEOUT_S,
    insecure: InsecureOpt = False,
    certificates: Annotated[
        tuple[Path, Path, Path] | None,
        typer.Option(
            metavar="CA CERT KEY",
            show_default=False,
            help="TLS: the CA's certificate, the server's certificate and its key (PEM files).",
        ),
    ] = None,
) -> None:
    """Serve a federated run to clients on other machines: `vvk federate client` on each
    machine that holds a target domain.

    Starts Flower's SuperLink on --address, submits the run to it (`flwr run` of the app folder
    RUN/app/vvk-federate) and prints the run's log: the source model, then one line per round
    and each dropped client. The server trains on the source and scores every target, so the
    domains must be readable here as well. Each client names the target it holds, and with
    --clients-per-target N which part of it (0 to N-1); the server waits --node-timeout seconds
    for all of them, and a client that has not replied within --reply-timeout is dropped for
    the round. When the run ends, on an error or on Ctrl-C (exit 130), the SuperLink and every
    process started here stop; RUN keeps a checkpoint after every round and the same command
    resumes the run. The SuperLink's own log is RUN/superlink.log.

    TLS: --certificates CA CERT KEY, PEM files; the server's certificate must be valid for the
    address the clients give and for the one `flwr run` uses here (HOST, 127.0.0.1 for
    0.0.0.0). --insecure: none.

    EXAMPLES: vvk federate server --source mnist --targets usps --clients-per-target 3 \\
                  --address 0.0.0.0:9091 --certificates ca.pem server.pem server.key --out runs/usps
              vvk federate server --source mnist --targets usps mnist-m --address 127.0.0.1:9091 --insecure
    """
    from vvk.federated import launch
    from vvk.federated.deploy import (
        APP_NAME,
        CONNECTION,
        prepare_server_run,
        run_status,
        stream_run,
        write_app,
    )

    human = Output(False)
    host, port = launch.parse_address(address, "--address")
    tls_args, ca = _server_tls(insecure, certificates)
    if source is None:
        raise VvkError("--source: the labelled source domain is needed", hint="e.g. --source mnist")
    domains = [*(targets or []), *(more_targets or [])]
    with as_flags(**_FLAGS):
        run_dir, config, clients = prepare_server_run(
            source, domains, method=method, rounds=rounds, clients_per_round=clients_per_round,
            clients_per_target=clients_per_target, preset=preset, size=size, seed=seed, out=out,
            node_timeout=node_timeout, reply_timeout=reply_timeout,
        )  # fmt: skip
    launch.check_port_free(host, port, "--address")
    app = write_app(run_dir / "app" / APP_NAME, config)
    log = run_dir / "superlink.log"
    local = launch.connect_host(host)
    with tempfile.TemporaryDirectory(prefix="vvk-flwr-") as home, launch.running() as procs:
        launch.flwr_home(home, CONNECTION, launch.join_address(local, port), root_certificates=ca)
        env = {**os.environ, "FLWR_HOME": home, "PYTHONUNBUFFERED": "1"}
        superlink = [launch.console_script("flower-superlink"), *tls_args, "--host", host, "--port",
                     str(port), "--disable-runtime-dependency-installation"]  # fmt: skip
        with open(log, "a", encoding="utf-8") as f:
            link = procs.start(superlink, env=env, output=f)
        launch.wait_for_port(local, port, link, log=log)
        human.note(f"server on {address}, run folder {run_dir}: waiting for {clients} client(s) "
                   f"(vvk federate client --server HOST:{port} ...)")  # fmt: skip
        run_id = stream_run(procs, app, env)
        status, details = run_status(run_id, env)
    if status != "finished:completed":
        raise VvkError(f"the run ended {status}{f' ({details})' if details else ''}",
                       hint=f"its log is above; the SuperLink's is {log}")  # fmt: skip
    human.note(f"run: {run_dir}")


def _server_tls(insecure: bool, certificates: tuple[Path, Path, Path] | None) -> tuple[list[str], str | None]:
    """The SuperLink's TLS arguments, and the CA certificate that `flwr run` checks it with."""
    if insecure and certificates is not None:
        raise VvkError("--insecure and --certificates: give one of them")
    if insecure:
        return ["--insecure"], None
    if certificates is None:
        raise VvkError("--certificates CA CERT KEY: TLS needs the server's certificate files",
                       hint="or --insecure for none: this machine alone, a trusted network")  # fmt: skip
    ca, cert, key = (_existing(path, "--certificates") for path in certificates)
    return ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key], ca


def _existing(path: Path, flag: str) -> str:
    if not path.is_file():
        raise VvkError(f"{flag} {path}: no such file")
    return str(path.resolve())


@subcommands.command("client")
def client(
    data: Annotated[
        str,
        typer.Option(
            metavar="DOMAIN",
            show_default=False,
            help="The target domain this client holds, as the server names it: DIR/<class>/<image>, "
            "mnist, usps, mnist-m, sklearn-digits or FILE.mat:X,Y.",
        ),
    ],
    server: Annotated[
        str, typer.Option(metavar="HOST:PORT", show_default=False, help="The server's address, from here.")
    ],
    part: Annotated[
        int,
        typer.Option(
            min=0, metavar="K", help="Which part of the domain (the server's --clients-per-target)."
        ),
    ] = 0,
    size: Annotated[
        int | None, typer.Option(min=8, show_default=False, help="Image side (default: the server's).")
    ] = None,
    insecure: InsecureOpt = False,
    root_certificates: Annotated[
        Path | None,
        typer.Option(
            metavar="CA", show_default=False, help="TLS: the certificate of the CA that signed the server's."
        ),
    ] = None,
) -> None:
    """One client of a federated run that `vvk federate server` serves: Flower's SuperNode,
    holding the images of --data (part --part of them) on this machine.

    Waits for the server to listen, then takes part in its rounds: the client adapts the global
    model on its own images and sends back the adapted weights and per-class feature statistics,
    never an image. It runs until Ctrl-C (exit 130), or until the server has not answered for
    30 s (the run is over: exit 0); every process started here stops with it. --data and --part
    name one of the server's clients: one of its --targets and, when it splits each into N
    clients (--clients-per-target N), one of the parts 0 to N-1.

    TLS: --root-certificates CA (the CA that signed the server's certificate), or --insecure for
    none, as the server has it.

    EXAMPLES: vvk federate client --data usps --part 0 --server 10.0.0.1:9091 --root-certificates ca.pem
              vvk federate client --data oc10/dslr --server 127.0.0.1:9091 --insecure
    """
    from vvk.federated import launch

    human = Output(False)
    host, port = launch.parse_address(server, "--server")
    tls_args = _client_tls(insecure, root_certificates)
    _check_client_domain(data, size)
    node_config = launch.node_config(
        {"target": data, "part": part} | ({"size": size} if size else {}), "--data"
    )
    with tempfile.TemporaryDirectory(prefix="vvk-flwr-") as home, launch.running() as procs:
        if not launch.listening(host, port):
            human.note(f"waiting for the server at {server}")
            launch.wait_for_port(host, port, seconds=None)
        supernode = [launch.console_script("flower-supernode"), *tls_args, "--superlink",
                     launch.join_address(host, port), "--port", str(launch.free_port()),
                     "--node-config", node_config]  # fmt: skip
        node = procs.start(supernode, env={**os.environ, "FLWR_HOME": home}, output=2)  # its log: stderr
        human.note(f"client {data} part {part}: serving the server at {server} (Ctrl-C stops it)")
        gone = launch.watch(node, host, port, gone_after=SERVER_GONE_S)
    if gone:
        human.note(f"the server at {server} has gone: the client stops")
    elif node.returncode != 0:
        raise VvkError(f"flower-supernode exited (code {node.returncode}) while the server at {server} "
                       "is up (its log is above)")  # fmt: skip


def _client_tls(insecure: bool, root_certificates: Path | None) -> list[str]:
    """The SuperNode's TLS arguments."""
    if insecure and root_certificates is not None:
        raise VvkError("--insecure and --root-certificates: give one of them")
    if insecure:
        return ["--insecure"]
    if root_certificates is None:
        raise VvkError("--root-certificates CA: TLS needs the CA certificate that signed the server's",
                       hint="or --insecure for none, if the server has none")  # fmt: skip
    return ["--root-certificates", _existing(root_certificates, "--root-certificates")]


def _check_client_domain(spec: str, size: int | None) -> None:
    """Read the domain as the client's ClientApps will, so that a wrong --data fails now, not in
    the first round. A folder is read only when --size says at what size (decoding its images
    at another size than the run's would be wasted; the ClientApps read it in any case)."""
    if size is None and os.path.isdir(spec):
        return
    from vvk.data.domains import load_domain
    from vvk.methods.federate.run import DIGIT_SIZE

    with as_flags(spec="--data", path="--data", size="--size"):
        load_domain(spec, size=size or DIGIT_SIZE)
