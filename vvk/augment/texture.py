"""SITT texture augmentation of a classification dataset (``vvk augment texture``).

::

    from vvk.augment.texture import augment_texture

    summary = augment_texture("flowers/", "flowers_sitt/", classes="tail", preset="tiny")
    # flowers_sitt/images/<class>/sitt-00000.png ... and flowers_sitt/manifest.jsonl

The idea of SITT for data augmentation (Li et al., "SITTA: Single Image Texture Translation
for Data Augmentation", ECCV-W 2022): a rare class gets new images made from images of the
*other* classes, re-textured with a texture exemplar of the rare class and labelled as it.

    DATASET/<class>/<image> --choose classes--> per class c: exemplars of c, images of the others
        --train one texture model per exemplar--> OUT/models/<c>/<NN>-<exemplar>/
        --translate drawn images of other classes--> OUT/images/<c>/sitt-NNNNN.png + OUT/manifest.jsonl

Decisions, each the simplest that is sound:

- DATASET is an ImageFolder: each non-hidden folder is a class, its images (``IMAGE_SUFFIXES``,
  any case) are the files below it, sub-folders included, hidden ones skipped; other files are
  ignored. A class folder without images is an error naming it (as torchvision's ImageFolder
  refuses one): it can be neither counted as a class nor give a texture. A class folder, and
  every folder on the way to an image, must resolve inside DATASET (a link that leads outside is
  an error naming it; one inside is followed); an image file may be a link to a file elsewhere,
  as in a subset of a large dataset made of links (``vvk.data.paths.inside``, ``file_links``).
- ``classes="tail"`` (the default) chooses the classes with fewer images than the mean class
  count. That is never empty unless every class has as many images, which is an error that
  suggests ``classes="all"`` or a list of names (the median would choose no class of 5, 5, 10).
- ``per_class=None`` (the default) adds to each chosen class as many images as it lacks to
  reach the largest class's count; a number adds exactly that many to each chosen class.
- Exemplars of class c: the files of ``textures/<c>/`` when ``textures`` has that folder (every
  non-hidden file there is meant as a texture, so one that is not a readable image of at least
  16x16 px is an error naming it), else c's own images (unreadable or tiny ones are skipped and
  counted). They are taken in a seeded random order; one texture model per exemplar, at most
  as many as the new images (and ``max_textures``); new image i of c uses model i mod k.
- Each model learns its content side from up to ``views`` (10: one image per training view)
  images drawn from the other classes; the images re-textured are drawn from the other classes
  too, without replacement until every one has been used once, then again in a new order.
  An unreadable image is skipped and counted (``warnings``; its name in ``augment.json``).
- OUT holds only what is new: ``images/<class>/sitt-NNNNN.png`` for the chosen classes (each
  image at its source's size; ``images`` is an ImageFolder of them), ``manifest.jsonl`` (one
  record per new image, in order: image, class, source and source_class, texture and
  texture_from, model, seed), ``augment.json`` (the inputs, resolved preset, per-class counts,
  skipped files) and ``models/<class>/<NN>-<exemplar>/`` (the texture runs, checkpoints
  removed: ``texture.safetensors`` is what ``load_texture_model`` and ``vvk translate-texture
  --weights`` reuse). Train on DATASET plus ``OUT/images``, classes matched by name: OUT lacks
  the classes that got nothing, so its class indices are not DATASET's.
- Nothing is written into DATASET or ``textures`` (OUT may not be inside either, nor contain
  them). OUT is made in a hidden folder beside it and renamed at the end (``vvk.staging``):
  an interrupted run (Ctrl-C, SIGTERM under the CLI, or a texture run that reports
  ``interrupted``, which is raised again as ``KeyboardInterrupt``) leaves no OUT.
- Same inputs and seed, same bytes of images and manifest on the CPU: draws come from
  generators seeded by (seed, class), training is seeded, PNGs are written with fixed settings.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vvk import __version__
from vvk.data.paths import inside
from vvk.errors import VvkError
from vvk.methods.texture.images import IMAGE_SUFFIXES, MIN_TEXTURE_SIDE, read_content, read_texture

if TYPE_CHECKING:
    from vvk.methods.texture.train import TexturePreset

Progress = Callable[[int, int], None]  # (new images written, new images in all)
Notes = Callable[[str], None]
Skipped = dict[str, str]  # dataset image (relative name) -> why it was not used
CLASS_CHOICES = ("tail", "all")
MANIFEST = "manifest.jsonl"
RECORD = "augment.json"
MODELS_DIR = "models"
IMAGES_DIR = "images"  # OUT/images is an ImageFolder of the new images
SHOWN_CLASSES = 20  # class names listed in an error, at most


# --------------------------------------------------------------------------------------------
# Reading the dataset and the textures


@dataclass(frozen=True)
class ImageFolder:
    """An ImageFolder dataset: ``classes`` maps each class name (sorted) to its images, as
    paths relative to ``root`` in POSIX form, sorted."""

    root: Path
    classes: dict[str, tuple[str, ...]]

    def counts(self) -> dict[str, int]:
        return {name: len(images) for name, images in self.classes.items()}


def read_image_folder(root: str | os.PathLike, *, param: str = "dataset") -> ImageFolder:
    """The classes and images of ``root`` (see the module docstring); one-line errors naming
    ``root``, the class folder without images, or the link that leads outside."""
    root = check_folder(root, param)
    classes = {}
    try:
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            images = _images_below(root, entry.name)
            if not images:
                raise VvkError(
                    f"{param}={root}: class folder {root / entry.name} holds no images "
                    f"({' '.join(IMAGE_SUFFIXES)})",
                    hint="add images to it or remove it",
                    params=[param],
                )
            classes[entry.name] = images
    except OSError as e:
        raise VvkError(f"{param}={root}: cannot be read ({e.strerror or e})", params=[param]) from None
    if not classes:
        raise VvkError(
            f"{param}={root}: no class folders with images (expected {root}/<class>/<image>)",
            params=[param],
        )
    return ImageFolder(root, classes)


def check_folder(path: str | os.PathLike, param: str) -> Path:
    """``path``, when it is a folder; a one-line error naming ``param`` otherwise."""
    path = Path(path)
    if not path.is_dir():
        what = "not a folder" if path.exists() else "no such folder"
        raise VvkError(f"{param}={path}: {what}", params=[param])
    return path


def _images_below(root: Path, name: str) -> tuple[str, ...]:
    """Image files below ``root/name``, relative to ``root``. Linked folders are followed, as
    torchvision does, when they stay inside ``root``, each real folder once (no link loops)."""
    found, seen = [], {inside(root, name)}
    for folder, dirs, files in os.walk(root / name, followlinks=True):
        below = Path(folder).relative_to(root)
        real = {d: inside(root, (below / d).as_posix()) for d in sorted(dirs) if not d.startswith(".")}
        dirs[:] = [d for d, path in real.items() if path not in seen]
        seen.update(real.values())
        for file in files:
            if file.startswith(".") or Path(file).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = (below / file).as_posix()
            if inside(root, rel, file_links=True).is_file():
                found.append(rel)
    return tuple(sorted(found))


def read_texture_folder(textures: str | os.PathLike, class_names: Sequence[str]) -> dict[str, tuple]:
    """The exemplar files of ``textures/<class>/`` (names relative to ``textures``) of each
    class that has such a folder. A folder naming no class of ``class_names``, an empty one or
    a file at the top is an error: textures are placed by hand, and a typo must not pass."""
    root = check_folder(textures, "textures")
    found = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        inside(root, entry.name)
        if not entry.is_dir():
            raise VvkError(
                f"textures={root}: {entry.name} is a file; expected {root}/<class>/<image>",
                params=["textures"],
            )
        if entry.name not in class_names:
            raise VvkError(
                f"textures={root}: folder {entry.name!r} names no class of the dataset "
                f"(classes: {_shown(class_names)})",
                params=["textures"],
            )
        names = sorted(f"{entry.name}/{f.name}" for f in os.scandir(entry.path) if f.name[0] != ".")
        files = [name for name in names if inside(root, name, file_links=True).is_file()]
        if not files:
            raise VvkError(f"textures={root}: folder {root / entry.name} is empty", params=["textures"])
        found[entry.name] = tuple(files)
    return found


def _shown(names: Sequence[str]) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN_CLASSES else ""
    return ", ".join(names[:SHOWN_CLASSES]) + more


# --------------------------------------------------------------------------------------------
# Choosing classes, exemplars and images


def tail_classes(counts: dict[str, int]) -> list[str]:
    """The classes with fewer images than the mean class count: empty only when every class has
    as many images (the median would miss the rare majority of counts like 5, 5, 10)."""
    mean = statistics.fmean(counts.values())
    return [name for name, n in counts.items() if n < mean]


def choose_classes(counts: dict[str, int], classes: str | Sequence[str] = "tail") -> list[str]:
    """``"tail"``, ``"all"``, names separated by commas, or a sequence of names: the chosen
    class names, in the dataset's (sorted) order."""
    if isinstance(classes, str) and classes in CLASS_CHOICES:
        if classes == "all":
            return list(counts)
        chosen = tail_classes(counts)
        if not chosen:
            raise VvkError(
                f"classes=tail: every class has {max(counts.values())} images, none is rarer",
                hint="pass classes=all or a list of class names",
                params=["classes"],
            )
        return chosen
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise VvkError("classes=: give tail, all or class names", params=["classes"])
    for name in names:
        if name not in counts:
            raise VvkError(
                f"classes={name}: no such class in the dataset (classes: {_shown(list(counts))})",
                params=["classes"],
            )
    return [name for name in counts if name in names]


