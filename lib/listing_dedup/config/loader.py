"""Loading YAML profiles into frozen dataclasses: merge left to right (later wins), apply
``--set a.b=c`` overrides, validate. An unknown key or an out-of-range value raises
:class:`ConfigError` naming the key; a YAML syntax error is one line with its file, line and column."""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from listing_dedup.errors import ConfigError


def check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


_MAPPINGS = (Mapping, dict, collections.abc.Mapping)
_SEQUENCES = (Sequence, list, tuple, collections.abc.Sequence)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # ``X | None``: null or an X
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        check(isinstance(value, Mapping), key, f"must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if tp is bool:
        check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    if origin in _MAPPINGS:
        if value is None:
            value = {}
        check(isinstance(value, Mapping), key, f"must be a mapping, got {type(value).__name__}")
        # Spark conf values are strings; YAML may give numbers or booleans.
        return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
    if origin in _SEQUENCES:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown config key '{full}' (known here: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            full = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], full)
    return cls(**kwargs)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_set(raw: dict[str, Any], assignment: str, root: type) -> dict[str, Any]:
    """Apply one ``a.b.c=value`` override. The value is parsed as YAML (so ``0.8`` is a
    float, ``[0.7, 0.6]`` a list). Below a mapping-typed key (``spark.conf``) the rest of
    the dotted path is one key: ``spark.conf.spark.sql.shuffle.partitions=8``."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    path, _, text = assignment.partition("=")
    parts = [p for p in path.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key in '{assignment}'")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {path}: cannot parse value {text!r}: {_yaml_problem(e)}") from None

    cls: Any = root
    node = raw
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise ConfigError(f"unknown config key '{'.'.join(parts[: i + 1])}' in --set {path}")
        tp = hints[part]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(tp) and not last:
            node = node.setdefault(part, {})
            cls = tp
            continue
        if typing.get_origin(tp) in _MAPPINGS and not last:
            node = node.setdefault(part, {})
            node[".".join(parts[i + 1 :])] = value
            return raw
        if not last:
            raise ConfigError(f"config key '{'.'.join(parts[: i + 1])}' has no sub-keys (in --set {path})")
        node[part] = value
    return raw


def load(root: type, paths: Sequence[str | Path], overrides: Sequence[str]) -> Any:
    """Merge YAML profiles left to right, apply ``key=value`` overrides, validate as ``root``."""
    raw: dict[str, Any] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(_read_text(path)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        raw = deep_merge(raw, data)
    for a in overrides:
        raw = apply_set(raw, a, root)
    return _build(root, raw)


def _read_text(path: Path) -> str:
    """A config file's text: UTF-8, else one line naming the file, the byte and where it is."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
            f"(line {line}, column {column}); save it as UTF-8"
        ) from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line for a YAML error: what is wrong and where (PyYAML's own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(problem.split())
