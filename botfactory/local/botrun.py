"""What the local stack needs to run a given bot (`make run BOT=DIR`, `botfactory run DIR`):
its ports (the defaults, or free ones), its RPA settings overrides and its secrets.

Secrets: a workflow's `{{ secrets.NAME }}` is read by the RPA runner from the environment
variable `BOTFACTORY_SECRET_NAME`. Locally they come from the bot's `secrets.env` (or
`--secrets FILE`): one `NAME=value` per line, `#` comments and blank lines ignored, the value
optionally in quotes. A `BOTFACTORY_SECRET_NAME` already in the environment wins over the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.rpa_runner.secrets import SECRET_ENV_PREFIX

SECRETS_FILE = "secrets.env"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USED = re.compile(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)")


class BotRunError(Exception):
    """The bot cannot be run as asked (a bad secrets file, a bad setting): one line, with the
    file and line where there is one."""


@dataclass(frozen=True)
class Ports:
    """Every port of the local stack (0: choose a free one, see `resolved`)."""

    nats: int = 4222
    nlu: int = 50051
    http: int = 8080
    gateway_grpc: int = 50071
    dialogue_grpc: int = 50061
    rpa_grpc: int = 50081
    bank: int = 8099
    nlu_metrics: int = 9101
    gateway_metrics: int = 9102
    dialogue_metrics: int = 9103
    rpa_metrics: int = 9104
    trainer_metrics: int = 9105

    def resolved(self) -> Ports:
        """These ports with each 0 replaced by a port free right now."""
        values = {f.name: getattr(self, f.name) or free_port() for f in dataclasses.fields(self)}
        return Ports(**values)

    @classmethod
    def free(cls) -> Ports:
        """All ports 0 (each chosen when resolved)."""
        return cls(**{f.name: 0 for f in dataclasses.fields(cls)})


def taken_ports(ports: Ports) -> list[int]:
    """The ports of `ports` that something already listens on (or that cannot be bound)."""
    taken = []
    for field in dataclasses.fields(ports):
        port = getattr(ports, field.name)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                taken.append(port)
    return taken


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_secrets(path: Path) -> dict[str, str]:
    """NAME -> value of a secrets file (see the module docstring); BotRunError names the
    file and line of a bad one."""
    secrets: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BotRunError(f"{path}: cannot read: {exc}") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, value = text.partition("=")
        name = name.strip().removeprefix("export ").strip()
        if not sep or not _NAME.match(name):
            raise BotRunError(f"{path}:{number}: expected NAME=value (NAME: letters, digits, "
                              f"'_'), got {text.split('=')[0]!r}")
        secrets[name.upper()] = _unquoted(value.strip())
    return secrets


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def secret_env(bot_dir: Path, secrets_file: Path | None,
               environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The `BOTFACTORY_SECRET_*` variables for the RPA runner: the file's (`secrets_file`,
    else the bot's secrets.env when there is one), those of the environment winning."""
    environ = os.environ if environ is None else environ
    path = secrets_file if secrets_file is not None else bot_dir / SECRETS_FILE
    if secrets_file is None and not path.is_file():
        found: dict[str, str] = {}
    else:
        found = read_secrets(path)
    env = {f"{SECRET_ENV_PREFIX}{name}": value for name, value in found.items()}
    env.update({k: v for k, v in environ.items() if k.startswith(SECRET_ENV_PREFIX)})
    return env


def missing_secrets(workflows: Any, env: Mapping[str, str]) -> list[str]:
    """The secret names that `workflows` (the bot's, as plain data: `bot.raw["workflows"]`)
    read and `env` does not set, sorted."""
    used = {name.upper() for text in _strings(workflows) for name in _USED.findall(text)}
    return sorted(name for name in used if f"{SECRET_ENV_PREFIX}{name}" not in env)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in _strings(item)]
    return []


def settings_overrides(items: list[str]) -> list[str]:
    """`--setting name=value` items, checked (BotRunError names the bad one)."""
    for item in items:
        name, sep, _ = item.partition("=")
        if not sep or not _NAME.match(name.strip()):
            raise BotRunError(f"--setting {item!r}: expected name=value")
        if "," in item:
            raise BotRunError(f"--setting {item!r}: a value may not hold ',' "
                              "(BOTFACTORY_RPA_SETTINGS is a comma list)")
    return items


def stale_model(bot_dir: Path, model_dir: Path, intents: list[str]) -> str | None:
    """Why the model in `model_dir` no longer fits the bot (None: it does): its intents
    differ from `intents`, or the bot's training data (bot.yml, data/) changed after it."""
    import json

    try:
        trained = json.loads((model_dir / "labels.json").read_text(encoding="utf-8"))["intents"]
        built = (model_dir / "metadata.json").stat().st_mtime
    except (OSError, ValueError, KeyError, TypeError):
        return "the model folder is incomplete"
    if sorted(trained) != sorted(intents):
        added, gone = sorted(set(intents) - set(trained)), sorted(set(trained) - set(intents))
        return f"the intents changed (new: {added or 'none'}, gone: {gone or 'none'})"
    data = [bot_dir / "bot.yml", *(bot_dir / "data").rglob("*.y*ml")]
    changed = sorted(str(path.relative_to(bot_dir)) for path in data
                     if path.is_file() and path.stat().st_mtime > built)
    return f"{', '.join(changed[:3])} changed since it was trained" if changed else None
