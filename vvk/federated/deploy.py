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
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from vvk.atomic import atomic_write_text
from vvk.errors import VvkError

from .server import RUN_CONFIG_DEFAULTS

APP_NAME = "vvk-federate"
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
