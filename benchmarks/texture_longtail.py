"""Does SITT augmentation help a long-tailed classifier? Three arms on a long-tailed DTD split.

    python benchmarks/texture_longtail.py [--seeds 0 1 2] [--steps N] [--sitt-steps N] [--jobs N]
        [--arms plain balanced sitt] [--keep DIR] [--label NAME] [--out PATH]
    python benchmarks/texture_longtail.py --seeds 0 --steps 20 --arms plain balanced \
        --label smoke --out /tmp/longtail_smoke.json                # smoke: the figures mean nothing
    python benchmarks/texture_longtail.py --data domains/office_caltech10/amazon --shots 5 \
        --test-per-class 20 --sitt-to double --max-textures 1      # the few-shot repeat

Data: ``textures/dtd`` of the shared data, 10 DTD classes × 20 images. Test set, the same for
every seed: per class, the last 4 images of a shuffle seeded by the class name (``TEST_SEED``),
40 images in all; they are never read by training or by SITT. Training, per seed: the classes
are ranked in an order shuffled by the seed, and the class of rank r (0..9) gets
``n_r = round(16 * (2/16) ** (r/9))`` images (16, 13, 10, 8, 6, 5, 4, 3, 3, 2: 70 in all), the
first n_r of a seeded shuffle of its 16 non-test images. Tail classes: those below the median
count (the last five ranks). The split is checked as it is made (disjoint, the right counts).

Few-shot (``--shots N``, any ImageFolder of the shared data with ``--data``, e.g.
``domains/office_caltech10/amazon``): every class gets N training images (the first N of a
seeded shuffle of its non-test images), ``--test-per-class`` test images as above, and every
class counts as a tail class; ``--sitt-to double`` gives each class N SITT images and
``--max-textures`` bounds the texture models per class (each is a few CPU minutes).

Classifier, the same recipe in every arm (``train_classifier``): a small CNN from scratch (four
conv3x3-BN-ReLU blocks 32-64-128-256 wide, 2×2 max pooling between them, global average
pooling, a linear layer; 0.4M parameters), images resized to a short side of 72 and centre-
cropped to 72², trained on 64² crops for ``--steps`` steps of batch 32 (AdamW, lr 2e-3, weight
decay 5e-4, cosine to 0), evaluated once at the end on the test images' centre 64² crops (no
model selection on the test set). A fixed number of steps, not epochs, so that the arms with
more images do not also train longer. Arms:

- ``plain``: uniform sampling of the training images, random 64² crops only;
- ``balanced``: class-balanced sampling (a class uniformly, then one of its images), with the
  standard augmentation: RandomResizedCrop(64, scale 0.25-1), horizontal flip, colour jitter
  (brightness, contrast, saturation 0.4);
- ``sitt``: ``balanced`` with SITT images added to each tail class, made by
  ``vvk.augment.texture`` (``vvk augment texture``) from a folder holding only the training
  split: the tail class's own training images are the texture exemplars, other classes'
  training images the contents, the ``tiny`` texture preset (``--sitt-steps`` overrides its
  iterations). Each tail class gets ``ceil(median) - n`` new images (``--sitt-to median``;
  ``head``: up to the head count). Balanced sampling then draws among a class's real and SITT
  images alike. Each new image's manifest record is checked: its texture exemplar is one of the
  class's training images, its content another class's. ``augment_texture`` trains one texture
  model per exemplar used (11 a seed here); the SITT images of a seed are kept under ``--keep``
  and reused by later runs of the same seed, ``--sitt-to`` and ``--sitt-steps``.

Reports top-1 on all 40 test images and on the tail classes' 20, per seed and as mean ± sample
std over the seeds (``--seeds``, at least 3 for the figure), the per-class accuracies and
counts, and each arm's difference from ``balanced`` per seed. ``--jobs N`` runs N seeds at a
time, each a process of one thread. Writes benchmarks/results/texture_longtail.json (``--out``),
one record per ``--label``, with the machine and load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import over_seeds, paired_differences, save_records, write_json  # noqa: E402
from _seeds import seed_results  # noqa: E402

from vvk.data.images import load_rgb  # noqa: E402
from vvk.testing import shared_data_reason, shared_data_root  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "texture_longtail.json"
ARMS = ("plain", "balanced", "sitt")
TEST_PER_CLASS = 4
HEAD, TAIL = 16, 2  # training images of the first and the last rank
TEST_SEED = 20240  # the test images' shuffle: one test set for every seed
SIDE, CROP = 72, 64
WIDTHS = (32, 64, 128, 256)
BATCH = 32
LR, WEIGHT_DECAY = 2e-3, 5e-4
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------------
# The split


@dataclass(frozen=True)
class Split:
    """One seed's long-tailed split: training and test images per class, classes by rank."""

    train: dict[str, list[Path]]
    test: dict[str, list[Path]]
    ranks: list[str]  # class names, head first
    tail: list[str]  # the classes below the median count

    @property
    def median(self) -> float:
        return statistics.median(len(v) for v in self.train.values())


