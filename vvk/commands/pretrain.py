"""``vvk pretrain <method>``: self-supervised pretraining of a video backbone.

One command per method of ``vvk.methods.registry``, each generated with only the options its
method reads (``--captions`` and ``--shared-backbone`` exist on ``vvk pretrain vatt`` alone), so
a foreign option is click's own "no such option" error, not an option silently ignored.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated

import typer

from vvk.commands._options import DecoderOpt, JsonOpt, ResumeOpt, RunOutOpt, VerboseOpt, as_flags, read_data
from vvk.commands._output import Output
from vvk.errors import VvkError
from vvk.methods.registry import MethodInfo, methods_for

app = typer.Typer(help="Self-supervised video pretraining: ConST-CL, TeG, VATT, CVRL.", no_args_is_help=True)

DEMO_REPEATS = 3  # augmentation draws averaged in the demo's retrieval check

# The library's parameters as this command spells them (``VvkError.as_flags``); the switches
# appear in library messages as ``name=True``.
_FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in ("data", "preset", "backbone", "steps", "batch_size", "out", "captions", "decoder")
}
_SWITCHES = {"resume": "--resume", "allow_new_data": "--allow-new-data"}
# Options only some methods read: the ``MethodInfo`` field that says whether a method does.
_METHOD_OPTIONS = {"captions": "reads_captions", "shared_backbone": "shared_backbone"}


def _options(
    data: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH|-", help="Videos: a folder, a CSV/TSV list, a video file, or - (paths on stdin)."
        ),
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="Backbone from `vvk models list` (default: the preset's).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Hyperparameter preset: tiny (default, a CPU), paper, ...")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Optimizer steps (default: the preset's; tiny: 1000).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Clips per process per step.")] = None,
    out: RunOutOpt = None,
    resume: ResumeOpt = False,
    allow_new_data: Annotated[
        bool, typer.Option("--allow-new-data", help="With --resume: go on with other --data.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a preset field, e.g. train.lr=0.2."),
    ] = None,
    captions: Annotated[
        Path | None, typer.Option(help="Captions: an ActivityNet-style TSV, or a folder of subtitles.")
    ] = None,
    shared_backbone: Annotated[
        bool, typer.Option("--shared-backbone", help="One modality-agnostic transformer for all inputs.")
    ] = False,
    decoder: DecoderOpt = None,
    verbose: VerboseOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Pretrain a video backbone; without --data, a short demo on a built-in example set.

    A run lasts the preset's steps unless --steps says otherwise: 1000 for the tiny preset, a
    few minutes on a laptop CPU. The run folder holds preset.json (the resolved preset and the
    data it reads), config.json, metrics.jsonl, checkpoints/ and backbone.safetensors (use it
    with --weights of other commands). --resume continues it on the same data, with the same
    preset; only train.* fields (--steps, ...) may change.

    EXAMPLES: vvk pretrain METHOD --data videos/ --out runs/a
              vvk pretrain METHOD --out runs/a --resume --steps 2000
              torchrun --nproc_per_node=8 -m vvk pretrain METHOD --data k400/ --preset paper
    """


