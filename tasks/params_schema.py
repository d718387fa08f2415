"""A YAML mapping -> a frozen dataclass, checked against the dataclass's annotations (tasks/config.py's sections).

Every field must be present and no other key; each value must match its annotation (bool, int, float, str,
tuples, mappings, unions, nested dataclasses); floats are finite and a string never holds a URL with a password.
A failure is a ParamsError that names the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from tasks.profiles import ParamsError

# scheme://user:password@host: a credential that must not be committed with params.yaml
_CREDENTIAL_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


# Where a key's value comes from: one file's name, or a function of the key (a profile merged over params.yaml:
# the profile for the keys it sets, params.yaml for the others).
Origin = str | Callable[[str], str]


def _origin(file: Origin, key: str) -> str:
    return file(key) if callable(file) else file


def check(condition: bool, key: str, message: str) -> None:
    """A section's range check: ValueError "<key> <message>" unless condition (build names the file and section)."""
    if not condition:
        raise ValueError(f"{key} {message}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, file: Origin) -> Any:
    """Check (and lightly normalise) one value against its annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, file)
            except ParamsError:
                continue
        raise ParamsError(f"{_origin(file, key)}: {key} must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, file)
    if origin is dict:
        (_key_type, value_type) = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ParamsError(f"{_origin(file, key)}: {key} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, value_type, f"{key}.{k}", file) for k, v in value.items()}
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{_origin(file, key)}: {key} must be a list, got {value!r}")
        return tuple(_coerce(v, item_type, f"{key}[{i}]", file) for i, v in enumerate(value))
    if tp is float and isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        # YAML 1.1 reads 3e-4 (no dot) as a string; it is plainly meant as a number.
        value = float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        # .nan passes no range check (every comparison is False) and .inf passes "> 0": refuse both here
        raise ParamsError(f"{_origin(file, key)}: {key} must be a finite number, got {value!r}")
    if tp is str and isinstance(value, str) and _CREDENTIAL_URL_RE.search(value):
        raise ParamsError(
            f"{_origin(file, key)}: {key} holds a URL with a password; params are committed to git and logged with "
            "every run: pass credentials through the environment instead (e.g. MLFLOW_TRACKING_USERNAME/PASSWORD)"
        )
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        type(None): value is None,
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported params type {tp!r} for {key}")
    if not ok:
        raise ParamsError(f"{_origin(file, key)}: {key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return float(value) if tp is float else value


def build(cls: type, data: Any, where: str, file: Origin) -> Any:
    """An instance of the frozen dataclass `cls` from the mapping `data` found at `where` in `file`: every field
    present, no unknown key, each value checked against its annotation, then the class's own checks; a failure is a
    ParamsError naming the file and the key."""
    label = where or "the top level"
    if not isinstance(data, dict):
        raise ParamsError(f"{_origin(file, where)}: {label} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in names]
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ParamsError(f"{_origin(file, key)}: unknown key {key} (known keys: {', '.join(names)})")
    missing = [n for n in names if n not in data]
    if missing:
        kind = "section" if dataclasses.is_dataclass(hints[missing[0]]) else "key"
        raise ParamsError(f"{_origin(file, prefix + missing[0])}: missing {kind} {prefix}{missing[0]}")
    values = {n: _coerce(data[n], hints[n], f"{prefix}{n}", file) for n in names}
    try:
        return cls(**values)
    except ValueError as err:  # a range check: "<key> <message>" (check)
        raise ParamsError(f"{_origin(file, prefix + str(err).split(' ')[0])}: {prefix}{err}") from None
