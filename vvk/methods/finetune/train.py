"""``vvk finetune``: train a video classifier, from scratch or from a pretrained backbone, and test it.

::

    from vvk.methods.finetune import finetune

    result = finetune(data="ucf101/train", val="ucf101/test", weights="runs/cvrl-1", preset="ucf101",
                      out="runs/f1")
    result.evaluation["schemes"]   # {"1x1": {"top1": ...}, ...}: top-1 / top-5 per view scheme

``plan_finetune`` resolves and checks everything before anything is written: the preset
(``preset``, then ``overrides``, then the shortcuts ``backbone`` / ``steps`` / ``batch_size`` /
``freeze`` / ``views`` / ``seed``), the labels of ``data`` (two classes or more) and ``val``
(classes of the training data), the pretrained ``weights`` (read: a ``vvk pretrain`` or
``vvk finetune`` run folder, a backbone checkpoint, a name from ``vvk weights list``), the
classifier (built on the meta device) and the run folder. ``run_finetune`` writes
``RUN/preset.json``, trains on the one training loop (checkpoints, ``resume``, SIGINT/SIGTERM),
exports ``backbone.safetensors`` (usable as ``weights`` anywhere) and ``classifier.safetensors``
(``model.load_classifier``), with the EMA of the weights when the preset keeps one, and tests
those same weights on ``val`` with multi-view testing (``vvk.methods.finetune.evaluate``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from vvk.atomic import atomic_write_text
from vvk.data.sources import Data, VideoSource, describe, open_source
from vvk.errors import VvkError
from vvk.methods.finetune.preset import DEFAULT_PRESET, EVAL_FIELDS, PRESETS, FinetunePreset, shortcuts
from vvk.methods.finetune.preset import resolve_finetune_preset as resolve
from vvk.methods.overrides import from_dict, to_dict
from vvk.methods.pretrain import PRESET_FILE
from vvk.methods.runs import (
    absolute,
    check_device,
    check_exists,
    check_new_run_dir,
    check_unchanged,
    recorded_preset,
    recorded_run,
    resumed_data,
)
from vvk.paths import default_run_dir

logger = logging.getLogger("vvk.methods")

METHOD = "finetune"  # run.json's method: what resume checks
CLASSIFIER_FILE = "classifier.safetensors"


@dataclass(frozen=True)
class FinetunePlan:
    """A checked fine-tuning run, before anything is written (``plan_finetune``).

    Attributes:
        data, val: the training and test videos, absolute (``val`` None: no test).
        weights: the backbone's pretrained weights (a path made absolute, or a name as given;
            None: random initialisation).
        backbone_arch: ``{"name", "kwargs"}`` of the backbone.
        classes: the class names, by training label.
        label_map: the training label of each of ``val``'s own labels.
        overrides: every assignment the run was given (the recorded ones first when resuming).
        pretrained: the loaded pretrained backbone, when its weights are still to be used.
    """

    preset: str
    config: FinetunePreset
    data: Path | tuple[Path, ...]
    val: Path | tuple[Path, ...] | None
    weights: str | None
    backbone_arch: dict[str, Any]
    classes: list[str]
    label_map: list[int] | None
    run_dir: Path
    resume: bool
    overrides: tuple[str, ...]
    pretrained: Any = field(default=None, repr=False, compare=False)  # torch.nn.Module

    def record(self) -> dict[str, Any]:
        """What ``preset.json`` holds: enough to resume the run, and to know what it read."""
        return {
            "method": METHOD, "preset": self.preset, "data": _shown(self.data), "val": _shown(self.val),
            "weights": self.weights, "backbone": self.backbone_arch, "classes": self.classes,
            "overrides": list(self.overrides), "resolved": to_dict(self.config),
        }  # fmt: skip


def plan_finetune(
    *,
    data: Data | None = None,
    val: Data | None = None,
    backbone: str | None = None,
    weights: str | os.PathLike | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    steps: int | None = None,
    batch_size: int | None = None,
    freeze: bool = False,
    views: tuple[int, int] | None = None,
    seed: int | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
) -> FinetunePlan:
    """Resolve and check a fine-tuning run (module docstring); writes nothing.

    Args:
        data: labelled videos: ``class/video.ext`` folders or lists with a label column.
        val: labelled videos to test on after training (None: no test).
        backbone: a video backbone of ``vvk models list`` (default: the preset's, or the one
            ``weights`` holds).
        weights: pretrained weights for the backbone (None: random initialisation).
        preset: ``tiny`` (default), ``rs``, ``rs-200-48f``, ``ucf101``, ``vatt``, ``linear``, ...;
            the run's own when resuming.
        freeze: a linear classifier on frozen features (``freeze``).
        views: (clips, crops) of multi-view testing (``eval_views``).
        out: the run folder (default ``runs/finetune-<time>``).
    """
    run_dir = Path(out) if out is not None else default_run_dir(METHOD)
    shortcut = dict(
        backbone=backbone, steps=steps, batch_size=batch_size, freeze=freeze, views=views, seed=seed
    )
    begin = _resumed if resume else _started
    run = begin(run_dir, preset=preset, data=data, weights=weights, overrides=overrides, shortcut=shortcut)
    val = val if val is not None else run.val  # a resumed run tests on its own unless told otherwise
    label_map = None
    if val is not None:
        check_exists(val, what="val")
        val, label_map = absolute(val), _label_map(run.classes, open_source(val), val)
    check_device(run.config)
    _check_builds(run.config, len(run.classes), run.arch, pretrained=run.weights is not None)
    return FinetunePlan(
        preset=run.preset, config=run.config, data=run.data, val=val, weights=run.weights,
        backbone_arch=run.arch, classes=run.classes, label_map=label_map, run_dir=run_dir, resume=resume,
        overrides=tuple(run.given), pretrained=run.pretrained,
    )  # fmt: skip


class _Start(NamedTuple):
    """What a new or a resumed run starts from (``plan_finetune``)."""

    preset: str
    config: FinetunePreset
    data: Path | tuple[Path, ...]
    val: str | list[str] | None  # the one a resumed run recorded
    weights: str | None
    classes: list[str]
    arch: dict[str, Any]
    pretrained: Any  # the loaded pretrained backbone (None: none, or a checkpoint holds the weights)
    given: list[str]


def _started(run_dir: Path, *, preset, data, weights, overrides, shortcut) -> _Start:
    check_new_run_dir(run_dir)
    if data is None:
        raise VvkError("data=: give the labelled training videos", params=("data",))
    check_exists(data)
    pretrained = None
    if weights is not None:
        pretrained, weights = _pretrained(weights, shortcut["backbone"]), _spec(weights)
        shortcut = {**shortcut, "backbone": pretrained.vvk_arch["name"]}
    preset = preset or DEFAULT_PRESET
    config = resolve(preset, overrides=overrides, **shortcut)
    if pretrained is not None and not config.zero_center:
        logger.warning(
            "zero_center=false: preset %s feeds clips in [0, 1], while vvk's pretraining methods feed "
            "them in [-1, 1]; if %s comes from one, set zero_center=true", preset, weights,
        )  # fmt: skip
    arch = dict(pretrained.vvk_arch) if pretrained is not None else {"name": config.backbone, "kwargs": {}}
    classes = _training_classes(open_source(data), data)
    given = [*overrides, *shortcuts(**shortcut)]
    return _Start(preset, config, absolute(data), None, weights, classes, arch, pretrained, given)


def _resumed(run_dir: Path, *, preset, data, weights, overrides, shortcut) -> _Start:
    """The run in ``run_dir`` goes on: its preset, data, classes, backbone and weights; only
    ``train.*`` and the test's fields may change."""
    record = recorded_run(run_dir, METHOD, PRESET_FILE, command="vvk finetune")
    preset = recorded_preset(record, preset, run_dir, presets=PRESETS, what="finetune")
    base = from_dict(PRESETS[preset], record["resolved"], what=str(run_dir / PRESET_FILE))
    config = resolve(overrides=overrides, base=base, **shortcut)
    check_unchanged(base, config, run_dir, allowed=EVAL_FIELDS)
    weights = _same_weights(weights, record.get("weights"), run_dir)
    source = resumed_data(record["data"], data, run_dir, False)
    # no checkpoint yet: the pretrained weights are still the start
    pretrained = _pretrained(weights, None) if weights is not None and _no_checkpoint(run_dir) else None
    given = [*record.get("overrides", []), *overrides, *shortcuts(**shortcut)]
    return _Start(preset, config, source, record.get("val"), weights, record["classes"], record["backbone"],
                  pretrained, given)  # fmt: skip


