"""Presets: small frozen dataclasses, the only place where configuration becomes arguments.

``apply_overrides(preset, ["lr=0.1", "boxes_per_view=4"])`` returns a new preset with the fields
replaced, each value parsed and checked against the field's type annotation; an unknown field
or a value of the wrong type is a one-line error naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

from vvk.errors import VvkError

P = TypeVar("P")


def apply_overrides(preset: P, assignments: list[str]) -> P:
    """Replace preset fields from ``key=value`` strings (``--set``), type-checked.

    Nested dataclass fields are reached with dots: ``train.lr=0.2``.
    """
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise VvkError(f"--set {assignment!r}: expected key=value")
        path = [part.strip().replace("-", "_") for part in key.split(".")]
        preset = _replace_path(preset, path, raw.strip(), key.strip())
    return preset


def _replace_path(obj: Any, path: list[str], raw: str, full_key: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    name = path[0]
    if name not in hints:
        import difflib

        close = difflib.get_close_matches(name, hints, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"fields: {', '.join(sorted(hints))}"
        raise VvkError(f"--set {full_key}: no such preset field", hint=hint)
    current = getattr(obj, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise VvkError(f"--set {full_key}: '{name}' has no fields")
        return dataclasses.replace(obj, **{name: _replace_path(current, path[1:], raw, full_key)})
    if dataclasses.is_dataclass(current):
        fields = ", ".join(f"{name}.{f.name}" for f in dataclasses.fields(current))
        raise VvkError(f"--set {full_key}: set one of its fields instead", hint=fields[:300])
    try:
        value = parse_value(raw, hints[name])
    except ValueError as e:
        raise VvkError(f"--set {full_key}={raw}: {e}") from e
    return dataclasses.replace(obj, **{name: value})


def parse_value(raw: str, annotation: Any) -> Any:
    """Parse ``raw`` as a value of ``annotation`` (bool, int, float, str, tuples, Literal, Optional)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return parse_value(raw, option)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for option in args:
            if str(option) == raw:
                return option
        raise ValueError(f"expected one of {', '.join(map(str, args))}")
    if origin is tuple:
        items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
        item_types = args if not (len(args) == 2 and args[1] is Ellipsis) else (args[0],) * len(items)
        if len(item_types) != len(items):
            raise ValueError(f"expected {len(item_types)} comma-separated values")
        return tuple(parse_value(s.strip(), t) for s, t in zip(items, item_types, strict=True))
    if annotation is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if annotation is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
    if annotation is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    if annotation is str:
        return raw
    raise ValueError(f"fields of type {annotation} cannot be set from the command line")


def to_dict(preset: Any) -> dict[str, Any]:
    """JSON-ready dict of a preset (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(preset)))
