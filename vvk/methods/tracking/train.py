"""``vvk train tracker``: train a SiamFC tracker on object tracks, scored on OTB as it trains.

::

    from vvk.methods.tracking.train import train_tracker

    result = train_tracker(data="GOT-10k/train", val="otb/", weights="runs/constcl-1",
                           freeze_backbone=True, out="runs/t1")
    result.tracker_path     # runs/t1/tracker.safetensors: `vvk track --weights runs/t1` tracks with it
    result.evaluation       # {"success": ..., "precision": ..., ...} on val after the last step

``plan_tracker`` resolves and checks everything before anything is written: the preset
(``preset``, then ``overrides``, then the shortcuts ``backbone`` / ``freeze_backbone`` /
``steps`` / ``batch_size``), the backbone's pretrained weights (``weights``: read), the network
(built on the meta device), the training tracks (``vvk.data.track_pairs``: OTB, GOT-10k or
UCF101-24 layouts), the val sequences, and the run folder. ``run_tracker`` writes
``RUN/preset.json`` (the resolved preset and what the run reads), trains on the one training
loop with SiamFC's balanced logistic loss on pairs of frames of one track, tracks and scores
``val`` every ``eval_every`` steps and after the last (``vvk.methods.tracking.run.track_otb``
into ``RUN/val/step-N/``, then ``vvk.eval.tracking.evaluate_otb``: lines of ``metrics.jsonl``
with ``"hook": "val"``), and exports the tracker (``io.save_tracker``). ``resume=True``
continues the run in ``out`` on its recorded data.

A pretrained and a random backbone train and track alike: the same head, the same input
normalisation (the backbone kind's, ``vvk.models.trackers.siamfc.default_normalisation``),
only the weights differ; ``freeze_backbone`` trains the head alone (VFS's protocol).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from vvk.atomic import atomic_write_text
from vvk.data.siamfc_crops import MAX_STRETCH, MAX_TRANSLATE
from vvk.data.track_pairs import MAX_GAP
from vvk.engine import TrainConfig
from vvk.engine.config import check_ranges
from vvk.errors import VvkError
from vvk.methods.overrides import from_dict, parse_overrides, replace_fields, to_dict
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
from vvk.methods.tracking.siamfc import PRESETS as NETWORKS
from vvk.methods.tracking.siamfc import R_NEG, R_POS, SiamFCPreset
from vvk.paths import default_run_dir

METHOD = "tracker"  # run.json's method: what --resume checks
PRESET_FILE = "preset.json"
HOOK = "val"  # the evaluation's name in metrics.jsonl
VAL_DIR = "val"  # RUN/val/step-N/<sequence>.txt: the results each evaluation scored
DEFAULT_PRESET = "tiny"

# huanglianghua/siamfc-pytorch: tools/train.py trains on GOT10k(subset="train"), whose split holds
# 9,335 sequences, through siamfc/datasets.py Pair(pairs_per_seq=1): one pair per sequence an
# epoch, batches of 8 with drop_last=True (siamfc.py train_over), so 1,166 steps an epoch.
GOT10K_TRAIN_SEQUENCES = 9335
PAPER_EPOCHS, PAPER_BATCH = 50, 8  # siamfc.py parse_args: epoch_num 50, batch_size 8


def log_decay(epochs: int, first: float, last: float) -> dict[str, Any]:
    """``TrainConfig`` fields for siamfc-pytorch's schedule: ``ExponentialLR`` stepped at each
    epoch's start with ``gamma = (last / first) ** (1 / epochs)`` (siamfc.py ``__init__`` and
    ``train_over``), i.e. ``first · gamma**e`` in epoch ``e``: a drop by ``gamma`` at each epoch
    boundary, as fractions of the run (a shorter run keeps the shape)."""
    return {"lr": first, "schedule": "step", "decay_at": tuple(e / epochs for e in range(1, epochs)),
            "decay_rate": (last / first) ** (1 / epochs)}  # fmt: skip


@dataclass(frozen=True)
class TrackerTrainPreset:
    """How to train a tracker. The defaults are the ``paper`` preset: SiamFC's recipe as
    ``huanglianghua/siamfc-pytorch: siamfc/siamfc.py`` (``parse_args``, ``train_over``) runs it,
    on the network of VFS's frozen-feature protocol (``vvk.methods.tracking.siamfc.PRESETS``).

    Attributes:
        model: the network (``--set model.backbone=r3d-50``, ``model.freeze_backbone=true``, ...).
        pairs_per_epoch: training pairs an epoch (the data set's length, ``TrackPairs``).
        max_gap: the two frames of a pair at most this many frames apart.
        max_stretch, max_translate: the crops' augmentation (``vvk.data.siamfc_crops``).
        r_pos, r_neg: the label map's radii in search-crop pixels (``SiamFCLoss``).
        eval_every: steps between evaluations on val (0: after the last step only).
        val_sequences: the val sequences: names separated by commas or a list file such as
            ``tb_100.txt`` (a path, or a file in the val folder); empty: every sequence.
    """

    model: SiamFCPreset = field(default_factory=lambda: NETWORKS["paper"])
    pairs_per_epoch: int = GOT10K_TRAIN_SEQUENCES
    max_gap: int = MAX_GAP  # siamfc-pytorch datasets.py, Pair._sample_pair: rand_x - rand_z < 100
    max_stretch: float = MAX_STRETCH
    max_translate: int = MAX_TRANSLATE
    r_pos: float = R_POS  # parse_args r_pos 16
    r_neg: float = R_NEG  # parse_args r_neg 0
    # siamfc-pytorch's train_over does not evaluate; tools/test.py (and VFS's train_siamfc.py)
    # runs ExperimentOTB once training is done: at the end only
    eval_every: int = 0
    val_sequences: str = ""
    # SGD (parse_args momentum 0.9, weight_decay 5e-4: there on every parameter, here not on
    # biases and norms, as everywhere in vvk), lr 1e-2 -> 1e-5 (initial_lr, ultimate_lr) decayed
    # per epoch over epoch_num 50; no warm-up, no clipping, fp32 as there. A checkpoint an epoch,
    # as train_over saves one. num_workers 32 there; 8 here, vvk's choice (per process).
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=PAPER_EPOCHS * (GOT10K_TRAIN_SEQUENCES // PAPER_BATCH),
            batch_size=PAPER_BATCH,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=5e-4,
            **log_decay(PAPER_EPOCHS, 1e-2, 1e-5),
            checkpoint_every=GOT10K_TRAIN_SEQUENCES // PAPER_BATCH,
            log_every=100,
            num_workers=8,
        )
    )

    def __post_init__(self) -> None:
        check_ranges(
            self,
            {
                ">= 1": ("pairs_per_epoch",),
                ">= 0": ("max_gap", "max_translate", "r_pos", "r_neg", "eval_every"),
                "in [0, 1)": ("max_stretch",),
            },
        )


PRESETS: dict[str, TrackerTrainPreset] = {
    "paper": TrackerTrainPreset(),
    # The laptop run: r3d-tiny trained end to end on the two shared OTB sequences (Crossing,
    # Couple) in under two minutes on one CPU thread: the paper's optimiser and per-epoch log
    # decay (1e-2 -> 1e-4 here) over 10 epochs of 240 pairs, scored every 100 steps. On one
    # thread of the 2-core AMD EPYC of docs/benchmarks.md: 0.26 s a step, 5 s an evaluation of
    # the 260 frames, 94 s in all; success 0.17 / 0.28 / 0.32 and precision 0.54 / 0.83 / 0.82
    # at steps 100 / 200 / 300 on those same sequences (untrained: 0.09 / 0.07).
    "tiny": TrackerTrainPreset(
        model=NETWORKS["tiny"],
        pairs_per_epoch=240,
        eval_every=100,
        train=TrainConfig(
            steps=300,
            batch_size=8,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=5e-4,
            **log_decay(10, 1e-2, 1e-4),
            checkpoint_every=100,
            log_every=10,
            num_workers=1,
        ),
    ),
}


def resolve_tracker_preset(
    preset: str = DEFAULT_PRESET,
    *,
    overrides: Sequence[str] = (),
    backbone: str | None = None,
    freeze_backbone: bool = False,
    steps: int | None = None,
    batch_size: int | None = None,
    base: TrackerTrainPreset | None = None,
) -> TrackerTrainPreset:
    """Preset ``preset`` (or ``base``) with ``overrides`` and the shortcuts applied at once, each
    field checked. Another backbone than the preset's takes its automatic feature (``None``:
    a 3D ResNet's res5 dilated, a SpineNet's P3, ...) unless ``model.feature`` is set."""
    if base is None:
        if preset not in PRESETS:
            raise VvkError(
                f"preset={preset}: not a tracker preset",
                hint=f"one of {', '.join(PRESETS)}",
                params=["preset"],
            )
        base = PRESETS[preset]
    given = [*overrides, *shortcuts(backbone, freeze_backbone, steps, batch_size)]
    changes = parse_overrides(base, given)
    if changes.get("model.backbone", base.model.backbone) != base.model.backbone:
        changes.setdefault("model.feature", None)
    fit_warmup(base.train, changes)
    return replace_fields(base, changes)


def shortcuts(
    backbone: str | None, freeze_backbone: bool, steps: int | None, batch_size: int | None
) -> list[str]:
    """The ``key=value`` overrides the shortcut arguments stand for."""
    given = {"model.backbone": backbone, "model.freeze_backbone": "true" if freeze_backbone else None,
             "train.steps": steps, "train.batch_size": batch_size}  # fmt: skip
    return [f"{key}={value}" for key, value in given.items() if value is not None]


@dataclass(frozen=True)
class TrackerPlan:
    """A checked tracker training run, before anything is written (``plan_tracker``).

    Attributes:
        data, val: the training tracks and the OTB folder to score on, absolute.
        weights: the backbone's pretrained weights (a path made absolute, or a name as given;
            None: random initialisation).
        backbone_arch: ``{"name", "kwargs"}`` that rebuild the backbone.
        overrides: every assignment the run was given (the recorded ones first when resuming).
        pairs: the training pairs (``TrackPairs``), their tracks read; ``val_names`` the val
            sequences (None: all), read and checked; ``backbone`` the loaded pretrained backbone.
    """

    preset: str
    config: TrackerTrainPreset
    data: Path
    val: Path | None
    weights: str | None
    backbone_arch: dict[str, Any]
    run_dir: Path
    resume: bool
    overrides: tuple[str, ...]
    pairs: Any = field(repr=False, compare=False)  # vvk.data.track_pairs.TrackPairs
    val_names: list[str] | None = None
    backbone: Any = field(default=None, repr=False, compare=False)  # torch.nn.Module

    def record(self) -> dict[str, Any]:
        """What ``preset.json`` holds: enough to resume the run, and to know what it read."""
        return {
            "method": METHOD, "preset": self.preset, "data": str(self.data),
            "val": None if self.val is None else str(self.val), "weights": self.weights,
            "backbone": self.backbone_arch, "overrides": list(self.overrides), "layout": self.pairs.layout,
            "tracks": len(self.pairs.tracks), "resolved": to_dict(self.config),
        }  # fmt: skip


def plan_tracker(
    *,
    data: str | os.PathLike | None = None,
    val: str | os.PathLike | None = None,
    backbone: str | None = None,
    weights: str | os.PathLike | None = None,
    freeze_backbone: bool = False,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    steps: int | None = None,
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
) -> TrackerPlan:
    """Resolve and check a tracker training run (module docstring); writes nothing.

    Args:
        data: object tracks: an OTB folder, a GOT-10k split folder or a UCF101-24 folder.
        val: an OTB folder to track and score during and after training (None: no scores).
        backbone: an image or video backbone of ``vvk models list`` (default: the preset's, or
            that of ``weights``).
        weights: pretrained weights for the backbone: a ``vvk pretrain`` run folder, a backbone
            checkpoint, a name from ``vvk weights list`` (``io.load_backbone``).
        freeze_backbone: train the head only (``model.freeze_backbone``).
        preset: ``tiny`` (default) or ``paper``; the run's own when resuming.
        out: the run folder (default ``runs/tracker-<time>``).
    """
    run_dir = Path(out) if out is not None else default_run_dir(METHOD)
    options = dict(overrides=overrides, backbone=backbone, freeze_backbone=freeze_backbone, steps=steps,
                   batch_size=batch_size)  # fmt: skip
    begin = _resumed if resume else _started
    run = begin(run_dir, preset=preset, data=data, val=val, weights=weights, options=options)
    check_device(run.config)
    _check_builds(run.config, run.arch)
    return TrackerPlan(
        preset=run.preset, config=run.config, data=run.data, val=run.val, weights=run.weights,
        backbone_arch=run.arch, run_dir=run_dir, resume=resume, overrides=tuple(run.given),
        pairs=_pairs(run.config, run.data), val_names=_val_names(run.config, run.val), backbone=run.loaded,
    )  # fmt: skip


class _Start(NamedTuple):
    """What a new or a resumed run starts from (``plan_tracker``)."""

    preset: str
    config: TrackerTrainPreset
    data: Path
    val: Path | None
    weights: str | None
    arch: dict[str, Any]
    loaded: Any  # the pretrained backbone, loaded (None: none, or the checkpoint holds it)
    given: list[str]


def _started(run_dir: Path, *, preset, data, val, weights, options) -> _Start:
    check_new_run_dir(run_dir)
    source, val_source = _sources(data, val)
    loaded = None
    if weights is not None:
        loaded, weights = _pretrained(weights, options["backbone"]), _spec(weights)
        options = {**options, "backbone": loaded.vvk_arch["name"]}
    preset = preset or DEFAULT_PRESET
    config = resolve_tracker_preset(preset, **options)
    arch = dict(loaded.vvk_arch) if loaded is not None else {"name": config.model.backbone, "kwargs": {}}
    given = [*options["overrides"], *_shortcuts_of(options)]
    return _Start(preset, config, source, val_source, weights, arch, loaded, given)


def _resumed(run_dir: Path, *, preset, data, val, weights, options) -> _Start:
    """The run in ``run_dir`` goes on: its preset, data, backbone and weights; only ``train.*``
    and the evaluation may change (``val`` may name another folder to score on)."""
    record = recorded_run(run_dir, METHOD, PRESET_FILE, command="vvk train tracker")
    preset = recorded_preset(record, preset, run_dir, presets=PRESETS, what="tracker")
    base = from_dict(PRESETS[preset], record["resolved"], what=str(run_dir / PRESET_FILE))
    config = resolve_tracker_preset(preset, **options, base=base)
    check_unchanged(base, config, run_dir, allowed=("eval_every", "val_sequences"))
    recorded = record.get("weights")
    if weights is not None and _spec(weights) != recorded:
        raise VvkError(
            f"weights={weights}: {run_dir} was trained from {recorded or 'random weights'}",
            hint="leave weights= out to resume it", params=["weights"],
        )  # fmt: skip
    source = resumed_data(record["data"], data, run_dir, False, items="tracks")
    # no checkpoint yet: the pretrained weights are still the start
    loaded = _pretrained(recorded, None) if recorded is not None and _no_checkpoint(run_dir) else None
    given = [*record.get("overrides", []), *options["overrides"], *_shortcuts_of(options)]
    return _Start(preset, config, source, _resumed_val(record.get("val"), val, run_dir), recorded,
                  record["backbone"], loaded, given)  # fmt: skip


def _shortcuts_of(options: dict[str, Any]) -> list[str]:
    return shortcuts(options["backbone"], options["freeze_backbone"], options["steps"], options["batch_size"])


def _sources(data, val) -> tuple[Path, Path | None]:
    if data is None:
        raise VvkError(
            "data=: give the training tracks (an OTB, GOT-10k or UCF101-24 folder)", params=["data"]
        )
    return _folder(data, "data"), None if val is None else _folder(val, "val")


def _folder(path: str | os.PathLike, what: str) -> Path:
    if not os.path.isdir(path):
        raise VvkError(f"{what}={os.fspath(path)}: no such folder", params=[what])
    return absolute(path)


def _no_checkpoint(run_dir: Path) -> bool:
    from vvk.engine.state import RunDir

    return RunDir(run_dir).latest() is None


def _resumed_val(recorded: str | None, val, run_dir: Path) -> Path | None:
    """A resumed run scores on its own val folder, or on another one given (scores are not
    training: they change nothing the checkpoint holds)."""
    if val is not None:
        return _folder(val, "val")
    if recorded is not None and not os.path.isdir(recorded):
        raise VvkError(
            f"resume: {run_dir} was scored on {recorded}, which is gone",
            hint="pass val=NEW to score on another folder", params=["val"],
        )  # fmt: skip
    return None if recorded is None else Path(recorded)


def _spec(weights: str | os.PathLike) -> str:
    """``weights`` as recorded: a path made absolute, a registry name or hf-hub spec as given."""
    return str(Path(weights).absolute()) if os.path.exists(weights) else str(weights)


def _pretrained(weights: str | os.PathLike, backbone: str | None):
    """The backbone ``weights`` holds, loaded; ``backbone``, when given, must be its architecture."""
    from vvk.methods.tracking.io import load_backbone

    loaded = load_backbone(weights)
    name = loaded.vvk_arch["name"]
    if backbone is not None and backbone != name:
        raise VvkError(
            f"backbone={backbone}: weights={weights} holds a '{name}' backbone",
            hint="leave backbone= out: the weights name it", params=["backbone", "weights"],
        )  # fmt: skip
    return loaded


def _check_builds(config: TrackerTrainPreset, arch: dict[str, Any]) -> None:
    """Build the network on the meta device: a bad backbone, feature or head fails here, free."""
    import torch

    with torch.device("meta"):
        build_tracker(config, arch)


def build_tracker(config: TrackerTrainPreset, arch: dict[str, Any], backbone=None):
    """The preset's network on ``backbone`` (a loaded, pretrained one) or on a random backbone
    built as ``arch`` says."""
    from vvk.methods.tracking.siamfc import build

    if backbone is not None:
        return build(config.model, backbone=backbone)
    model = dataclasses.replace(config.model, backbone=arch["name"])
    return build(model, backbone_kwargs=arch["kwargs"])


def _pairs(config: TrackerTrainPreset, source: Path):
    from vvk.data.track_pairs import TrackPairs

    try:
        return TrackPairs(
            source, pairs_per_epoch=config.pairs_per_epoch, seed=config.train.seed, max_gap=config.max_gap,
            max_stretch=config.max_stretch, max_translate=config.max_translate,
        )  # fmt: skip
    except VvkError as e:
        raise _renamed(e, "root", "data") from None


def _val_names(config: TrackerTrainPreset, val: Path | None) -> list[str] | None:
    """The val sequences, read once here so that a bad folder or name fails before training."""
    if val is None:
        return None
    from vvk.data.otb import read_otb, sequence_names

    try:
        names = sequence_names(config.val_sequences or None, val)
        read_otb(val, names)
    except VvkError as e:
        raise _renamed(e, "root", "val") from None
    return names


def _renamed(error: VvkError, name: str, to: str) -> VvkError:
    """``error`` with the library's ``name=`` spelled as this function's ``to=``."""
    import re

    pattern = rf"(?<![\w.-]){name}="
    error.message = re.sub(pattern, f"{to}=", error.message)
    error.hint = error.hint and re.sub(pattern, f"{to}=", error.hint)
    error.params = tuple(to if p == name else p for p in error.params)
    return error


@dataclass(frozen=True)
class TrackerResult:
    run_dir: Path
    tracker_path: Path
    status: str
    step: int
    losses: dict[str, float]
    evaluation: dict[str, Any] | None  # the last evaluation on val (None without one)
    summary: dict[str, Any]
    preset: dict[str, Any]
    data: str
    val: str | None
    seconds: float


def tracking_step(model, batch: dict[str, Any], *, loss):
    """One training step: the balanced logistic loss of the pairs' responses, and ``hit``: the
    share of responses whose peak lies among the label map's positives (logged only)."""
    responses = model(batch["exemplar"], batch["search"])  # (B, 1, 17, 17)
    return {"loss": loss(responses), "hit": loss.hits(responses.detach())}


