"""``vvk models``: the model registry."""

from __future__ import annotations

from typing import Annotated

import typer

from vvk.commands._options import JsonOpt
from vvk.commands._output import Output

app = typer.Typer(help="The model registry: names, tasks, sizes.", no_args_is_help=True)


@app.command("list")
def list_(
    pattern: Annotated[str | None, typer.Argument(help="Shell-style filter, e.g. 'r3d-rs-*'.")] = None,
    task: Annotated[str | None, typer.Option(help="Only models of this task.")] = None,
    flops: Annotated[
        bool,
        typer.Option(
            "--flops",
            help="Also count multiply-accumulates (MACs, the papers' 'FLOPs') at the default input.",
        ),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """List registered models with task, parameter count, default input and their named weights.

    Counts are taken on the meta device: nothing is allocated, no weights are needed. The weights
    column names the `vvk weights list` entries that load into each model; weights for torchvision
    and open_clip architectures are listed by `vvk weights list --model 'torchvision:*'` (or
    'open_clip:*').

    EXAMPLES: vvk models list  ·  vvk models list 'spinenet-*' --json  ·  vvk models list 'r3d-rs-*' --flops
    """
    from vvk.models import get_entry, list_models
    from vvk.models.profile import count_macs_by_name, count_params_by_name, human_count
    from vvk.weights import load_registry

    weights = load_registry().values()
    rows = []
    for name in list_models(pattern, task=task):
        entry = get_entry(name)
        rows.append(
            {
                "name": name,
                "task": entry.task,
                "params": count_params_by_name(name),
                "default_input": list(entry.default_input),
                "source": entry.source,
                "weights": [w.name for w in weights if w.architecture == name],
            }
        )
        if flops:
            rows[-1]["macs"] = count_macs_by_name(name)
    out = Output(json_output)
    if not rows and not json_output:
        out.note("no models match" if pattern or task else "the registry is empty")
    display = [
        {**r, "params": f"{r['params'] / 1e6:.2f}M", "weights": ", ".join(r["weights"]) or None} for r in rows
    ]
    columns = [
        ("name", "name"),
        ("task", "task"),
        ("params", "params"),
        ("default_input", "default input"),
        ("weights", "weights"),
    ]
    if flops:
        display = [{**r, "macs": human_count(r["macs"])} for r in display]
        columns.insert(3, ("macs", "MACs"))
    out.table(rows if json_output else display, columns)
