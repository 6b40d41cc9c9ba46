"""Tracker weights: ``tracker.safetensors`` files, and every other ``--weights`` a tracker takes.

::

    from vvk.methods.tracking.io import load_tracker, save_tracker

    save_tracker(model, "runs/t1/tracker.safetensors", preset="tiny", metadata={"data": "otb/"})
    model, info = load_tracker("runs/t1")             # a run folder holding tracker.safetensors
    model, info = load_tracker("runs/constcl-1")      # a pretraining run: its backbone, a fresh head
    model, info = load_tracker("random:tiny")         # a preset at random initialisation

A tracker file is a vvk checkpoint (``vvk.models.checkpoint``: safetensors, a JSON sidecar with
the sha256, written atomically) whose architecture record is ``{"name": "siamfc", "kwargs":
...}``, the keyword arguments of :func:`~vvk.methods.tracking.siamfc.siamfc` that rebuild the
network (the backbone by its registry name and builder arguments, the adapter's feature, input
normalisation and clip length, the head). The sidecar also keeps ``tracker``: the preset name and
the caller's metadata. A tracker is not a model-registry architecture, so ``vvk.models.load``
does not read these files; ``load_tracker`` does.
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
from vvk.methods.tracking.siamfc import PRESETS, SiamFC, build, siamfc
from vvk.models.checkpoint import load_file, load_weights, read_arch, save, sidecar_path
from vvk.models.pretrained import load as load_model
from vvk.models.registry import ARCH_ATTR, get_entry
from vvk.weights import HF_PREFIX, lookup, resolve, verify_file

logger = logging.getLogger("vvk.methods")

TRACKER_FILE = "tracker.safetensors"
BACKBONE_FILE = "backbone.safetensors"  # what a `vvk pretrain` run exports (vvk.methods.pretrain)
ARCH_NAME = "siamfc"
RANDOM_PREFIX = "random:"
BACKBONE_TASKS = ("image-backbone", "video-backbone", "multimodal-backbone")
# vvk's pretraining methods feed their video backbones [-1, 1] (VideoAugment's zero_center), so a
# pretrained backbone sees its crops so: (x - 0.5) / 0.5.
ZERO_CENTRED = (0.5, 0.5, 0.5)
_WHAT = f"a tracker file, a run folder holding {TRACKER_FILE}, a `vvk pretrain` run folder, or random:PRESET"


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
      a name from ``vvk weights list`` or an ``hf-hub:`` spec of one: the backbone, frozen, in a
      SiamFC with a fresh head (no branch convs, the response adjust at its initial gain), its
      feature the one a preset on the same backbone uses, and a video backbone fed [-1, 1] as
      vvk's pretraining fed it;
    - ``random:PRESET`` (``random:tiny``): a preset at random initialisation, seeded by ``seed``.

    Returns:
        (model, info): ``info`` has ``source`` (``weights`` as given), ``kind`` (``tracker``,
        ``backbone`` or ``random``), ``backbone`` (its registry name) and ``preset`` when known.
    """
    spec = str(weights)
    if spec.startswith(RANDOM_PREFIX):
        model, info = _random(spec, seed)
    elif lookup(spec) is not None:  # a name from `vvk weights list` (a path of that name wins)
        backbone = load_model(spec, tasks=BACKBONE_TASKS)  # pulled if needed, its sha256 checked
        model, info = _on_backbone(spec, backbone), {"source": spec, "kind": "backbone", "preset": None}
    else:
        model, info = _from_file(spec, _local_file(spec))
    info["backbone"] = tracker_arch(model)["kwargs"]["backbone"]
    return model.to(device).eval(), info


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


def _local_file(spec: str) -> Path:
    """The file ``spec`` names: itself, a run folder's tracker or backbone, or a fetched hf-hub file."""
    if spec.startswith(HF_PREFIX):
        return resolve(spec)  # downloaded or cached, its sha256 checked
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in (TRACKER_FILE, BACKBONE_FILE):
            if (path / name).is_file():
                return path / name
        raise VvkError(
            f"weights={spec}: a folder without {TRACKER_FILE} or {BACKBONE_FILE} (expected {_WHAT})",
            params=["weights"],
        )
    if not path.is_file():
        raise VvkError(f"weights={spec}: no such file or folder (expected {_WHAT})", params=["weights"])
    return path


def _from_file(spec: str, path: Path) -> tuple[SiamFC, dict[str, Any]]:
    arch = read_arch(path)  # a file that is no vvk checkpoint: an error naming it
    if arch["name"] == ARCH_NAME:
        return _tracker_file(path, arch), {"source": spec, "kind": "tracker", "preset": _preset_of(path)}
    task = _task(arch["name"])
    if task not in BACKBONE_TASKS:
        raise VvkError(
            f"weights={spec}: holds a '{arch['name']}' model ({task}), not a tracker or an image or "
            "video backbone",
            params=["weights"],
        )
    backbone = load_file(path, verified=spec.startswith(HF_PREFIX))
    return _on_backbone(spec, backbone), {"source": spec, "kind": "backbone", "preset": None}


def _task(name: str) -> str:
    try:
        return get_entry(name).task
    except VvkError:
        return "not in this vvk's model registry"


def _tracker_file(path: Path, arch: dict[str, Any]) -> SiamFC:
    if arch["sha256"]:
        verify_file(path, arch["sha256"], what="tracker")
    else:
        logger.warning(
            "%s: no %s sidecar beside it, so its sha256 cannot be checked", path, sidecar_path(path).name
        )
    kwargs = dict(arch["kwargs"])
    for key in ("mean", "std"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    try:
        model = siamfc(**kwargs)
    except TypeError as e:  # a file written by another vvk version
        raise VvkError(f"{path}: its tracker architecture does not build here ({e})") from None
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
    same = [preset for preset in PRESETS.values() if preset.backbone == arch["name"]]
    video = task != "image-backbone"
    return siamfc(
        backbone,
        feature=same[0].feature if same else None,
        branch_channels=None,  # untrained 1×1 convs would only mix the pretrained features at random
        freeze_backbone=True,
        mean=ZERO_CENTRED if video else None,
        std=ZERO_CENTRED if video else None,
    )
