"""``vvk train detector``: train a registered detector on a COCO dataset, scored on a val set.

::

    from vvk.methods.detection import train_detector

    result = train_detector(model="retinanet-spinenet-mobile-tiny", data="coco/train", val="coco/val",
                            steps=500, out="runs/d1")
    result.detector_path    # runs/d1/detector.safetensors: vvk.models.load rebuilds it, categories too
    result.evaluation       # {"bbox_AP": ..., "bbox_AP50": ..., ...} at the last step

``plan_detector`` resolves and checks everything before anything is written: the preset
(``preset`` of the model's family, then ``overrides``, then the shortcuts ``model`` / ``steps`` /
``batch_size`` / ``copy_paste``), that the model builds with the data's categories (on the meta
device), that the annotation files read and the val set has the training categories, and that
the run folder may be used. ``run_detector`` writes ``RUN/preset.json`` (the resolved preset and
the data it reads), trains on the one training loop with an evaluation on ``val`` every
``eval_every`` steps and after the last (lines of ``metrics.jsonl`` with ``"hook": "val"``), and
exports the detector. Without ``data``, the built-in example set's train split is the data and
its val split the val set, without flips (``DEMO_OVERRIDES``). ``resume=True`` continues the
run in ``out`` on its recorded data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vvk.atomic import atomic_write_text
from vvk.data.coco import CocoDataset
from vvk.errors import VvkError
from vvk.methods.detection.preset import (
    DEFAULT_PRESET,
    METHOD_FAMILIES,
    MULTITASK_NONE_RATIO,
    PRESETS,
    QMD_METHOD,
    DetectionPreset,
    family_of,
    method_family,
    preset_for,
)
from vvk.methods.overrides import from_dict, parse_overrides, replace_fields
from vvk.methods.runs import (
    absolute,
    check_device,
    check_new_run_dir,
    check_unchanged,
    fit_warmup,
    recorded_preset,
    recorded_run,
    resumed_data,
)
from vvk.paths import default_run_dir

METHOD = "detector"  # run.json's method: what --resume checks
PRESET_FILE = "preset.json"
DETECTOR_FILE = "detector.safetensors"
HOOK = "val"  # the evaluation's name in metrics.jsonl
# What the built-in example needs of any preset, before the user's own overrides: a mirrored
# digit is not a digit of its class, so flips would teach the model wrong labels.
DEMO_OVERRIDES = ("flip_prob=0",)


def resolve_detection_preset(
    preset: str = DEFAULT_PRESET,
    *,
    model: str | None = None,
    overrides: Sequence[str] = (),
    steps: int | None = None,
    batch_size: int | None = None,
    copy_paste: bool = False,
    method: str | None = None,
    multitask: bool = False,
    base: DetectionPreset | None = None,
) -> DetectionPreset:
    """Preset ``preset`` of the family of the model asked for (``model``, or a ``model=``
    override; else the ``method``'s family, ViLD's or QMD's, else the preset's RetinaNet), or
    ``base``, with ``overrides`` and the shortcuts applied at once, each field checked; a shorter
    run shortens the warm-up in proportion."""
    given = [
        *implied(multitask),
        *overrides,
        *shortcuts(model, steps, batch_size, copy_paste, method, multitask),
    ]
    if base is None:
        # the RetinaNet preset has no method settings to parse those overrides against
        plain = [g for g in given if not g.startswith(tuple(f"{f}." for f in METHOD_FAMILIES))]
        asked = parse_overrides(preset_for(preset), plain)
        default = (
            PRESETS[preset][method_family(method)].model if method is not None and preset in PRESETS else None
        )
        base = preset_for(preset, asked.get("model", default))
    if method == QMD_METHOD and base.qmd is None:
        raise VvkError(f"method=qmd: trains a qmd-* detector, not {base.model}", params=("method", "model"))
    changes = parse_overrides(base, given)
    if "model" in changes:
        family_of(changes["model"])  # a model of no detector is refused by name
    fit_warmup(base.train, changes)
    return replace_fields(base, changes)


def implied(multitask: bool) -> list[str]:
    """The overrides a shortcut implies unless ``--set`` says otherwise (they come first)."""
    return [f"qmd.none_ratio={MULTITASK_NONE_RATIO}"] if multitask else []


def shortcuts(
    model: str | None,
    steps: int | None,
    batch_size: int | None,
    copy_paste: bool,
    method: str | None = None,
    multitask: bool = False,
) -> list[str]:
    """The ``key=value`` overrides the shortcut arguments stand for (``method=qmd`` only picks
    the family: QMD has one method)."""
    vild_method = method if method is not None and method_family(method) == "vild" else None
    given = {"model": model, "train.steps": steps, "train.batch_size": batch_size,
             "copy_paste": "true" if copy_paste else None, "vild.method": vild_method,
             "qmd.multitask": "true" if multitask else None}  # fmt: skip
    return [f"{key}={value}" for key, value in given.items() if value is not None]


@dataclass(frozen=True)
class DetectorPlan:
    """A checked detector training run, before anything is written (``plan_detector``).

    Attributes:
        data, val: the training and validation datasets (folders or instances files), absolute.
        demo: no data was given: the built-in example set's train and val splits.
        overrides: every assignment the run was given (the recorded ones first when resuming).
        train_coco, val_coco: their annotations, read and checked; ``val_truth`` the val set as
            the evaluator reads it (checked too: a bad file fails before training).
    """

    preset: str
    config: DetectionPreset
    data: Path
    val: Path | None
    run_dir: Path
    resume: bool
    demo: bool
    overrides: tuple[str, ...]
    train_coco: CocoDataset = field(repr=False, compare=False)
    val_coco: CocoDataset | None = field(repr=False, compare=False)
    val_truth: Any = field(default=None, repr=False, compare=False)  # vvk.eval.detection.GroundTruth
    regions: Path | None = None
    vild: Any = field(default=None, repr=False, compare=False)  # vvk.methods.vild.train.ViLDPlan
    queries: Any = field(default=None, repr=False, compare=False)  # vvk.methods.qmd.train.QueryPlan

    @property
    def categories(self) -> list[dict[str, Any]]:
        """The classes the model trains on (a ViLD split's base categories only)."""
        from vvk.data.detection import categories_of

        return self.vild.base_categories if self.vild is not None else categories_of(self.train_coco)

    def record(self) -> dict[str, Any]:
        """What ``preset.json`` holds: enough to resume the run, and to know what it read."""
        from vvk.methods.overrides import to_dict

        return {
            "method": METHOD, "preset": self.preset, "data": str(self.data),
            "val": None if self.val is None else str(self.val), "overrides": list(self.overrides),
            "regions": None if self.regions is None else str(self.regions),
            "categories": self.categories, "resolved": to_dict(self.config),
        }  # fmt: skip


def plan_detector(
    *,
    model: str | None = None,
    data: str | os.PathLike | None = None,
    val: str | os.PathLike | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    steps: int | None = None,
    batch_size: int | None = None,
    copy_paste: bool = False,
    method: str | None = None,
    multitask: bool = False,
    regions: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
) -> DetectorPlan:
    """Resolve and check a detector training run (module docstring); writes nothing, except
    that the built-in example set is generated into the user cache on first use.

    Args:
        model: a registry name of task "detection" (default: the preset's).
        data: a COCO dataset folder or instances file (None: the built-in example set).
        val: a COCO dataset to score on during and after training (None: none, or with the
            example set its val split).
        preset: ``tiny`` (default) or ``paper``, for the model's family; the run's own when resuming.
        copy_paste: add Simple Copy-Paste to the input pipeline (the preset field ``copy_paste``).
        method: a ViLD method (``vild``, ``vild-text``, ``vild-image``, ``vild-ensemble``): a
            ``vild-*`` detector (the preset's unless ``model`` names one); its teacher and split
            are the preset's ``vild.teacher`` and ``vild.novel`` (``vvk.methods.vild.train``);
            or ``qmd``: a query-modulated ``qmd-*`` detector trained on queries synthesised from
            the annotations (the preset's ``qmd.*``; ``vvk.methods.qmd``).
        multitask: a QMD detector that also detects without a query (``qmd.multitask``).
        regions: the ``vvk detect embed-regions`` folder of ``data`` a distilling ViLD method
            needs (without data: the built-in example's, made once).
        out: the run folder (default ``runs/detector-<time>``).
    """
    run_dir = Path(out) if out is not None else default_run_dir(METHOD)
    demo = not resume and data is None
    if demo:
        overrides = [*DEMO_OVERRIDES, *overrides]
        is_vild = (
            method_family(method) == "vild" if method is not None else str(model or "").startswith("vild-")
        )
        if is_vild:
            from vvk.methods.vild.train import DEMO_NOVEL

            overrides = [f"vild.novel={DEMO_NOVEL}", *overrides]
    given = [
        *implied(multitask),
        *overrides,
        *shortcuts(model, steps, batch_size, copy_paste, method, multitask),
    ]
    if resume:
        record = recorded_run(run_dir, METHOD, PRESET_FILE, command="vvk train detector")
        preset = recorded_preset(record, preset, run_dir, presets=PRESETS, what="detection")
        base = from_dict(preset_for(preset, record["resolved"].get("model")), record["resolved"],
                         what=str(run_dir / PRESET_FILE))  # fmt: skip
        config = resolve_detection_preset(
            preset, model=model, overrides=overrides, steps=steps, batch_size=batch_size,
            copy_paste=copy_paste, method=method, multitask=multitask, base=base,
        )  # fmt: skip
        check_unchanged(base, config, run_dir, allowed=())
        source = resumed_data(record["data"], data, run_dir, False, items="images")
        val_source = _resumed_val(record.get("val"), val, run_dir)
        regions = regions if regions is not None else record.get("regions")
        demo = record.get("regions") is None and _is_demo(source)
        given = [*record.get("overrides", []), *given]
    else:
        check_new_run_dir(run_dir)
        preset = preset or DEFAULT_PRESET
        config = resolve_detection_preset(
            preset, model=model, overrides=overrides, steps=steps, batch_size=batch_size,
            copy_paste=copy_paste, method=method, multitask=multitask,
        )  # fmt: skip
        source, val_source = _sources(data, val)
    check_device(config)
    train_coco, val_coco = _read_datasets(source, val_source)
    vild = None
    if config.vild is not None:
        from vvk.methods.vild.train import plan_vild, regions_path

        regions = regions_path(regions)
        vild = plan_vild(config.vild, train_coco, regions=regions, demo=demo)
    elif regions is not None:
        raise VvkError(f"regions: only ViLD methods read regions, not {config.model}", params=("regions",))
    queries = None
    if config.qmd is not None:
        from vvk.methods.qmd.train import plan_queries

        queries = plan_queries(config.qmd, train_coco)
    plan = DetectorPlan(
        preset=preset, config=config, data=source, val=val_source, run_dir=run_dir, resume=resume, demo=demo,
        overrides=tuple(given), train_coco=train_coco, val_coco=val_coco, val_truth=_ground_truth(val_coco),
        regions=None if regions is None else Path(regions), vild=vild, queries=queries,
    )  # fmt: skip
    _check_builds(config, plan.categories, vild, queries)
    return plan


def _is_demo(source: Path) -> bool:
    """Whether ``source`` is the built-in example's train split (a resumed demo); nothing is
    generated to find out."""
    from vvk.examples.digits_on_photos import detection_example_path

    return source == detection_example_path() / "train"


def _sources(data: str | os.PathLike | None, val: str | os.PathLike | None) -> tuple[Path, Path | None]:
    """The training and validation datasets, absolute; the built-in example without ``data``."""
    for what, path in (("data", data), ("val", val)):
        if path is not None and not os.path.lexists(path):
            raise VvkError(f"{what}={os.fspath(path)}: no such folder or file", params=(what,))
    if data is not None:
        return absolute(data), None if val is None else absolute(val)
    from vvk.examples.digits_on_photos import detection_example_dir

    root = detection_example_dir()
    return root / "train", root / "val" if val is None else absolute(val)


def _resumed_val(recorded: str | None, val: str | os.PathLike | None, run_dir: Path) -> Path | None:
    """A resumed run evaluates on its own val set, or on another one given (scores are not
    training: changing them changes nothing the checkpoint holds)."""
    if val is not None:
        if not os.path.lexists(val):
            raise VvkError(f"val={os.fspath(val)}: no such folder or file", params=("val",))
        return absolute(val)
    if recorded is not None and not os.path.lexists(recorded):
        raise VvkError(
            f"resume: {run_dir} was evaluated on {recorded}, which is gone",
            hint="pass val=NEW to evaluate on another set", params=("val",),
        )  # fmt: skip
    return None if recorded is None else Path(recorded)


def _read_datasets(data: Path, val: Path | None) -> tuple[CocoDataset, CocoDataset | None]:
    from vvk.data.detection import open_coco
    from vvk.methods.detection.evaluate import check_same_categories

    train_coco = open_coco(data, what="data")
    if not train_coco.images:
        raise VvkError(f"data={data}: no usable images in {train_coco.annotations_path}", params=("data",))
    val_coco = open_coco(val, what="val") if val is not None else None
    if val_coco is not None:
        check_same_categories(train_coco, val_coco)
    return train_coco, val_coco


def _ground_truth(val_coco: CocoDataset | None):
    from vvk.eval.detection import load_ground_truth

    if val_coco is None:
        return None
    try:
        return load_ground_truth(val_coco)
    except VvkError as e:
        e.params = (*e.params, "val")
        raise


def build_detector(config: DetectionPreset, categories: list[dict[str, Any]], vild=None, queries=None):
    """The preset's model, knowing the data's categories (recorded in its checkpoints); a ViLD
    model also its method, teacher width and the base categories' text embeddings (``vild``, a
    ``vvk.methods.vild.train.ViLDPlan``); a QMD model its fusion and query encoder (``queries``,
    a ``vvk.methods.qmd.train.QueryPlan``)."""
    from torch import nn

    from vvk.models import build

    options: dict[str, Any] = {"categories": categories, "image_size": config.image_size}
    if config.anchor_size is not None:
        options["anchor_size"] = config.anchor_size
    if config.stochastic_depth is not None:
        options["backbone_options"] = {"stochastic_depth_rate": config.stochastic_depth}
    if vild is not None:
        options.update(vild.build_options())
    if queries is not None:
        options.update(queries.build_options())
    model = build(config.model, **options)
    if vild is not None:
        vild.train_vocabulary(model)
    if config.bn_momentum is not None:  # a training setting, not the architecture's: not recorded
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = config.bn_momentum
    return model


def _check_builds(config: DetectionPreset, categories: list[dict[str, Any]], vild=None, queries=None) -> None:
    """Build the model on the meta device: a bad name or option fails here, for free."""
    import torch

    with torch.device("meta"):
        build_detector(config, categories, vild, queries)


@dataclass(frozen=True)
class DetectorResult:
    run_dir: Path
    detector_path: Path
    status: str
    step: int
    losses: dict[str, float]
    evaluation: dict[str, Any] | None  # the last evaluation on val (None without one)
    summary: dict[str, Any]
    preset: dict[str, Any]
    data: str
    val: str | None
    seconds: float


def detection_step(model, batch: dict[str, Any]):
    """One training step: the detector's dict of (already weighted) losses, summed by the loop;
    a query-modulated detector's batch carries its images' queries (``vvk.methods.qmd``)."""
    import torch

    device = batch["images"].device
    images = list(batch["images"])  # (B, 3, S, S) -> B x (3, S, S), as detectors take them

    def on_device(target):  # an image's target, or the list of its queries' targets (QMD)
        if isinstance(target, list):
            return [on_device(t) for t in target]
        # every tensor of a target: boxes, labels, masks, and what a method adds (ViLD's regions)
        return {key: value.to(device) for key, value in target.items() if isinstance(value, torch.Tensor)}

    targets = [on_device(target) for target in batch["targets"]]
    if "queries" in batch:
        return model(images, targets, queries=batch["queries"])
    return model(images, targets)


def run_detector(plan: DetectorPlan, *, progress: bool = True) -> DetectorResult:
    """Train as ``plan`` says and export the detector to ``RUN/detector.safetensors``."""
    from vvk.data.detection import DetectionDataset, collate_detection
    from vvk.engine import Every, train
    from vvk.engine.state import seed_all
    from vvk.models import save

    config, run_dir = plan.config, plan.run_dir
    started = time.monotonic()
    created = not run_dir.exists()
    try:
        dataset = DetectionDataset(
            plan.train_coco, size=config.image_size, scale_range=config.scale_range,
            flip_prob=config.flip_prob, copy_paste=config.copy_paste, max_paste=config.max_paste,
            masks=config.family != "retinanet", seed=config.train.seed,
            **(plan.vild.dataset_options() if plan.vild is not None else {}),
        )  # fmt: skip
        collate_fn = collate_detection
        if plan.queries is not None:
            dataset, collate_fn = plan.queries.training_data(dataset, plan.train_coco, seed=config.train.seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        record = plan.record()
        atomic_write_text(run_dir / PRESET_FILE, json.dumps(record, indent=2) + "\n")
        seed_all(config.train.seed)  # the initial weights follow the preset's seed too
        model = build_detector(config, plan.categories, plan.vild, plan.queries)
    except BaseException:
        if created:  # nothing trained: leave no half-made run folder that blocks the next out=
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    every = []
    if plan.val_coco is not None:
        every.append(Every(steps=config.eval_every, fn=_val_evaluation(plan), name=HOOK))
    train_config = dataclasses.replace(config.train, progress=progress and config.train.progress)
    result = train(
        model=model, step_fn=detection_step, data=dataset, config=train_config, run_dir=run_dir,
        method=METHOD, resume=plan.resume, collate_fn=collate_fn, every=every,
    )  # fmt: skip
    evaluation = result.hooks.get(HOOK) or last_evaluation(run_dir)
    metrics = {k: v for k, v in (evaluation or {}).items() if isinstance(v, int | float)}
    if plan.vild is not None:  # exported with every category, so that it detects the novel ones
        plan.vild.full_vocabulary(model)
    detector_path = save(model, run_dir / DETECTOR_FILE, step=result.step, metrics=metrics)
    return DetectorResult(
        run_dir=run_dir, detector_path=detector_path, status=result.status, step=result.step,
        losses=result.losses, evaluation=evaluation, summary=result.summary, preset=record["resolved"],
        data=record["data"], val=record["val"], seconds=time.monotonic() - started,
    )  # fmt: skip


def _val_evaluation(plan: DetectorPlan):
    """The in-training evaluation on ``plan.val_coco``: box (and mask) AP, ViLD's over its
    vocabulary with base and novel apart; a QMD detector's query-conditioned AP, with the box AP
    without queries when it is multitask too."""
    from vvk.methods.detection.evaluate import ValEvaluation

    config = plan.config
    options = dict(batch_size=config.eval_batch_size, precision=config.train.precision,
                   max_images=config.eval_images, ground_truth=plan.val_truth)  # fmt: skip
    standard = None
    if config.qmd is None or config.qmd.multitask:
        standard = ValEvaluation(
            plan.val_coco, num_workers=0, **options,
            vocabulary=None if plan.vild is None else plan.vild.evaluating,
            splits=None if plan.vild is None else plan.vild.splits(),
        )  # fmt: skip
    if config.qmd is None:
        return standard
    from vvk.methods.detection.query_eval import QueryValEvaluation

    return QueryValEvaluation(plan.val_coco, standard=standard, **options)


def train_detector(*, progress: bool = True, **options: Any) -> DetectorResult:
    """Train a detector: ``options`` are ``plan_detector``'s (see the module docstring)."""
    return run_detector(plan_detector(**options), progress=progress)


def last_evaluation(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The values of the last evaluation ``metrics.jsonl`` holds (None: none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("hook") == HOOK:
            last = record
    if last is None:
        return None
    return {k: v for k, v in last.items() if k not in ("step", "hook", "seconds", "time")}


def learning_curve(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every evaluation of a run, in order: ``[{"step", "bbox_AP", "bbox_AP50", ...}]``."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in r.items() if k not in ("hook", "time")} for r in lines if r.get("hook") == HOOK]


def detector_file(spec: str | os.PathLike) -> str:
    """``weights`` may name a training run's folder: its exported detector."""
    from vvk.models.checkpoint import exported_file

    return exported_file(spec, DETECTOR_FILE, run="detector run")