@dataclass(frozen=True)
class Exemplar:
    """A texture exemplar: ``name`` relative to the folder it is from (``"dataset"`` or
    ``"textures"``), and the file itself."""

    name: str
    origin: str
    path: Path


@dataclass(frozen=True)
class ClassPlan:
    """What is made for one class: ``new`` images, re-textured with one model per exemplar."""

    name: str
    count: int
    new: int
    exemplars: tuple[Exemplar, ...]


def _rng(seed: int, name: str, what: str) -> random.Random:
    # A string seed is hashed (sha512) by random.Random: the same on every run and platform, and
    # each class's draws do not depend on which other classes are chosen.
    return random.Random(f"vvk-augment-texture/{seed}/{name}/{what}")


def choose_exemplars(
    dataset: ImageFolder,
    name: str,
    wanted: int,
    *,
    textures: Path | None,
    given: tuple[str, ...] | None,
    seed: int,
    skipped: Skipped,
) -> tuple[Exemplar, ...]:
    """Up to ``wanted`` exemplars of class ``name`` in a seeded order: ``given`` (files of
    ``textures``; each must be a usable texture) or else the class's own usable images."""
    if given is not None:
        exemplars = [Exemplar(n, "textures", textures / n) for n in given]
        for exemplar in exemplars:
            _check_texture(exemplar.path)
        _rng(seed, name, "exemplars").shuffle(exemplars)
        return tuple(exemplars[:wanted])
    order = list(dataset.classes[name])
    _rng(seed, name, "exemplars").shuffle(order)
    chosen = []
    for rel in order:
        if len(chosen) == wanted:
            break
        path = dataset.root / rel
        try:
            pixels = read_content(path)
        except VvkError:
            skipped[rel] = "unreadable"
            continue
        if min(pixels.shape[:2]) < MIN_TEXTURE_SIDE:
            skipped[rel] = "too small for a texture"
            continue
        chosen.append(Exemplar(rel, "dataset", path))
    if not chosen:
        raise VvkError(
            f"dataset={dataset.root}: no image of class {name!r} can serve as a texture "
            f"(readable, at least {MIN_TEXTURE_SIDE} px a side)",
            hint="give textures=TEX_DIR with a folder for it",
            params=["dataset", "textures"],
        )
    return tuple(chosen)