def class_images(root: Path) -> dict[str, list[Path]]:
    """``root/<class>/*.jpg`` -> {class: sorted paths}."""
    classes = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir()
    }
    if not classes:
        raise SystemExit(f"{root}: no class folders")
    return classes


def rank_counts(classes: int, head: int = HEAD, tail: int = TAIL) -> list[int]:
    """Training images of rank 0..classes-1: geometric from ``head`` down to ``tail``."""
    return [round(head * (tail / head) ** (r / (classes - 1))) for r in range(classes)]


def train_counts(classes: int, shots: int | None) -> list[int]:
    """Training images of rank 0..classes-1: ``shots`` each (few-shot) or :func:`rank_counts`."""
    return [shots] * classes if shots else rank_counts(classes)


def make_split(images: dict[str, list[Path]], seed: int, shots: int | None = None,
               test_per_class: int = TEST_PER_CLASS) -> Split:  # fmt: skip
    """The long-tailed (or ``shots``-shot) split of ``seed`` (module docstring), checked."""
    test, pool = {}, {}
    for name, paths in images.items():
        order = np.random.default_rng([TEST_SEED, zlib.crc32(name.encode())]).permutation(len(paths))
        test[name] = [paths[i] for i in order[-test_per_class:]]
        pool[name] = [paths[i] for i in order[:-test_per_class]]
    rng = np.random.default_rng(seed)
    ranks = [str(name) for name in rng.permutation(sorted(images))]
    train = {}
    for name, count in zip(ranks, train_counts(len(ranks), shots), strict=True):
        if count > len(pool[name]):
            raise SystemExit(f"{name}: {len(pool[name])} images besides the test ones, {count} needed")
        train[name] = [pool[name][i] for i in rng.permutation(len(pool[name]))[:count]]
    median = statistics.median(len(v) for v in train.values())
    tail = [name for name in ranks if len(train[name]) < median] or list(ranks)  # few-shot: every class
    split = Split(train, test, ranks, tail)
    check_split(split, images, shots, test_per_class)
    return split


def check_split(split: Split, images: dict[str, list[Path]], shots: int | None, test_per_class: int) -> None:
    """Refuse a split whose training and test images overlap or whose counts are off."""
    seen_train = {p for paths in split.train.values() for p in paths}
    seen_test = {p for paths in split.test.values() for p in paths}
    if seen_train & seen_test:
        raise AssertionError(f"training and test images overlap: {sorted(seen_train & seen_test)[:3]}")
    for name, paths in split.test.items():
        if len(set(paths)) != test_per_class or not set(paths) <= set(images[name]):
            raise AssertionError(f"{name}: test images {paths}")
    counts, expected = [len(split.train[name]) for name in split.ranks], train_counts(len(split.ranks), shots)
    if counts != expected or any(len(set(v)) != len(v) for v in split.train.values()):
        raise AssertionError(f"training counts {counts}, expected {expected}")


# ---------------------------------------------------------------------------------------------
# The classifier


def small_cnn(classes: int, widths: tuple[int, ...] = WIDTHS) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


@cache
def load_small(path: Path) -> torch.Tensor:
    """(3, 72, 72) uint8: the short side resized to 72, the centre square."""
    from torchvision.transforms.v2 import functional as TF

    image = torch.from_numpy(load_rgb(path)).permute(2, 0, 1)  # (3, H, W)
    return TF.center_crop(TF.resize(image, [SIDE], antialias=True), [SIDE, SIDE])


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float, ImageNet-normalised."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (batch.float() / 255 - mean) / std


