"""``vvk augment``: grow datasets by augmentation (``copy-paste``, ``texture``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from vvk.commands._options import JsonOpt, as_flags
from vvk.commands._output import Output, ProgressBar
from vvk.errors import VvkError

app = typer.Typer(help="Grow datasets by augmentation.", no_args_is_help=True)


def parse_categories(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise VvkError("--categories: give at least one category name")
    return names


@app.command("copy-paste")
def copy_paste(
    src: Annotated[Path, typer.Argument(help="COCO dataset folder (or its instances json).")],
    dst: Annotated[Path, typer.Argument(help="Output folder: empty or absent (or --overwrite).")],
    copies: Annotated[int, typer.Option("--copies", "-k", min=1, help="Augmented images per image.")] = 1,
    max_objects: Annotated[int, typer.Option(min=0, help="Paste 0..N objects (uniform).")] = 100,
    scale_jitter: Annotated[
        str, typer.Option(metavar="MIN,MAX|lsj|ssj", help="Jitter scale range, of --size.")
    ] = "0.1,2.0",
    size: Annotated[int, typer.Option(min=16, help="Output images are SIZE x SIZE.")] = 1024,
    source: Annotated[Path | None, typer.Option(help="COCO dataset to paste objects from.")] = None,
    categories: Annotated[
        str | None, typer.Option(metavar="A,B,...", help="Paste only these categories.")
    ] = None,
    blend: Annotated[
        float, typer.Option(min=0.0, metavar="SIGMA", help="Blur paste edges (px); 0: hard.")
    ] = 0.0,
    mask_format: Annotated[
        str,
        typer.Option("--format", click_type=click.Choice(["rle", "polygon"]), help="How masks are written."),
    ] = "rle",
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same output bytes.")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(min=1, show_default=False, help="Rendering processes (default: what the work repays)."),
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Images folder, if not in SRC.")] = None,
    annotations: Annotated[Path | None, typer.Option(help="Instances json, if not in SRC.")] = None,
    occluded_box_px: Annotated[
        float, typer.Option(min=0.0, help="Box edge shift that means occluded.")
    ] = 10.0,
    occluded_area_px: Annotated[
        int, typer.Option(min=0, help="Drop occluded objects of at most this area.")
    ] = 300,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty DST.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Simple Copy-Paste: write a new COCO dataset of SRC's images with objects pasted in.

    Each image gets --copies augmented versions: it and a random source image (from SRC, or from
    --source, whose categories are matched by name) are scale-jittered, flipped and
    cropped/padded to SIZE x SIZE, then a random subset of the source's objects is pasted on
    top. Covered objects lose the covered pixels; one is occluded when an edge of its box moves
    more than --occluded-box-px, and dropped when it then keeps at most --occluded-area-px
    pixels. --blend is the std of a Gaussian blur of the paste edges. --format polygon cannot
    hold holes: crowd regions stay RLE. The output does not depend on --workers. Without
    --workers, vvk times the first image and starts helper processes (a few seconds each to
    start) only when the rest of the work repays them; helpers join as they come up.

    SRC is never written. The output is made in a hidden folder beside DST and renamed into
    place when complete: Ctrl-C or a kill leaves no half dataset.

    EXAMPLES: vvk augment copy-paste coco/ coco_cp/ --copies 2 --workers 8
              vvk augment copy-paste coco/ out/ --source lvis/ --categories zebra
    """
    from vvk.augment import CopyPasteOptions, augment_coco
    from vvk.augment.jitter import parse_scale_range

    options = CopyPasteOptions(
        copies=copies,
        max_objects=max_objects,
        scale_range=parse_scale_range(scale_jitter),
        size=size,
        blend_sigma=blend,
        mask_format=mask_format,
        seed=seed,
        box_px=occluded_box_px,
        area_px=occluded_area_px,
        categories=parse_categories(categories),
    )
    out = Output(json_output)
    with ProgressBar(out, "copy-paste") as progress:
        summary = augment_coco(
            src,
            dst,
            options=options,
            images=images,
            annotations=annotations,
            source=source,
            workers=workers,
            overwrite=overwrite,
            progress=progress,
        )
    for reason, count in summary["warnings"].items():
        out.warn(f"{reason.replace('_', ' ')}: {count}")
    if json_output:
        out.record(summary)
    else:
        rows = [{"field": k, "value": v} for k, v in summary.items() if k != "warnings"]
        out.table(rows, [("field", "field"), ("value", "value")], title="copy-paste")