def run_tracker(plan: TrackerPlan, *, progress: bool = True) -> TrackerResult:
    """Train as ``plan`` says and export the tracker to ``RUN/tracker.safetensors``."""
    from vvk.data.track_pairs import collate_pairs
    from vvk.engine import Every, train
    from vvk.engine.state import seed_all
    from vvk.methods.tracking.io import TRACKER_FILE, save_tracker, tracker_arch
    from vvk.methods.tracking.siamfc import SiamFCLoss

    config, run_dir = plan.config, plan.run_dir
    started = time.monotonic()
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        record = plan.record()
        atomic_write_text(run_dir / PRESET_FILE, json.dumps(record, indent=2) + "\n")
        seed_all(config.train.seed)  # the head's initial weights follow the preset's seed too
        model = build_tracker(config, plan.backbone_arch, plan.backbone)
    except BaseException:
        if created:  # nothing trained: leave no half-made run folder that blocks the next out=
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    every = [Every(steps=config.eval_every, fn=_val_evaluation(plan), name=HOOK)] if plan.val else []
    loss = SiamFCLoss(r_pos=config.r_pos, r_neg=config.r_neg)
    train_config = dataclasses.replace(config.train, progress=progress and config.train.progress)
    step_fn = functools.partial(tracking_step, loss=loss)
    result = train(
        model=model, step_fn=step_fn, data=plan.pairs, config=train_config, run_dir=run_dir, method=METHOD,
        resume=plan.resume, collate_fn=collate_pairs, every=every, arch=tracker_arch(model),
    )  # fmt: skip
    evaluation = result.hooks.get(HOOK) or last_evaluation(run_dir)
    metrics = {k: v for k, v in (evaluation or {}).items() if isinstance(v, int | float)}
    metadata = {"data": record["data"], "weights": plan.weights, "status": result.status}
    path = save_tracker(model, run_dir / TRACKER_FILE, preset=plan.preset, metadata=metadata,
                        step=result.step, metrics=metrics)  # fmt: skip
    return TrackerResult(
        run_dir=run_dir, tracker_path=path, status=result.status, step=result.step, losses=result.losses,
        evaluation=evaluation, summary=result.summary, preset=record["resolved"], data=record["data"],
        val=record["val"], seconds=time.monotonic() - started,
    )  # fmt: skip


