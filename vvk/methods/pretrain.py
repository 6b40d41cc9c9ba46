"""``vvk pretrain``: one orchestration for every self-supervised method.

::

    from vvk.methods.pretrain import pretrain

    result = pretrain("constcl", data="kinetics/", preset="tiny", steps=200, out="runs/c1")
    result.backbone_path      # runs/c1/backbone.safetensors, loadable by vvk.models.load

``plan_pretrain`` resolves and checks everything a run needs before anything is written: the
preset (``preset``, then ``overrides``, then the shortcuts ``steps`` / ``batch_size`` /
``backbone`` / ``captions``) and the ranges of its fields, that the model builds (on the meta
device: no memory, no time), that the data exists and the captions read, and that the run
folder may be used. ``run_pretrain`` opens the videos (or the built-in example set when no data
is given), writes ``RUN/preset.json`` (the resolved preset and what the run reads), builds the
training module, runs the one training loop and exports the backbone; a failure before
training starts leaves no new run folder behind. ``pretrain`` is the two in one call.

``resume=True`` continues the run in ``out`` with what its ``preset.json`` recorded: the preset
(with its overrides), the data, the decoder and the captions. ``train`` fields may change
(``steps`` to go on longer); the model's and the data's fields may not, and other data is
refused unless ``allow_new_data``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vvk.atomic import atomic_write_text
from vvk.errors import VvkError
from vvk.methods.base import LAPTOP_STEPS
from vvk.methods.overrides import from_dict, parse_overrides, replace_fields, to_dict
from vvk.methods.registry import METHODS as METHOD_INFO
from vvk.methods.registry import load, methods_for
from vvk.methods.runs import (
    Data,
    absolute,
    check_device,
    check_exists,
    check_new_run_dir,
    check_unchanged,
    fit_warmup,
    recorded_run,
    resumed_data,
)
from vvk.paths import default_run_dir

logger = logging.getLogger("vvk.methods")

METHODS = tuple(m.name for m in methods_for("pretrain"))
PRESET_FILE = "preset.json"
DEFAULT_PRESET = "tiny"
# Steps of the demo on the built-in example set when none are asked for, whatever the preset.
DEMO_STEPS = LAPTOP_STEPS


def get_method(name: str):
    """The pretraining method's package ``vvk.methods.<name>`` (see ``vvk.methods.base``)."""
    if name not in METHODS:
        raise VvkError(f"unknown pretraining method '{name}'", hint=f"one of {', '.join(METHODS)}")
    return load(name)


def resolve_preset(
    method: str,
    preset: str = DEFAULT_PRESET,
    *,
    overrides: Sequence[str] = (),
    backbone: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    captions: str | os.PathLike | None = None,
    base: Any = None,
) -> Any:
    """The method's preset (or ``base``, a resolved one) with ``overrides`` and the shortcuts
    applied at once, each field checked. A ``train.steps`` below the preset's warm-up, with no
    ``train.warmup_steps`` given, shortens the warm-up in proportion (with a warning)."""
    module = get_method(method)
    if base is None:
        if preset not in module.PRESETS:
            raise VvkError(
                f"preset={preset}: not a preset of {method}", hint=f"one of {', '.join(module.PRESETS)}",
                params=("preset",),
            )  # fmt: skip
        base = module.PRESETS[preset]
    if captions is not None and not METHOD_INFO[method].reads_captions:
        reads = ", ".join(m.name for m in methods_for("pretrain") if m.reads_captions)
        raise VvkError(
            f"captions={captions}: {method} reads no captions (only {reads})", params=("captions",)
        )
    changes = parse_overrides(base, [*overrides, *shortcuts(backbone, steps, batch_size, captions)])
    fit_warmup(base.train, changes)
    return replace_fields(base, changes)


def shortcuts(
    backbone: str | None, steps: int | None, batch_size: int | None, captions: str | os.PathLike | None
) -> list[str]:
    """The ``key=value`` overrides the shortcut arguments stand for."""
    given = {"backbone": backbone, "train.steps": steps, "train.batch_size": batch_size,
             "captions": None if captions is None else Path(captions).absolute()}  # fmt: skip
    return [f"{key}={value}" for key, value in given.items() if value is not None]


