"""``vvk train``: supervised training. ``vvk train detector`` trains a registered detector,
``vvk train tracker`` a SiamFC tracker on any vvk backbone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vvk.commands._options import JsonOpt, ResumeOpt, RunOutOpt, VerboseOpt, as_flags
from vvk.commands._output import Output, run_ended
from vvk.errors import VvkError

app = typer.Typer(
    help="Supervised training: detectors (RetinaNet, Mask R-CNN), trackers (SiamFC).", no_args_is_help=True
)

# The library's parameters as this command spells them (``VvkError.as_flags``).
_FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in (
        "model",
        "data",
        "val",
        "preset",
        "steps",
        "batch_size",
        "out",
        "weights",
        "method",
        "regions",
        "novel",
        "teacher",
        "query_encoder",
        "backbone",
    )
}
_SWITCHES = {
    "resume": "--resume",
    "copy_paste": "--copy-paste",
    "multitask": "--multitask",
    "freeze_backbone": "--freeze-backbone",
}


@app.command("detector")
def detector(
    model: Annotated[
        str | None,
        typer.Option(help="Detector from `vvk models list --task detection` (default: the preset's)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="COCO dataset: a folder or an instances_*.json (default: a demo).")
    ] = None,
    val: Annotated[Path | None, typer.Option(help="COCO dataset to score AP on during training.")] = None,
    preset: Annotated[
        str | None, typer.Option(help="tiny (default: 2 CPU cores) or paper (the reference recipe).")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (default: the preset's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per process per step.")] = None,
    copy_paste: Annotated[
        bool, typer.Option("--copy-paste", help="Add Simple Copy-Paste to the input pipeline.")
    ] = False,
    method: Annotated[
        str | None,
        typer.Option(
            help="ViLD open-vocabulary training: vild, vild-text, vild-image or vild-ensemble; "
            "qmd: query-modulated detection."
        ),
    ] = None,
    multitask: Annotated[
        bool, typer.Option("--multitask", help="QMD: also detect every category without a query.")
    ] = False,
    query_encoder: Annotated[
        str | None,
        typer.Option(
            help="QMD: label (a learned embedding per category, queried by name), or a text "
            "teacher for free-text queries: stand-in, a stand-in file or a CLIP from vvk weights list."
        ),
    ] = None,
    regions: Annotated[
        Path | None,
        typer.Option(help="ViLD: the teacher's region embeddings of --data (vvk detect embed-regions)."),
    ] = None,
    novel: Annotated[
        str | None,
        typer.Option(help="ViLD: categories without boxes in training: rare, coco17, FILE or a,b,c."),
    ] = None,
    teacher: Annotated[
        str | None, typer.Option(help="ViLD: stand-in, a stand-in file or a CLIP from vvk weights list.")
    ] = None,
    out: RunOutOpt = None,
    resume: ResumeOpt = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a preset field, e.g. train.lr=0.01."),
    ] = None,
    verbose: VerboseOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Train a detector on COCO-format data; without --data, a demo on a built-in example set.

    Inputs get the Copy-Paste paper's pipeline: scale jitter (the preset's scale_range), flip,
    crop or pad to a square of image_size; --copy-paste pastes objects of another image on each
    one. With --val, box AP (and mask AP for Mask R-CNN) is scored every eval_every steps and
    at the end, in metrics.jsonl. The run folder holds preset.json, config.json, metrics.jsonl,
    checkpoints/ and detector.safetensors, which vvk.models.load rebuilds with the data's
    category names. --resume continues a run on its data; only train.* fields may change.

    With --method, a ViLD detector (vild-*) learns open-vocabulary detection from a teacher's
    text embeddings (the classifier) and region embeddings (--regions, distilled); --novel
    categories lose their boxes in training and are scored apart (novel_bbox_AP50). Without
    --data, the built-in example with three held-out digits and a stand-in teacher.

    With --method qmd, a query-modulated detector (qmd-*) learns to find the category a query
    names: each training image asks for a category it holds or one it lacks (qmd.*_ratio), and
    qmd.queries_per_image - 1 more; the queries are the category names (--query-encoder label)
    or, with a text teacher, their texts and synonyms. Val is scored as query-conditioned AP
    (query_AP50: every image asked for each category it holds and one it lacks), and with
    --multitask also as box AP without queries.

    EXAMPLES: vvk train detector
              vvk train detector --data coco/train --val coco/val
              vvk train detector --out runs/d1 --resume --steps 3000
              vvk train detector --method vild --steps 400
              vvk train detector --method qmd --set qmd.modulation=product
              vvk train detector --method qmd --query-encoder clip-vit-b-32.openai --data coco/train
    """
    from vvk.methods.detection.train import plan_detector, run_detector

    out_ = Output(json_output)
    # Everything is checked here, before anything is printed or written.
    method_sets = [
        f"{key}={value}"
        for key, value in (
            ("vild.novel", novel),
            ("vild.teacher", teacher),
            ("qmd.query_encoder", query_encoder),
        )
        if value
    ]
    with as_flags(switches=_SWITCHES, **_FLAGS):
        plan = plan_detector(
            model=model, data=data, val=val, preset=preset, overrides=[*method_sets, *(set_ or [])],
            steps=steps, batch_size=batch_size, copy_paste=copy_paste, method=method, multitask=multitask,
            regions=regions, out=out, resume=resume,
        )  # fmt: skip
    out_.note(_first_line(plan))
    if plan.demo:
        out_.note(
            "no --data: a demo on vvk's built-in example set (digits pasted on scikit-image photos, "
            "made once into the user cache), scored on its val split"
        )
    if verbose:
        out_.note(f"resolved preset: {json.dumps(plan.record()['resolved'], separators=(',', ':'))}")
    with as_flags(switches=_SWITCHES, **_FLAGS):
        result = run_detector(plan, progress=not json_output)
    _report(out_, result, what="detector", exported=result.detector_path, summary=_summary(result))