def _check_texture(path: Path) -> None:
    try:
        read_texture(path)
    except VvkError as e:
        reason = e.message.split(f"texture={path}: ", 1)[-1]
        raise VvkError(f"textures={path}: {reason}", params=["textures"]) from None


def _others(dataset: ImageFolder, name: str) -> list[str]:
    return [rel for other, images in dataset.classes.items() if other != name for rel in images]


def draw_images(pool: Sequence[str], rng: random.Random, bad: set[str]) -> Iterator[str]:
    """Names of ``pool`` in a new random order each pass, forever; those in ``bad`` (found
    unreadable meanwhile) skipped; stops when every one is bad."""
    while True:
        order = [rel for rel in pool if rel not in bad]
        if not order:
            return
        rng.shuffle(order)
        for rel in order:
            if rel not in bad:
                yield rel


def _read_drawn(dataset: ImageFolder, draws: Iterator[str], bad: set[str], skipped: Skipped):
    """The next readable drawn image: (name, pixels); an error when none is left."""
    for rel in draws:
        try:
            return rel, read_content(dataset.root / rel)
        except VvkError:
            bad.add(rel)
            skipped[rel] = "unreadable"
    raise VvkError(f"dataset={dataset.root}: none of the images drawn can be read", params=["dataset"])


def plan_classes(
    dataset: ImageFolder,
    chosen: Sequence[str],
    *,
    per_class: int | None,
    max_textures: int | None,
    textures: Path | None,
    seed: int,
    skipped: Skipped,
) -> list[ClassPlan]:
    """The plan of each chosen class that gets new images; every exemplar checked."""
    counts = dataset.counts()
    given = read_texture_folder(textures, list(counts)) if textures is not None else {}
    largest = max(counts.values())
    plans = []
    for name in chosen:
        new = largest - counts[name] if per_class is None else per_class
        if new <= 0:
            continue
        if not _others(dataset, name):
            raise VvkError(
                f"dataset={dataset.root}: only the class {name!r}; its new images are made of other classes'",
                params=["dataset"],
            )
        wanted = new if max_textures is None else min(new, max_textures)
        exemplars = choose_exemplars(
            dataset, name, wanted, textures=textures, given=given.get(name), seed=seed, skipped=skipped
        )
        plans.append(ClassPlan(name, counts[name], new, exemplars))
    if not plans:
        raise VvkError(
            f"the chosen classes ({_shown(chosen)}) already have as many images as the largest "
            f"class ({largest}): nothing to add",
            hint="give per_class=N",
            params=["per_class"],
        )
    return plans


