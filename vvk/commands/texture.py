"""``vvk translate-texture``: learn the texture of one image (SITT) and put it on others."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

from vvk.commands._options import JsonOpt, as_flags, expand_stdin
from vvk.commands._output import Output, ProgressBar
from vvk.errors import VvkError

_FLAGS = {"images": "IMAGES", "contents": "IMAGES", "texture": "--texture", "out": "--out",
          "weights": "--weights", "save": "--save", "preset": "--preset", "device": "--device"}  # fmt: skip
_SWITCHES = {"resume": "--resume"}
_DEMO_OUT = Path("texture-demo")


def translate_texture(
    images: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[IMAGES]...",
            show_default=False,
            help="Images to re-texture: files, folders (searched recursively) or - (paths on stdin).",
        ),
    ] = None,
    texture: Annotated[
        Path | None, typer.Option(metavar="TEX", show_default=False, help="The texture image to learn.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            metavar="OUT_DIR", show_default=False, help="Folder for the re-textured images (new or empty)."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            metavar="RUN", show_default=False, help="A trained texture model (run folder) to reuse."
        ),
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(
            metavar="RUN",
            show_default=False,
            help="The training run folder (default runs/texture-<TEX>-<time>).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --save.")] = False,
    preset: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(["tiny", "paper"]), help="tiny: CPU minutes; paper: the reference's."
        ),
    ] = "tiny",
    steps: Annotated[
        int | None, typer.Option(min=1, help="Training iterations (the preset's by default).")
    ] = None,
    size: Annotated[
        int | None, typer.Option(min=16, help="Training and translation side, a multiple of 4.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a preset field, e.g. cycle_w=5."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seeds the views and the initialisation.")] = 0,
    device: Annotated[
        str,
        typer.Option(click_type=click.Choice(["auto", "cpu", "cuda"]), help="auto: the GPU if there is one."),
    ] = "auto",
    json_output: JsonOpt = False,
) -> None:
    """Re-texture images with the texture of one image (SITT, single-image texture translation).

    Trains the texture's model (two small generators and two PatchGAN discriminators, as the
    reference Boyiliee/SITTA trains them; the content side learnt from IMAGES) into --save,
    then writes each image re-textured, at its own size, into OUT_DIR as PNG (the path below a
    given folder kept). --weights RUN reuses a trained model instead. Without IMAGES it trains
    and saves the model only (its content side learnt from scikit-image's sample photographs).
    Training prints a progress bar with iterations/s; Ctrl-C saves a checkpoint and exits 130,
    and --resume --save RUN continues it. OUT_DIR is written whole or not at all.

    Without any argument: the demo. scikit-image's brick, grass and gravel textures, each put
    on its sample photographs (astronaut, chelsea, coffee, rocket), into ./texture-demo/.

    The perceptual loss needs torchvision's VGG-19 weights (`vvk weights pull vgg19.tv_in1k`);
    without them it is off and the run says so.

    EXAMPLES: vvk translate-texture
              vvk translate-texture --texture bark.jpg photos/ --out barked/ --save runs/bark
              vvk translate-texture --weights runs/bark more-photos/ --out more-barked/
              vvk translate-texture --texture bark.jpg --save runs/bark --preset paper --device cuda
    """
    from vvk.methods.texture.run import translate_texture as run

    human = Output(json_output)
    images = expand_stdin(list(images or []), what="image")
    settings = (
        list(overrides or [])
        + [f"steps={steps}"] * (steps is not None)
        + [f"size={size}"] * (size is not None)
    )
    if not images and texture is None and weights is None and not resume:
        if out is not None or save is not None:
            raise VvkError(
                "--texture or --weights: what to translate with", hint="run it without options for the demo"
            )
        _demo(human, preset=preset, overrides=settings, seed=seed, device=device)
        return
    with (
        as_flags(switches=_SWITCHES, **_FLAGS),
        ProgressBar(human, "translate", show=not json_output) as progress,
    ):
        result = run(
            images, texture=texture, out=out, weights=weights, save=save, resume=resume, preset=preset,
            overrides=settings, seed=seed, device=device, training_progress=not json_output,
            progress=progress,
        )  # fmt: skip
    _report(human, result)


def _report(human: Output, result) -> None:
    if human.json_mode:
        human.record(result.record())
    if result.run is not None:
        human.note(f"texture model: {result.run.path} ({result.run.note})")
    if result.status == "interrupted":
        raise VvkError(
            f"interrupted after step {result.run.step}; its checkpoint is in {result.run.path}",
            hint=f"continue with: vvk translate-texture --resume --save {result.run.path}",
            exit_code=130,
        )
    if result.out is not None:
        human.note(f"{len(result.written)} image(s) re-textured: {result.out}")


def _demo(human: Output, *, preset: str, overrides: list[str], seed: int, device: str) -> None:
    """The README's demo: each scikit-image texture on each sample photograph, and how far the
    texture statistics moved towards the texture while the edges stayed (vvk.eval.texture)."""
    import skimage.data
    from PIL import Image

    from vvk.eval.texture import translation_report
    from vvk.methods.texture.images import read_content
    from vvk.methods.texture.run import DEMO_TEXTURES, demo_photos, translate_texture

    photos = demo_photos(_DEMO_OUT / "photos")
    rows = []
    for name in DEMO_TEXTURES:
        texture = _DEMO_OUT / "textures" / f"{name}.png"
        if not texture.is_file():
            texture.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(getattr(skimage.data, name)()).save(texture)
        human.note(f"learning the texture of {texture}")
        result = translate_texture(
            photos, texture=texture, out=_DEMO_OUT / name, save=_DEMO_OUT / "runs" / name, preset=preset,
            overrides=overrides, seed=seed, device=device, training_progress=not human.json_mode,
        )  # fmt: skip
        if result.status == "interrupted":
            _report(human, result)
        for photo, translated in zip(photos, result.written, strict=True):
            report = translation_report(read_content(photo), read_content(texture), read_content(translated))
            rows.append({"texture": name, "photo": photo.stem, **report, "out": str(translated)})
    human.table(rows, [(k, k) for k in rows[0] if k != "out"])
    human.note(f"re-textured photographs in {_DEMO_OUT}/<texture>/")