def _run(
    method: str,
    *,
    data: Path | None = None,
    backbone: str | None = None,
    preset: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    out: Path | None = None,
    resume: bool = False,
    allow_new_data: bool = False,
    set_: list[str] | None = None,
    captions: Path | None = None,
    shared_backbone: bool = False,
    decoder: str | None = None,
    verbose: bool = False,
    json_output: bool = False,
) -> None:
    from vvk.methods.pretrain import plan_pretrain, run_pretrain

    if allow_new_data and not resume:
        raise VvkError("--allow-new-data: only with --resume (a new run takes any --data)")
    overrides = list(set_ or [])
    if shared_backbone:
        overrides.append("shared_backbone=true")
    out_ = Output(json_output)
    # Everything is checked here, before anything is printed, synthesised or written.
    with as_flags(switches=_SWITCHES, **_FLAGS):
        videos = None if data is None else read_data(str(data))  # '-': the paths on stdin
        plan = plan_pretrain(
            method, data=videos, preset=preset, overrides=overrides, backbone=backbone, steps=steps,
            batch_size=batch_size, out=out, resume=resume, allow_new_data=allow_new_data, captions=captions,
            decoder=decoder,
        )  # fmt: skip
    out_.note(_first_line(plan, data))
    if plan.demo:
        out_.note("no --data: a demo on vvk's built-in example set (synthetic videos from scikit-image's "
                  "sample photographs, made once into the user cache), then its clip retrieval compared "
                  "with random initialisation")  # fmt: skip
    if verbose:
        out_.note(f"resolved preset: {json.dumps(plan.record()['resolved'], separators=(',', ':'))}")
    with as_flags(switches=_SWITCHES, **_FLAGS):
        result = run_pretrain(plan, progress=not json_output)
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
        losses = ", ".join(f"{k} {v:.4f}" for k, v in result.losses.items())
        out_.note(f"{method}: {result.status} after {result.step} steps in {result.seconds:.0f} s ({losses})")
        evaluate = f"vvk eval retrieval --data DIR --weights {result.run_dir}"
        out_.note(f"backbone: {result.backbone_path}  ({evaluate})")
    interrupted = result.status == "interrupted"
    if plan.demo and not interrupted:
        record["demo_retrieval"] = _demo_retrieval(out_, result, progress=not json_output)
    if json_output:
        out_.record({**record, "preset": result.preset})
    if interrupted:  # saved, yet not finished: a script must not go on as if it were
        raise VvkError(
            f"interrupted after step {result.step}; its checkpoint is in {result.run_dir}",
            hint=f"continue with: vvk pretrain {method} --resume --out {result.run_dir}",
            exit_code=130,  # as any interrupted command (vvk.cli.EXIT_INTERRUPTED)
        )


def _first_line(plan, data: Path | None) -> str:
    """What the run will do, in one line: method, preset, length, data and folder, as typed."""
    train = plan.config.train
    where = data if data is not None else plan.data
    if plan.resume:
        return (f"resuming {plan.method} in {plan.run_dir} (preset {plan.preset}) up to step {train.steps}, "
                f"on {where}")  # fmt: skip
    return (f"pretraining {plan.method} (preset {plan.preset}) for {train.steps} steps of {train.batch_size} "
            f"clips on {where}, into {plan.run_dir}")  # fmt: skip


def _demo_retrieval(out_: Output, result, *, progress: bool) -> dict[str, float]:
    """Clip retrieval of the demo's backbone and of random initialisation on the example set."""
    from vvk.eval.retrieval import retrieval_gain

    out_.note("evaluating clip retrieval on the example set, pretrained vs random initialisation ...")
    gain = retrieval_gain(result.run_dir, result.data, repeats=DEMO_REPEATS, progress=progress)
    pretrained, random = gain["pretrained"]["recall@1"], gain["random"]["recall@1"]
    out_.note(
        f"retrieval recall@1 over {gain['pretrained']['videos']} videos ({DEMO_REPEATS} augmentation "
        f"draws): random initialisation {random:.3f} -> pretrained {pretrained:.3f} "
        f"(chance {gain['pretrained']['chance@1']:.3f})"
    )
    return {"recall@1": pretrained, "random_recall@1": random, "videos": gain["pretrained"]["videos"]}


def _takes(method: MethodInfo, option: str) -> bool:
    reads = _METHOD_OPTIONS.get(option)
    return reads is None or getattr(method, reads)


def _command(method: MethodInfo):
    """``vvk pretrain <method>``: ``_run`` behind a signature of the options ``method`` reads."""
    options = inspect.signature(_options, eval_str=True)
    kept = [p for p in options.parameters.values() if _takes(method, p.name)]

    def command(**given) -> None:
        _run(method.name, **given)

    command.__signature__ = options.replace(parameters=kept)  # what typer reads the options from
    command.__annotations__ = {p.name: p.annotation for p in kept}
    command.__name__ = command.__qualname__ = method.name
    return command


for _method in methods_for("pretrain"):
    _doc = inspect.cleandoc(_options.__doc__ or "").replace("METHOD", _method.name)
    app.command(_method.name, help=f"{_method.summary}\n\n{_doc}")(_command(_method))
