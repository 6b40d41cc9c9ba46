"""Does `vvk translate-texture` translate, and what does a texture model cost to train?

    python benchmarks/texture_translation.py                      # both parts, the demo pairs
    python benchmarks/texture_translation.py --quality-only --keep runs/texture-bench
    python benchmarks/texture_translation.py --cost-only --threads 1
    python benchmarks/texture_translation.py --steps 5 --cost-iterations 1 --cost-warmup 1 \
        --textures brick --out /tmp/texture_smoke.json        # smoke: the figures mean nothing

"Does it translate?" (``quality``): the demo pairs. Textures: scikit-image's bundled ``brick``,
``grass`` and ``gravel`` (``skimage.data``, 512² greyscale); contents: its photos ``astronaut``,
``chelsea``, ``coffee`` and ``rocket``. Both are written to PNG files in a work folder and read
back as ``vvk translate-texture`` reads them. Per texture (``--textures``), one texture model is
trained with the ``tiny`` preset (``vvk.methods.texture.train.train_texture``: 128² views, ngf 16,
400 iterations; ``--steps`` overrides the count, ``--set`` any field) on the four photos as contents; then
each photo is translated (``TextureModel.translate``) and scored by
``vvk.eval.texture.translation_report``: the Gram distance (random-filter network) of the photo
and of its translation to the texture, and the Sobel-edge correlation of the photo with its
translation and, as the floor, with the texture. Per texture and over all pairs: the means, and
how many translations moved towards the texture (Gram distance lowered) and kept more edges than
the floor. Translation speed: the four photos translated ``--rounds`` times after the scored pass;
images/s = 4 / the median seconds of a round (each photo is resized to 128², translated and
resized back to its own size; decoding excluded).

"Cost" (``cost``): seconds per texture model. The ``paper`` preset (288², ngf 32, 3,010
iterations) takes too long on a 2-core CPU to run to the end, so each configuration is trained on
the ``brick`` texture and the four photos for ``--cost-warmup`` + ``--cost-iterations``
iterations (default 2 + 5) with a metrics line after every iteration; the seconds of the
iterations after the warm-up (``metrics.jsonl`` times) give a median seconds per iteration, and
the full run is that times the preset's iteration count, labelled "extrapolated from N timed
iterations". Configurations: ``paper`` (288²), ``paper-128`` (``--set size=128``, the paper's
widths) and ``tiny`` (128², ngf 16; also timed to the end in ``quality``). The perceptual loss
needs the VGG-19 weights, which cannot be downloaded here: it is off in every run (the JSON says
so, in the run's own words). What it would add is estimated apart (``perceptual_estimate``): the
two VGG-19 perceptual terms of one iteration, forward and backward, on random weights (speed
does not depend on the weights), at 288² and 128²; ``--no-perceptual-estimate`` skips it.

Torch threads: ``--threads`` (default: torch's). Writes benchmarks/results/texture_translation.json
(``--out``) with the machine, threads and load average; a part not run this time (``--cost-only``,
``--quality-only``) keeps what the file held.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import write_json  # noqa: E402

from vvk.eval.texture import translation_report  # noqa: E402
from vvk.methods.texture.images import read_content, read_texture  # noqa: E402
from vvk.methods.texture.train import MODEL_FILE, resolve_preset, train_texture  # noqa: E402
from vvk.methods.texture.translate import load_texture_model  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "texture_translation.json"
TEXTURES = ("brick", "grass", "gravel")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
# name -> (preset, overrides): the configurations of the cost figure
COST_CONFIGS = {"paper": ("paper", ()), "paper-128": ("paper", ("size=128",)), "tiny": ("tiny", ())}
MEASURES = (
    "gram_content_texture",
    "gram_translated_texture",
    "edges_content_translated",
    "edges_content_texture",
)


def write_demo(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """scikit-image's textures and photos as PNG files in ``folder``: (textures, photos) by name."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in (*TEXTURES, *PHOTOS):
        paths[name] = folder / f"{name}.png"
        if not paths[name].is_file():
            Image.fromarray(getattr(skimage.data, name)()).save(paths[name])
    return {n: paths[n] for n in TEXTURES}, {n: paths[n] for n in PHOTOS}


