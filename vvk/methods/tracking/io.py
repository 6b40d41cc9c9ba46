"""Tracker weights: ``tracker.safetensors`` files, and every other ``--weights`` a tracker takes.

::

    from vvk.methods.tracking.io import load_tracker, save_tracker

    save_tracker(model, "runs/t1/tracker.safetensors", preset="tiny", metadata={"data": "otb/"})
    model, info = load_tracker("runs/t1")             # a run folder holding tracker.safetensors
    model, info = load_tracker("runs/constcl-1")      # a pretraining run: its backbone, a fresh head
    model, info = load_tracker("random:tiny")         # a preset at random initialisation

A tracker file is a vvk checkpoint (``vvk.models.checkpoint``: safetensors, a JSON sidecar with
the sha256, written atomically) whose architecture record is ``{"name": "siamfc", "kwargs":
...}``, the keyword arguments of the model registry's ``siamfc`` builder
(``vvk.models.trackers.siamfc``) that rebuild the network (the backbone by its registry name and
builder arguments, the adapter's feature, input normalisation and clip length, the head), so
``vvk.models.load`` reads it too. The sidecar also keeps ``tracker``: the preset name and the
caller's metadata.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from vvk.atomic import atomic_write_text
from vvk.errors import VvkError
from vvk.methods.tracking.siamfc import PRESETS, build
from vvk.models.checkpoint import BACKBONE_FILE, load_file, load_weights, read_arch, save, sidecar_path
from vvk.models.pretrained import load as load_model
from vvk.models.registry import ARCH_ATTR, get_entry
from vvk.models.registry import build as build_model
from vvk.models.trackers.siamfc import BACKBONE_TASKS, SiamFC, siamfc
from vvk.weights import HF_PREFIX, lookup, resolve, verify_file

logger = logging.getLogger("vvk.methods")

TRACKER_FILE = "tracker.safetensors"
ARCH_NAME = "siamfc"
RANDOM_PREFIX = "random:"
_WHAT = f"a tracker file, a run folder holding {TRACKER_FILE}, a `vvk pretrain` run folder, or random:PRESET"
_BACKBONE = "a `vvk pretrain` run folder, a backbone checkpoint file, or a name from `vvk weights list`"


def tracker_arch(model: SiamFC) -> dict[str, Any]:
    """The ``{"name": "siamfc", "kwargs": {...}}`` record that rebuilds ``model``'s architecture."""
    features = model.features
    backbone = getattr(features.backbone, ARCH_ATTR, None)
    if backbone is None:
        raise ValueError(
            "the tracker's backbone was not built by vvk.models.build: its architecture is unknown"
        )
    kwargs = {
        "backbone": backbone["name"],
        "backbone_kwargs": dict(backbone["kwargs"]),
        "feature": features.feature,
        "clip_frames": features.clip_frames if features.video else None,
        "mean": [float(v) for v in features.mean.flatten()],
        "std": [float(v) for v in features.std.flatten()],
        "branch_channels": model.exemplar_conv.out_channels if model.exemplar_conv is not None else None,
        "adjust": model.adjust_kind,
        "out_scale": float(model.out_scale),
        "freeze_backbone": bool(model.freeze_backbone),
    }
    return {"name": ARCH_NAME, "kwargs": kwargs}


