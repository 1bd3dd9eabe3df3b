"""Loading the :class:`esmm.config.schema.Config` of a run: YAML files plus ``--set key=value`` overrides.

Order: dataclass defaults < ``conf/default.yaml`` < each ``--conf`` file <
overrides. Errors are raised as :class:`ConfigError` naming the dotted key,
before any Spark or torch work starts: an unknown key, a value of the wrong
type, or an impossible value (each section's ``validate``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

from esmm.config.errors import ConfigError
from esmm.config.schema import REPO_ROOT, Config

DEFAULT_CONF = REPO_ROOT / "conf" / "default.yaml"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build dataclasses recursively."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        errors = []
        for arg in args:  # the first member that accepts the value, e.g. bool | str: true or "auto"
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise (
            errors[0]
            if len(errors) == 1
            else ConfigError(f"{key}: expected one of {', '.join(_type_name(a) for a in args)}, got {value!r}")
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            full = f"{prefix}.{k}" if prefix else k
            removed = getattr(cls, "REMOVED_KEYS", {})  # keys of earlier versions, with what replaced them
            if k in removed:
                raise ConfigError(f"{full}: removed; {removed[k]}")
            raise ConfigError(f"{full}: unknown key; known keys here: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _validate_children(obj: Any, prefix: str) -> None:
    if hasattr(obj, "validate"):
        obj.validate(prefix)
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            _validate_children(v, f"{prefix}.{f.name}" if prefix else f.name)


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> dict[str, Any]:
    """``"generate.days=3"`` -> ``{"generate": {"days": 3}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from e
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read configuration file {path}: {e}") from e
    try:
        data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(
    files: Optional[list[str | Path]] = None, overrides: Optional[list[str]] = None, use_default_file: bool = True
) -> Config:
    """Build the one :class:`Config` of a run.

    Order: dataclass defaults < ``conf/default.yaml`` < each of ``files`` <
    ``overrides`` (``key.path=value``). Raises :class:`ConfigError` on any bad key.
    """
    data: dict[str, Any] = {}
    paths: list[Path] = []
    if use_default_file and DEFAULT_CONF.exists():
        paths.append(DEFAULT_CONF)
    paths += [Path(f) for f in files or []]
    for p in paths:
        data = _merge(data, _read_yaml(p))
    for item in overrides or []:
        data = _merge(data, parse_override(item))
    cfg = _build(Config, data, "")
    _validate_children(cfg, "")
    return cfg


def section_from_dict(cls: type, data: dict[str, Any], key: str) -> Any:
    """Rebuild and validate one config section (e.g. ModelConfig) saved with asdict."""
    obj = _build(cls, data, key)
    _validate_children(obj, key)
    return obj


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved with :meth:`Config.to_dict` (e.g. inside a model artifact)."""
    cfg = _build(Config, data, "")
    _validate_children(cfg, "")
    return cfg
