"""``vvk track``: follow one object through a video from a box; ``vvk track run`` tracks every
sequence of an OTB folder, ``vvk track eval`` scores result folders (OTB success and precision)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from vvk.commands._options import JsonOpt, as_flags
from vvk.commands._output import Output, ProgressBar

# The library's parameters as these commands spell them (``VvkError.as_flags``).
_FLAGS = {
    "source": "VIDEO|FRAMES_DIR",
    "box": "--box",
    "weights": "--weights",
    "out": "--out",
    "draw": "--draw",
    "device": "--device",
    "max_frames": "--max-frames",
    "root": "--data",
    "sequences": "--sequences",
    "results_dir": "--results",
    "names": "--name",
    "missing_results": "--missing",
    "path": "--plot",
}
_RUN_COLUMNS = [("sequence", "sequence"), ("frames", "frames"), ("fps", "fps"), ("status", "status"),
                ("results", "results")]  # fmt: skip
_EVAL_COLUMNS = [
    ("name", "tracker"), ("success", "success (AUC)"), ("precision", "precision @20px"),
    ("num_sequences", "sequences"), ("frames", "frames"), ("missing_frames", "missing"),
]  # fmt: skip
_SEQUENCE_COLUMNS = [
    ("name", "tracker"), ("sequence", "sequence"), ("success", "success"), ("precision", "precision"),
    ("frames", "frames"), ("missing_frames", "missing"),
]  # fmt: skip

WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        metavar="RUN|FILE|NAME",
        show_default=False,
        help="A tracker (tracker.safetensors or its run folder), a `vvk pretrain` run folder or "
        "backbone file (a fresh SiamFC head on it), a name from `vvk weights list`, or "
        "random:tiny / random:paper (random initialisation, a baseline).",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(click_type=click.Choice(["auto", "cpu", "cuda"]), help="auto: the GPU if there is one."),
]
SequencesOpt = Annotated[
    str | None,
    typer.Option(
        metavar="A,B|FILE",
        help="Only these sequences: names separated by commas, or a list file such as tb_50.txt "
        "(a path, or a file in --data). Default: every sequence.",
    ),
]
DataOpt = Annotated[
    Path,
    typer.Option("--data", metavar="OTB_ROOT", show_default=False, help="Folder of OTB sequence folders."),
]


def track(
    source: Annotated[
        str,
        typer.Argument(
            metavar="VIDEO|FRAMES_DIR",
            show_default=False,
            help="A video file, or a folder of frames ordered by the number in their names.",
        ),
    ],
    box: Annotated[
        str,
        typer.Option(
            metavar="X,Y,W,H",
            show_default=False,
            help="The target in the first frame: left, top (1-based pixels, OTB), width, height.",
        ),
    ],
    weights: WeightsOpt,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE", help="Write the boxes to FILE (default: stdout), one x,y,w,h line a frame."
        ),
    ] = None,
    draw: Annotated[
        Path | None,
        typer.Option(metavar="VIDEO", help="Write the video with the box drawn (.mp4 .mov .mkv .avi)."),
    ] = None,
    max_frames: Annotated[int | None, typer.Option(min=1, help="Track the first N frames only.")] = None,
    device: DeviceOpt = "auto",
    json_output: JsonOpt = False,
) -> None:
    """Track one object through a video from its box in the first frame (SiamFC).

    Prints one box per frame, x,y,w,h in OTB's convention (1-based pixels; the first line is
    --box), on stdout or into --out; with --json, one record {"source", "frames", "boxes",
    "fps", "seconds", "device", "weights", "out", "draw"} instead. fps counts the tracker's own
    work, as the OTB toolkits time it (decoding excluded); it is also reported on stderr, with a
    progress bar. --draw writes the video with the box drawn, H.264 (MPEG-4 part 2 where PyAV
    lacks libx264), at the video's frame rate (30 fps for a folder of frames).

    VIDEO is any file FFmpeg decodes; FRAMES_DIR a folder of .jpg/.png/... frames ordered by the
    last number in their names (00000001.jpg, frame_12.png). Files are written whole or not at
    all: Ctrl-C leaves no partial --out or --draw (exit 130). A video file named run or eval
    is given as ./run (the names of the subcommands).

    `vvk track run` tracks every sequence of an OTB folder, `vvk track eval` scores the results
    (see their --help).

    EXAMPLES: vvk track bag.avi --box 292,125,150,139 --weights runs/tracker --draw bag-tracked.mp4
              vvk track otb/Crossing/img --box 205,151,17,50 --weights runs/constcl-1 --out crossing.txt
              vvk track bag.avi --box 292,125,150,139 --weights random:tiny --json | jq .fps
    """
    from vvk.methods.tracking.run import format_boxes, track_video

    human = Output(json_output)
    with as_flags(**_FLAGS), ProgressBar(human, "track", show=not json_output) as progress:
        result = track_video(
            source, box, weights=weights, out=out, draw=draw, device=device, max_frames=max_frames,
            progress=progress,
        )  # fmt: skip
    if json_output:
        human.record(result.record())
        return
    if out is None:
        sys.stdout.write(format_boxes(result.boxes))
    human.note(
        f"{len(result.boxes)} frames of {result.source} in {result.seconds:.1f} s; tracker: "
        f"{result.fps:.1f} frames/s on {result.device}"
    )
    for what, path in (("boxes", result.out), ("drawn", result.draw)):
        if path is not None:
            human.note(f"{what}: {path}")


subcommands = typer.Typer(context_settings={"help_option_names": ["-h", "--help"]})
"""``vvk track run`` and ``vvk track eval`` (``vvk.cli.CommandWithSubcommands.of``)."""


@subcommands.command("run")
def run(
    data: DataOpt,
    weights: WeightsOpt,
    out: Annotated[
        Path,
        typer.Option(metavar="RESULTS_DIR", show_default=False, help="Folder of the <sequence>.txt results."),
    ],
    sequences: SequencesOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Track again the sequences whose results are there.")
    ] = False,
    device: DeviceOpt = "auto",
    json_output: JsonOpt = False,
) -> None:
    """Track every sequence of an OTB folder from its first ground-truth box (one-pass evaluation).

    Writes RESULTS_DIR/<sequence>.txt, one x,y,w,h line per evaluated frame (got10k's and OTB's
    results format, which `vvk track eval` and the other OTB toolkits read), each file whole as
    its sequence ends. Sequences whose results are there already are skipped unless
    --overwrite, so a run stopped by Ctrl-C (exit 130) continues where it stopped. Prints each
    sequence's frames and the tracker's fps (a table; JSON lines with --json, one per sequence
    as it ends).

    EXAMPLES: vvk track run --data otb/ --weights runs/tracker --out results/tracker
              vvk track run --data otb/ --weights random:tiny --out results/random --sequences tb_50.txt
    """
    from vvk.methods.tracking.run import track_otb

    human = Output(json_output)
    with as_flags(**_FLAGS), ProgressBar(human, "track", show=not json_output) as progress:
        runs = track_otb(
            data, weights=weights, out=out, sequences=sequences, overwrite=overwrite, device=device,
            progress=progress, on_sequence=lambda run: human.record(run.record()),
        )  # fmt: skip
    if json_output:
        return
    rows = [{**r.record(), "fps": "-" if r.fps is None else f"{r.fps:.1f}"} for r in runs]
    human.table(rows, _RUN_COLUMNS)
    skipped = sum(r.status == "skipped" for r in runs)
    also = f", {skipped} skipped (results there; --overwrite redoes them)" if skipped else ""
    human.note(f"{len(runs) - skipped} sequence(s) tracked{also}: {out}")


@subcommands.command("eval")
def evaluate(
    data: DataOpt,
    results: Annotated[
        list[Path],
        typer.Option(
            "--results",
            metavar="RESULTS_DIR",
            show_default=False,
            help="A tracker's <sequence>.txt files (any tracker's, OTB format); repeat to compare.",
        ),
    ],
    name: Annotated[
        list[str] | None,
        typer.Option("--name", help="The tracker's name in tables and plots, one per --results."),
    ] = None,
    sequences: SequencesOpt = None,
    missing: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(["error", "fail"]),
            help="A sequence without results: an error, or scored as lost from frame 2 on.",
        ),
    ] = "error",
    plot: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Draw the success and precision plots (.png .pdf .svg)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also each sequence's scores.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """OTB success and precision of tracking results (one-pass evaluation, got10k's definitions).

    Success is the area under the success curve (the fraction of frames whose overlap with the
    ground truth exceeds each threshold 0, 0.05, ..., 1); precision the fraction of frames whose
    centre is within 20 pixels of the ground truth's. Frame 1 counts, scored as the box the
    tracker was given; every sequence weighs the same; a frame without a prediction (a blank
    line, NaN) is a failure. A results file holds one x,y,w,h line (commas, tabs or spaces) per
    evaluated frame, or per image of the sequence's folder.

    Prints a row per tracker (and per sequence with --verbose); with --json, one record per
    tracker with its curves and every sequence's scores. --plot draws the success and precision
    plots with each tracker's score in the legend, as OTB papers show them.

    EXAMPLES: vvk track eval --data otb/ --results results/tracker
              vvk track eval --data otb/ --results results/a --results results/b --name pretrained \\
                  --name random --plot otb.png
    """
    from vvk.eval.tracking import evaluate_results, plot_otb

    human = Output(json_output)
    with as_flags(**_FLAGS):
        reports = evaluate_results(
            data, results, names=name or None, sequences=sequences, missing_results=missing
        )
        if plot is not None:
            plot_otb(reports, plot)
    if json_output:
        for tracker, report in reports.items():
            human.record({"name": tracker, **report})
    else:
        human.table([_row(t, r) for t, r in reports.items()], _EVAL_COLUMNS)
        if verbose:
            rows = [_row(t, s, sequence=q) for t, r in reports.items() for q, s in r["sequences"].items()]
            human.table(rows, _SEQUENCE_COLUMNS)
    if plot is not None:
        human.note(f"plot: {plot}")


def _row(tracker: str, scores: dict[str, Any], **extra: str) -> dict[str, Any]:
    return {**scores, **extra, "name": tracker,
            "success": f"{scores['success']:.3f}", "precision": f"{scores['precision']:.3f}"}  # fmt: skip
