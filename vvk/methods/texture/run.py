"""``vvk translate-texture`` as a library call: train (or load) a texture model, re-texture images.

::

    from vvk.methods.texture.run import translate_texture

    result = translate_texture(["photos/"], texture="brick.png", out="bricked/", save="runs/brick")
    result.written            # bricked/<name>.png for each image of photos/, at its own size

Inputs are image files and folders of images (searched recursively; outputs keep the path
below the folder, ``.png``). Without ``weights`` the texture's model is trained first
(``vvk.methods.texture.train``), its content side learnt from the inputs, or, with none, from
scikit-image's sample photographs (``demo_photos``). ``out`` is written whole or not at all
(``vvk.staging``): an interrupted command leaves no partial folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vvk.errors import VvkError
from vvk.methods.texture.images import IMAGE_SUFFIXES, read_content
from vvk.methods.texture.train import TextureRun, train_texture
from vvk.paths import default_run_dir

Progress = Callable[[int, int], None]
# scikit-image's colour sample photographs (installed with it): the demo's contents.
DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
DEMO_TEXTURES = ("brick", "grass", "gravel")  # scikit-image's texture photographs (greyscale)


@dataclass(frozen=True)
class TranslateResult:
    """What ``translate_texture`` did: the training run (None with ``weights``), the model used,
    and the files written (empty without inputs)."""

    run: TextureRun | None
    model: Path | None
    written: list[Path]
    out: Path | None

    @property
    def status(self) -> str:
        return "finished" if self.run is None else self.run.status

    def record(self) -> dict[str, Any]:
        return {"status": self.status, "training": None if self.run is None else self.run.record(),
                "model": _text(self.model), "out": _text(self.out), "images": len(self.written)}  # fmt: skip


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(image file, output path relative to ``out``) for each input: a file keeps its name, a
    folder's images their path below it; ``.png`` either way. Two inputs with one output path
    are an error naming both."""
    found: dict[Path, Path] = {}
    for given in map(Path, inputs):
        if given.is_dir():
            images = sorted(p for p in given.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not images:
                suffixes = " ".join(IMAGE_SUFFIXES)
                raise VvkError(f"images={given}: no images ({suffixes}) in this folder", params=["images"])
            pairs = [(p, p.relative_to(given).with_suffix(".png")) for p in images]
        elif given.exists():
            pairs = [(given, Path(given.name).with_suffix(".png"))]
        else:
            raise VvkError(f"images={given}: no such file or folder", params=["images"])
        for image, name in pairs:
            if name in found and found[name] != image:
                raise VvkError(f"images: {found[name]} and {image} would both be written as {name}")
            found[name] = image
    return [(image, name) for name, image in found.items()]


def demo_photos(folder: Path) -> list[Path]:
    """scikit-image's sample photographs, written once as PNGs into ``folder``."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DEMO_PHOTOS:
        path = folder / f"{name}.png"
        if not path.is_file():
            Image.fromarray(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])).save(path)
        paths.append(path)
    return paths


def translate_texture(
    inputs: Sequence[str | os.PathLike] = (),
    *,
    texture: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    save: str | os.PathLike | None = None,
    resume: bool = False,
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    seed: int = 0,
    device: str = "auto",
    training_progress: bool = True,
    progress: Progress | None = None,
) -> TranslateResult:
    """Re-texture ``inputs`` into ``out`` with the texture model of ``weights``, or of
    ``texture`` trained into ``save`` first (see the module docstring). Everything given is
    checked before training starts."""
    from vvk.methods.texture.translate import load_texture_model
    from vvk.staging import check_destination, staged_folder

    items = collect_inputs(inputs)
    if items and out is None:
        raise VvkError("out=: a folder for the re-textured images is needed", params=["out"])
    if out is not None and not items:
        raise VvkError(f"out={out}: given without images to re-texture", params=["out"])
    folder = None if out is None else check_destination(Path(out), [p for p, _ in items], overwrite=False)
    run = None
    if weights is not None:
        if texture is not None or save is not None or resume:
            raise VvkError(
                f"weights={weights}: a trained model has its texture; texture=, save= and resume=True "
                "do not go with it",
                params=["weights", "texture", "save"],
            )
        model_path = Path(weights)
    else:
        if texture is None and not resume:
            raise VvkError(
                "texture=: the texture image to learn is needed (or weights=: a trained model)",
                params=["texture", "weights"],
            )
        run_dir = (
            Path(save) if save is not None else default_run_dir(f"texture-{Path(texture or 'run').stem}")
        )
        if resume and save is None:
            raise VvkError("resume=True: name the run to continue with save=", params=["save"])
        contents = [p for p, _ in items] or demo_photos(run_dir / "contents")
        run = train_texture(
            None if resume else texture, () if resume else contents, preset=preset, overrides=overrides,
            out=run_dir, resume=resume, seed=seed, device=device, progress=training_progress,
        )  # fmt: skip
        if run.status != "finished":
            return TranslateResult(run, None, [], folder)
        model_path = run.model_path
    if not items:
        return TranslateResult(run, model_path, [], None)
    from vvk.methods.detection.predict import pick_device

    model = load_texture_model(model_path, device=pick_device(device))
    written = []
    with staged_folder(folder) as stage:
        for i, (image, name) in enumerate(items):
            translated = model.translate(read_content(image))
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            write_png(stage / name, translated)
            written.append(folder / name)
            if progress is not None:
                progress(i + 1, len(items))
    return TranslateResult(run, model_path, written, folder)


def write_png(path: Path, image: np.ndarray) -> None:
    """(H, W, 3) uint8 as PNG with fixed settings: equal pixels, equal bytes."""
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG", compress_level=6, optimize=False)