@dataclass(frozen=True)
class PretrainPlan:
    """A checked pretraining run, before anything is written (``plan_pretrain``).

    Attributes:
        config: the resolved preset.
        data: the videos: a path, or a tuple of paths.
        demo: no data was given; ``data`` is the built-in example set.
        overrides: every assignment the run was given (the recorded ones first when resuming).
        dataset_options: the method's extra dataset arguments (captions read already).
    """

    method: str
    preset: str
    config: Any
    data: Path | tuple[Path, ...]
    run_dir: Path
    resume: bool
    decoder: str
    demo: bool
    overrides: tuple[str, ...]
    dataset_options: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What ``preset.json`` holds: enough to resume the run, and to know what it read."""
        data = str(self.data) if isinstance(self.data, Path) else [str(p) for p in self.data]
        return {
            "method": self.method, "preset": self.preset, "data": data, "decoder": self.decoder,
            "overrides": list(self.overrides), "resolved": to_dict(self.config),
        }  # fmt: skip


def plan_pretrain(
    method: str,
    *,
    data: Data | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    backbone: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    allow_new_data: bool = False,
    captions: str | os.PathLike | None = None,
    decoder: str | None = None,
) -> PretrainPlan:
    """Resolve and check a pretraining run (see the module docstring); writes nothing, except
    that the built-in example set is synthesised into the user cache on first use."""
    module = get_method(method)
    run_dir = Path(out) if out is not None else default_run_dir(method)
    given = [*overrides, *shortcuts(backbone, steps, batch_size, captions)]
    if resume:
        record = recorded_run(run_dir, method, PRESET_FILE, command="vvk pretrain")
        if preset is not None and preset != record["preset"]:
            raise VvkError(
                f"preset={preset}: {run_dir} was trained with preset {record['preset']}",
                hint="leave preset= out to resume it", params=("preset",),
            )  # fmt: skip
        preset = record["preset"]
        if preset not in module.PRESETS:
            raise VvkError(f"{run_dir / PRESET_FILE}: preset '{preset}' is not a preset of {method} any more")
        base = from_dict(module.PRESETS[preset], record["resolved"], what=str(run_dir / PRESET_FILE))
        config = resolve_preset(method, overrides=overrides, backbone=backbone, steps=steps,
                                batch_size=batch_size, captions=captions, base=base)  # fmt: skip
        check_unchanged(base, config, run_dir, allowed=("captions",) if allow_new_data else ())
        source = resumed_data(record["data"], data, run_dir, allow_new_data)
        decoder = decoder or record.get("decoder", "auto")
        given = [*record.get("overrides", []), *given]
    else:
        check_new_run_dir(run_dir)
        preset = preset or DEFAULT_PRESET
        if data is None and steps is None and not any(o.startswith("train.steps=") for o in overrides):
            steps = DEMO_STEPS
            given.append(f"train.steps={steps}")
        config = resolve_preset(method, preset, overrides=overrides, backbone=backbone, steps=steps,
                                batch_size=batch_size, captions=captions)  # fmt: skip
        source = absolute(data) if data is not None else _builtin_example()
        decoder = decoder or "auto"
    _check_batch(method, config)
    check_device(config)
    _check_builds(module, config)
    check_exists(data if data is not None else source)
    return PretrainPlan(
        method=method, preset=preset, config=config, data=source, run_dir=run_dir, resume=resume,
        decoder=decoder, demo=data is None and not resume, overrides=tuple(given),
        dataset_options=module.dataset_options(config),  # reads the captions: a bad file fails here
    )  # fmt: skip


@dataclass(frozen=True)
class PretrainResult:
    run_dir: Path
    backbone_path: Path
    status: str
    step: int
    losses: dict[str, float]
    summary: dict[str, Any]
    preset: dict[str, Any]
    data: str | list[str]
    seconds: float


def run_pretrain(plan: PretrainPlan, *, progress: bool = True) -> PretrainResult:
    """Train as ``plan`` says and export the backbone to ``RUN/backbone.safetensors``."""
    from vvk.data import open_video_dataset
    from vvk.engine import train
    from vvk.engine.state import seed_all
    from vvk.models import save
    from vvk.models.checkpoint import BACKBONE_FILE

    module = get_method(plan.method)
    config, run_dir = plan.config, plan.run_dir
    started = time.monotonic()
    created = not run_dir.exists()
    try:
        dataset = open_video_dataset(
            plan.data, sampler=module.sampler(config), size=config.size, cache_dir=run_dir,
            decoder=plan.decoder, frame_cache=config.train.frame_cache, progress=progress,
            seed=config.train.seed, **plan.dataset_options,
        )  # fmt: skip
        run_dir.mkdir(parents=True, exist_ok=True)
        record = plan.record()
        atomic_write_text(run_dir / PRESET_FILE, json.dumps(record, indent=2) + "\n")
        seed_all(config.train.seed)  # the initial weights follow the preset's seed too
        model = module.build(config)
    except BaseException:
        if created:  # nothing trained: leave no half-made run folder that blocks the next out=
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    train_config = dataclasses.replace(config.train, progress=progress and config.train.progress)
    result = train(
        model=model, step_fn=_forward, data=dataset, config=train_config, run_dir=run_dir,
        method=plan.method, resume=plan.resume,
    )  # fmt: skip
    backbone_path = save(model.backbone, run_dir / BACKBONE_FILE, step=result.step, metrics=result.losses)
    return PretrainResult(
        run_dir=run_dir,
        backbone_path=backbone_path,
        status=result.status,
        step=result.step,
        losses=result.losses,
        summary=result.summary,
        preset=record["resolved"],
        data=record["data"],
        seconds=time.monotonic() - started,
    )


def pretrain(
    method: str,
    *,
    data: Data | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    backbone: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    allow_new_data: bool = False,
    captions: str | os.PathLike | None = None,
    decoder: str | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train ``method`` on ``data`` (a folder, a list or video file, or a sequence of those;
    None: the built-in example set, for ``DEMO_STEPS`` unless ``steps`` or a ``train.steps``
    override says otherwise). The arguments are those of ``plan_pretrain``.

    Args:
        preset: default ``tiny``, or the run's own when resuming.
        out: the run folder (default ``runs/<method>-<time>``).
        captions: captions for methods that read text (VATT): an ActivityNet-style table or a
            folder of subtitles; the preset field ``captions``.
        decoder: default ``auto``, or the run's own when resuming.
    """
    plan = plan_pretrain(
        method, data=data, preset=preset, overrides=overrides, backbone=backbone, steps=steps,
        batch_size=batch_size, out=out, resume=resume, allow_new_data=allow_new_data, captions=captions,
        decoder=decoder,
    )  # fmt: skip
    return run_pretrain(plan, progress=progress)


def _forward(net, batch):
    # The training module does augmentation, embedding and the losses in its forward, so DDP
    # sees one call per micro-step.
    return net(batch)


def _check_batch(method: str, config: Any) -> None:
    # Several processes share their clips as negatives (the losses gather them), so the count
    # that matters is the global one; torchrun says how many processes there are.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    batch = config.train.batch_size
    if METHOD_INFO[method].contrastive and batch * processes < 2:
        raise VvkError(
            f"batch_size={batch}: {method} contrasts each clip with the other clips of its step, so a "
            f"step needs 2 clips or more (batch_size x {processes} process(es)); with one its loss is 0 "
            "and nothing is learned",
            params=("batch_size",),
        )


def _check_builds(module: Any, config: Any) -> None:
    """Build the training module on the meta device: a bad backbone or a shape that does not fit
    fails here, before the data is read, at no cost in memory or time."""
    import torch

    with torch.device("meta"):
        module.build(config)


def _builtin_example() -> Path:
    from vvk.examples.synthetic import example_dir

    return example_dir()