def trained_model(texture: Path, photos: list[Path], run_dir: Path, args) -> dict:
    """Train the tiny texture model of ``texture`` into ``run_dir``, or reuse the finished one an
    earlier invocation left there (``--keep``); its record, with the training seconds."""
    record_file = run_dir / "benchmark_record.json"
    if (run_dir / MODEL_FILE).is_file() and record_file.is_file():
        return {**json.loads(record_file.read_text()), "reused": True}
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = ([f"steps={args.steps}"] if args.steps else []) + list(args.set)
    run = train_texture(texture, photos, preset="tiny", overrides=overrides, out=run_dir, seed=args.seed,
                        device=args.device, progress=False)  # fmt: skip
    if run.status != "finished":
        raise SystemExit(f"texture training of {texture.name} stopped: {run.status}")
    record = {**run.record(), "steps": run.step, "overrides": overrides}
    write_json(record_file, record)
    return record


def mean_measures(reports: list[dict]) -> dict:
    means = {key: round(statistics.mean(r[key] for r in reports), 6) for key in MEASURES}
    return {
        **means,
        "pairs": len(reports),
        "pairs_gram_lowered": sum(r["gram_translated_texture"] < r["gram_content_texture"] for r in reports),
        "pairs_edges_above_floor": sum(
            r["edges_content_translated"] > r["edges_content_texture"] for r in reports
        ),
    }


def translation_speed(model, images: list[np.ndarray], rounds: int) -> dict:
    """Images/s of ``model.translate`` over ``images``, from the median of ``rounds`` rounds."""
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        for image in images:
            model.translate(image)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return {"images_per_second": round(len(images) / median, 2), "rounds": rounds,
            "images_per_round": len(images), "seconds_per_round_median": round(median, 3),
            "seconds_per_round_min": round(min(seconds), 3)}  # fmt: skip


def quality(args, work: Path, textures: dict[str, Path], photos: dict[str, Path]) -> dict:
    """The "does it translate?" part (module docstring)."""
    contents = {name: read_content(path) for name, path in photos.items()}
    out: dict = {"overrides": list(args.set), "textures": {}, "pairs": []}
    for name in args.textures:
        texture = read_texture(textures[name])
        run_dir = (
            work
            / "models"
            / (
                f"{name}-tiny-s{args.seed}"
                + (f"-{args.steps}steps" if args.steps else "")
                + "".join(f"-{kv}" for kv in args.set)
            )
        )
        training = trained_model(textures[name], list(photos.values()), run_dir, args)
        model = load_texture_model(run_dir, device=args.device)
        reports = []
        for photo, image in contents.items():
            translated = model.translate(image)
            if args.keep:
                from PIL import Image

                (work / "translated").mkdir(parents=True, exist_ok=True)
                Image.fromarray(translated).save(work / "translated" / f"{photo}-in-{name}.png")
            report = {k: round(v, 6) for k, v in translation_report(image, texture, translated).items()}
            reports.append(report)
            out["pairs"].append({"texture": name, "content": photo, **report})
            print(json.dumps({"texture": name, "content": photo, **report}), flush=True)
        speed = translation_speed(model, list(contents.values()), args.rounds)
        out["textures"][name] = {"training": training, "translation": speed, "mean": mean_measures(reports),
                                 "load_average_1min": round(os.getloadavg()[0], 2)}  # fmt: skip
        print(json.dumps({"texture": name, **out["textures"][name]}), flush=True)
    out["mean"] = mean_measures(out["pairs"])
    return out


