"""``vvk detect``: run a trained detector on images; records as JSON lines, a COCO results file,
drawings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer

from vvk.commands._options import JsonOpt, as_flags, expand_stdin
from vvk.commands._output import Output, ProgressBar
from vvk.errors import VvkError

# The library's parameters as this command spells them (``VvkError.as_flags``).
_FLAGS = {
    **{name: "--" + name.replace("_", "-") for name in ("weights", "vocab", "min_score", "max_dets")},
    **{
        name: "--" + name.replace("_", "-")
        for name in ("batch_size", "device", "draw", "out", "format", "gt")
    },
    "images": "IMAGES",
    "queries": "--query",
    "queries_file": "--queries",
}
_COLUMNS = [("image", "image"), ("category", "category"), ("score", "score"), ("bbox", "box x,y,w,h")]
_QUERY_COLUMNS = [("image", "image"), ("query", "query"), *_COLUMNS[2:]]


def detect(
    sources: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGES...",
            show_default=False,
            help="Image files, folders (searched recursively), - (image paths on stdin, one a line).",
        ),
    ],
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            metavar="RUN|CHECKPOINT|NAME",
            show_default=False,
            help="A `vvk train detector` run folder, a checkpoint, or a name from `vvk weights list`.",
        ),
    ],
    vocab: Annotated[
        str | None,
        typer.Option(
            metavar="coco|FILE|NAMES",
            help="Category names: coco, or a file (a name per line, or JSON [{id, name}]); "
            "a ViLD detector also takes new names, 'red mug,stapler' (a file line: synonyms "
            "after commas). Default: the detector's.",
        ),
    ] = None,
    query: Annotated[
        list[str] | None,
        typer.Option(
            "--query",
            metavar="QUERY",
            show_default=False,
            help="Ask a qmd detector for this (a category name); repeat for several. Each image "
            "is run once per query.",
        ),
    ] = None,
    queries_file: Annotated[
        Path | None,
        typer.Option("--queries", metavar="FILE", help="More queries: one a line, blank lines ignored."),
    ] = None,
    min_score: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Drop detections below this score.")
    ] = 0.3,
    max_dets: Annotated[int, typer.Option(min=1, help="At most this many detections per image.")] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 4,
    device: Annotated[
        str,
        typer.Option(click_type=click.Choice(["auto", "cpu", "cuda"]), help="auto: the GPU if there is one."),
    ] = "auto",
    workers: Annotated[int, typer.Option(min=0, help="Image decoding processes (0: in this one).")] = 0,
    draw: Annotated[
        Path | None,
        typer.Option(metavar="OUT_DIR", help="Write each image with its detections drawn into OUT_DIR."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Write the records to FILE, in --format.")
    ] = None,
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            click_type=click.Choice(["jsonl", "coco-results"]),
            help="--out as JSON lines, or one COCO results list (for `vvk eval detections`).",
        ),
    ] = "jsonl",
    gt: Annotated[
        Path | None,
        typer.Option(metavar="INSTANCES_JSON", help="COCO annotation file to take image ids from."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Detect objects in images with a trained RetinaNet, Mask R-CNN or ViLD detector.

    Each detection is a record {"image", "category", "category_id", "score", "bbox"} (bbox: x, y,
    width, height), plus "segmentation" (COCO RLE) for mask models, in the pixels of the image as it is shown
    (EXIF orientation applied): a table on stdout, JSON lines with --json, a file with --out.
    --format coco-results writes --out as one COCO results list; its image ids come from --gt
    (matched by file name) or else are the image file names' numbers (000000005802.jpg: 5802).
    Folders are searched recursively for .jpg .jpeg .png .bmp .gif .tif .tiff .webp files,
    in sorted order; the paths - reads from stdin (after the arguments' images) are images,
    never searched. --draw writes OUT_DIR/<path under the input folder>; an output inside an
    input folder is refused. Files are written whole or not at all (Ctrl-C leaves none half-made).

    An image that cannot be read (missing, not an image, truncated) is one line on stderr and
    the others go on; the command then exits 1 (as it does for bad weights, vocabulary or
    outputs, refused before any image is read), after writing the records of the images that
    were read. A usage error exits 2, Ctrl-C 130.

    A ViLD detector (vvk train detector --method vild) detects whatever --vocab names: each name
    is embedded by its teacher. `vvk detect embed-regions` makes ViLD's distillation targets
    (see vvk detect embed-regions --help).

    A query-modulated detector (vvk train detector --method qmd) is asked each --query (and each
    line of --queries) about every image: its records carry "query", its drawings label boxes
    with the query, and a pair (image, query) answered with nothing is still one record, with
    null category, score and bbox, so every pair asked is in the output (a --format coco-results
    file of them is what `vvk eval detections --queries` scores).

    EXAMPLES: vvk detect photos/ --weights runs/d1 --draw drawn/
              vvk detect photos/ --weights runs/qmd --query mug --query cat --json
              vvk detect photos/ --weights runs/vild --vocab "7,8,9"
              ls *.jpg | vvk detect - --weights runs/d1 --json | jq .category
              vvk detect val2017/ --weights runs/d1 --out dt.json --format coco-results
    """
    from vvk.methods.detection.predict import detect_images, find_images

    human = Output(json_output)
    rows: list[dict[str, Any]] = []
    with as_flags(**_FLAGS):
        arguments, listed = _inputs(sources)
        queries = _queries(query, queries_file)
        images = find_images(arguments, listed=listed)
        with ProgressBar(human, "detect", show=not json_output and len(images) > 1) as progress:
            summary = detect_images(
                images, weights=weights, vocab=vocab, min_score=min_score, max_dets=max_dets,
                batch_size=batch_size, device=device, num_workers=workers, draw=draw, out=out,
                format=format_, gt=gt, queries=queries, progress=progress,
                on_records=lambda records: _show(human, rows, records),
                on_problem=lambda image, problem: human.stderr.print(
                    f"bad image: {image.path}: {problem}", markup=False, highlight=False
                ),
            )  # fmt: skip
    human.table(rows, _QUERY_COLUMNS if queries else _COLUMNS)
    _summarize(human, summary)
    if summary["failed"]:
        raise typer.Exit(1)


