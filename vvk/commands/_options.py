"""Option types shared by every command, defined once."""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer

from vvk.errors import VvkError

JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="JSON lines on stdout (human output on stderr)."),
]

WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        metavar="PATH|NAME",
        help="Checkpoint, run folder, registry name, or hf-hub:REPO/FILE.",
    ),
]

DecoderOpt = Annotated[
    str,
    typer.Option(
        "--decoder",
        click_type=click.Choice(["auto", "pyav", "torchcodec"]),
        metavar="NAME",
        help="auto (torchcodec if it works, else PyAV), pyav, torchcodec.",
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
