"""Presets: small frozen dataclasses, the only place where configuration becomes arguments.

``apply_overrides(preset, ["lr=0.1", "boxes_per_view=4"])`` returns a new preset with the fields
replaced, each value parsed and checked against the field's type annotation, then against its
range by the preset's own ``__post_init__`` (``vvk.engine.config.check_ranges``); an unknown
field, a value of the wrong type or out of range is a one-line error naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

from vvk.engine.config import InvalidField
from vvk.errors import VvkError

P = TypeVar("P")


def apply_overrides(preset: P, assignments: list[str]) -> P:
    """Replace preset fields from ``key=value`` strings (``--set``), type-checked and range-checked.

    Nested dataclass fields are reached with dots: ``train.lr=0.2``. All assignments are applied
    at once, so fields that are checked against each other may be set in any order
    (``train.steps=100 train.warmup_steps=10``).
    """
    return replace_fields(preset, parse_overrides(preset, assignments))


def parse_overrides(preset: Any, assignments: list[str]) -> dict[str, Any]:
    """``{"train.lr": 0.2, ...}`` from ``key=value`` strings, each value parsed against its field's
    type; an unknown field or a value of the wrong type is a one-line error naming the field.
    A later assignment of the same field wins."""
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise VvkError(f"--set {assignment!r}: expected key=value")
        path = [part.strip().replace("-", "_") for part in key.split(".")]
        changes[".".join(path)] = _parse_path(preset, path, raw.strip(), key.strip())
    return changes


def replace_fields(preset: P, changes: dict[str, Any]) -> P:
    """``preset`` with the fields of ``changes`` (dotted paths, parsed values) replaced; every
    dataclass on the way is rebuilt once, so its ``__post_init__`` checks the new values. A value
    out of its range is a ``VvkError`` naming the ``--set`` key."""
    try:
        return _replace(preset, changes)
    except InvalidField as e:
        given = e.path in changes
        raise VvkError(
            f"--set {e.path}={_shown(e.value)}: must be {e.rule}"
            if given
            else f"--set: the preset's {e.path} = {_shown(e.value)} must be {e.rule}"
        ) from e


def _replace(obj: Any, changes: dict[str, Any]) -> Any:
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        name, dot, rest = path.partition(".")
        if dot:
            nested.setdefault(name, {})[rest] = value
        else:
            direct[name] = value
    for name, inner in nested.items():
        try:
            direct[name] = _replace(getattr(obj, name), inner)
        except InvalidField as e:
            e.path = f"{name}.{e.path}"
            raise
    return dataclasses.replace(obj, **direct) if direct else obj


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parse_path(obj: Any, path: list[str], raw: str, full_key: str) -> Any:
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
        return _parse_path(current, path[1:], raw, full_key)
    if dataclasses.is_dataclass(current):
        fields = ", ".join(f"{name}.{f.name}" for f in dataclasses.fields(current))
        raise VvkError(f"--set {full_key}: set one of its fields instead", hint=fields[:300])
    try:
        return parse_value(raw, hints[name])
    except ValueError as e:
        raise VvkError(f"--set {full_key}={raw}: {e}") from e


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


def from_dict(template: P, record: dict[str, Any], *, what: str) -> P:
    """The preset ``to_dict`` wrote (``what`` names where it was read), on ``template``'s type:
    lists become tuples, fields the record lacks keep the template's values."""
    return replace_fields(template, _flat_values(template, record, what, ""))


def _flat_values(obj: Any, record: dict[str, Any], what: str, prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    values: dict[str, Any] = {}
    for name, value in record.items():
        if name not in hints:
            raise VvkError(f"{what}: '{prefix}{name}' is not a field of this vvk's {type(obj).__name__}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            nested = _flat_values(current, value, what, f"{prefix}{name}.")
            values.update({f"{name}.{key}": v for key, v in nested.items()})
        else:
            values[name] = _tuples(value)
    return values


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
