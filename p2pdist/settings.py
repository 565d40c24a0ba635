"""One settings loader for the agent and the tracker: defaults < TOML file < environment < flags.

The settings themselves are frozen pydantic models (``p2pdist.config.AgentConfig``,
``tracker.config.TrackerConfig``): types, bounds and cross-field rules are declared on the fields,
and a model built in code (``Limits(upload_slots=3)``) is checked exactly like a loaded one.
pydantic-settings reads the environment (prefix, nested tables as ``<PREFIX><TABLE>_<KEY>``, any
case); this module layers the sources and turns a validation failure into one ``ConfigError`` that
names the setting, the value and where the value came from (file, environment variable or flag),
which is what an operator needs to fix it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_settings import EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

from .errors import P2pdistError


class ConfigError(P2pdistError, ValueError):
    """A configuration value that cannot be used; the message says which, why and from where."""


class Settings(BaseModel):
    """Base of every settings model: immutable, and an unknown key is an error, not ignored (a typo
    in a setting must not silently leave the default in force)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1: `upload_slots = true` must be an error, not one slot.
        if isinstance(value, bool) and info.field_name and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError("expected a number, not true/false")
        return value


M = TypeVar("M", bound=BaseModel)
Layer = dict[str, Any]


class _MappingEnv(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``, so a
    caller (and a test) decides which environment the settings come from."""

    def __init__(self, model: type[BaseModel], environ: Mapping[str, str], prefix: str) -> None:
        self._environ = dict(environ)
        # Nested tables as PREFIX_TABLE_KEY: split once after the table name (field names contain '_').
        super().__init__(model, case_sensitive=False, env_prefix=prefix,  # type: ignore[arg-type]
                         env_nested_delimiter="_", env_nested_max_split=1)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def read_toml(path: str | Path, table: str | None = None) -> Layer:
    """The settings in a TOML file; with ``table``, that table when the file has one (so one file can
    hold the settings of several programs), else the top level."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: pass the path of a TOML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    if table and isinstance(data.get(table), dict):
        data = data[table]
    return data


def env_layer(model: type[BaseModel], environ: Mapping[str, str], prefix: str) -> Layer:
    """Settings from variables named ``<prefix><FIELD>`` and ``<prefix><TABLE>_<FIELD>``."""
    return _MappingEnv(model, environ, prefix)()


def _normal_keys(value: Any) -> Any:
    """TOML and flags may spell keys with dashes (``upload-slots``); fields use underscores."""
    if isinstance(value, dict):
        return {str(k).replace("-", "_"): _normal_keys(v) for k, v in value.items()}
    return value


def _merge(base: Layer, top: Layer) -> Layer:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _lookup(layer: Any, loc: tuple[Any, ...]) -> bool:
    for part in loc:
        if isinstance(layer, list | tuple) and isinstance(part, int) and part < len(layer):
            layer = layer[part]
            continue
        if not (isinstance(layer, dict) and part in layer):
            return False
        layer = layer[part]
    return True


@dataclass(frozen=True)
class Source:
    """One layer of settings and how to name where a value in it came from."""

    label: str  # a file's path, "the environment" or "the command line"
    values: Layer
    env_prefix: str = ""  # for the environment: name the variable, not just "the environment"
    flags: bool = False  # for the command line: name the flag

    def where(self, loc: tuple[Any, ...]) -> str:
        if self.env_prefix:
            return self.env_prefix + "_".join(str(p) for p in loc).upper()
        if self.flags:
            return "--" + "-".join(str(p) for p in loc).replace("_", "-")
        return self.label


def explain(error: ValidationError, sources: list[Source], model: type[BaseModel]) -> ConfigError:
    """One message per problem: the setting's dotted name, what is wrong, the value given and the
    source that gave it (the highest-precedence source holding that key)."""
    lines = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        name = ".".join(str(p) for p in loc) or "settings"
        where = next((s.where(loc) for s in reversed(sources) if loc and _lookup(s.values, loc)), "")
        origin = f" (from {where})" if where else ""
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent: Any = model
            for part in loc[:-1]:
                field = parent.model_fields.get(part) if isinstance(part, str) else None
                parent = field.annotation if field is not None else None
                if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
                    break
            known = ", ".join(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else ""
            lines.append(f"unknown setting {name!r}{origin}" + (f"; known: {known}" if known else ""))
        elif loc and "input" in err and not isinstance(err["input"], dict):
            lines.append(f"{name}: {msg}, got {err['input']!r}{origin}")
        else:
            lines.append(f"{name}: {msg}" if loc else msg)
    return ConfigError("; ".join(lines))


def load_settings(model: type[M], sources: list[Source],
                  prepare: Callable[[Layer], Layer] | None = None) -> M:
    """Validate ``model`` from ``sources``, lowest precedence first. ``prepare`` rewrites each
    source's values before they are layered (for keys that stand for several fields, such as the
    tracker's ``listen``), so a later source overrides exactly what it names."""
    layers = []
    for source in sources:
        values = _normal_keys(source.values)
        layers.append(dataclasses.replace(source, values=prepare(values) if prepare else values))
    merged: Layer = {}
    for layer in layers:
        merged = _merge(merged, layer.values)
    try:
        return model.model_validate(merged)
    except ValidationError as e:
        raise explain(e, layers, model) from None


def replace(settings: M, **changes: Any) -> M:
    """A copy of ``settings`` with ``changes``, validated like a loaded one (``model_copy`` is not)."""
    model = type(settings)
    try:
        return model.model_validate({**settings.model_dump(), **changes})
    except ValidationError as e:
        raise explain(e, [Source("the changes", changes)], model) from None
