"""Typed, strict configuration models: YAML in, dotted overrides, helpful errors out."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from lmforge.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


OPERATIONAL = "operational"


def operational(default: Any, **constraints: Any) -> Any:
    """A field that changes how a stage runs (logging cadence, checkpoint cadence, failure budget,
    CPUs, batch sizes used only for throughput), not what it computes (up to float rounding):
    left out of recipes."""
    return Field(default, json_schema_extra={OPERATIONAL: True}, **constraints)


def choice(default: Any, names: Callable[[], Iterable[str]], **constraints: Any) -> Any:
    """A field naming a registry entry: its JSON schema (the Prefect UI's run form) offers `names()` as
    the choices; the model's own validator still checks the value, with its helpful message."""

    def add_choices(schema: dict[str, Any]) -> None:
        schema["enum"] = list(names())

    return Field(default, json_schema_extra=add_choices, **constraints)


def is_operational(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(OPERATIONAL))


def identity_view(value: Any) -> Any:
    """`value` as JSON-able data with every operational field of every nested config left out:
    the part of a config that shapes a stage's output, which is what its recipe hashes."""
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return {
            name: identity_view(getattr(value, name))
            for name, field in fields.items()
            if not is_operational(field)
        }
    if isinstance(value, dict):
        return {key: identity_view(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [identity_view(item) for item in value]
    return to_jsonable_python(value)


def full_view(value: Any) -> Any:
    """`value` as JSON-able data, operational fields included (what the manifest records)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {key: full_view(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [full_view(item) for item in value]
    return to_jsonable_python(value)


def load_config(cls: type[M], path: str | Path, overrides: Sequence[str] = ()) -> M:
    """Read a YAML file, apply `a.b=c` overrides, and validate it into `cls`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    for override in overrides:
        apply_override(raw, override)
    return validate_config(cls, raw, source=str(path))


def validate_config(cls: type[M], raw: dict[str, Any], source: str = "config") -> M:
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(cls, err, source)) from None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply one `--set a.b.c=value` override; the value is parsed as YAML (so 3 is an int)."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {override!r}: expected KEY.PATH=VALUE")
    parts = key.split(".")
    node: Any = raw
    for index, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(part, parts[: index + 1], len(node))]
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise ConfigError(f"--set {override!r}: {'.'.join(parts[: index + 1])} is not a section")
    parsed = yaml.safe_load(value) if value else ""
    if isinstance(node, list):
        node[_list_index(parts[-1], parts, len(node))] = parsed
    else:
        node[parts[-1]] = parsed


def _list_index(part: str, parts: list[str], length: int) -> int:
    if not part.isdigit() or int(part) >= length:
        raise ConfigError(f"--set: {'.'.join(parts)}: expected a list index below {length}")
    return int(part)


def format_validation_error(cls: type[BaseModel], err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in err.errors():
        loc = [part for part in error["loc"] if not _is_union_tag(part)]
        dotted = ".".join(str(part) for part in loc) or "<root>"
        if error["type"] == "extra_forbidden":
            valid = _valid_keys(cls, list(error["loc"][:-1]))
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"  unknown key {dotted!r}{hint} (valid keys here: {', '.join(valid)})")
        elif error["type"] == "missing":
            lines.append(f"  missing required key {dotted!r}")
        else:
            got = error.get("input")
            shown = repr(got) if not isinstance(got, dict) else "a mapping"
            lines.append(f"  {dotted}: {error['msg']} (got {shown})")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # Pydantic inserts the discriminator value or class name into union locations.
    return isinstance(part, str) and (part.startswith("function-") or part[:1].isupper())


def _valid_keys(cls: type[BaseModel], loc: list[Any]) -> list[str]:
    """Field names of the model at `loc` below `cls`, following lists and tagged unions."""
    candidates: list[type[BaseModel]] = [cls]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [model for model in candidates if model.__name__ == part]
        if tagged:  # a union tag (class name) in the location picks the member
            candidates = tagged
            continue
        owner = next((model for model in candidates if part in model.model_fields), None)
        if owner is None:
            break
        candidates = _models_in(owner.model_fields[part].annotation) or candidates
    return sorted(candidates[0].model_fields) if candidates else []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found.extend(_models_in(arg))
    return found