def save_tracker(
    model: SiamFC,
    path: str | os.PathLike,
    *,
    preset: str | None = None,
    metadata: dict[str, Any] | None = None,
    step: int | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write ``model`` to ``path`` (``tracker.safetensors`` by convention) and its sidecar.

    Args:
        preset: the preset it was built from (a name of ``PRESETS``), recorded for readers.
        metadata: JSON-ready facts kept in the sidecar under ``tracker`` (training data, the
            backbone's source, ...).
        step, metrics: as ``vvk.models.save`` records them.

    Returns:
        ``path``.
    """
    try:
        record = json.dumps({"preset": preset, **(metadata or {})}, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable: {e}") from e
    path = save(model, path, arch=tracker_arch(model), step=step, metrics=metrics)
    side = sidecar_path(path)
    sidecar = json.loads(side.read_text(encoding="utf-8"))
    sidecar["tracker"] = json.loads(record)
    atomic_write_text(side, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


def load_tracker(
    weights: str | os.PathLike, *, device: str | torch.device = "cpu", seed: int = 0
) -> tuple[SiamFC, dict[str, Any]]:
    """The tracker ``weights`` names, in eval mode on ``device``, and what is known of it.

    ``weights`` is one of:

    - a tracker file (``save_tracker``), or a run folder holding ``tracker.safetensors``;
    - a ``vvk pretrain`` run folder (its ``backbone.safetensors``), a backbone checkpoint file,
      a name from ``vvk weights list`` or an ``hf-hub:`` spec of one (``load_backbone``): the
      backbone, frozen, in a SiamFC with a fresh head (no branch convs, the response adjust at
      its initial gain), its feature the one a preset on the same backbone uses, its input
      normalised as for any backbone of its kind (a video backbone [-1, 1], as vvk's
      pretraining fed it);
    - ``random:PRESET`` (``random:tiny``): a preset at random initialisation, seeded by ``seed``.

    Returns:
        (model, info): ``info`` has ``source`` (``weights`` as given), ``kind`` (``tracker``,
        ``backbone`` or ``random``), ``backbone`` (its registry name) and ``preset`` when known.
    """
    spec = str(weights)
    if spec.startswith(RANDOM_PREFIX):
        model, info = _random(spec, seed)
    elif lookup(spec) is None and read_arch(path := _local_file(spec))["name"] == ARCH_NAME:
        model, info = _tracker_file(path), {"source": spec, "kind": "tracker", "preset": _preset_of(path)}
    else:
        backbone = _backbone(spec, "a tracker or an image or video backbone", _WHAT)
        model, info = _on_backbone(spec, backbone), {"source": spec, "kind": "backbone", "preset": None}
    info["backbone"] = tracker_arch(model)["kwargs"]["backbone"]
    return model.to(device).eval(), info


def load_backbone(weights: str | os.PathLike) -> torch.nn.Module:
    """The image or video backbone ``weights`` names, with its pretrained weights: a ``vvk
    pretrain`` run folder (its ``backbone.safetensors``), a backbone checkpoint file, a name from
    ``vvk weights list`` or an ``hf-hub:`` spec of one. Anything else (a tracker, a detector, a
    text model) is a one-line ``VvkError`` naming ``weights``."""
    return _backbone(str(weights), "an image or video backbone", _BACKBONE)


def _backbone(spec: str, kind: str, expected: str) -> torch.nn.Module:
    """``load_backbone``; errors say the weights are not ``kind`` (expected ``expected``)."""
    if lookup(spec) is not None:  # a name from `vvk weights list` (a path of that name wins)
        return load_model(spec, tasks=BACKBONE_TASKS)  # pulled if needed, its sha256 checked
    if spec.startswith(RANDOM_PREFIX):
        raise VvkError(f"weights={spec}: random weights are no pretrained backbone", params=["weights"])
    path = _local_file(spec, expected)
    arch = read_arch(path)  # a file that is no vvk checkpoint: an error naming it
    task = "a tracker" if arch["name"] == ARCH_NAME else _task(arch["name"])
    if task not in BACKBONE_TASKS:
        raise VvkError(
            f"weights={spec}: holds a '{arch['name']}' model ({task}), not {kind}", params=["weights"]
        )
    return load_file(path, verified=spec.startswith(HF_PREFIX))


def _random(spec: str, seed: int) -> tuple[SiamFC, dict[str, Any]]:
    name = spec[len(RANDOM_PREFIX) :]
    if name not in PRESETS:
        raise VvkError(
            f"weights={spec}: no tracker preset '{name}' (one of {', '.join(PRESETS)})", params=["weights"]
        )
    with torch.random.fork_rng(devices=[]):  # reproducible, and the caller's random state untouched
        torch.manual_seed(seed)
        model = build(PRESETS[name])
    return model, {"source": spec, "kind": "random", "preset": name}


def _local_file(spec: str, expected: str = _WHAT) -> Path:
    """The file ``spec`` names: itself, a run folder's tracker or backbone, or a fetched hf-hub
    file; errors say what was ``expected``."""
    if spec.startswith(HF_PREFIX):
        return resolve(spec)  # downloaded or cached, its sha256 checked
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in (TRACKER_FILE, BACKBONE_FILE):
            if (path / name).is_file():
                return path / name
        raise VvkError(
            f"weights={spec}: a folder without {TRACKER_FILE} or {BACKBONE_FILE} (expected {expected})",
            params=["weights"],
        )
    if not path.is_file():
        raise VvkError(f"weights={spec}: no such file or folder (expected {expected})", params=["weights"])
    return path


def _task(name: str) -> str:
    try:
        return get_entry(name).task
    except VvkError:
        return "not in this vvk's model registry"


def _tracker_file(path: Path) -> SiamFC:
    arch = read_arch(path)
    if arch["sha256"]:
        verify_file(path, arch["sha256"], what="tracker")
    else:
        logger.warning(
            "%s: no %s sidecar beside it, so its sha256 cannot be checked", path, sidecar_path(path).name
        )
    try:
        model = build_model(ARCH_NAME, **arch["kwargs"])
    except VvkError as e:  # a file written by another vvk version
        raise VvkError(f"{path}: its tracker architecture does not build here ({e.message})") from None
    load_weights(model, path)
    return model


def _preset_of(path: Path) -> str | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    return json.loads(side.read_text(encoding="utf-8")).get("tracker", {}).get("preset")


def _on_backbone(spec: str, backbone: torch.nn.Module) -> SiamFC:
    """A SiamFC on a loaded backbone: frozen, no branch convs, a fresh response adjust."""
    arch = getattr(backbone, ARCH_ATTR, None)
    task = _task(arch["name"]) if arch else "not a vvk model"
    if task not in BACKBONE_TASKS:
        raise VvkError(f"weights={spec}: {task}, not an image or video backbone", params=["weights"])
    return siamfc(
        backbone,
        feature=preset_feature(arch["name"]),
        branch_channels=None,  # untrained 1×1 convs would only mix the pretrained features at random
        freeze_backbone=True,
    )


def preset_feature(backbone: str) -> str | None:
    """The feature a preset on ``backbone`` uses (``res3`` of r3d-tiny), else None (automatic)."""
    same = [preset for preset in PRESETS.values() if preset.backbone == backbone]
    return same[0].feature if same else None
