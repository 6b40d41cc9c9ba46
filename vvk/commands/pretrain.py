"""``vvk pretrain <method>``: self-supervised pretraining of a video backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vvk.commands._options import DecoderOpt, JsonOpt
from vvk.commands._output import Output
from vvk.errors import VvkError
from vvk.methods.registry import methods_for

app = typer.Typer(help="Self-supervised video pretraining: ConST-CL, TeG, VATT, CVRL.", no_args_is_help=True)

DEMO_REPEATS = 3  # augmentation draws averaged in the demo's retrieval check


def run(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(help="A folder of videos or a CSV/TSV list (default: the built-in example set)."),
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="Backbone from `vvk models list` (default: the preset's).")
    ] = None,
    preset: Annotated[str, typer.Option(help="Hyperparameter preset: tiny (CPU), paper, ...")] = "tiny",
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (overrides the preset).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Clips per process per step.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: a new one in runs/).")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override any preset field, e.g. train.lr=0.2."),
    ] = None,
    captions: Annotated[Path | None, typer.Option(help="ActivityNet-style captions TSV (VATT).")] = None,
    shared_backbone: Annotated[
        bool,
        typer.Option("--shared-backbone", help="VATT: one modality-agnostic transformer for all modalities."),
    ] = False,
    decoder: DecoderOpt = "auto",
    json_output: JsonOpt = False,
) -> None:
    """Pretrain a video backbone; without --data, a short demo on a built-in example set.

    The run folder holds preset.json (the resolved preset), config.json, metrics.jsonl,
    checkpoints/ and backbone.safetensors (use it with --weights of other commands).
    Several GPUs: torchrun --nproc_per_node=8 -m vvk pretrain constcl --data kinetics/ --preset paper
    """
    from vvk.methods.pretrain import pretrain, resolve_preset

    method = ctx.info_name
    overrides = list(set_ or [])
    if shared_backbone:
        if method != "vatt":
            raise VvkError(f"--shared-backbone: only vatt has a modality-agnostic variant, not {method}")
        overrides.append("shared_backbone=true")
    # Bad presets and overrides fail here, before anything is printed or synthesised.
    resolve_preset(method, preset, overrides=overrides, backbone=backbone, steps=steps, batch_size=batch_size)
    out_ = Output(json_output)
    demo = data is None
    if demo:
        out_.note(f"no --data: pretraining {method} on vvk's built-in example set (synthetic videos from "
                  "scikit-image's sample photographs, synthesised once into the user cache), then "
                  "comparing its clip retrieval with random initialisation")  # fmt: skip
    result = pretrain(
        method, data=data, preset=preset, overrides=overrides, backbone=backbone, steps=steps,
        batch_size=batch_size, out=out, resume=resume, captions=captions, decoder=decoder,
        progress=not json_output,
    )  # fmt: skip
    record = {
        "method": method,
        "status": result.status,
        "step": result.step,
        "losses": result.losses,
        "run_dir": str(result.run_dir),
        "backbone": str(result.backbone_path),
        "data": result.data,
        "seconds": round(result.seconds, 1),
        "skipped_files": result.summary.get("skipped", {}).get("count", 0),
    }
    if not json_output:
        out_.note(f"resolved preset: {json.dumps(result.preset, separators=(',', ':'))}")
        losses = ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
        out_.note(f"{method}: {result.status} after {result.step} steps in {result.seconds:.0f} s ({losses})")
        evaluate = f"vvk eval retrieval --data DIR --weights {result.run_dir}"
        out_.note(f"backbone: {result.backbone_path}  ({evaluate})")
    interrupted = result.status == "interrupted"
    if demo and not interrupted:
        record["demo_retrieval"] = _demo_retrieval(out_, result)
    if json_output:
        out_.record({**record, "preset": result.preset})
    if interrupted:  # saved, yet not finished: a script must not go on as if it were
        raise VvkError(
            f"interrupted after step {result.step}; its checkpoint is in {result.run_dir}",
            hint=f"continue with: vvk pretrain {method} --resume --out {result.run_dir}",
            exit_code=130,  # as any interrupted command (vvk.cli.EXIT_INTERRUPTED)
        )


def _demo_retrieval(out_: Output, result) -> dict[str, float]:
    """Clip retrieval of the demo's backbone and of random initialisation on the example set."""
    from vvk.eval.retrieval import retrieval_gain

    out_.note("evaluating clip retrieval on the example set, pretrained vs random initialisation ...")
    gain = retrieval_gain(result.run_dir, result.data, repeats=DEMO_REPEATS)
    pretrained, random = gain["pretrained"]["recall@1"], gain["random"]["recall@1"]
    out_.note(
        f"retrieval recall@1 over {gain['pretrained']['videos']} videos ({DEMO_REPEATS} augmentation "
        f"draws): random initialisation {random:.3f} -> pretrained {pretrained:.3f} "
        f"(chance {gain['pretrained']['chance@1']:.3f})"
    )
    return {"recall@1": pretrained, "random_recall@1": random, "videos": gain["pretrained"]["videos"]}


for _method in methods_for("pretrain"):
    app.command(_method.name, help=_method.summary + "\n\n" + (run.__doc__ or ""))(run)
