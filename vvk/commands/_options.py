"""Option types shared by every command, defined once."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
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

# What every training command (pretrain, train detector|tracker, finetune) takes for its run.
RunOutOpt = Annotated[Path | None, typer.Option("--out", help="Run folder (default: a new one in runs/).")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out, on its data, with its preset.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also print the resolved preset.")]

DATA_HELP = "Video folders, CSV/TSV lists, video files, or - (paths on stdin)."

DataArgs = Annotated[list[str], typer.Argument(metavar="DATA...", show_default=False, help=DATA_HELP)]

DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        metavar="PATH|-",
        help="Videos: a folder, a CSV/TSV list, a video file, or - (paths on stdin).",
    ),
]


def read_data(values: str | list[str]) -> str | list[str]:
    """What data arguments name, for the library's ``data`` parameter: the path as typed when
    one is given, else the paths (several given, or ``-``: read from stdin)."""
    values = [values] if isinstance(values, str) else list(values)
    if len(values) == 1 and values[0] != "-":
        return values[0]
    paths = expand_stdin(values)
    if not paths:
        raise VvkError("-: no paths on stdin", hint="e.g. ls videos/*.mp4 | vvk data check -")
    return paths


@contextmanager
def as_flags(*, switches: Mapping[str, str] | None = None, **flags: str) -> Iterator[None]:
    """Library errors raised inside name the parameters as this command spells them:
    ``with as_flags(data="--data"):`` turns ``data=videos/`` into ``--data videos/``
    (``VvkError.as_flags``; a positional argument maps to its metavar); ``switches`` maps a
    boolean parameter to its switch (``resume=True`` becomes ``--resume``)."""
    try:
        yield
    except VvkError as e:
        e.as_flags(flags)
        for name, flag in (switches or {}).items():
            e.message = e.message.replace(f"{name}=True", flag)
            e.hint = e.hint and e.hint.replace(f"{name}=True", flag)
        raise


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
