"""Pydantic validation errors -> one operator-readable line each."""

from __future__ import annotations

import difflib
import typing
from typing import Any, Optional

from pydantic import BaseModel


def describe(value: Any) -> str:
    """How a wrong value is shown: its YAML-ish type and a short repr."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping", type(None): "nothing"}
    kind = kinds.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)) or value is None:
        return kind
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 40 else shown[:37] + '...'}"


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number",
    "string_type": "a string", "bool_type": "true or false", "bool_parsing": "true or false",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _model_in(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return annotation


def allowed_keys(model: type[BaseModel], parent: tuple) -> list[str]:
    """The keys a mapping at `parent` may hold, for did-you-mean hints."""
    annotation: Any = model
    for part in parent:
        annotation = _unwrap_optional(annotation)
        found = _model_in(annotation)
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if found is not None and isinstance(part, str) and part in found.model_fields:
            annotation = found.model_fields[part].annotation
        elif origin is list and isinstance(part, int):
            annotation = args[0]
        elif origin is dict and isinstance(part, str):
            annotation = args[1]
        else:
            return []
    return _keys_of(_unwrap_optional(annotation))


def _keys_of(annotation: Any) -> list[str]:
    found = _model_in(annotation)
    return list(found.model_fields) if found is not None else []


def did_you_mean(word: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' or ''."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def error_message(error: dict, model: type[BaseModel]) -> str:
    """The text after 'file:line: key.path: ' for one pydantic error."""
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        choices = allowed_keys(model, tuple(loc[:-1]))
        hint = did_you_mean(key, choices)
        if not hint and choices:
            hint = f" (allowed: {', '.join(choices)})"
        return f"unknown key '{key}'{hint}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    ctx = error.get("ctx") or {}
    if kind == "too_short" and isinstance(value, (list, str, dict)):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least <= 1 else f"needs at least {least} items, got {len(value)}"
    if kind == "too_long" and isinstance(value, (list, str, dict)):
        return f"takes at most {ctx.get('max_length')} items, got {len(value)}"
    message = str(error.get("msg", kind))
    if message.startswith("Value error, "):
        return message[len("Value error, "):]
    return f"{message[0].lower()}{message[1:]}, got {describe(value)}"