def _report(out_: Output, result, *, what: str, exported: Path, summary: str) -> None:
    """A training run's end: its JSON record, or its summary and exported file; an interrupted
    run (saved, yet not finished) exits 130, so that a script does not go on as if it were done."""
    if out_.json_mode:
        out_.record(_record(result, what, exported))
    else:
        out_.note(summary)
        out_.note(f"{what}: {exported}")
    if result.status == "interrupted":
        raise VvkError(
            f"interrupted after step {result.step}; its checkpoint is in {result.run_dir}",
            hint=f"continue with: vvk train {what} --resume --out {result.run_dir}",
            exit_code=130,  # as any interrupted command (vvk.cli.EXIT_INTERRUPTED)
        )


def _first_line(plan) -> str:
    """What the run will do, in one line: model, preset, length, data and folder."""
    config = plan.config
    if plan.resume:
        return (f"resuming {config.model} in {plan.run_dir} (preset {plan.preset}) up to step "
                f"{config.train.steps}, on {plan.data}")  # fmt: skip
    paste = ", copy-paste" if config.copy_paste else ""
    return (f"training {config.model} (preset {plan.preset}{paste}) for {config.train.steps} steps of "
            f"{config.train.batch_size} images at {config.image_size}² on {plan.data} "
            f"({len(plan.categories)} categories), into {plan.run_dir}")  # fmt: skip


def _summary(result) -> str:
    """The last line: status, steps, time and the final AP."""
    done = run_ended(result, loss=False)
    scores = result.evaluation
    if not scores:
        return f"detector: {done} (no --val: not scored)"
    kinds = [("box", "bbox"), ("mask", "segm"), ("query", "query")]
    parts = [
        f"{name} AP {scores[f'{key}_AP']:.3f}, AP50 {scores[f'{key}_AP50']:.3f}"
        for name, key in kinds
        if f"{key}_AP" in scores
    ]
    return f"detector: {done}; val ({scores.get('images', '?')} images): {'; '.join(parts)}"


def _record(result, what: str, exported: Path) -> dict[str, Any]:
    return {
        "status": result.status,
        "step": result.step,
        "losses": result.losses,
        "evaluation": result.evaluation,
        "run_dir": str(result.run_dir),
        what: str(exported),
        "data": result.data,
        "val": result.val,
        "seconds": round(result.seconds, 1),
        "skipped_files": result.summary.get("bad_files", {}).get("count", 0),
        "preset": result.preset,
    }


