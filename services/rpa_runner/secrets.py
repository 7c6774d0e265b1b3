"""Secrets by name: `{{ secrets.NAME }}` reads env `BOTFACTORY_SECRET_<NAME>` (on Kubernetes,
a Secret mounted as environment variables). Resolved only while a step renders its request;
never logged, never stored: every value a run resolved is scrubbed from what it stores."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from services.botdef.expressions import Resolver

SECRET_ENV_PREFIX = "BOTFACTORY_SECRET_"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MASK = "***"
MIN_SCRUB_LENGTH = 4  # shorter values would mask ordinary text


class Secrets(Resolver):
    """The `secrets` scope entry of one run (an expressions.Resolver)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self.used: set[str] = set()

    def resolve(self, name: str) -> str:
        if not NAME.match(name):
            raise KeyError(f"invalid secret name {name!r}")
        value = self._environ.get(f"{SECRET_ENV_PREFIX}{name.upper()}")
        if value is None:
            raise KeyError(f"secret {name!r} is not set (env {SECRET_ENV_PREFIX}{name.upper()})")
        self.used.add(value)
        return value

    def scrub(self, value: Any) -> Any:
        """`value` with every secret this run used replaced by ***."""
        if not self.used:
            return value
        if isinstance(value, str):
            for secret in sorted(self.used, key=len, reverse=True):
                if len(secret) >= MIN_SCRUB_LENGTH:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value

    def __repr__(self) -> str:
        return "Secrets(***)"
