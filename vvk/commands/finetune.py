"""``vvk finetune``: supervised video classification, from scratch or from a pretrained backbone."""

from __future__ import annotations

import json
from typing import Annotated, Any

import click
import typer

from vvk.commands._options import JsonOpt, ResumeOpt, RunOutOpt, VerboseOpt, as_flags, read_data
from vvk.commands._output import Output, run_ended
from vvk.errors import VvkError

# vvk.methods.finetune.PRESETS, spelled here so that --help needs no torch (a test keeps them equal).
PRESET_NAMES = ("tiny", "rs", "rs-101-32f", "rs-152-32f", "rs-200-32f", "rs-200-48f", "ucf101", "vatt",
                "linear")  # fmt: skip
# The library's parameters as this command spells them (``VvkError.as_flags``).
_NAMES = ("data", "val", "backbone", "weights", "preset", "steps", "batch_size", "views", "seed", "out")
_FLAGS = {name: "--" + name.replace("_", "-") for name in _NAMES}
_SWITCHES = {"resume": "--resume", "freeze": "--freeze"}


def finetune(
    data: Annotated[
        str | None,
        typer.Option(
            metavar="PATH|-", help="Labelled videos: class/video.mp4 folders or a CSV list with labels."
        ),
    ] = None,
    val: Annotated[
        str | None, typer.Option(metavar="PATH|-", help="Labelled videos to test on after training.")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="Video backbone from `vvk models list` (default: the preset's).")
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            metavar="RUN|FILE|NAME|none",
            help="Pretrained backbone: a pretrain run folder, a checkpoint, a name from `vvk weights list` "
            "(default: none, random initialisation).",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            click_type=click.Choice(PRESET_NAMES),
            metavar="NAME",
            help="tiny (default: a CPU), rs (the 3D ResNet-RS K400 recipe), rs-200-48f (and rs-101-32f, "
            "rs-152-32f, rs-200-32f), ucf101, vatt (VATT's fine-tuning), linear (CVRL's linear eval).",
        ),
    ] = None,  # fmt: skip
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (default: the preset's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Clips per process per step.")] = None,
    freeze: Annotated[
        bool, typer.Option("--freeze", help="Train a linear classifier on frozen backbone features.")
    ] = False,
    views: Annotated[
        str | None,
        typer.Option(metavar="T,S", help="Test views: T clips x S crops, e.g. 10,3 (default: the preset's)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the data order, augmentation and init.")] = None,
    out: RunOutOpt = None,
    resume: ResumeOpt = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a preset field, e.g. train.lr=0.1."),
    ] = None,
    verbose: VerboseOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Train a video classifier on labelled videos and test it on --val.

    The preset is the recipe: rs is 3D ResNet-RS-50 on 32 frames (stride 2) at 224² with label
    smoothing, dropout, stochastic depth, L2, cosine with warm-up and an EMA of the weights; the
    rs-DEPTH-FRAMESf presets scale depth with frames. With --weights a pretrained backbone
    (ConST-CL, CVRL, TeG, VATT) starts the run: ucf101 and vatt are their fine-tuning recipes,
    --freeze (or linear) trains only a classifier on frozen features. The test averages softmax
    scores over T clips x S crops and reports top-1/top-5 for 1x1 and TxS. The run folder holds
    preset.json, metrics.jsonl, checkpoints/, backbone.safetensors and classifier.safetensors,
    and after the test evaluation.json, predictions.jsonl and confusion.csv/.png.

    EXAMPLES: vvk finetune --data k400/train --val k400/val --preset rs
              vvk finetune --data ucf/train --weights runs/cvrl-1 --preset ucf101
              vvk finetune --data train.csv --weights runs/c1 --freeze --views 4,3
              vvk finetune --out runs/f1 --resume --steps 2000
    """
    from vvk.methods.finetune.train import plan_finetune, run_finetune

    out_ = Output(json_output)
    if data == "-" and val == "-":
        raise VvkError("'-' (paths on stdin) may stand for --data or --val, not both")
    # Everything is checked here, before anything is printed or written.
    with as_flags(switches=_SWITCHES, **_FLAGS):
        plan = plan_finetune(
            data=None if data is None else read_data(data), val=None if val is None else read_data(val),
            backbone=backbone, weights=None if weights == "none" else weights, preset=preset,
            overrides=set_ or [], steps=steps, batch_size=batch_size, freeze=freeze, views=_views(views),
            seed=seed, out=out, resume=resume,
        )  # fmt: skip
    out_.note(_first_line(plan))
    if verbose:
        out_.note(f"resolved preset: {json.dumps(plan.record()['resolved'], separators=(',', ':'))}")
    with as_flags(switches=_SWITCHES, **_FLAGS):
        result = run_finetune(plan, progress=not json_output)
    if json_output:
        out_.record(_record(result))
    else:
        out_.note(_summary(result))
        out_.note(f"classifier: {result.classifier_path}  (backbone: {result.backbone_path})")
    if result.status == "interrupted":  # saved, yet not finished: a script must not go on as if it were
        raise VvkError(
            f"interrupted after step {result.step}; its checkpoint is in {result.run_dir}",
            hint=f"continue with: vvk finetune --resume --out {result.run_dir}",
            exit_code=130,  # as any interrupted command (vvk.cli.EXIT_INTERRUPTED)
        )


def _views(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise VvkError(f"--views {text}: expected CLIPS,CROPS (two whole numbers >= 1), e.g. 10,3")
    return int(parts[0]), int(parts[1])


def _first_line(plan) -> str:
    """What the run will do, in one line: backbone, start, preset, length, data and folder."""
    config = plan.config
    if plan.resume:
        return (f"resuming {plan.backbone_arch['name']} in {plan.run_dir} (preset {plan.preset}) up to step "
                f"{config.train.steps}")  # fmt: skip
    start = f"from {plan.weights}" if plan.weights else "from random initialisation"
    head = ", frozen: a linear classifier" if config.freeze else ""
    clips, crops = config.eval_views
    test = "no --val: not tested" if plan.val is None else f"tested {clips}x{crops}"
    return (f"training {plan.backbone_arch['name']} ({start}{head}; preset {plan.preset}) on "
            f"{len(plan.classes)} classes for {config.train.steps} steps of {config.train.batch_size} clips "
            f"({test}), into {plan.run_dir}")  # fmt: skip


def _summary(result) -> str:
    """The last line: status, steps, time, the last loss and the test's top-1 / top-5 per scheme."""
    ended = run_ended(result)
    scores = result.evaluation
    if not scores:
        return f"finetune: {ended} (not tested)"
    schemes = "; ".join(
        f"{name} views top-1 {s['top1']:.3f} top-5 {s['top5']:.3f}" for name, s in scores["schemes"].items()
    )
    return (f"finetune: {ended}; val ({scores['videos']} videos, {scores['classes']} classes, chance "
            f"{scores['chance']:.3f}, {scores['weights']} weights): {schemes}")  # fmt: skip


def _record(result) -> dict[str, Any]:
    return {
        "status": result.status, "step": result.step, "losses": result.losses,
        "evaluation": result.evaluation, "run_dir": str(result.run_dir),
        "backbone": str(result.backbone_path), "classifier": str(result.classifier_path),
        "data": result.data, "val": result.val,
        "seconds": round(result.seconds, 1),
        "skipped_files": result.summary.get("bad_files", {}).get("count", 0), "preset": result.preset,
    }  # fmt: skip
