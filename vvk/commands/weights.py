"""``vvk weights``: the registry of named checkpoints in weights.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from vvk.commands._options import JsonOpt, expand_stdin
from vvk.commands._output import Output
from vvk.errors import VvkError
from vvk.weights import TASKS

app = typer.Typer(help="Named checkpoints: list, inspect, download, verify.", no_args_is_help=True)

NamesArg = Annotated[list[str], typer.Argument(help="Registry names; '-' reads them from stdin.")]


@app.command("list")
def list_(
    task: Annotated[
        str | None, typer.Option(click_type=click.Choice(TASKS), help="Only entries of this task.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="PATTERN",
            help="Only entries whose architecture matches this shell-style pattern, tried on the whole "
            "architecture and on it without its 'torchvision:'/'open_clip:' prefix: 'r3d-rs-*', "
            "'open_clip:*', 'resnet50'.",
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """List every entry of the registry, the architecture it loads into, and whether it is cached.

    An architecture is a vvk model (`vvk models list`), torchvision:BUILDER or open_clip:CONFIG.

    EXAMPLES: vvk weights list --model 'open_clip:*'  ·  vvk weights list --json | jq -r .name
    """
    from vvk.weights import fits, load_registry

    rows = [
        e.summary()
        for e in load_registry().values()
        if (task is None or e.task == task) and (model is None or fits(e, model))
    ]
    out = Output(json_output)
    if not rows and not json_output:
        out.note("no weights match" if task or model else "the registry is empty")
    out.table(
        rows,
        [
            ("name", "name"),
            ("architecture", "architecture"),
            ("task", "task"),
            ("cached", "cached"),
            ("license", "licence"),
        ],
    )


@app.command("info")
def info(name: Annotated[str, typer.Argument(help="A registry name.")], json_output: JsonOpt = False) -> None:
    """Show one entry: source, file, sha256, licence, paper, reported metrics, cache path."""
    from vvk.weights import cached_path, get

    entry = get(name)
    record = {**entry.summary(), "path": cached_path(entry)}
    out = Output(json_output)
    if json_output:
        out.record(record)
    else:
        out.table(
            [{"field": k, "value": v} for k, v in record.items()], [("field", "field"), ("value", "value")]
        )


@app.command("pull")
def pull(names: NamesArg, json_output: JsonOpt = False) -> None:
    """Download entries into their cache (huggingface_hub, torch hub or vvk's) and verify sha256.

    Offline (HF_HUB_OFFLINE=1 or VVK_OFFLINE=1) a file that is not cached is an error at once.

    EXAMPLES: vvk weights pull clip-vit-b-32.openai
              vvk weights list --json | jq -r .name | vvk weights pull -
    """
    from vvk.weights import pull as pull_weights

    out = Output(json_output)
    for name in expand_stdin(names, what="name"):
        path = pull_weights(name, progress=not json_output)
        out.record({"name": name, "path": str(path), "status": "ok"})
        if not json_output:
            out.note(f"{name}: {path}")


@app.command("verify")
def verify(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="Registry names or files ('-' reads them from stdin); default: every cached entry."
        ),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Check sha256 of cached registry files or of local checkpoint files.

    A file is checked against its vvk sidecar, or against the registry entry whose file name it
    has. Exits non-zero if any file does not match.

    EXAMPLES: vvk weights verify  ·  vvk weights verify runs/a/backbone.safetensors
    """
    from vvk.weights import cached_path, load_registry

    registry = load_registry()
    if targets:
        rows = [_verify_target(t, registry) for t in expand_stdin(targets)]
    else:
        cached = [(e, cached_path(e)) for e in registry.values()]
        rows = [_check(e.name, path, e.sha256) for e, path in cached if path is not None]
    out = Output(json_output)
    if not rows and not json_output:
        out.note("nothing cached to verify")
    out.table(rows, [("target", "target"), ("status", "status"), ("sha256", "sha256"), ("path", "path")])
    bad = [r["target"] for r in rows if r["status"] != "ok"]
    if bad:
        raise VvkError(f"{len(bad)} file(s) failed verification: {', '.join(bad)}")


def _check(target: str, path: Path | None, expected: str) -> dict:
    from vvk.weights import sha256_file

    if path is None:
        return {"target": target, "status": "not cached", "sha256": None, "path": None}
    actual = sha256_file(path)
    status = "ok" if actual.startswith(expected) else f"MISMATCH (expected {expected})"
    return {"target": target, "status": status, "sha256": actual, "path": str(path)}


def _verify_target(target: str, registry) -> dict:
    """A registry name is checked in its cache; a file against its sidecar or a same-named entry."""
    from vvk.models.checkpoint import read_arch, sidecar_path
    from vvk.weights import cached_path

    if target in registry:
        return _check(target, cached_path(registry[target]), registry[target].sha256)
    path = Path(target)
    if not path.is_file():
        raise VvkError(f"{target}: neither a registry name nor a file")
    if sidecar_path(path).is_file():
        expected = read_arch(path)["sha256"]
        if not expected:
            raise VvkError(f"{sidecar_path(path)}: no sha256 recorded to check against")
        return _check(target, path, expected)
    matches = [e.sha256 for e in registry.values() if e.file == path.name]
    if not matches:
        raise VvkError(f"{target}: no sidecar and no registry entry for a file of this name to check against")
    return _check(target, path, matches[0])
