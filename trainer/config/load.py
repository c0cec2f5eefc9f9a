"""A Config from defaults, a YAML file and `key.sub=value` overrides, validated once by the schema
(trainer/config/schema.py); any problem is one ConfigError that names the key, which the CLI prints as one line."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trainer.config.schema import Config
from trainer.config.shipped import resolve_config
from trainer.errors import ConfigError


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false are booleans, so `mixed_precision: no` is the
    string "no" (YAML 1.1 would read no/yes/on/off as booleans)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(  # 1e-3 is a float in YAML 1.2 (1.1 wants a dot: 1.0e-3)
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def merge(values: dict[str, Any], keys: list[str], value: Any) -> None:
    """values[k1][k2]... = value, making the mappings on the way (a value that is not one is replaced)."""
    for key in keys[:-1]:
        if not isinstance(values.get(key), dict):
            values[key] = {}
        values = values[key]
    values[keys[-1]] = value


def from_dict(values: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(values)
    except ValidationError as e:
        raise ConfigError(explain(e.errors()[0])) from None


def read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} not found")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} is not a file")
    try:
        values = load_yaml(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys")
    return values


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file (a path, or a shipped config's name: trainer/config/shipped.py), then
    dotted overrides; validated."""
    values = read_file(resolve_config(path)) if path is not None else {}
    for text in overrides:
        merge(values, *parse_override(text))
    return from_dict(values)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False), encoding="utf-8")


def _field(loc: tuple) -> tuple[str, Any]:
    """The dotted key of an error's location and its field (None for a section), skipping pydantic's tags of the
    branches of a union."""
    model: type[BaseModel] | None = Config
    names, info = [], None
    for part in loc:
        if model is None or part not in model.model_fields:
            break
        names.append(part)
        info = model.model_fields[part]
        annotation = info.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return ".".join(names), info


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _got(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _range(info: Any, ctx: dict) -> str:
    """ "> 0", "in [0, 1)": the field's bounds from its metadata (a union's inner bound from the error)."""
    metadata = info.metadata if info is not None else ()
    bounds = {kind: getattr(m, kind) for m in metadata for kind in BOUNDS if getattr(m, kind, None) is not None}
    bounds = bounds or dict(ctx)
    low = next(((k, v) for k, v in bounds.items() if k in ("gt", "ge")), None)
    high = next(((k, v) for k, v in bounds.items() if k in ("lt", "le")), None)
    if low and high:
        opening, closing = "(" if low[0] == "gt" else "[", ")" if high[0] == "lt" else "]"
        return f"in {opening}{_number(low[1])}, {_number(high[1])}{closing}"
    kind, bound = low or high
    return f"{BOUNDS[kind]} {_number(bound)}"


def _wanted(annotation: Any) -> str:
    """What a field takes, in words: "an integer or auto", "a number or null", "NFC, NFKC or none"."""
    if typing.get_origin(annotation) is typing.Literal:
        words = [str(word) for word in typing.get_args(annotation)]
        return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_wanted(option) for option in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Annotated:
        return _wanted(typing.get_args(annotation)[0])
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def explain(error: dict) -> str:
    """One line for pydantic's error: the key, what it must be, and the value it got."""
    key, info = _field(error["loc"])
    kind, value = error["type"], error.get("input")
    if kind == "combination":
        return error["msg"]
    if kind == "extra_forbidden":
        parent, _ = _field(error["loc"][:-1])
        section = Config if not parent else Config.model_fields[parent].annotation
        known = ", ".join(f"{parent + '.' if parent else ''}{name}" for name in section.model_fields)
        unknown = ".".join(str(part) for part in error["loc"])
        return f"unknown config key {unknown!r} (known: {known})"
    if kind == "model_type":
        return f"config key {key!r}: expected a mapping"
    if kind in RANGE_ERRORS:
        in_a_branch = len(error["loc"]) > len(key.split("."))  # a union's member: its bound is in the error
        bounds = _range(None if in_a_branch else info, error.get("ctx", {}))
        return f"config key {key!r} must be {bounds}, got {_got(value)}"
    if kind == "finite_number":
        return f"config key {key!r} must be a finite number, got {_got(value)}"
    if kind == "string_too_short":
        return f"config key {key!r} must not be empty"
    return f"config key {key!r} must be {_wanted(info.annotation)}, got {_got(value)}"
