"""Experiment configurations: dataclasses loaded from YAML with strict validation.

Every setting has a default in its dataclass; a YAML file (``--config``), ``--set key=value`` overrides and an
experiment's own command-line options (e.g. ``--dataset``) replace some of them, in that order. Unknown keys,
values of the wrong type and out-of-range values are :class:`ConfigError` with a message that names the setting
and where its value came from, never a traceback. Each setting's meaning is the ``#:`` comment above its field
(or a string right below it), which :func:`describe_settings` reads for ``splitgrow run NAME --help``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .checks import MAX_STEP_SIZE
from .errors import ConfigError

T = TypeVar("T")

#: a source of settings and the values it sets: ("defaults" | a file path | "--set" | an option such as "--dataset")
Layer = tuple[str, Mapping[str, Any]]


class _DuplicateSetting(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently: a
    setting written twice in a config file would take the value further down without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            # scalar keys only: a merge key (<<) may repeat, and an unhashable key is PyYAML's own error
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise _DuplicateSetting(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file is an empty mapping)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config file not found", path, "check the path given to --config") from None
    except IsADirectoryError:
        raise ConfigError("a folder, not a config file", path, "give the YAML file of settings to --config") from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file", path, "give a YAML file of settings to --config") from None
    except PermissionError as error:
        raise ConfigError(f"cannot read the config file: {error.strerror}", path, "check its permissions") from None
    except OSError as error:  # a symbolic-link loop, an I/O error, ...
        raise ConfigError(
            f"cannot read the config file: {error.strerror}", path, "check the path given to --config"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateSetting as duplicate:
        raise ConfigError(
            f"the key {duplicate.key!r} appears twice", f"{path}, line {duplicate.line}", "keep one of them"
        ) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError("malformed YAML: collections nested too deeply", path, "fix the file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else path
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError("malformed YAML", where, f"{problem}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping of setting: value, not a {type(data).__name__}",
            path,
            "write one `setting: value` per line",
        )
    return data


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` (values in YAML syntax) into a mapping."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set expects KEY=VALUE", f"--set {assignment}", "write e.g. --set epsilon=0.1")
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(
                "cannot parse the value as YAML", f"--set {assignment}", "quote it or fix its syntax"
            ) from None
    return overrides


def _type_name(annotation: Any) -> str:
    """``int``, ``list[int]``, ``str | None``: the annotation as it is written."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


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
        if not -(2**63) <= value < 2**63:  # torch and numpy take 64-bit integers
            raise ConfigError(f"setting {name!r} must be a 64-bit integer (below 2^63 in magnitude), got {value!r}")
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
            value the dataclass' ``validate`` method rejects; the message names ``source``.
    """
    return _build_layers(cls, [(source, values)])


def load_config(
    cls: type[T],
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> T:
    """Defaults of ``cls``, replaced by the YAML file at ``path`` (if any), then by ``overrides`` (``--set``), then
    by ``options``: the values set by each named command-line option, e.g. ``{"--dataset": {"dataset": "mnist"}}``.

    An error names the source of the value at fault: the file, ``--set`` or the option.
    """
    layers: list[Layer] = []
    if path is not None:
        layers.append((str(path), read_yaml_mapping(path)))
    if overrides:
        layers.append(("--set", overrides))
    layers += [(option, values) for option, values in (options or {}).items() if values]
    return _build_layers(cls, layers)


def _build_layers(cls: type[T], layers: Sequence[Layer]) -> T:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, layer in layers:
        for key, value in layer.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known settings: {', '.join(known)}"
                raise ConfigError(f"unknown setting {key!r}", source, hint)
            values[key] = value
            origin[key] = source
    coerced = {}
    for key, value in values.items():
        try:
            coerced[key] = _coerce(key, hints[key], value)
        except ConfigError as error:
            raise ConfigError("invalid setting", origin[key], str(error)) from None
    config = cls(**coerced)
    try:
        _validate(config)
    except ConfigError as error:
        raise ConfigError("invalid setting", _first_invalid_source(cls, layers, hints), str(error)) from None
    return config


def _validate(config: Any) -> None:
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()


def _first_invalid_source(cls: type, layers: Sequence[Layer], hints: Mapping[str, Any]) -> str:
    """The source whose values first make the settings invalid, applying the layers in order: the one to blame
    for an error of ``validate``, which names no source (a rule may span settings from several)."""
    values: dict[str, Any] = {}
    for source, layer in layers:
        values.update(layer)
        try:
            _validate(cls(**{key: _coerce(key, hints[key], value) for key, value in values.items()}))
        except ConfigError:
            return source
    return layers[-1][0] if layers else "defaults"


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass, for results files."""
    return dataclasses.asdict(config)


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (for the configs' ``validate`` methods)."""
    if not condition:
        raise ConfigError(message)


def require_step_size(value: float, name: str = "epsilon") -> None:
    """Refuse a split step size below 0 or above :data:`MAX_STEP_SIZE` (for the configs' ``validate`` methods)."""
    require(value >= 0, f"{name} (the split step size) must be >= 0, got {value}")
    require(
        value <= MAX_STEP_SIZE,
        f"{name} (the split step size) must be at most {MAX_STEP_SIZE:g}, got {value:g}: its square, in the "
        "predicted loss change eps^2/2 * index, overflows (a split step is small: 0.01 to 0.1)",
    )


def require_folder_or_none(value: str | None, name: str) -> None:
    """Refuse an empty folder setting (for the configs' ``validate`` methods): ``Path("")`` is the current folder,
    which an empty value does not mean; null is the setting's default place."""
    require(
        value is None or bool(value.strip()), f"{name} must name a folder, or be null for its default, not {value!r}"
    )


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a config dataclass, as ``splitgrow run NAME --help`` lists it."""

    name: str
    type: str
    #: the default in YAML syntax, as ``--set`` takes it
    default: str
    #: the ``#:`` comment above the field and the string below it; empty where the class has neither
    meaning: str


def describe_settings(cls: type) -> list[Setting]:
    """Every setting of a config dataclass in declaration order, with its type, default and meaning."""
    hints = typing.get_type_hints(cls)
    meanings = _field_comments(cls)
    settings = []
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        text = yaml.safe_dump(default, default_flow_style=True, width=1 << 20).removesuffix("...\n").strip()
        settings.append(Setting(field.name, _type_name(hints[field.name]), text, meanings.get(field.name, "")))
    return settings


def _field_comments(cls: type) -> dict[str, str]:
    """The meaning of each field from the class source: the ``#:`` lines right above it and a string literal right
    below it (the two conventions Sphinx reads). Empty when the source is not available."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    (definition,) = [node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)]
    meanings = {}
    for node, following in zip(definition.body, [*definition.body[1:], None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comments: list[str] = []
        line = node.lineno - 2  # the line above, 0-based
        while line >= 0 and lines[line].strip().startswith("#:"):
            comments.insert(0, lines[line].strip()[2:].strip())
            line -= 1
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            comments.append(inspect.cleandoc(following.value.value).replace("\n", " "))
        meanings[node.target.id] = " ".join(comments)
    return meanings