@app.command("tracker")
def tracker(
    data: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Object tracks: an OTB folder, a GOT-10k split folder (list.txt) or a UCF101-24 folder "
            "(videos and their annotation pickle). Not needed with --resume.",
        ),
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option(metavar="OTB_ROOT", help="OTB folder to track and score (success, precision) on."),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Image or video backbone from `vvk models list` (default: the preset's, or the one "
            "--weights holds).",
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            metavar="RUN|FILE|NAME",
            help="Pretrained backbone: a `vvk pretrain` run folder, a backbone checkpoint or a name "
            "from `vvk weights list` (default: random initialisation).",
        ),
    ] = None,
    freeze_backbone: Annotated[
        bool, typer.Option("--freeze-backbone", help="Train the head only (the backbone's weights stay).")
    ] = False,
    preset: Annotated[
        str | None,
        typer.Option(help="tiny (default: a CPU in minutes) or paper (SiamFC's recipe on GOT-10k)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (default: the preset's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Pairs per process per step.")] = None,
    out: RunOutOpt = None,
    resume: ResumeOpt = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a preset field, e.g. train.lr=0.01."),
    ] = None,
    verbose: VerboseOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Train a SiamFC tracker on pairs of frames of one object track.

    The network: a backbone at stride 8 (dilated when needed), an optional 1×1 conv per branch,
    cross-correlation and a response adjust (--set model.*); the loss: SiamFC's balanced
    logistic loss (positives within r_pos of the centre). With --weights the backbone starts
    from a pretraining run; --freeze-backbone trains the head only, the linear-probe protocol
    of the self-supervised papers' OTB numbers. With --val, OTB success and precision are
    scored every eval_every steps and at the end, in metrics.jsonl (the result files in
    RUN/val/step-N/). The run folder holds preset.json, config.json, metrics.jsonl,
    checkpoints/ and tracker.safetensors, which `vvk track --weights RUN` tracks with.
    --resume continues a run on its data; only train.*, eval_every and val_sequences may change.

    EXAMPLES: vvk train tracker --data otb/ --val otb/
              vvk train tracker --data GOT-10k/train --weights runs/constcl-1 --freeze-backbone --preset paper
              vvk train tracker --out runs/t1 --resume --steps 600
    """
    from vvk.methods.tracking.train import plan_tracker, run_tracker

    out_ = Output(json_output)
    # Everything is checked here, before anything is printed or written.
    with as_flags(switches=_SWITCHES, **_FLAGS):
        plan = plan_tracker(
            data=data, val=val, backbone=backbone, weights=weights, freeze_backbone=freeze_backbone,
            preset=preset, overrides=set_ or [], steps=steps, batch_size=batch_size, out=out, resume=resume,
        )  # fmt: skip
    out_.note(_tracker_first_line(plan))
    if verbose:
        out_.note(f"resolved preset: {json.dumps(plan.record()['resolved'], separators=(',', ':'))}")
    with as_flags(switches=_SWITCHES, **_FLAGS):
        result = run_tracker(plan, progress=not json_output)
    _report(out_, result, what="tracker", exported=result.tracker_path, summary=_tracker_summary(result))


def _tracker_first_line(plan) -> str:
    """What the run will do, in one line: network, preset, length, data and folder."""
    config, model = plan.config, plan.config.model
    if plan.resume:
        return (f"resuming the {model.backbone} tracker in {plan.run_dir} (preset {plan.preset}) up to "
                f"step {config.train.steps}, on {plan.data}")  # fmt: skip
    start = f"from {plan.weights}" if plan.weights else "at random initialisation"
    head = ", head only" if model.freeze_backbone else ""
    return (f"training a SiamFC tracker on {model.backbone} ({start}{head}; preset {plan.preset}) for "
            f"{config.train.steps} steps of {config.train.batch_size} pairs from {len(plan.pairs.tracks)} "
            f"{plan.pairs.layout} tracks in {plan.data}, into {plan.run_dir}")  # fmt: skip


def _tracker_summary(result) -> str:
    """The last line: status, steps, time, the last loss and the final OTB scores."""
    ended = run_ended(result)
    scores = result.evaluation
    if not scores:
        return f"tracker: {ended} (no --val: not scored)"
    return (f"tracker: {ended}; val ({scores['sequences']} sequences, {scores['frames']} frames): "
            f"success {scores['success']:.3f}, precision {scores['precision']:.3f}")  # fmt: skip
