"""Experiment configurations: dataclasses loaded from YAML with strict validation.

Every setting has a default in its dataclass; a YAML file (``--config``) and ``--set key=value`` overrides
replace some of them. Unknown keys, values of the wrong type and out-of-range values are :class:`ConfigError`
with a message that names the setting, never a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

T = TypeVar("T")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file is an empty mapping)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        position = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{position}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of setting: value, not a {type(data).__name__}")
    return data


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` (values in YAML syntax) into a mapping."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {assignment!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: cannot parse the value {text!r}") from None
    return overrides


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"setting {name!r} must be a list, got {value!r}")
        (item_type, *_) = typing.get_args(annotation)
        return [_coerce(f"{name}[{i}]", item_type, item) for i, item in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (annotation,) = [option for option in options if option is not type(None)]
        return _coerce(name, annotation, value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"setting {name!r} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"setting {name!r} must be an integer, got {value!r}")
        return value
    if annotation is float:
        # YAML 1.1 reads 1e-3 (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"setting {name!r} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"setting {name!r} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"setting {name!r} must be finite, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"setting {name!r} must be a string, got {value!r}")
        return value
    raise ConfigError(f"setting {name!r} has an unsupported type {_type_name(annotation)}")  # pragma: no cover


def build_config(cls: type[T], values: Mapping[str, Any], *, source: str = "config") -> T:
    """Create and validate a config dataclass from a mapping of overrides.

    Raises:
        ConfigError: an unknown key (with the closest known one suggested), a value of the wrong type, or a
            value the dataclass' ``validate`` method rejects.
    """
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known settings: {', '.join(known)}"
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
    try:
        coerced = {key: _coerce(key, hints[key], value) for key, value in values.items()}
        config = cls(**coerced)
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return config


def load_config(cls: type[T], path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Defaults of ``cls``, replaced by the YAML file at ``path`` (if any), then by ``overrides``."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        values.update(read_yaml_mapping(path))
        source = str(path)
    if overrides:
        values.update(overrides)
        source = f"{source} with --set" if path is not None else "--set"
    return build_config(cls, values, source=source)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass, for results files."""
    return dataclasses.asdict(config)


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (for the configs' ``validate`` methods)."""
    if not condition:
        raise ConfigError(message)
