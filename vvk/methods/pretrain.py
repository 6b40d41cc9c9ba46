"""``vvk pretrain``: one orchestration for every self-supervised method.

::

    from vvk.methods.pretrain import pretrain

    result = pretrain("constcl", data="kinetics/", preset="tiny", steps=200, out="runs/c1")
    result.backbone_path      # runs/c1/backbone.safetensors, loadable by vvk.models.load

Resolve the preset (``--preset``, then ``--set key=value`` overrides, then ``--steps`` /
``--batch-size`` / ``--backbone``), open the videos (or synthesise the built-in example set when
no data is given), build the method's training module, run the one training loop, and export
the backbone. The resolved preset is written to ``RUN/preset.json`` before training starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vvk.atomic import atomic_write_text
from vvk.errors import VvkError
from vvk.methods.overrides import apply_overrides, to_dict
from vvk.methods.registry import load, methods_for
from vvk.paths import default_run_dir

METHODS = tuple(m.name for m in methods_for("pretrain"))
BACKBONE_FILE = "backbone.safetensors"
# Steps of the demo on the built-in example set when none are asked for: the tiny presets'
# 40 steps (sized for tests) leave the backbone no better than random initialisation at clip
# retrieval. With decoded frames cached, ConST-CL's 1000 steps take about three minutes on 2 CPU
# cores and lift its recall@1 on the example set from 0.08 to 0.22.
DEMO_STEPS = 1000


def get_method(name: str):
    """The pretraining method's package ``vvk.methods.<name>`` (see ``vvk.methods.base``)."""
    if name not in METHODS:
        raise VvkError(f"unknown pretraining method '{name}'", hint=f"one of {', '.join(METHODS)}")
    return load(name)


def resolve_preset(
    method: str,
    preset: str = "tiny",
    *,
    overrides: list[str] | tuple[str, ...] = (),
    backbone: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
) -> Any:
    """The method's preset with ``--set`` overrides and the shortcut options applied."""
    module = get_method(method)
    if preset not in module.PRESETS:
        raise VvkError(
            f"--preset {preset}: not a preset of {method}", hint=f"one of {', '.join(module.PRESETS)}"
        )
    resolved = apply_overrides(module.PRESETS[preset], list(overrides))
    shortcuts = {"backbone": backbone, "train.steps": steps, "train.batch_size": batch_size}
    return apply_overrides(
        resolved, [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    )


@dataclass(frozen=True)
class PretrainResult:
    run_dir: Path
    backbone_path: Path
    status: str
    step: int
    losses: dict[str, float]
    summary: dict[str, Any]
    preset: dict[str, Any]
    data: str
    seconds: float


def pretrain(
    method: str,
    *,
    data: str | os.PathLike | None = None,
    preset: str = "tiny",
    overrides: list[str] | tuple[str, ...] = (),
    backbone: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    captions: str | os.PathLike | None = None,
    decoder: str = "auto",
    progress: bool = True,
) -> PretrainResult:
    """Train ``method`` on ``data`` (a folder or list file; None: the built-in example set, for
    ``DEMO_STEPS`` unless ``steps`` or a ``train.steps`` override says otherwise).

    Args:
        out: the run folder (default ``runs/<method>-<time>``).
        captions: an ActivityNet-style captions file, for methods that read text (VATT).
    """
    from vvk.data import open_video_dataset
    from vvk.engine import train
    from vvk.engine.state import seed_all
    from vvk.models import save

    module = get_method(method)
    if data is None and steps is None and not any(o.startswith("train.steps=") for o in overrides):
        steps = DEMO_STEPS
    config = resolve_preset(method, preset, overrides=overrides, backbone=backbone, steps=steps,
                            batch_size=batch_size)  # fmt: skip
    run_dir = Path(out) if out is not None else default_run_dir(method)
    _check_run_dir(run_dir, method=method, resume=resume)
    source = Path(data) if data is not None else _builtin_example()
    if not source.exists():
        raise VvkError(f"--data {source}: no such file or folder")
    options = module.dataset_options(config)
    if captions is not None:
        options["captions"] = captions
    started = time.monotonic()
    created = not run_dir.exists()
    try:
        dataset = open_video_dataset(
            source, sampler=module.sampler(config), size=config.size, cache_dir=run_dir, decoder=decoder,
            frame_cache=config.train.frame_cache, progress=progress, seed=config.train.seed, **options,
        )  # fmt: skip
    except VvkError:
        if created:  # nothing trained: leave no half-made run folder that blocks the next --out
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "preset": preset, "data": str(source), "resolved": to_dict(config)}
    atomic_write_text(run_dir / "preset.json", json.dumps(record, indent=2) + "\n")
    seed_all(config.train.seed)  # the initial weights follow the preset's seed too
    model = module.build(config)
    train_config = dataclasses.replace(config.train, progress=progress and config.train.progress)
    result = train(
        model=model, step_fn=_forward, data=dataset, config=train_config, run_dir=run_dir, method=method,
        resume=resume,
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
        data=str(source),
        seconds=time.monotonic() - started,
    )


def _forward(net, batch):
    # The training module does augmentation, embedding and the losses in its forward, so DDP
    # sees one call per micro-step.
    return net(batch)


def _check_run_dir(run_dir: Path, *, method: str, resume: bool) -> None:
    from vvk.engine.state import RunDir

    if resume:  # before preset.json is rewritten: a refused resume leaves the run as it was
        RunDir(run_dir).check(method=method, resume=True)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise VvkError(
            f"--out {run_dir}: the folder is not empty",
            hint="pass --resume to continue that run, or choose a new folder",
        )


def _builtin_example() -> Path:
    from vvk.examples.synthetic import example_dir

    return example_dir()


def backbone_file(spec: str | os.PathLike) -> str:
    """``weights`` may name a run folder: its exported backbone. A path to nothing that cannot be
    a checkpoint file, a registry name or an hf-hub spec is taken for a missing run folder."""
    path = Path(spec)
    if path.is_dir():
        candidate = path / BACKBONE_FILE
        if not candidate.is_file():
            raise VvkError(
                f"weights={spec}: a folder without {BACKBONE_FILE} (not a finished pretrain run)",
                params=("weights",),
            )
        return str(candidate)
    folder_like = os.sep in str(spec) and not path.suffix and not str(spec).startswith("hf-hub:")
    if folder_like and not os.path.lexists(path):
        raise VvkError(f"weights={spec}: no such run folder", params=("weights",))
    return str(spec)
