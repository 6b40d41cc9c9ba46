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
    """Replace preset fields from ``key=value`` strings (``--set``), type-checked."""
    hints = typing.get_type_hints(type(preset))
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise VvkError(f"--set {assignment!r}: expected key=value")
        if key not in hints:
            import difflib

            close = difflib.get_close_matches(key, hints, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"fields: {', '.join(sorted(hints))}"
            raise VvkError(f"--set {key}: no such preset field", hint=hint)
        try:
            changes[key] = parse_value(raw.strip(), hints[key])
        except ValueError as e:
            raise VvkError(f"--set {key}={raw}: {e}") from e
    return dataclasses.replace(preset, **changes)


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
