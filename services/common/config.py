"""Service configuration: frozen dataclasses read from `BOTFACTORY_*` environment variables.

Each field `name` of a config class is read from `BOTFACTORY_<SECTION>_<NAME>` (or
`BOTFACTORY_<NAME>` when the class has no section). Values are converted by the field's type
(str, int, float, bool, Path, tuple[str, ...] as a comma list); a bad value fails fast with a
message naming the variable, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

PREFIX = "BOTFACTORY_"
T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


def env_name(field: str, section: str = "") -> str:
    return f"{PREFIX}{section.upper() + '_' if section else ''}{field.upper()}"


def load_config(cls: type[T], section: str = "", environ: Mapping[str, str] | None = None) -> T:
    """Build `cls` (a frozen dataclass) from the environment; defaults fill unset fields."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = env_name(field.name, section)
        if name in env:
            values[field.name] = _convert(name, env[name], hints[field.name])
    try:
        instance = cls(**values)
    except TypeError as exc:
        raise ConfigError(f"configuration incomplete: {exc}") from exc
    validate = getattr(instance, "validate", None)
    if callable(validate):
        validate()
    return instance


def _convert(name: str, raw: str, hint: Any) -> Any:
    target = _unwrap_optional(hint)
    if target is not hint and raw.strip() == "":
        return None
    converter = _CONVERTERS.get(target)
    if converter is None and typing.get_origin(target) is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if converter is None:
        raise ConfigError(f"{name}: unsupported config type {hint!r}")
    try:
        return converter(raw.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from exc


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _to_bool(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError("expected a boolean (true/false, 1/0, yes/no, on/off)")


def _to_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def _to_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


_CONVERTERS: dict[Any, Callable[[str], Any]] = {
    str: str, int: _to_int, float: _to_float, bool: _to_bool, Path: Path,
}


def require(condition: bool, variable: str, message: str) -> None:
    """Raise ConfigError naming `variable` unless `condition` holds (for `validate()`)."""
    if not condition:
        raise ConfigError(f"{variable}: {message}")