# --------------------------------------------------------------------------------------------
# The run


def augment_texture(
    dataset: str | os.PathLike,
    out: str | os.PathLike,
    *,
    textures: str | os.PathLike | None = None,
    classes: str | Sequence[str] = "tail",
    per_class: int | None = None,
    max_textures: int | None = None,
    preset: str | TexturePreset = "tiny",
    overrides: Sequence[str] = (),
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    progress: Progress | None = None,
    train_progress: bool = False,
    notes: Notes | None = None,
) -> dict[str, Any]:
    """Add SITT-translated images to the chosen classes of the ImageFolder ``dataset``, written
    as a new folder ``out`` (see the module docstring for every choice made).

    Args:
        textures: a folder of ``<class>/<texture image>``; a class without one uses its images.
        classes: ``"tail"``, ``"all"``, ``"A,B"`` or a sequence of class names.
        per_class: new images per chosen class; None: up to the largest class's count.
        max_textures: at most this many exemplars (texture models) per class; None: no limit.
        preset, overrides: the texture models' training: a preset name of
            ``vvk.methods.texture.train`` with ``KEY=VALUE`` overrides, or a ``TexturePreset``.
        progress: called with (new images written, in all) while translating.
        train_progress: show each texture model's training progress bar (on stderr).
        notes: called with one line of text before each model is trained.

    Returns: a summary: per-class counts, images written, models trained, seconds, warnings.
    """
    from vvk.methods.detection.predict import pick_device
    from vvk.methods.overrides import apply_overrides
    from vvk.methods.texture.train import TexturePreset, resolve_preset
    from vvk.staging import check_destination, staged_folder

    start = time.perf_counter()
    _check_numbers(per_class=per_class, max_textures=max_textures, seed=seed)
    settings = (
        apply_overrides(preset, list(overrides))
        if isinstance(preset, TexturePreset)
        else resolve_preset(preset, overrides)
    )
    pick_device(device)  # no CUDA here: said now, not after the first model
    roots = [check_folder(dataset, "dataset")]  # folders, before OUT is checked against them
    roots += [check_folder(textures, "textures")] if textures is not None else []
    dst = check_destination(Path(out), roots, overwrite=overwrite)
    data = read_image_folder(dataset)
    chosen = choose_classes(data.counts(), classes)
    skipped: Skipped = {}
    plans = plan_classes(
        data, chosen, per_class=per_class, max_textures=max_textures,
        textures=roots[1] if textures is not None else None, seed=seed, skipped=skipped,
    )  # fmt: skip
    with staged_folder(dst) as stage:
        models = _train_models(
            data, plans, stage, dst=dst, settings=settings, seed=seed, device=device,
            train_progress=train_progress, notes=notes, skipped=skipped,
        )  # fmt: skip
        records = _translate(data, plans, models, stage, seed=seed, device=device, progress=progress,
                             skipped=skipped)  # fmt: skip
        _write_records(stage, records, _run_record(data, textures, plans, models, settings, seed, skipped))
    return _summary(dst, plans, models, records, skipped, time.perf_counter() - start)