def _shown(data: Path | tuple[Path, ...] | None) -> str | list[str] | None:
    if data is None or isinstance(data, Path):
        return None if data is None else str(data)
    return [str(p) for p in data]


def _same_weights(weights: str | os.PathLike | None, recorded: str | None, run_dir: Path) -> str | None:
    """A resumed run keeps the weights it started from."""
    if weights is not None and _spec(weights) != recorded:
        raise VvkError(
            f"weights={weights}: {run_dir} was trained from {recorded or 'random weights'}",
            hint="leave weights= out to resume it", params=("weights",),
        )  # fmt: skip
    return recorded


def _spec(weights: str | os.PathLike) -> str:
    """``weights`` as recorded: a path made absolute, a registry name or hf-hub spec as given."""
    return str(Path(weights).absolute()) if os.path.exists(weights) else str(weights)


def _pretrained(weights: str | os.PathLike, backbone: str | None):
    """The video backbone ``weights`` holds, loaded; ``backbone``, when given, must be its name."""
    from vvk.eval.features import load_backbone

    loaded, _ = load_backbone(weights)
    name = loaded.vvk_arch["name"]
    if backbone is not None and backbone != name:
        raise VvkError(
            f"backbone={backbone}: weights={weights} holds a '{name}' backbone",
            hint="leave backbone= out: the weights name it", params=("backbone", "weights"),
        )  # fmt: skip
    return loaded