# The texture library's parameters as ``vvk augment texture`` spells them (``VvkError.as_flags``)
_TEXTURE_FLAGS = {
    "dataset": "DATASET",
    "out": "--out",
    "textures": "--textures",
    "classes": "--classes",
    "per_class": "--per-class",
    "max_textures": "--max-textures",
    "preset": "--preset",
    "seed": "--seed",
    "device": "--device",
}


@app.command("texture")
def texture(
    dataset: Annotated[
        Path, typer.Argument(metavar="DATASET", help="ImageFolder dataset: DATASET/<class>/<image>.")
    ],
    out: Annotated[
        Path,
        typer.Option(metavar="OUT", show_default=False, help="New folder for what is made: empty or absent."),
    ],
    textures: Annotated[
        Path | None,
        typer.Option(
            metavar="TEX_DIR", show_default=False, help="Texture exemplars: TEX_DIR/<class>/<image>."
        ),
    ] = None,
    classes: Annotated[
        str, typer.Option(metavar="tail|all|A,B", help="Classes to augment; tail: below the mean count.")
    ] = "tail",
    per_class: Annotated[
        int | None,
        typer.Option(min=1, show_default=False, help="New images per class (default: up to the largest)."),
    ] = None,
    max_textures: Annotated[
        int | None,
        typer.Option(min=1, show_default=False, help="At most K exemplars (texture models) per class."),
    ] = None,
    preset: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(["tiny", "paper"]), help="Texture training: tiny (CPU minutes), paper."
        ),
    ] = "tiny",
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a preset field, e.g. steps=200."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same output images and manifest.")] = 0,
    device: Annotated[
        str,
        typer.Option(click_type=click.Choice(["auto", "cpu", "cuda"]), help="auto: the GPU if there is one."),
    ] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty OUT.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """SITT texture augmentation: new images for rare classes, made of other classes' images.

    For each chosen class (--classes tail: those with fewer images than the mean class count),
    one SITT texture model is trained per texture exemplar of the class (TEX_DIR/<class>/, else
    the class's own images; --max-textures caps them), then images drawn from the other classes
    are re-textured with it and labelled as the class, until the class has --per-class new
    images (by default as many as it lacks to reach the largest class).

    OUT holds only what is new: images/<class>/sitt-NNNNN.png (an ImageFolder), manifest.jsonl
    (per image: its class, source image, texture and model), augment.json and models/<class>/
    (the texture models, reusable with vvk translate-texture --weights). Train on DATASET plus
    OUT/images, classes matched by name. DATASET and TEX_DIR are never written.
    OUT is made in a hidden folder beside it and renamed when complete: Ctrl-C leaves no
    half OUT.

    The perceptual loss needs torchvision's VGG-19 weights (`vvk weights pull vgg19.tv_in1k`);
    without them it is off and the run says so.

    EXAMPLES: vvk augment texture flowers/ --out flowers-sitt/
              vvk augment texture plants/ --out plants-sitt/ --classes rust,scab --per-class 200
              vvk augment texture birds/ --out birds-sitt/ --textures bark/ --preset paper --device cuda
    """
    from vvk.augment.texture import augment_texture

    human = Output(json_output)
    with (
        as_flags(switches={"overwrite": "--overwrite"}, **_TEXTURE_FLAGS),
        ProgressBar(human, "texture", show=not json_output) as progress,
    ):
        summary = augment_texture(
            dataset, out, textures=textures, classes=classes, per_class=per_class, max_textures=max_textures,
            preset=preset, overrides=list(overrides or []), seed=seed, device=device, overwrite=overwrite,
            progress=progress, train_progress=not json_output, notes=human.note,
        )  # fmt: skip
    for reason, count in summary["warnings"].items():
        human.warn(f"{reason}: {count} (listed in {Path(summary['out']) / 'augment.json'})")
    if json_output:
        human.record(summary)
        return
    human.table(summary["classes"], [(k, k) for k in ("class", "images", "new", "models")], title="texture")
    models = Path(summary["out"]) / "models"
    human.note(
        f"{summary['images_written']} new image(s) in {summary['out']}, {summary['models_trained']} "
        f"texture model(s) in {models} ({summary['seconds']} s); {summary['perceptual']}"
    )
