"""Model checkpoints: safetensors plus a JSON sidecar, written atomically.

``save(model, "run/backbone.safetensors")`` writes two files:

- ``backbone.safetensors``: the tensors, with the architecture name and its keyword arguments
  also stored in the safetensors metadata, so the file alone can rebuild the model;
- ``backbone.json``: the sidecar, with architecture, kwargs, vvk and torch versions, step,
  metrics and the sha256 of the tensors file.

``load_file(path)`` rebuilds the architecture through the registry, checks the sha256 against the
sidecar, and loads strictly: missing or unexpected keys are an error that lists them (silently
zero-initialised tensors have bitten other ports). ``vvk.models.load`` (``vvk.models.pretrained``)
is the entry point that also takes registry names, hf-hub specs and other sources' formats.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model
from torch import nn

import vvk
from vvk.atomic import atomic_path, atomic_write_text
from vvk.errors import VvkError
from vvk.models.registry import ARCH_ATTR, build
from vvk.weights import sha256_file, verify_file

logger = logging.getLogger("vvk.models")

FORMAT = "vvk-checkpoint"
FORMAT_VERSION = 1
BACKBONE_FILE = "backbone.safetensors"  # what a pretraining or fine-tuning run folder exports
_MAX_LISTED_KEYS = 12


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    arch: dict[str, Any] | None = None,
    step: int | None = None,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write ``model``'s weights and sidecar; returns the tensors path.

    Args:
        arch: ``{"name", "kwargs"}``; defaults to what ``vvk.models.build`` recorded.
    """
    model = unwrap(model)
    arch = arch or getattr(model, ARCH_ATTR, None)
    if arch is None:
        raise ValueError("model was not built by vvk.models.build; pass arch={'name': ..., 'kwargs': ...}")
    try:
        arch_json = json.dumps({"name": arch["name"], "kwargs": arch["kwargs"]}, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"architecture kwargs must be JSON-serialisable: {e}") from e
    path = Path(path)
    with atomic_path(path) as tmp:
        _st_save_model(model, str(tmp), metadata={"format": FORMAT, "vvk_arch": arch_json})
        digest = sha256_file(tmp)
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch["name"],
        "kwargs": arch["kwargs"],
        "vvk_version": vvk.__version__,
        "torch_version": torch.__version__,
        "step": step,
        "metrics": metrics or {},
        "sha256": digest,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


def read_arch(path: str | os.PathLike) -> dict[str, Any]:
    """Architecture record of a checkpoint: the sidecar if present, else the file's metadata."""
    path = Path(path)
    side = sidecar_path(path)
    if side.is_file():
        try:
            record = json.loads(side.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise VvkError(f"{side}: malformed JSON at line {e.lineno} column {e.colno}") from e
        for key in ("architecture", "kwargs"):
            if key not in record:
                raise VvkError(f"{side}: missing field '{key}'")
        return {"name": record["architecture"], "kwargs": record["kwargs"], "sha256": record.get("sha256")}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for non-safetensors input
        raise VvkError(f"{path}: not a safetensors file ({e})") from e
    if "vvk_arch" not in meta:
        raise VvkError(f"{path}: no architecture record (no {side.name} sidecar, no vvk metadata)")
    record = json.loads(meta["vvk_arch"])
    return {"name": record["name"], "kwargs": record["kwargs"], "sha256": None}


def load_file(
    path: str | os.PathLike,
    *,
    architecture: str | None = None,
    map_location: str | torch.device = "cpu",
    verified: bool = False,
) -> nn.Module:
    """Rebuild and load the model of a local vvk checkpoint file, on ``map_location``.

    A file without its sidecar still loads (its metadata records the architecture), with a
    warning unless ``verified`` or ``architecture`` says where it came from: nothing else checks
    that its tensors are the ones that were saved.

    Args:
        architecture: the registry name the file must hold (a weights entry's, whose sha256 the
            registry has checked); a file recording another architecture is an error.
        verified: the caller has checked the file's sha256 (an hf-hub blob).
    """
    arch = read_arch(path)
    if architecture is not None and arch["name"] != architecture:
        raise VvkError(f"{path}: holds a '{arch['name']}' model, not the registered '{architecture}'")
    if arch["sha256"]:
        verify_file(path, arch["sha256"], what="checkpoint")
    elif architecture is None and not verified and not sidecar_path(path).is_file():
        logger.warning(
            "%s: no %s sidecar beside it, so its sha256 cannot be checked; loading the '%s' model its "
            "metadata records. Keep the sidecar with the file, or write one for the file as it is now: "
            "python -c \"import vvk.models as m; m.save(m.load('%s'), '%s')\"",
            path, sidecar_path(path).name, arch["name"], path, path,
        )  # fmt: skip
    model = build(arch["name"], **arch["kwargs"])
    load_weights(model, path)
    return model.to(map_location)


def load_weights(model: nn.Module, path: str | os.PathLike, *, device: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``model`` strictly, with an error listing any key mismatch."""
    load_strictly(path, lambda: _st_load_model(unwrap(model), str(path), strict=False, device=str(device)))


def load_strictly(path: str | os.PathLike, load: Callable[[], tuple[Sequence[str], Sequence[str]]]) -> None:
    """Run ``load`` (a non-strict state-dict load returning its missing and unexpected keys) and
    turn any mismatch, of keys or of shapes, into one ``VvkError`` naming ``path`` and the keys."""
    try:
        missing, unexpected = load()
    except RuntimeError as e:  # shape mismatches
        raise VvkError(f"{path}: does not fit the model: {' '.join(str(e).split())[:400]}") from e
    if missing or unexpected:
        raise VvkError(f"{path}: does not fit the model: {_describe_keys(missing, unexpected)}")


def _describe_keys(missing: Sequence[str], unexpected: Sequence[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(sorted(keys)[:_MAX_LISTED_KEYS])
            more = f" (+{len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else ""
            parts.append(f"{len(keys)} {label} key(s): {shown}{more}")
    return "; ".join(parts)


def exported_file(spec: str | os.PathLike, filename: str, *, run: str) -> str:
    """``weights`` may name a run folder: the ``filename`` it exported (``run``: what kind of
    run writes it, for the error); anything else is returned as it is."""
    path = Path(spec)
    if not path.is_dir():
        return str(spec)
    candidate = path / filename
    if not candidate.is_file():
        raise VvkError(
            f"weights={spec}: a folder without {filename} (not a finished {run})", params=("weights",)
        )
    return str(candidate)


def backbone_file(spec: str | os.PathLike) -> str:
    """``weights`` may name a run folder: its exported backbone. A path to nothing that cannot be
    a checkpoint file, a registry name or an hf-hub spec is taken for a missing run folder."""
    path = Path(spec)
    if path.is_dir():
        return exported_file(spec, BACKBONE_FILE, run="pretrain run")
    folder_like = os.sep in str(spec) and not path.suffix and not str(spec).startswith("hf-hub:")
    if folder_like and not os.path.lexists(path):
        raise VvkError(f"weights={spec}: no such run folder", params=("weights",))
    return str(spec)
