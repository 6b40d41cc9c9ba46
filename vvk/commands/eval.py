"""``vvk eval``: evaluate a (pretrained or random) video backbone, or detection results."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from vvk.commands._options import DataOpt, DecoderOpt, JsonOpt, WeightsOpt, as_flags, read_data
from vvk.commands._output import Output
from vvk.errors import VvkError

app = typer.Typer(
    help="Evaluate video backbones (clip retrieval, linear probe) and detections (COCO/LVIS AP).",
    no_args_is_help=True,
)

BackboneOpt = Annotated[
    str | None,
    typer.Option("--backbone", help="Architecture to evaluate at random init."),
]
FramesOpt = Annotated[int | None, typer.Option(min=1, help="Frames per clip (default: the run's, else 16).")]
StrideOpt = Annotated[int | None, typer.Option(min=1, help="Frame stride (default: the run's, else 2).")]
SizeOpt = Annotated[int | None, typer.Option(min=8, help="Short side (default: the run's, else 128).")]
CropOpt = Annotated[int | None, typer.Option(min=8, help="Centre crop (default: the run's, else 112).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the augmentation and random init.")]
# How the library's parameters are spelled on these commands' command lines.
FLAGS = {name: f"--{name}" for name in ("data", "val", "weights", "backbone", "crop", "size")}
LOCALIZATION_FLAGS = ("annotations", "train_annotations", "label_map", "excluded", "head")


def _setup(weights, backbone, seed, decoder, **clip_options):
    """The backbone, what is known of it, and the clip reader (shape from options or its run)."""
    from vvk.eval.features import ClipReader, clip_spec_for, load_backbone

    model, info = load_backbone(weights, backbone=backbone, seed=seed)
    return model, info, ClipReader(clip_spec_for(info, **clip_options), decoder=decoder)


def _print(out: Output, record: dict, metrics: list[str]) -> None:
    if out.json_mode:
        out.record(record)
        return
    rows = [{"metric": m, "value": f"{record[m]:.4f}"} for m in metrics]
    rows += [{"metric": k, "value": record[k]} for k in record if k not in metrics]
    out.table(rows, [("metric", "metric"), ("value", "value")])


@app.command("retrieval")
def retrieval(
    data: DataOpt,
    weights: WeightsOpt = None,
    backbone: BackboneOpt = None,
    frames: FramesOpt = None,
    stride: StrideOpt = None,
    size: SizeOpt = None,
    crop: CropOpt = None,
    repeats: Annotated[int, typer.Option(min=1, help="Augmentation draws averaged.")] = 1,
    compare_random: Annotated[
        bool, typer.Option("--compare-random", help="Also evaluate it at random initialisation.")
    ] = False,
    seed: SeedOpt = 0,
    decoder: DecoderOpt = "auto",
    json_output: JsonOpt = False,
) -> None:
    """Clip retrieval recall@1/5: a clip of each video at one time finds the differently augmented
    clip of the same video at another time among all videos' clips. Needs no labels.

    The backbone is --weights (a checkpoint, a run folder, a name from `vvk weights list`, or
    hf-hub:OWNER/REPO/FILE), or --backbone at random initialisation, a baseline; with --weights,
    --compare-random also evaluates its architecture at random initialisation. The clips'
    shape (--frames, --stride, --size, --crop) defaults to the run's preset.

    EXAMPLES: vvk eval retrieval --data videos/ --weights runs/constcl-1
              vvk eval retrieval --data videos/ --backbone r3d-50 --json
    """
    from vvk.eval.retrieval import retrieval as run_retrieval

    if compare_random and weights is None:
        raise VvkError("--compare-random needs --weights (the pretrained backbone to compare)")
    videos = read_data(data)
    with as_flags(**FLAGS):
        model, info, reader = _setup(
            weights, backbone, seed, decoder, frames=frames, stride=stride, size=size, crop=crop
        )
        common = {"reader": reader, "seed": seed, "repeats": repeats, "progress": not json_output}
        result = run_retrieval(model, videos, **common)
        if compare_random:
            from vvk.eval.features import random_twin

            baseline = run_retrieval(random_twin(weights, seed=seed), videos, label="random init", **common)
            result.update({f"random_{k}": baseline[k] for k in ("recall@1", "recall@5")})
    shown = [k for k in ("recall@1", "recall@5", "random_recall@1", "random_recall@5") if k in result]
    _print(Output(json_output), {"protocol": "retrieval", "weights": info["source"], **result}, shown)


@app.command("text-retrieval")
def text_retrieval(
    data: DataOpt,
    captions: Annotated[
        str,
        typer.Option(metavar="TABLE|FOLDER", help="A caption table, or a folder of .srt/.vtt files."),
    ],
    weights: Annotated[
        str | None, typer.Option(metavar="RUN", help="A `vvk pretrain vatt` run folder.")
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="VATT at random init: its video transformer (vatt-video-tiny, vatt-ut-tiny, ...)."),
    ] = None,
    frames: Annotated[int | None, typer.Option(min=1, help="Frames (default: the preset's).")] = None,
    stride: Annotated[int | None, typer.Option(min=1, help="Frame stride (default: the preset's).")] = None,
    size: Annotated[int | None, typer.Option(min=8, help="Short side (default: the preset's).")] = None,
    crop: Annotated[int | None, typer.Option(min=8, help="Centre crop (default: the preset's).")] = None,
    num_clips: Annotated[int, typer.Option(min=1, help="Clips averaged per video.")] = 4,
    compare_random: Annotated[
        bool, typer.Option("--compare-random", help="Also evaluate the run's VATT at random initialisation.")
    ] = False,
    seed: SeedOpt = 0,
    decoder: DecoderOpt = "auto",
    json_output: JsonOpt = False,
) -> None:
    """Zero-shot text-video retrieval with VATT: text->video and video->text recall@1/5/10 and
    median rank (t2v_*, v2t_*), by cosine similarity in VATT's video-text space (video transformer
    and FAC head for the clips, averaged over --num-clips per video; text transformer for the
    captions). Ranks count ties against the model.

    --captions names videos by file name without extension (the table of `vvk pretrain vatt
    --captions`); captions of videos not in --data are ignored. The model is --weights, a VATT
    run folder (its latest checkpoint: text transformer and FAC head included), or --backbone,
    the VATT preset with that video transformer at random initialisation (seeded with --seed), a
    baseline; --compare-random also evaluates the run's own VATT at random initialisation. The
    clips' shape defaults to the run's (or the preset's), sampled at its frame rate.

    EXAMPLES: vvk eval text-retrieval --data set/val.csv --captions set/captions.tsv --weights runs/vatt-1
              vvk eval text-retrieval --data clips/ --captions captions.tsv --backbone vatt-video-tiny --json
    """
    from vvk.methods.vatt.retrieval import clip_spec, load_vatt, random_vatt
    from vvk.methods.vatt.retrieval import vatt_text_retrieval as run_text_retrieval

    if compare_random and weights is None:
        raise VvkError("--compare-random needs --weights (the VATT run to compare)")
    videos = read_data(data)
    with as_flags(**FLAGS, captions="--captions"):
        model, preset, source = load_vatt(weights, backbone=backbone, seed=seed)
        clips = clip_spec(preset, frames=frames, stride=stride, size=size, crop=crop)
        common = {"clips": clips, "fps": preset.fps, "num_clips": num_clips, "decoder": decoder,
                  "progress": not json_output}  # fmt: skip
        result = run_text_retrieval(model, videos, captions, **common)
        metrics = [k for k in result if k.startswith(("t2v_", "v2t_"))]
        if compare_random:
            baseline = run_text_retrieval(
                random_vatt(preset, seed=seed), videos, captions, label="random init", **common
            )
            result.update({f"random_{k}": baseline[k] for k in metrics})
            metrics += [f"random_{k}" for k in metrics]
    _print(Output(json_output), {"protocol": "text-retrieval", "weights": source, **result}, metrics)


@app.command("linear-probe")
def linear_probe(
    data: DataOpt,
    weights: WeightsOpt = None,
    backbone: BackboneOpt = None,
    val: Annotated[
        str | None,
        typer.Option(metavar="PATH|-", help="Validation videos, as --data (default: a hold-out)."),
    ] = None,
    holdout: Annotated[
        float, typer.Option(min=0.05, max=0.95, help="Hold-out fraction without --val.")
    ] = 0.5,
    num_clips: Annotated[int, typer.Option(min=1, help="Clips averaged per video.")] = 4,
    frames: FramesOpt = None,
    stride: StrideOpt = None,
    size: SizeOpt = None,
    crop: CropOpt = None,
    seed: SeedOpt = 0,
    decoder: DecoderOpt = "auto",
    json_output: JsonOpt = False,
) -> None:
    """Top-1/top-5 of a linear classifier on frozen, multi-clip-averaged features. Needs labels
    (class subfolders, or a list file with labels).

    The backbone and the clips' shape are chosen as for `vvk eval retrieval`.

    EXAMPLES: vvk eval linear-probe --data ucf/train --val ucf/test --weights runs/cvrl-1
    """
    from vvk.eval.linear_probe import linear_probe as run_probe

    videos, val_videos = read_data(data), None if val is None else read_data(val)
    with as_flags(**FLAGS):
        model, info, reader = _setup(
            weights, backbone, seed, decoder, frames=frames, stride=stride, size=size, crop=crop
        )
        result = run_probe(
            model, videos, val=val_videos, holdout=holdout, reader=reader, num_clips=num_clips, seed=seed,
            progress=not json_output,
        )  # fmt: skip
    _print(
        Output(json_output),
        {"protocol": "linear-probe", "weights": info["source"], **result},
        ["top1", "top5"],
    )


@app.command("detections")
def detections(
    gt: Annotated[
        str,
        typer.Option("--gt", metavar="INSTANCES.json", help="Ground truth: a COCO or LVIS instances file."),
    ],
    dt: Annotated[
        str,
        typer.Option("--dt", metavar="RESULTS.json|-", help="Detections: a COCO results file, or - (stdin)."),
    ],
    iou_type: Annotated[
        str,
        typer.Option("--iou-type", click_type=click.Choice(["bbox", "segm"]), help="Score boxes or masks."),
    ] = "bbox",
    novel: Annotated[
        str | None,
        typer.Option(
            metavar="rare|coco17|FILE|NAMES",
            help="Also score the base and the novel categories of an open-vocabulary split apart.",
        ),
    ] = None,
    queries: Annotated[
        bool,
        typer.Option(
            "--queries",
            help='Query-conditioned AP (query_AP, query_AP50) of records that carry "query" (a '
            "category name): the pairs scored are exactly the (image_id, query) pairs the file "
            "answers, each pair's ground truth that category's boxes in that image.",
        ),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """COCO box or mask AP of a results file (pycocotools' COCOeval: AP, AP50, AP75, APs/m/l,
    AR1/10/100, ARs/m/l); for LVIS ground truth, chosen from the file, LVIS AP (lvis' LVISEval:
    adds APr/c/f for rare, common and frequent categories, AR at 300 detections). Undefined
    values (no ground truth of that size) are -1, as the evaluators report them.

    The results file is a JSON list of records {image_id, category_id, bbox, score} (bbox: x, y,
    width, height in pixels), with a segmentation (an RLE) for masks, as `vvk detect --format
    coco-results --out FILE` writes it; - reads it from stdin. It is checked first: an unknown image or
    category id, a string id, a box of negative or NaN size, a missing field is an error naming
    the record.

    With --novel (LVIS's rare categories, COCO's open-vocabulary 17, a file of names or names
    separated by commas), the stats are also given over the novel categories (novel_AP, ...) and
    over the others (base_AP, ...), as ViLD reports them.

    With --queries, the file holds a query detector's answers (`vvk detect --query ... --format
    coco-results`): each (image_id, query) pair it answers is a pseudo-image of one category,
    "the queried thing", and one COCO evaluation pools them all (a box answered for a category
    the image lacks is a false positive). A record with a null bbox answers its pair with
    nothing. Only the pairs in the file are scored: a pair never asked counts for nothing.

    EXAMPLES: vvk eval detections --gt annotations/instances_val2017.json --dt results.json
              vvk eval detections --gt lvis_v1_val.json --dt results.json --iou-type segm --json
              vvk eval detections --gt instances_val2017.json --dt results.json --novel coco17
              vvk eval detections --gt instances_val2017.json --dt answers.json --queries
    """
    from vvk.eval.detection import evaluate_detections, load_ground_truth

    if dt == "-":
        results, name = _read_stdin_json(), "<stdin>"
    else:
        results, name = dt, None
    with as_flags(novel="--novel"):
        truth = load_ground_truth(gt)
        if queries:
            _print(Output(json_output), *_query_scores(truth, gt, dt, results, name, novel=novel))
            return
        scores = evaluate_detections(truth, results, iou_type=iou_type, results_name=name)
        record = {"protocol": "detections", "gt": gt, "dt": dt, **scores.as_dict()}
        metrics = list(scores.stats)
        if novel is not None:
            from vvk.methods.vild.split import base_and_novel, novel_categories

            categories = [truth.api.cats[i] for i in sorted(truth.category_ids)]
            for split, ids in base_and_novel(categories, novel_categories(novel, categories)).items():
                part = evaluate_detections(
                    truth, results, iou_type=iou_type, results_name=name, category_ids=ids
                )
                record.update({f"{split}_{k}": v for k, v in part.stats.items()})
                metrics += [f"{split}_{k}" for k in part.stats]
    _print(Output(json_output), record, metrics)


def _query_scores(truth, gt: str, dt: str, results, name: str | None, *, novel: str | None):
    """(record, metrics) of --queries: query-conditioned AP of the pairs the results answer."""
    from vvk.data.coco import read_json
    from vvk.methods.detection.query_eval import score_answered_pairs

    if novel is not None:
        raise VvkError("--novel: not with --queries (query AP pools every category)")
    records = read_json(results) if name is None else results
    if not isinstance(records, list):
        raise VvkError(f"{dt}: expected a JSON list of result records")
    scores = score_answered_pairs(truth, records, name=name or dt)
    return {"protocol": "query-detections", "gt": gt, "dt": dt, **scores}, ["query_AP", "query_AP50"]


def _read_stdin_json():
    import json
    import sys

    try:
        return json.loads(sys.stdin.read())
    except json.JSONDecodeError as e:
        raise VvkError(f"<stdin>:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None


@app.command("action-localization")
def action_localization(
    annotations: Annotated[
        str, typer.Option(metavar="CSV|PKL", help="Key frames scored: an AVA CSV or UCF101-24's .pkl.")
    ],
    data: DataOpt = None,
    train_annotations: Annotated[
        str | None,
        typer.Option(metavar="CSV|PKL", help="Key frames trained on (default: a per-frame split)."),
    ] = None,
    label_map: Annotated[
        str | None, typer.Option(metavar="PBTXT|CSV", help="AVA label map (.pbtxt, or id,name CSV).")
    ] = None,
    excluded: Annotated[str | None, typer.Option(metavar="CSV", help="AVA excluded timestamps.")] = None,
    weights: WeightsOpt = None,
    backbone: BackboneOpt = None,
    preset: Annotated[
        str, typer.Option(click_type=click.Choice(["default", "tiny"]), help="Protocol settings.")
    ] = "default",
    frames: Annotated[int | None, typer.Option(min=1, help="Frames per clip (default: preset's).")] = None,
    stride: Annotated[int | None, typer.Option(min=1, help="Frame stride (default: preset's).")] = None,
    size: Annotated[int | None, typer.Option(min=8, help="Short side (default: preset's).")] = None,
    head: Annotated[
        str | None,
        typer.Option(click_type=click.Choice(["linear", "transformer"]), help="RoI head (default: linear)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: preset's).")] = None,
    finetune_backbone: Annotated[
        bool, typer.Option("--finetune-backbone", help="Train the backbone too (default: frozen).")
    ] = False,
    seed: SeedOpt = 0,
    decoder: DecoderOpt = "auto",
    out: Annotated[str | None, typer.Option(metavar="FILE.json", help="Also write the result here.")] = None,
    json_output: JsonOpt = False,
) -> None:
    """Frame-mAP at IoU 0.5 of spatio-temporal action localization with ground-truth boxes
    (ConST-CL's AVA / UCF101-24 protocol): a clip centred on each key frame goes through the
    backbone, each person box is pooled by RoIAlign-3D, and a classifier (sigmoid per action for
    AVA, softmax for UCF101-24) is trained on the training key frames, the backbone frozen unless
    --finetune-backbone. Every box of the evaluated key frames is then scored for every action,
    and the AP of each action is computed as the AVA evaluator computes it.

    --annotations is an AVA CSV (video_id, timestamp, x1, y1, x2, y2, action_id[, person_id]),
    with --label-map and --excluded as AVA ships them, or UCF101-24's
    pyannot_with_class_names.pkl; a video id is a --data file's name without extension,
    alone or after its folder's (Biking/v_Biking_g01_c01).
    Without --train-annotations, a seeded half of the key frames trains the head: neighbouring
    frames then land on both sides, so the score only shows that the pipeline runs. Rows of
    missing videos, past a video's end, with boxes outside 0..1 or unknown actions are skipped
    and counted. The backbone is --weights, or --backbone at random initialisation, as for
    `vvk eval retrieval`.

    EXAMPLES: vvk eval action-localization --data ucf24/ --backbone r3d-tiny
                --annotations ucf24/pyannot_with_class_names.pkl --preset tiny
              vvk eval action-localization --data ava/videos --weights runs/c1
                --annotations val.csv --train-annotations train.csv
                --label-map ava_action_list_v2.2.pbtxt --excluded excluded.csv
    """
    import dataclasses
    import json

    from vvk.atomic import atomic_write_text
    from vvk.data.index import ensure_outside
    from vvk.data.sources import data_paths
    from vvk.eval.features import load_backbone
    from vvk.methods.localization import PRESETS
    from vvk.methods.localization import action_localization as run_localization

    if data is None:
        raise VvkError("--data: the videos the annotations name are needed")
    given = {"frames": frames, "stride": stride, "size": size, "head": head, "steps": steps,
             "finetune_backbone": finetune_backbone or None}  # fmt: skip
    settings = dataclasses.replace(PRESETS[preset], **{k: v for k, v in given.items() if v is not None})
    videos = read_data(data)
    with as_flags(**FLAGS, **{name: f"--{name.replace('_', '-')}" for name in LOCALIZATION_FLAGS}):
        for source in data_paths(videos) if out is not None else ():
            ensure_outside(out, source)
        model, info = load_backbone(weights, backbone=backbone, seed=seed)
        record = run_localization(
            model, videos, annotations=annotations, train_annotations=train_annotations, label_map=label_map,
            excluded=excluded, preset=settings, seed=seed, decoder=decoder, progress=not json_output,
        )  # fmt: skip
    record = {"protocol": "action-localization", "weights": info["source"], **record}
    if out is not None:
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    output = Output(json_output)
    aps = {f"AP {name}": ap for name, ap in record["per_class"].items()}
    table = {k: v for k, v in record.items() if k not in ("per_class", "preset")}
    _print(output, record if json_output else {**table, **aps}, ["frame_mAP", *aps])