def _no_checkpoint(run_dir: Path) -> bool:
    from vvk.engine.state import RunDir

    return RunDir(run_dir).latest() is None


def _class_names(source: VideoSource, data: Data, what: str) -> list[str]:
    """The class names of labelled videos, by label (integer labels name themselves)."""
    unlabelled = sum(item.label < 0 for item in source.items)
    if unlabelled:
        raise VvkError(
            f"{what}={describe(data)}: {unlabelled} of {len(source.items)} videos have no label",
            hint="give class subfolders (class/video.mp4) or a list with a label column", params=(what,),
        )  # fmt: skip
    if source.classes:
        return list(source.classes)
    return [str(i) for i in range(max(item.label for item in source.items) + 1)]


def _training_classes(source: VideoSource, data: Data) -> list[str]:
    classes = _class_names(source, data, "data")
    used = {item.label for item in source.items}
    if len(used) < 2:
        raise VvkError(
            f"data={describe(data)}: one class ({classes[used.pop()]}); a classifier needs two or more",
            params=("data",),
        )
    return classes


def _label_map(classes: Sequence[str], source: VideoSource, val: Data) -> list[int]:
    """The training label of each of ``val``'s labels, matched by class name."""
    index = {name: i for i, name in enumerate(classes)}
    names = _class_names(source, val, "val")
    used = sorted({names[item.label] for item in source.items})
    unknown = [name for name in used if name not in index]
    if unknown:
        raise VvkError(
            f"val={describe(val)}: class(es) {', '.join(unknown[:5])} are not classes of the training data",
            params=("val",),
        )
    return [index.get(name, -1) for name in names]


def _check_builds(
    config: FinetunePreset, num_classes: int, arch: dict[str, Any], *, pretrained: bool
) -> None:
    """Build the classifier on the meta device: a bad backbone or option fails here, for free."""
    import torch

    from vvk.methods.finetune.model import build_classifier

    with torch.device("meta"):
        build_classifier(config, num_classes=num_classes, arch=arch, pretrained=pretrained)


@dataclass(frozen=True)
class FinetuneResult:
    run_dir: Path
    backbone_path: Path
    classifier_path: Path
    status: str
    step: int
    losses: dict[str, float]
    evaluation: dict[str, Any] | None  # the test on val (None: no val, or the run did not finish)
    summary: dict[str, Any]
    preset: dict[str, Any]
    data: str | list[str]
    val: str | list[str] | None
    seconds: float