def _val_evaluation(plan: TrackerPlan):
    """The in-training evaluation: track every val sequence with the model as it is (rank 0;
    results in ``RUN/val/step-N/``), then OTB success and precision of those results."""

    def evaluate(model, step: int) -> dict[str, Any] | None:
        import torch.distributed as dist

        from vvk.eval.tracking import evaluate_otb
        from vvk.methods.tracking.run import track_otb

        if dist.is_initialized() and dist.get_rank() != 0:
            return None  # one tracker is enough; the other ranks wait at the next collective
        folder = plan.run_dir / VAL_DIR / f"step-{step:08d}"
        runs = track_otb(plan.val, weights=model, out=folder, sequences=plan.val_names, overwrite=True)
        report = evaluate_otb(plan.val, folder, sequences=plan.val_names)
        fps = [run.fps for run in runs if run.fps is not None]
        return {"success": report["success"], "precision": report["precision"],
                "sequences": report["num_sequences"], "frames": report["frames"],
                "fps": sum(fps) / len(fps) if fps else None}  # fmt: skip

    return evaluate


def train_tracker(*, progress: bool = True, **options: Any) -> TrackerResult:
    """Train a tracker: ``options`` are ``plan_tracker``'s (see the module docstring)."""
    return run_tracker(plan_tracker(**options), progress=progress)


def last_evaluation(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The values of the last evaluation ``metrics.jsonl`` holds (None: none yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    scored = [line for line in lines if line.get("hook") == HOOK]
    if not scored:
        return None
    return {k: v for k, v in scored[-1].items() if k not in ("step", "hook", "seconds", "time")}