def augmentation(arm: str):
    """uint8 (3, 72, 72) -> (3, 64, 64): a random crop (``plain``) or the standard augmentation."""
    from torchvision.transforms import v2

    if arm == "plain":
        return v2.RandomCrop(CROP)
    return v2.Compose([
        v2.RandomResizedCrop(CROP, scale=(0.25, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
    ])  # fmt: skip


def train_classifier(images: list[torch.Tensor], labels: list[int], classes: int, *, balanced: bool,
                     arm: str, steps: int, seed: int) -> tuple[nn.Module, float]:  # fmt: skip
    """The recipe of every arm (module docstring): the trained model and its last loss (mean of
    the last 20 steps)."""
    torch.manual_seed(seed)  # the same initial weights in every arm of a seed
    model = small_cnn(classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    transform = augmentation(arm)
    rng = np.random.default_rng([seed, 1])
    by_class = [np.flatnonzero(np.array(labels) == c) for c in range(classes)]
    present = [c for c in range(classes) if len(by_class[c])]
    target = torch.tensor(labels)
    losses = []
    model.train()
    for _ in range(steps):
        if balanced:  # a class uniformly, then one of its images
            picks = [int(rng.choice(by_class[c])) for c in rng.choice(present, size=BATCH)]
        else:
            picks = rng.integers(len(images), size=BATCH).tolist()
        batch = normalise(torch.stack([transform(images[i]) for i in picks]))  # (B, 3, 64, 64)
        loss = F.cross_entropy(model(batch), target[picks])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return model, statistics.mean(losses[-20:])


@torch.no_grad()
def predict(model: nn.Module, images: list[torch.Tensor]) -> list[int]:
    from torchvision.transforms.v2 import functional as TF

    model.eval()
    batch = normalise(torch.stack([TF.center_crop(image, [CROP, CROP]) for image in images]))
    return model(batch).argmax(dim=1).tolist()


# ---------------------------------------------------------------------------------------------
# SITT images


def sitt_counts(split: Split, to: str) -> dict[str, int]:
    """New images per tail class: up to ceil(median) (``median``) or the head count (``head``),
    or as many as it has (``double``)."""
    if to == "double":
        return {name: len(split.train[name]) for name in split.tail}
    goal = math.ceil(split.median) if to == "median" else max(len(v) for v in split.train.values())
    return {name: goal - len(split.train[name]) for name in split.tail if goal > len(split.train[name])}


def link_training_split(split: Split, folder: Path) -> Path:
    """An ImageFolder of links to the training images only: what SITT is allowed to see."""
    shutil.rmtree(folder, ignore_errors=True)
    for name, paths in split.train.items():
        (folder / name).mkdir(parents=True)
        for path in paths:
            (folder / name / path.name).symlink_to(path)
    return folder


def sitt_images(split: Split, seed: int, work: Path, args) -> tuple[dict[str, list[Path]], dict]:
    """The SITT images of each tail class, made by ``vvk.augment.texture`` from the training
    split (listed in ``OUT/manifest.jsonl``), or those an earlier run of the same seed and settings
    left in ``work`` (``--keep``); and what making them took (models, seconds, per class)."""
    counts = sitt_counts(split, args.sitt_to)
    key = "-".join([args.data_name.replace("/", "_"), f"s{seed}", f"{args.shots}shot" if args.shots else "lt",
                    args.sitt_to, f"{args.sitt_steps}steps" if args.sitt_steps else "tiny",
                    f"{args.max_textures}tex" if args.max_textures else "alltex"])  # fmt: skip
    folder = work / "sitt" / key
    done = folder / "made.json"
    made = json.loads(done.read_text()) if done.is_file() else None
    reused = made is not None and made["counts"] == counts
    if not reused:
        try:
            from vvk.augment.texture import augment_texture
        except ImportError as e:
            raise SystemExit(f"arm sitt needs vvk.augment.texture ({e}); use --arms plain balanced") from None
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        train_root = link_training_split(split, work / "splits" / f"s{seed}" / "train")
        overrides = [f"steps={args.sitt_steps}"] if args.sitt_steps else []
        made = {"counts": counts, "classes": {}}
        for name, count in counts.items():  # one call per class: each has its own count
            summary = augment_texture(train_root, folder / name, classes=[name], per_class=count,
                                      max_textures=args.max_textures, preset="tiny", overrides=overrides,
                                      seed=seed)  # fmt: skip
            made["classes"][name] = {
                "models": summary["models_trained"],
                "seconds": summary["seconds"],
                "perceptual": summary["perceptual"],
                "warnings": summary["warnings"],
            }
        write_json(done, made)
    images = {name: manifest_images(folder / name, name, split) for name in counts}
    for name, count in counts.items():
        if len(images[name]) != count:
            raise SystemExit(f"{folder / name}: {len(images[name])} SITT images of {name}, {count} asked for")
    return images, {"classes": made["classes"], "reused": reused}


def manifest_images(out: Path, name: str, split: Split) -> list[Path]:
    """The new images of class ``name`` that ``augment_texture`` listed in ``out``'s manifest,
    after checking that each was made from training images only: a texture exemplar of
    ``name``'s training images and a content image of another class's."""
    train = {f"{c}/{p.name}" for c, paths in split.train.items() for p in paths}
    images = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        record = json.loads(line)
        texture, source = record["texture"], record["source"]
        if record["class"] != name or texture not in train or not texture.startswith(f"{name}/"):
            raise AssertionError(f"{out}: {record['image']} of class {record['class']}, texture {texture}")
        if source not in train or source.startswith(f"{name}/"):
            raise AssertionError(f"{out}: {record['image']} made from {source}")
        images.append(out / record["image"])
    return images


# ---------------------------------------------------------------------------------------------
# One arm on one seed


def accuracy(pairs: list[tuple[int, int]]) -> float:
    return round(sum(p == t for p, t in pairs) / len(pairs), 4)


def run_one(arm: str, seed: int, work: Path, args) -> dict:
    """Train arm ``arm`` on seed ``seed``'s split and score it on the test images."""
    split = make_split(class_images(args.images), seed, args.shots, args.test_per_class)
    names = sorted(split.train)
    paths = [(p, names.index(c)) for c in names for p in split.train[c]]
    record: dict = {"seed": seed, "arm": arm, "train_images": {c: len(split.train[c]) for c in split.ranks},
                    "tail": split.tail}  # fmt: skip
    started = time.monotonic()
    if arm == "sitt":
        made, making = sitt_images(split, seed, work, args)
        paths += [(p, names.index(c)) for c, ps in made.items() for p in ps]
        record["sitt_images"] = {c: len(ps) for c, ps in made.items()}
        record["sitt_making"] = making  # per class: texture models, seconds (of the run that made them)
        record["sitt_seconds"] = round(time.monotonic() - started, 1)
    images = [load_small(p) for p, _ in paths]
    started = time.monotonic()
    model, loss = train_classifier(images, [label for _, label in paths], len(names),
                                   balanced=arm != "plain", arm=arm, steps=args.steps, seed=seed)  # fmt: skip
    record["train_seconds"] = round(time.monotonic() - started, 1)
    test = [(p, names.index(c)) for c in names for p in split.test[c]]
    predicted = predict(model, [load_small(p) for p, _ in test])
    pairs = [(guess, label) for guess, (_, label) in zip(predicted, test, strict=True)]
    tail = {names.index(c) for c in split.tail}
    head = [pair for pair in pairs if pair[1] not in tail]  # none in a few-shot split
    record.update(
        top1=accuracy(pairs),
        tail_top1=accuracy([pair for pair in pairs if pair[1] in tail]),
        **({"head_top1": accuracy(head)} if head else {}),
        per_class={c: accuracy([pair for pair in pairs if pair[1] == names.index(c)]) for c in split.ranks},
        loss_last=round(loss, 4),
        load_average_1min=round(os.getloadavg()[0], 2),
    )
    return record


def summarise(runs: list[dict]) -> dict:
    """Per arm: the spread over seeds of top-1, tail and head top-1; and per arm the per-seed
    differences from ``balanced``."""
    out: dict = {}
    for arm in ARMS:
        mine = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if mine:
            out[arm] = {key: over_seeds([r[key] for r in mine])
                        for key in ("top1", "tail_top1", "head_top1") if key in mine[0]}  # fmt: skip
    balanced = [r for r in runs if r["arm"] == "balanced"]
    for arm in ("plain", "sitt"):
        mine = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
        if paired_differences(mine, balanced, "top1"):
            out[f"{arm}_minus_balanced"] = {
                key: over_seeds(paired_differences(mine, balanced, key)) for key in ("top1", "tail_top1")
            }
    return out


# ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=600, help="classifier steps of batch 32, every arm")
    parser.add_argument("--sitt-steps", type=int, default=None,
                        help="texture-model iterations for SITT (default: tiny's 400)")  # fmt: skip
    parser.add_argument("--sitt-to", default="median", choices=["median", "head", "double"],
                        help="SITT images fill a tail class up to the median or the head count, "
                             "or double it")  # fmt: skip
    parser.add_argument("--data", dest="data_name", default="textures/dtd",
                        help="an ImageFolder (class/image.jpg) under the shared data")  # fmt: skip
    parser.add_argument(
        "--shots",
        type=int,
        default=None,
        help="a few-shot split: this many training images per class (default: long-tailed)",
    )
    parser.add_argument("--test-per-class", type=int, default=TEST_PER_CLASS)
    parser.add_argument(
        "--max-textures",
        type=int,
        default=None,
        help="at most this many texture models per class (default: one per new image)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="seeds at a time, one thread each")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the work folder here (and reuse the SITT images there)")  # fmt: skip
    parser.add_argument(
        "--label", default=None, help="the record's key (default: cnn-<steps>steps[-sitt<N>])"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    args = parser.parse_args()
    data = shared_data_root()
    if data is None:
        parser.error(shared_data_reason())
    args.images = data / args.data_name
    args.label = args.label or f"cnn-{args.steps}steps" + (
        f"-sitt{args.sitt_steps}" if args.sitt_steps else ""
    )
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.keep or Path(tempfile.mkdtemp(prefix="vvk-longtail-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    arms = [arm for arm in ARMS if arm in args.arms]
    images = class_images(args.images)
    protocol = {
        "data": f"{args.data_name}: " + ", ".join(f"{c} {len(v)}" for c, v in images.items()),
        "test": f"{args.test_per_class} per class, the same for every seed "
                f"(shuffle seeded by {TEST_SEED}, name)",
        "train_counts_by_rank": train_counts(len(images), args.shots),
        "classifier": f"CNN {'-'.join(map(str, WIDTHS))}, {SIDE}px short side, {CROP}px crops, "
                      f"batch {BATCH}, AdamW lr {LR} wd {WEIGHT_DECAY} cosine, {args.steps} steps",
        "sitt": {"to": args.sitt_to, "texture_steps": args.sitt_steps or "tiny preset (400)",
                 "texture_models_per_class": args.max_textures or "one per new image",
                 "maker": "vvk.augment.texture.augment_texture, training split only"},
    }  # fmt: skip
    splits = {seed: make_split(images, seed, args.shots, args.test_per_class) for seed in args.seeds}
    protocol["splits"] = {seed: {"train_images": {c: len(s.train[c]) for c in s.ranks}, "tail": s.tail}
                          for seed, s in splits.items()}  # fmt: skip
    results: dict = {"machine": machine_info(), "records": {}}
    runs: list[dict] = []
    try:
        for seed_runs in seed_results(run_one, arms, args.seeds, work, args, key="arm", jobs=args.jobs):
            runs.extend(record for _, record in seed_runs)
            results["records"][args.label] = {
                "summary": summarise(runs),
                "runs": sorted(runs, key=lambda r: (r["seed"], ARMS.index(r["arm"]))),
                "protocol": protocol,
                "machine": machine_info(),
                "threads": torch.get_num_threads() if args.jobs == 1 else 1,
            }
            save_records(args.out, results, "records")  # after every seed: a stopped run keeps its seeds
        print(json.dumps({"label": args.label, **results["records"][args.label]["summary"]}), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