def run_finetune(plan: FinetunePlan, *, progress: bool = True) -> FinetuneResult:
    """Train as ``plan`` says, export the classifier and test it on ``plan.val``."""
    from vvk.data import RandomClip, open_video_dataset
    from vvk.engine import train
    from vvk.engine.state import seed_all
    from vvk.methods.finetune.evaluate import EvalProtocol, evaluate
    from vvk.methods.finetune.model import (
        build_classifier,
        classification_step,
        save_classifier,
        train_augment,
    )
    from vvk.models import save
    from vvk.models.checkpoint import BACKBONE_FILE

    config, run_dir = plan.config, plan.run_dir
    started = time.monotonic()
    created = not run_dir.exists()
    try:
        dataset = open_video_dataset(
            plan.data, sampler=RandomClip(frames=config.frames, stride=config.stride, fps=config.fps),
            size=config.size, cache_dir=run_dir, frame_cache=config.train.frame_cache, progress=progress,
            seed=config.train.seed,
        )  # fmt: skip
        run_dir.mkdir(parents=True, exist_ok=True)
        record = plan.record()
        atomic_write_text(run_dir / PRESET_FILE, json.dumps(record, indent=2) + "\n")
        seed_all(config.train.seed)  # the classifier's initial weights follow the preset's seed too
        model = build_classifier(config, num_classes=len(plan.classes), arch=plan.backbone_arch,
                                 pretrained=plan.weights is not None)  # fmt: skip
        if plan.pretrained is not None:
            model.backbone.load_state_dict(plan.pretrained.state_dict())
    except BaseException:
        if created:  # nothing trained: leave no half-made run folder that blocks the next out=
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    step_fn = functools.partial(classification_step, augment=train_augment(config),
                                label_smoothing=config.label_smoothing)  # fmt: skip
    train_config = dataclasses.replace(config.train, progress=progress and config.train.progress)
    result = train(model=model, step_fn=step_fn, data=dataset, config=train_config, run_dir=run_dir,
                   method=METHOD, resume=plan.resume)  # fmt: skip
    final = final_weights(model, run_dir, ema=config.train.ema_decay > 0)
    evaluation = None
    if plan.val is not None and result.status == "finished" and _is_main():
        evaluation = evaluate(
            final, plan.val, protocol=EvalProtocol.of(config), classes=plan.classes, label_map=plan.label_map,
            out=run_dir, cache_dir=run_dir, weights="ema" if final is not model else "model",
        )  # fmt: skip
    metrics = {k: evaluation[k] for k in ("top1", "top5")} if evaluation else {}
    backbone_path = save(final.backbone, run_dir / BACKBONE_FILE, step=result.step, metrics=metrics)
    classifier_path = save_classifier(final, run_dir / CLASSIFIER_FILE, classes=plan.classes)
    return FinetuneResult(
        run_dir=run_dir, backbone_path=backbone_path, classifier_path=classifier_path, status=result.status,
        step=result.step, losses=result.losses, evaluation=evaluation, summary=result.summary,
        preset=record["resolved"], data=record["data"], val=record["val"], seconds=time.monotonic() - started,
    )  # fmt: skip


def final_weights(model, run_dir: Path, *, ema: bool):
    """The weights a run is exported and tested with: with ``ema``, the moving average its last
    checkpoint holds (as the reference tests its EMA weights), else ``model`` itself."""
    if not ema:
        return model
    from vvk.engine.state import RunDir
    from vvk.models.checkpoint import load_weights

    averaged = copy.deepcopy(model)
    device = next(model.parameters()).device
    load_weights(averaged, RunDir(run_dir).latest() / "ema.safetensors", device=device)
    return averaged.eval()


def _is_main() -> bool:
    # under torchrun the loop has ended its process group here: rank 0 alone tests
    return os.environ.get("RANK", "0") == "0"


def finetune(*, progress: bool = True, **options: Any) -> FinetuneResult:
    """Fine-tune and test: ``options`` are ``plan_finetune``'s (see the module docstring)."""
    return run_finetune(plan_finetune(**options), progress=progress)