def iteration_seconds(run_dir: Path) -> list[float]:
    """Seconds of each iteration of a run logged at every iteration (``metrics.jsonl`` times)."""
    times = [0.0]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "time" in entry and "seconds" not in entry:  # metrics lines, not evaluation records
            times.append(entry["time"])
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def time_config(name: str, texture: Path, photos: list[Path], work: Path, args) -> dict:
    """Seconds per iteration of one cost configuration, extrapolated to its full run."""
    preset, extra = COST_CONFIGS[name]
    settings = resolve_preset(preset, extra)
    total = args.cost_warmup + args.cost_iterations
    run_dir = work / "cost" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [*extra, f"steps={total}", "log_every=1", "checkpoint_every=0"]
    run = train_texture(texture, photos, preset=preset, overrides=overrides, out=run_dir, seed=args.seed,
                        device=args.device, progress=False)  # fmt: skip
    timed = iteration_seconds(run_dir)[args.cost_warmup :]
    if len(timed) != args.cost_iterations:
        raise SystemExit(
            f"{name}: {len(timed)} iterations logged after the warm-up, expected {args.cost_iterations}"
        )
    per_iteration = statistics.median(timed)
    record = {
        "preset": preset, "overrides": list(extra), "size": settings.size, "ngf": settings.ngf,
        "ndf": settings.ndf, "full_iterations": settings.steps,
        "seconds_per_iteration_median": round(per_iteration, 4),
        "seconds_per_iteration_min": round(min(timed), 4),
        "full_run_seconds": round(per_iteration * settings.steps, 1),
        "full_run_minutes": round(per_iteration * settings.steps / 60, 2),
        "how": f"extrapolated from {len(timed)} timed iterations (after {args.cost_warmup} warm-up "
               f"iterations) x {settings.steps} iterations; checkpoints and the model file not counted",
        "perceptual": run.note,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    return record


def perceptual_seconds(size: int, device: str, rounds: int = 3) -> float:
    """Median seconds of SITT's two perceptual terms of one iteration (``x_ab`` vs the content,
    ``x_ba`` vs the texture: targets without gradient, inputs with), forward and backward, at
    ``size``², on a random VGG-19."""
    import torch
    import torchvision

    from vvk.methods.texture.losses import VGGPerceptualLoss

    loss_fn = VGGPerceptualLoss(torchvision.models.vgg19(weights=None).features).to(device)
    generator = torch.Generator().manual_seed(0)
    images = [(torch.rand(1, 3, size, size, generator=generator) * 2 - 1).to(device) for _ in range(4)]
    seconds = []
    for _ in range(rounds + 1):  # the first is a warm-up
        x_ab, x_ba = (images[0].clone().requires_grad_(True), images[1].clone().requires_grad_(True))
        started = time.perf_counter()
        (loss_fn(x_ab, images[2]) + loss_fn(x_ba, images[3])).backward()
        if device != "cpu":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def cost(args, work: Path, textures: dict[str, Path], photos: dict[str, Path]) -> dict:
    """The "cost" part (module docstring)."""
    out: dict = {"configs": {}}
    for name in args.cost_configs:
        out["configs"][name] = time_config(name, textures["brick"], list(photos.values()), work, args)
        print(json.dumps({"cost": name, **out["configs"][name]}), flush=True)
    if not args.no_perceptual_estimate:
        estimate: dict = {"how": "two VGG-19 perceptual terms per iteration, forward and backward, "
                                 "random weights, median of 3 after 1 warm-up; add to the seconds "
                                 "per iteration"}  # fmt: skip
        for name in args.cost_configs:
            size = out["configs"][name]["size"]
            key = f"seconds_per_iteration_{size}"
            if key not in estimate:
                estimate[key] = round(perceptual_seconds(size, args.device), 4)
            config = out["configs"][name]
            config["full_run_seconds_with_perceptual_estimated"] = round(
                (config["seconds_per_iteration_median"] + estimate[key]) * config["full_iterations"], 1
            )
        out["perceptual_estimate"] = estimate
        print(json.dumps({"perceptual_estimate": estimate}), flush=True)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textures", nargs="+", default=list(TEXTURES), choices=TEXTURES)
    parser.add_argument(
        "--steps", type=int, default=None, help="texture-model iterations (default: tiny's 400)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the texture models' seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a field of the quality part's tiny preset, e.g. texture_w=0")  # fmt: skip
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train, translate")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the translation speed")
    parser.add_argument("--cost-configs", nargs="+", default=list(COST_CONFIGS), choices=list(COST_CONFIGS))
    parser.add_argument("--cost-iterations", type=int, default=5, help="timed iterations per configuration")
    parser.add_argument("--cost-warmup", type=int, default=2, help="iterations before the timed ones")
    parser.add_argument("--no-perceptual-estimate", action="store_true", help="skip the VGG-19 timing")
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--cost-only", action="store_true")
    part.add_argument("--quality-only", action="store_true")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep runs and translations here (and reuse finished models there)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    args = parser.parse_args()
    if args.cost_iterations < 1 or args.cost_warmup < 0:
        parser.error("--cost-iterations must be at least 1, --cost-warmup at least 0")
    return args


def main() -> None:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.keep or Path(tempfile.mkdtemp(prefix="vvk-texture-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update(machine=machine_info(), threads=torch.get_num_threads(), device=args.device)
    try:
        textures, photos = write_demo(work / "inputs")
        results["demo"] = {
            "textures": "skimage.data: " + ", ".join(TEXTURES) + " (512x512 grey)",
            "contents": "skimage.data: " + ", ".join(PHOTOS),
            "measures": "vvk.eval.texture.translation_report (random-filter Gram network)",
        }
        if not args.cost_only:
            results["quality"] = quality(args, work, textures, photos)
            note = next(iter(results["quality"]["textures"].values()))["training"]["perceptual"]
        if not args.quality_only:
            results["cost"] = cost(args, work, textures, photos)
            note = next(iter(results["cost"]["configs"].values()))["perceptual"]
        # the runs' own note: "perceptual loss off: VGG-19 weights ... not in the cache (...)"
        results["perceptual_loss"] = "on" if note.startswith("perceptual loss on") else "off"
        results["perceptual_loss_note"] = note
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
