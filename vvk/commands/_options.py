"""Option types shared by every command, defined once."""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer

from vvk.errors import VvkError

JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json", help="Machine output: one JSON object per line on stdout; human output goes to stderr."
    ),
]

WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        metavar="PATH|NAME|hf-hub:REPO/FILE",
        help="A checkpoint file, a name from `vvk weights list`, or hf-hub:OWNER/REPO/FILE.",
    ),
]

DecoderOpt = Annotated[
    str,
    typer.Option(
        "--decoder",
        click_type=click.Choice(["auto", "pyav", "torchcodec"]),
        help="Video decoder (auto: torchcodec when it works here, else PyAV).",
    ),
]


def expand_stdin(values: list[str], *, what: str = "path") -> list[str]:
    """Replace a ``-`` argument by the lines of stdin (blank lines and ``#`` comments skipped)."""
    if values.count("-") > 1:
        raise VvkError(f"'-' (read {what}s from stdin) may be given only once")
    expanded: list[str] = []
    for value in values:
        if value != "-":
            expanded.append(value)
            continue
        lines = (line.strip() for line in sys.stdin)
        expanded.extend(line for line in lines if line and not line.startswith("#"))
    return expanded
