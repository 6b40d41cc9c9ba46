"""Does a query-modulated detector find the queried object better than a standard detector
filtered to that label? Query-conditioned AP50 on the built-in example (issue 17).

    python benchmarks/qmd_vs_filtered.py [--models retinanet qmd-film qmd-product qmd-multitask]
        [--seeds 0 1 2] [--steps N] [--set KEY=VALUE ...] [--none-ratio R] [--qmd-set KEY=VALUE ...]
        [--label NAME] [--jobs N]
    python benchmarks/qmd_vs_filtered.py --steps 3 --seeds 0 --label smoke    # does it run
    python benchmarks/qmd_vs_filtered.py --latency [--runs 21] [--warmup 3] [--threads 1]

Fornoni et al. (arXiv 2106.10258) argue that a detector modulated by a query finds the queried
object with higher confidence than a standard detector whose detections are filtered to the
queried label. Every model trains from random initialisation on the built-in example (10 digit
classes; ``vvk train detector`` without ``--data``) with the same steps and seed:

- ``retinanet``: a standard ``retinanet-spinenet-mobile-tiny`` (the baseline);
- ``qmd-film``: ``--method qmd``, FiLM fusion (the default), each image asking ten queries
  (the tiny preset's ``qmd.queries_per_image``); ``qmd-film-1query``: one, as in the paper;
- ``qmd-product``: ``--method qmd --set qmd.modulation=product`` (FindIt's fusion);
- ``qmd-film-tower``, ``qmd-film-both``: FiLM on the class subnet's output (``qmd.modulate=
  class_tower``), or there and on the pyramid (``both``);
- ``qmd-multitask``: ``--method qmd --multitask`` (FiLM), also a standard detector, its K-class
  head trained on the unqueried images (``qmd.none_ratio``: the preset's, or ``--none-ratio R``
  for this model only).

Each run is scored on the example's val split (the preset's ``eval_images``) with the same
(image, query) pairs (``vvk.methods.detection.query_eval``: every category an image holds, and
one it lacks): ``query_AP50`` / ``query_AP`` through ``filtered_detector`` for ``retinanet`` and
``query_detector`` for the QMD models. ``retinanet`` and ``qmd-multitask`` also carry the box AP
without queries that their training's final evaluation reports (``bbox_AP50``, ``bbox_AP``);
the QMD runs carry their training's own query AP50 too (``train_query_AP50``, same pairs: a
cross-check). Per model: mean, standard deviation and range over seeds; then the issue's
questions: does the best QMD variant's query AP50 beat the filtered standard detector's, and is
the multitask model's standard box AP50 at least the standard detector's.

``--qmd-set KEY=VALUE`` sets ``qmd.KEY`` for the QMD models only (e.g. ``queries_per_image=10``:
each training image asks every category, on one backbone pass).

``--latency`` instead times eval-mode forward passes at 384² on the CPU (random weights, batch
1, interleaved rounds in a new random order each, after a warm-up; the median):
``qmd-spinenet-mobile-tiny`` answering a query, in each variant of ``TIMED_VARIANTS``, against
the same model with its modulation taken out (``over_unmodulated``: what modulating costs, the
issue's 5% budget) and against the plain ``retinanet-spinenet-mobile-tiny``; built for COCO's 80
categories and for the example's 10 (the query path's class subnet ends in a one-class layer,
the plain one in a K-class layer whose decoding runs over K classes); and checks that a text
query's embedding is cached per string (the model's encoder swapped for a ``TextQueryEncoder``
over a stand-in teacher that counts its calls: a query asked twice must reach it once).

Writes benchmarks/results/qmd_vs_filtered.json, records of earlier invocations kept, keyed by
``--label`` (default ``default``; ``latency`` for ``--latency``), with the machine. ``--jobs N``
trains N seeds at once, each in its own process on one thread (their seconds then count a
shared machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _machine import machine_info  # noqa: E402
from _records import save_records, spread  # noqa: E402
from _seeds import seed_results  # noqa: E402

from vvk.methods.detection.train import train_detector  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "qmd_vs_filtered.json"
STANDARD = "retinanet-spinenet-mobile-tiny"
QMD = "qmd-spinenet-mobile-tiny"
# model name -> train_detector options (beyond steps, seed and out)
MODELS: dict[str, dict] = {
    "retinanet": {"model": STANDARD},
    "qmd-film": {"method": "qmd"},
    "qmd-product": {"method": "qmd", "overrides": ["qmd.modulation=product"]},
    "qmd-film-1query": {"method": "qmd", "overrides": ["qmd.queries_per_image=1"]},
    "qmd-film-tower": {"method": "qmd", "overrides": ["qmd.modulate=class_tower"]},
    "qmd-film-both": {"method": "qmd", "overrides": ["qmd.modulate=both"]},
    "qmd-multitask": {"method": "qmd", "multitask": True},
}
QMD_MODELS = (
    "qmd-film",
    "qmd-film-1query",
    "qmd-product",
    "qmd-film-tower",
    "qmd-film-both",
    "qmd-multitask",
)
KEYS = ("query_AP50", "query_AP", "bbox_AP50", "bbox_AP", "train_query_AP50")
LATENCY_SIZE = 384


def run_one(name: str, seed: int, work: Path, args) -> dict:
    options = dict(MODELS[name])
    overrides = [f"train.seed={seed}", "eval_every=0", *options.pop("overrides", []), *args.set]
    if name == "qmd-multitask" and args.none_ratio is not None:
        overrides.append(f"qmd.none_ratio={args.none_ratio}")
    if name in QMD_MODELS:
        overrides += [f"qmd.{assignment}" for assignment in args.qmd_set]
    started = time.monotonic()
    result = train_detector(steps=args.steps, overrides=overrides, out=work / f"{name}-s{seed}",
                            progress=False, **options)  # fmt: skip
    seconds = time.monotonic() - started
    queried = query_scores(result, standard=name == "retinanet")
    final = result.evaluation or {}
    record = {"seed": seed, "steps": result.step, "train_seconds": round(seconds, 1), **queried}
    if result.preset.get("qmd"):  # the resolved fusion and query mix the run trained with
        record["qmd"] = result.preset["qmd"]
    if "bbox_AP50" in final:  # retinanet, qmd-multitask: box AP without queries
        record.update(bbox_AP50=final["bbox_AP50"], bbox_AP=final.get("bbox_AP"))
    if name in QMD_MODELS and "query_AP50" in final:
        record["train_query_AP50"] = final["query_AP50"]
    return record


def query_scores(result, *, standard: bool) -> dict:
    """Query-conditioned AP of a run's exported detector on the example's val split: the
    standard detector filtered to the queried label, a QMD detector asked the query."""
    from vvk.data.detection import open_coco
    from vvk.eval.detection import load_ground_truth
    from vvk.examples.digits_on_photos import detection_example_dir
    from vvk.methods.detection.query_eval import evaluate_queries, filtered_detector, query_detector
    from vvk.models import load

    val = open_coco(detection_example_dir() / "val", what="val")
    model = load(result.detector_path)
    detect = filtered_detector(model) if standard else query_detector(model)
    scores = evaluate_queries(detect, val, load_ground_truth(val), max_images=result.preset["eval_images"],
                              batch_size=result.preset["eval_batch_size"])  # fmt: skip
    kept = ("query_AP50", "query_AP", "query_pairs", "negative_pairs", "eval_seconds")
    return {k: scores.get(k) for k in kept}


def summarise(runs: dict[str, list[dict]]) -> dict:
    summary: dict = {
        name: {
            key: spread([r[key] for r in rows if r.get(key) is not None])
            for key in KEYS
            if any(r.get(key) is not None for r in rows)
        }
        for name, rows in runs.items()
    }
    query = {n: summary[n]["query_AP50"]["mean"] for n in runs if "query_AP50" in summary[n]}
    variants = [n for n in QMD_MODELS if n in query]
    if "retinanet" in query and variants:
        best = max(variants, key=query.get)
        summary["best_qmd"] = best
        summary["qmd_query_AP50_above_filtered"] = query[best] > query["retinanet"]
        # the same question seed by seed: the best variant (on the mean) against the baseline
        filtered = {r["seed"]: r["query_AP50"] for r in runs["retinanet"]}
        wins = [r["query_AP50"] > filtered[r["seed"]] for r in runs[best] if r["seed"] in filtered]
        summary["qmd_above_filtered_seeds"] = f"{sum(wins)}/{len(wins)}"
    boxes = {n: summary[n]["bbox_AP50"]["mean"] for n in ("retinanet", "qmd-multitask")
             if n in summary and "bbox_AP50" in summary[n]}  # fmt: skip
    if len(boxes) == 2:
        summary["multitask_bbox_AP50_at_least_standard"] = boxes["qmd-multitask"] >= boxes["retinanet"]
    return summary


class CountingTeacher:
    """A stand-in text embedder (``TextQueryEncoder``'s teacher) that counts the strings it embeds."""

    def __init__(self, dim: int = 32):
        self.dim, self.calls, self.texts = dim, 0, 0

    def embed_vocabulary(self, vocabulary):
        self.calls += 1
        self.texts += len(vocabulary)
        generator = torch.Generator().manual_seed(0)
        return torch.randn(len(vocabulary), self.dim, generator=generator)


@torch.inference_mode()
def latency(args) -> dict:
    """The forward timings for COCO's 80 categories (the builders' default) and the example's 10
    (what the accuracy runs train), and the query cache check."""
    from vvk.data.detection import open_coco
    from vvk.examples.digits_on_photos import detection_example_dir

    digits = open_coco(detection_example_dir() / "val", what="val").categories
    timings = {"coco80": forward_times(None, args), "digits10": forward_times(digits, args)}
    return {"image_size": LATENCY_SIZE, "batch_size": 1, "runs": args.runs, "warmup": args.warmup,
            "threads": torch.get_num_threads(), "weights": "random", **timings,
            "query_cache": query_cache()}  # fmt: skip


# the QMD variants timed: name -> builder options
TIMED_VARIANTS: dict[str, dict] = {
    "film_features": {},
    "film_class_tower": {"modulate": "class_tower"},
    "product_features": {"modulation": "product"},
}


def forward_times(categories, args) -> dict:
    """Eval-mode forward seconds at 384² (median of ``args.runs`` interleaved rounds after
    ``args.warmup``) of the plain RetinaNet, each QMD variant answering a query, the default QMD
    model with its modulation taken out (``unmodulated``: the same one-class query path, so that
    the ratio to it is what modulating costs), and the label encoder alone."""
    import vvk.models

    torch.manual_seed(0)
    options = {"image_size": LATENCY_SIZE, **({} if categories is None else {"categories": categories})}
    standard = vvk.models.build(STANDARD, **options).eval()
    variants = {
        name: vvk.models.build(QMD, **options, **extra).eval() for name, extra in TIMED_VARIANTS.items()
    }
    # One detector's weights in every QMD model: a fresh modulation is the identity, so they all
    # detect alike and their post-processing (which random weights make data-dependent) costs
    # the same; only the modulation differs.
    reference = variants["film_features"].state_dict()
    for model in variants.values():
        own = model.state_dict()
        same = {k: v for k, v in reference.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(same, strict=False)
    unmodulated = copy.deepcopy(variants["film_features"])
    unmodulated.adapter.modulation = None  # the adapter then only encodes the query
    query = standard.categories[0]["name"]
    images = [torch.rand(3, LATENCY_SIZE, LATENCY_SIZE)]
    calls = {"retinanet": partial(standard, images),
             "unmodulated": partial(unmodulated, images, queries=[query]),
             **{name: partial(model, images, queries=[query]) for name, model in variants.items()},
             "label_encoder": lambda: variants["film_features"].adapter.encoder([query])}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = random.Random(0)
    for round_ in range(args.warmup + args.runs):
        # a new order each round: a call timed right after a heavier one runs on colder caches
        for name in order.sample(list(calls), len(calls)):
            started = time.perf_counter()
            calls[name]()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {"categories": len(standard.categories), "query": query,
            "seconds_median": {name: round(m, 6) for name, m in median.items()},
            "over_unmodulated": {name: round(median[name] / median["unmodulated"], 3) for name in variants},
            "default_over_retinanet": round(median["film_features"] / median["retinanet"], 3)}  # fmt: skip


def query_cache() -> dict:
    """The text encoder's cache in the real forward path: ``qmd-spinenet-mobile-tiny`` with its
    encoder swapped for a ``TextQueryEncoder`` over a counting stand-in teacher; a query asked
    three times reaches the teacher once, a new one beside a cached one adds one text."""
    import vvk.models
    from vvk.models.detectors.query_modulation import TextQueryEncoder

    qmd = vvk.models.build(QMD, image_size=LATENCY_SIZE).eval()
    teacher = CountingTeacher()
    qmd.adapter.encoder = TextQueryEncoder(teacher, qmd.adapter.encoder.embedding.embedding_dim)
    images = [torch.rand(3, LATENCY_SIZE, LATENCY_SIZE)]
    seconds = []
    for text in ("a red mug", "a red mug", "a red mug"):
        started = time.perf_counter()
        qmd(images, queries=[text])
        seconds.append(time.perf_counter() - started)
    repeated = teacher.calls
    qmd(images * 2, queries=["a red mug", "a cat"])  # a new string beside a cached one: one call, one text
    return {"repeated_query_3x_teacher_calls": repeated, "cached": repeated == 1,
            "new_plus_cached_teacher_calls": teacher.calls - repeated,
            "new_plus_cached_texts_embedded": teacher.texts - 1,
            "repeated_query_forward_seconds": [round(s, 4) for s in seconds]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default: the tiny preset's)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="preset override")
    parser.add_argument("--label", default=None, help="results key (default: default, or latency)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, one thread each")
    parser.add_argument(
        "--none-ratio", type=float, default=None,
        help="qmd-multitask's qmd.none_ratio (default: the preset's multitask share)",
    )  # fmt: skip
    parser.add_argument(
        "--qmd-set", action="append", default=[], metavar="KEY=VALUE",
        help="qmd.KEY=VALUE for the QMD models only, e.g. queries_per_image=10",
    )  # fmt: skip
    parser.add_argument("--latency", action="store_true", help="time the forward passes instead")
    parser.add_argument("--runs", type=int, default=21, help="--latency: timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="--latency: untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="--latency: torch threads")
    args = parser.parse_args()
    if args.latency:
        torch.set_num_threads(args.threads)
        entry = {"latency": latency(args), "machine": machine_info()}
        save_records(RESULTS, {"results": {args.label or "latency": entry}}, "results")
        print(json.dumps(entry["latency"]), flush=True)
        return
    label = args.label or "default"
    work = Path(tempfile.mkdtemp(prefix="vvk-qmd-bench-"))
    runs: dict[str, list[dict]] = {m: [] for m in args.models}
    try:
        for records in seed_results(
            run_one, args.models, args.seeds, work, args, key="model", jobs=args.jobs
        ):  # seed-major: a stopped run keeps its whole seeds
            for name, record in records:
                runs[name].append(record)
            entry = {"steps": args.steps, "overrides": args.set, "none_ratio": args.none_ratio,
                     "qmd_set": args.qmd_set, "runs": runs, "summary": summarise(runs),
                     "machine": machine_info()}  # fmt: skip
            save_records(RESULTS, {"results": {label: entry}}, "results")
        print(json.dumps(entry["summary"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
