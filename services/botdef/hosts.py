"""The host allow-list of a bot's `rpa.yml`: which hosts HTTP and browser steps may reach.

A run-time guard against server-side request forgery: the RPA runner asks it before every
request and browser navigation (docs/security.md); workflow validation asks it for literal
URLs at load.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HostAllowList:
    """Hosts HTTP and browser steps may reach: `host` (any port), `host:port`, `*.domain`."""

    entries: tuple[str, ...] = ()

    def allows(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        return self.allows_host(parts.scheme, parts.hostname or "", port)

    def allows_host(self, scheme: str, host: str, port: int | None) -> bool:
        host = normalize_host(host)
        if scheme not in ("http", "https") or not host:
            return False
        port = port or (443 if scheme == "https" else 80)
        return any(_matches(entry, host, port) for entry in self.entries)


def normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host


def _matches(entry: str, host: str, port: int) -> bool:
    pattern, wanted_port = _split_entry(entry)
    if wanted_port and str(port) != wanted_port:
        return False
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == normalize_host(pattern)


def _split_entry(entry: str) -> tuple[str, str]:
    """(host, port or '') of an allow-list entry: `host`, `host:port`, `[v6]`, `[v6]:port`."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, port
    return entry, ""
