"""Loading pretrained models from any ``--weights`` value: one dispatch on the architecture kind.

``load(spec)`` accepts what ``--weights`` accepts:

- a name from ``weights.toml``: the file is pulled into its cache if needed, its sha256 (or the
  8-hex prefix torchvision publishes) checked on every load, then loaded into the architecture
  the entry names:

  ============================  ==============================================================
  ``<vvk registry name>``        vvk's safetensors + sidecar (``vvk.models.checkpoint``)
  ``torchvision:<builder>``      ``torchvision.models.get_model(builder, weights=None)`` and the
                                 ``.pth`` state dict, read with ``weights_only=True``
  ``open_clip:<model config>``   ``open_clip.create_model`` and ``open_clip.load_checkpoint``
                                 (OpenAI's TorchScript ``.pt`` archives, plain or wrapped state
                                 dicts, safetensors)
  ============================  ==============================================================

- a vvk checkpoint file, or ``hf-hub:OWNER/REPO/FILE`` holding one.

Every key must load (missing or unexpected keys are a one-line ``VvkError``). torch, torchvision
and open_clip are imported by the loaders only, so ``vvk.weights`` stays torch-free.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from vvk.errors import VvkError
from vvk.models.checkpoint import load_file, load_strictly, read_arch
from vvk.models.registry import get_entry
from vvk.weights import HF_PREFIX, WeightsEntry, lookup, pull, resolve, split_architecture


def load(
    spec: str | os.PathLike,
    *,
    tasks: Collection[str] | None = None,
    map_location: str | torch.device = "cpu",
    registry: dict[str, WeightsEntry] | None = None,
) -> nn.Module:
    """The fully loaded model a ``--weights`` value names, on ``map_location``, in training mode
    as its builder returns it.

    Args:
        spec: a weights registry name, a vvk checkpoint path, or ``hf-hub:OWNER/REPO/FILE``.
        tasks: the tasks the caller can use (``{"video-backbone"}``, ...); weights of another
            task are an error, raised before anything is downloaded for a registry name.
        registry: the weights registry to look names up in (default: ``weights.toml``).
    """
    spec = str(spec)
    entry = lookup(spec, registry=registry)
    if entry is None:  # a vvk checkpoint: a local file or an hf-hub spec
        path = resolve(spec, registry=registry)
        _check_task(spec, get_entry(read_arch(path)["name"]).task, tasks)
        return load_file(path, map_location=map_location, verified=spec.startswith(HF_PREFIX))
    _check_task(f"weights '{entry.name}' ({entry.architecture})", entry.task, tasks)
    path = pull(entry.name, registry={entry.name: entry})
    kind, name = split_architecture(entry.architecture)
    return _LOADERS[kind](name, path).to(map_location)


def _check_task(what: str, actual: str, usable: Collection[str] | None) -> None:
    if usable is not None and actual not in usable:
        raise VvkError(f"{what} has task '{actual}'; this needs {' or '.join(sorted(usable))}")


def _load_vvk(name: str, path: Path) -> nn.Module:
    return load_file(path, architecture=name)


def _load_torchvision(builder: str, path: Path) -> nn.Module:
    from torchvision.models import get_model

    model = get_model(builder, weights=None)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many types; weights_only refuses anything but tensors
        raise VvkError(f"{path}: not a PyTorch state dict ({' '.join(str(e).split())[:200]})") from e
    if not isinstance(state_dict, dict):
        raise VvkError(f"{path}: holds a {type(state_dict).__name__}, not a state dict")
    load_strictly(path, lambda: model.load_state_dict(state_dict, strict=False))
    return model


def _load_open_clip(model_name: str, path: Path) -> nn.Module:
    import open_clip

    with _without_log_warnings():  # open_clip warns "initialized randomly": the weights come next
        model = open_clip.create_model(
            model_name, pretrained=None, pretrained_image=False, pretrained_text=False, device="cpu"
        )
    # OpenAI published CLIP only as TorchScript archives, which torch.load refuses under
    # weights_only=True and hands to torch.jit.load otherwise. TorchScript's loader builds
    # TorchScript values only and runs no pickled Python; the file's sha256 is checked already.
    torchscript = _is_torchscript_archive(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TorchScript archive", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".torch\.jit\.load. is deprecated", category=FutureWarning)
        load_strictly(
            path,
            lambda: open_clip.load_checkpoint(
                model, str(path), strict=False, weights_only=not torchscript, device="cpu"
            ),
        )
    return model


_LOADERS: dict[str, Callable[[str, Path], nn.Module]] = {
    "vvk": _load_vvk,
    "torchvision": _load_torchvision,
    "open_clip": _load_open_clip,
}


def _is_torchscript_archive(path: Path) -> bool:
    """torch.load's own test: a torch zip (records under one top folder) with a ``constants.pkl``
    record. Anything else is read with ``weights_only=True``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:] == ["constants.pkl"] for name in archive.namelist())


@contextmanager
def _without_log_warnings() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def check_architecture(entry: WeightsEntry) -> None:
    """Raise a ``VvkError`` naming ``entry`` unless its architecture can be built here: a vvk
    registry name of the entry's task, a torchvision builder whose weights enum holds the entry's
    ``source.torchvision``, or a model config open_clip knows."""
    kind, name = split_architecture(entry.architecture)
    problem = _ARCHITECTURE_CHECKS[kind](name, entry)
    if problem:
        raise VvkError(f"weights '{entry.name}': architecture '{entry.architecture}' {problem}")


def _vvk_problem(name: str, entry: WeightsEntry) -> str | None:
    try:
        model_task = get_entry(name).task
    except VvkError as e:
        return f"is not in the model registry ({e})"
    return None if model_task == entry.task else f"has task '{model_task}', not the entry's '{entry.task}'"


def _torchvision_problem(builder: str, entry: WeightsEntry) -> str | None:
    from torchvision.models import get_model_weights, get_weight, list_models

    if builder not in list_models():
        return "is not a torchvision builder (see torchvision.models.list_models())"
    if entry.source.torchvision and get_weight(entry.source.torchvision) not in get_model_weights(builder):
        return f"does not take torchvision's {entry.source.torchvision}"
    return None


def _open_clip_problem(model_name: str, entry: WeightsEntry) -> str | None:
    import open_clip

    return None if model_name in open_clip.list_models() else "is not an open_clip model config"


_ARCHITECTURE_CHECKS: dict[str, Callable[[str, WeightsEntry], str | None]] = {
    "vvk": _vvk_problem,
    "torchvision": _torchvision_problem,
    "open_clip": _open_clip_problem,
}