def _inputs(sources: list[str]) -> tuple[list[str], list[str]]:
    """(arguments, image paths read from stdin when one argument is -)."""
    if sources.count("-") > 1:
        raise VvkError("'-' (read image paths from stdin) may be given only once")
    listed = expand_stdin(["-"], what="image path") if "-" in sources else []
    if "-" in sources and not listed:
        raise VvkError("-: no image paths on stdin", hint="e.g. ls photos/*.jpg | vvk detect - --weights RUN")
    return [s for s in sources if s != "-"], listed


def _queries(given: list[str] | None, path: Path | None) -> list[str] | None:
    """--query values, then --queries FILE's lines; None when neither is given."""
    from vvk.methods.detection.query_detect import read_queries

    queries = [*(given or []), *(read_queries(path) if path is not None else [])]
    return queries or None


def _show(out: Output, rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """--json: each record at once on stdout (a pipeline sees them as they come); else a table
    row, printed at the end (a pair answered with nothing has no row)."""
    if out.json_mode:
        for record in records:
            out.record(record)
        return
    for r in records:
        if r["score"] is None:
            continue
        rows.append({"image": r["image"], "query": r.get("query"), "category": r["category"],
                     "score": f"{r['score']:.3f}", "bbox": r["bbox"]})  # fmt: skip


def _summarize(out: Output, summary: dict[str, Any]) -> None:
    speed = f", {summary['images_per_s']:.2f} images/s" if summary["images_per_s"] else ""
    failed = f" ({summary['failed']} could not be read)" if summary["failed"] else ""
    out.note(
        f"{summary['images']} image(s){failed}, {summary['detections']} detection(s) "
        f"in {summary['seconds']:.1f} s{speed} on {summary['device']}"
    )
    for what in ("out", "draw"):
        if summary[what]:
            out.note(f"{'records' if what == 'out' else 'drawings'}: {summary[what]}")


def embed_regions(
    data: Annotated[
        Path, typer.Option(help="COCO dataset (folder or instances_*.json) whose images to embed.")
    ],
    teacher: Annotated[
        str, typer.Option(help="stand-in, a stand-in .safetensors file, or a CLIP from `vvk weights list`.")
    ],
    proposals: Annotated[
        str,
        typer.Option(
            metavar="RUN|CHECKPOINT|RESULTS_JSON",
            help="A Mask R-CNN or ViLD run (its RPN proposes), or COCO results with the boxes.",
        ),
    ],
    out: Annotated[
        Path, typer.Option(metavar="REGIONS_DIR", help="Folder of the shards (continued if there).")
    ],
    max_regions: Annotated[int, typer.Option(min=1, help="Proposals per image, best first.")] = 300,
    device: Annotated[
        str,
        typer.Option(click_type=click.Choice(["auto", "cpu", "cuda"]), help="auto: the GPU if there is one."),
    ] = "auto",
    json_output: JsonOpt = False,
) -> None:
    """Embed the proposals of every image with a teacher: ViLD's distillation targets.

    Each proposal is cropped at 1x and 1.5x its box; the teacher's embeddings of both crops are
    summed and normalised. The folder holds safetensors shards keyed by image id and a
    regions.json that records the teacher, the proposals and the dataset's images, so that
    `vvk train detector --regions` refuses embeddings made for other data or by another teacher.
    Shards are written whole: after Ctrl-C, the same command continues after the last one.

    EXAMPLES: vvk detect embed-regions --data coco/train --teacher clip-vit-b-32.openai \\
                  --proposals runs/base-rpn --out regions/
    """
    from vvk.data.detection import open_coco
    from vvk.methods.detection.predict import pick_device
    from vvk.methods.vild.regions import embed_regions as embed
    from vvk.methods.vild.regions import proposals_from
    from vvk.methods.vild.teacher import load_teacher

    human = Output(json_output)
    with as_flags(**_FLAGS, teacher="--teacher", proposals="--proposals", data="--data"):
        where = pick_device(device)
        coco = open_coco(data, what="data")
        model = load_teacher(teacher, device=where)
        boxes = proposals_from(proposals, device=where)
        with ProgressBar(human, "embed", show=not json_output) as progress:
            result = embed(coco, boxes, model, out, proposals_name=str(proposals), max_regions=max_regions,
                           progress=progress)  # fmt: skip
    record = {"out": str(result.out), "images": result.images, "regions": result.regions,
              "skipped": result.skipped, "resumed_from": result.resumed_from,
              "seconds": round(result.seconds, 2), "images_per_s": round(result.images_per_second, 2),
              "regions_per_s": round(result.regions_per_second, 1), "device": str(where)}  # fmt: skip
    if json_output:
        human.record(record)
        return
    resumed = f" (continued after {result.resumed_from})" if result.resumed_from else ""
    human.note(
        f"{result.images} image(s){resumed}, {result.regions} region(s) in {result.seconds:.1f} s: "
        f"{result.images_per_second:.2f} images/s, {result.regions_per_second:.1f} regions/s on {where}; "
        f"{result.skipped} unreadable; regions: {result.out}"
    )
