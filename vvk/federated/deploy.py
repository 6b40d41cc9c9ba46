"""The Flower App folder that ``flwr run`` submits to a SuperLink, for a deployed run.

Flower 1.42 deploys an app as a FAB (Flower App Bundle): ``flwr run FOLDER LINK`` zips the
folder's ``pyproject.toml`` (and any code beside it) and sends it to the SuperLink, which starts
the ServerApp the ``[tool.flwr.app.components]`` table names, and each SuperNode its ClientApp.
vvk's apps live in the installed package (``vvk.federated.server:server_app``,
``vvk.federated.client:client_app``), so the folder holds the ``pyproject.toml`` alone and every
machine must have vvk installed where its SuperLink or SuperNode runs (the SuperLink is started
with ``--disable-runtime-dependency-installation``, so nothing is installed at run time).

``[tool.flwr.app.config]`` declares the run config keys and their defaults (``flwr run
--run-config 'rounds=20 out="/runs/a"'`` may only override keys declared there):
``server.RUN_CONFIG_DEFAULTS``, with ``write_app``'s ``run_config`` on top.

A deployed run's server side (``vvk federate server``): ``prepare_server_run`` checks the run
before any process starts, ``write_app`` writes the folder, ``stream_run`` submits it to the
SuperLink and relays its log, ``run_status`` asks how it ended.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from vvk.atomic import atomic_write_text
from vvk.errors import VvkError

from .server import RUN_CONFIG_DEFAULTS

APP_NAME = "vvk-federate"
CONNECTION = "vvk"  # the SuperLink connection `flwr run` is given, in a FLWR_HOME of the server's own
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")  # what Flower accepts as an app (and folder) name


def write_app(folder: str | os.PathLike, run_config: Mapping[str, str | int | float | bool] | None = None,
              *, name: str = APP_NAME) -> Path:  # fmt: skip
    """Write the Flower App folder (its ``pyproject.toml``) for ``flwr run``; returns the folder.

    ``run_config``: defaults of this app's run config keys (``server.RUN_CONFIG_DEFAULTS`` has
    them all: ``method``, ``source``, ``targets``, ``rounds``, ``out``...). Flower requires the
    folder's name to be a valid app name (a letter, then letters, digits and hyphens)."""
    folder = Path(folder)
    if not _NAME.fullmatch(folder.name):
        raise VvkError(f"folder={folder}: Flower wants its name a letter, then letters, digits, hyphens",
                       params=("folder",))  # fmt: skip
    config = dict(RUN_CONFIG_DEFAULTS)
    for key, value in (run_config or {}).items():
        if key not in config:
            raise VvkError(
                f"run_config: unknown key {key} (one of {', '.join(config)})", params=("run_config",)
            )
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise VvkError(
                f"run_config: {key}={value!r} must be a string or a number", params=("run_config",)
            )
        config[key] = type(config[key])(value)
    lines = [
        "# Written by vvk.federated.deploy.write_app: `flwr run` submits this folder to a SuperLink.",
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f"name = {_toml(name)}",
        'version = "1.0.0"',
        'description = "vvk federate: DualAdapt (federated multi-target domain adaptation) on Flower"',
        'license = "Apache-2.0"',
        'dependencies = ["flwr>=1.42"]',
        "",
        "[tool.flwr.app]",
        'publisher = "vvk"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "vvk.federated.server:server_app"',
        'clientapp = "vvk.federated.client:client_app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml(value)}" for key, value in config.items()),
    ]
    atomic_write_text(folder / "pyproject.toml", "\n".join(lines) + "\n")
    return folder


def _toml(value: str | int | float) -> str:
    """A TOML value: a JSON string is a TOML basic string; numbers as Python writes them."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def prepare_server_run(
    source: str, targets: Sequence[str], *, method: str, rounds: int, clients_per_round: int | None,
    clients_per_target: int, preset: str, size: int | None, seed: int, out: str | os.PathLike | None,
    node_timeout: float, reply_timeout: float,
) -> tuple[Path, dict, int]:  # fmt: skip
    """The run folder (made), run config and number of clients of a deployed run, checked as its
    ServerApp will check them (the domains read, a run already in the folder the same run), so
    that bad input fails before a process starts."""
    from vvk.methods.federate.run import DIGIT_SIZE, IMAGE_SIZE, read_domains, resolve_settings
    from vvk.paths import default_run_dir

    from .checkpoints import RoundCheckpoints
    from .server import plan_from_run_config

    model = resolve_settings(preset).model
    size = size or (DIGIT_SIZE if model == "digit-cnn" else IMAGE_SIZE)
    for param, spec in [("source", source), *(("targets", t) for t in targets)]:
        if not spec.strip() or len(spec.split()) > 1:  # the run config lists the targets by spaces
            raise VvkError(f"{param}={spec!r}: a domain with a space in its name cannot be deployed",
                           params=(param,), hint="name the folder without spaces, or link to it")  # fmt: skip
    read_domains(source, targets, size=size)  # errors name source= or targets=
    clients = len(targets) * clients_per_target
    out = Path(out if out is not None else default_run_dir(f"federate-{method}")).resolve()
    config = {"method": method, "source": source, "targets": " ".join(targets), "size": size,
              "rounds": rounds, "clients-per-round": clients_per_round or clients,
              "clients-per-target": clients_per_target, "seed": seed, "preset": preset, "out": str(out),
              "node-timeout": node_timeout, "reply-timeout": reply_timeout}  # fmt: skip
    RoundCheckpoints(out, plan_from_run_config(config).identity()).check()
    out.mkdir(parents=True, exist_ok=True)
    return out, config, clients


_STARTED = re.compile(r"started run (\d+)")
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def stream_run(
    procs, app: Path, env: Mapping[str, str], *, echo: Callable[[str], object] | None = None
) -> int:
    """Submit the run (`flwr run APP CONNECTION --stream`, a process of ``procs``, a
    ``launch.Processes``) and pass its log, line by line, to ``echo`` (default: stderr, colours
    kept only for a terminal) until it ends; its Flower run id."""
    from .launch import console_script

    if echo is None:
        plain = not sys.stderr.isatty()

        def echo(line: str) -> None:
            sys.stderr.write(_COLOURS.sub("", line) if plain else line)
            sys.stderr.flush()

    run = procs.start([console_script("flwr"), "run", str(app), CONNECTION, "--stream"],
                      env=env, output=subprocess.PIPE)  # fmt: skip
    run_id = None
    for line in run.stdout:
        echo(line)
        if run_id is None and (found := _STARTED.search(line)):
            run_id = int(found.group(1))
    if run.wait() != 0 or run_id is None:
        raise VvkError(f"flwr run failed (exit code {run.returncode}; its output is above)")
    return run_id


def run_status(run_id: int, env: Mapping[str, str], wait: float = 30.0) -> tuple[str, str]:
    """The run's status (``finished:completed``, ``finished:failed``...) and its details, from
    `flwr ls`; the log stream ends as the run does, the status may follow a moment later."""
    from .launch import console_script

    args = [console_script("flwr"), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"]
    deadline = time.monotonic() + wait
    while True:
        try:
            listed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise VvkError(f"flwr ls: no answer about run {run_id} in 120 s") from None
        try:
            run = json.loads(listed.stdout)["runs"][0]
        except (ValueError, KeyError, IndexError):
            raise VvkError(
                f"flwr ls: no status for run {run_id} ({' '.join(listed.stderr.split())[-300:]})"
            ) from None
        if run["status"].startswith("finished") or time.monotonic() >= deadline:
            return run["status"], run.get("status-details") or ""
        time.sleep(1.0)
