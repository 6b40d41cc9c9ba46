"""The model registry: one name per architecture variant, builders that refuse duplicates.

Each model family file registers one small builder per variant::

    @register("r3d-rs-50", task="video-backbone", default_input=(3, 32, 224, 224),
              source="tensorflow/models: official/vision/modeling/backbones/resnet_3d.py")
    def r3d_rs_50(**kwargs): ...

``build(name, **kwargs)`` calls the builder and remembers ``(name, kwargs)`` on the module, so
that a checkpoint can record how to rebuild it (see ``vvk.models.checkpoint``).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vvk.errors import VvkError

ARCH_ATTR = "vvk_arch"  # attribute set on every built module: {"name": ..., "kwargs": {...}}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    task: str
    default_input: tuple[int, ...]  # one sample, without the batch axis, e.g. (3, 16, 224, 224)
    source: str  # the paper table or reference code the spec comes from


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str, *, task: str, default_input: tuple[int, ...], source: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the builder of ``name``; a second registration of a name raises."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered by {_REGISTRY[name].builder.__module__}")
        _REGISTRY[name] = ModelEntry(name, fn, task, tuple(default_input), source)
        return fn

    return decorator


def unregister(name: str) -> None:
    """Remove ``name`` (for tests that register temporary models)."""
    _REGISTRY.pop(name, None)


def get_entry(name: str) -> ModelEntry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, _REGISTRY, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see `vvk models list`"
    raise VvkError(f"unknown model '{name}'", hint=hint)


def build(name: str, **kwargs: Any):
    """Build model ``name`` with builder keyword arguments ``kwargs``."""
    entry = get_entry(name)
    try:
        model = entry.builder(**kwargs)
    except TypeError as e:
        raise VvkError(f"model '{name}': {e}") from e
    setattr(model, ARCH_ATTR, {"name": name, "kwargs": dict(kwargs)})
    return model


def list_models(pattern: str | None = None, *, task: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell-style filter (``r3d-rs-*``)."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if task:
        names = [n for n in names if _REGISTRY[n].task == task]
    return names