def _check_numbers(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < (least := 0 if name == "seed" else 1):
            raise VvkError(f"{name}={value}: must be at least {least}", params=[name])


@dataclass(frozen=True)
class TrainedModel:
    exemplar: Exemplar
    folder: str  # relative to OUT
    note: str


def _train_models(
    dataset: ImageFolder, plans: Sequence[ClassPlan], stage: Path, *, dst: Path, settings, seed: int,
    device: str, train_progress: bool, notes: Notes | None, skipped: Skipped,
) -> dict[str, list[TrainedModel]]:  # fmt: skip
    """One texture run per exemplar, into ``stage/models/<class>/<exemplar stem>/``; a run
    that reports ``interrupted`` (a signal reached its loop) is raised as KeyboardInterrupt."""
    from vvk.methods.texture.train import train_texture

    total = sum(len(p.exemplars) for p in plans)
    models: dict[str, list[TrainedModel]] = {}
    for plan in plans:
        contents = _training_contents(dataset, plan.name, settings.views, seed, skipped)
        for k, exemplar in enumerate(plan.exemplars):
            folder = f"{MODELS_DIR}/{plan.name}/{k:02d}-{Path(exemplar.name).stem}"  # a.jpg, a.png: two
            if notes is not None:
                done = sum(len(m) for m in models.values()) + 1
                notes(
                    f"texture model {done}/{total}: class {plan.name}, texture {exemplar.name} of the "
                    f"{exemplar.origin}, to {dst / folder} (trained in a hidden folder beside it)"
                )
            run = train_texture(
                exemplar.path, contents, preset=settings, out=stage / folder, seed=seed, device=device,
                progress=train_progress,
            )  # fmt: skip
            if run.status != "finished":
                raise KeyboardInterrupt
            shutil.rmtree(run.path / "checkpoints", ignore_errors=True)  # the model file is enough
            models.setdefault(plan.name, []).append(TrainedModel(exemplar, folder, run.note))
    return models


def _training_contents(dataset: ImageFolder, name: str, views: int, seed: int, skipped: Skipped) -> list:
    """Up to ``views`` readable images of the other classes, in a seeded order: each training
    view shows one (view k shows ``contents[k % len(contents)]``)."""
    order = _others(dataset, name)
    _rng(seed, name, "contents").shuffle(order)
    contents = []
    for rel in order:
        if len(contents) == views:
            break
        try:
            read_content(dataset.root / rel)
        except VvkError:
            skipped[rel] = "unreadable"
            continue
        contents.append(dataset.root / rel)
    if not contents:
        raise VvkError(
            f"dataset={dataset.root}: no image of a class other than {name!r} can be read", params=["dataset"]
        )
    return contents


def _translate(
    dataset: ImageFolder, plans: Sequence[ClassPlan], models: dict[str, list[TrainedModel]], stage: Path, *,
    seed: int, device: str, progress: Progress | None, skipped: Skipped,
) -> list[dict[str, Any]]:  # fmt: skip
    """Write the new images of every class; their manifest records, in order."""
    from vvk.methods.detection.predict import pick_device
    from vvk.methods.texture.run import write_png
    from vvk.methods.texture.translate import load_texture_model

    where = pick_device(device)
    total, records = sum(p.new for p in plans), []
    for plan in plans:
        trained = models[plan.name]
        loaded = [load_texture_model(stage / m.folder, device=where) for m in trained]
        folder = stage / IMAGES_DIR / plan.name
        folder.mkdir(parents=True)
        bad: set[str] = set()
        draws = draw_images(_others(dataset, plan.name), _rng(seed, plan.name, "sources"), bad)
        for i in range(plan.new):
            source, pixels = _read_drawn(dataset, draws, bad, skipped)
            k = i % len(trained)
            image = f"{IMAGES_DIR}/{plan.name}/sitt-{i:05d}.png"
            write_png(stage / image, loaded[k].translate(pixels))
            records.append({
                "image": image, "class": plan.name, "source": source, "source_class": source.split("/", 1)[0],
                "texture": trained[k].exemplar.name, "texture_from": trained[k].exemplar.origin,
                "model": trained[k].folder, "seed": seed,
            })  # fmt: skip
            if progress is not None:
                progress(len(records), total)
    return records


def _run_record(dataset: ImageFolder, textures, plans, models, settings, seed: int, skipped: Skipped):
    from vvk.methods.overrides import to_dict

    return {
        "method": "sitt",
        "version": __version__,
        "dataset": str(dataset.root.resolve()),
        "textures": None if textures is None else str(Path(textures).resolve()),
        "seed": seed,
        "preset": to_dict(settings),
        "classes": {
            p.name: {
                "images": p.count,
                "new": p.new,
                "models": [
                    {"folder": m.folder, "texture": m.exemplar.name, "texture_from": m.exemplar.origin}
                    for m in models[p.name]
                ],
            }  # fmt: skip
            for p in plans
        },
        "skipped": dict(sorted(skipped.items())),
    }


def _write_records(stage: Path, records: list[dict[str, Any]], run: dict[str, Any]) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    (stage / MANIFEST).write_text(lines, encoding="utf-8")
    (stage / RECORD).write_text(json.dumps(run, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _summary(dst: Path, plans, models, records, skipped: Skipped, seconds: float) -> dict[str, Any]:
    notes = sorted({m.note for trained in models.values() for m in trained})
    return {
        "out": str(dst),
        "manifest": str(dst / MANIFEST),
        "classes": [
            {"class": p.name, "images": p.count, "new": p.new, "models": len(models[p.name])} for p in plans
        ],  # fmt: skip
        "images_written": len(records),
        "models_trained": sum(len(m) for m in models.values()),
        "perceptual": notes[0] if len(notes) == 1 else notes,
        "seconds": round(seconds, 3),
        "warnings": dict(sorted(Counter(f"images {why}" for why in skipped.values()).items())),
    }
