"""The local nats-server's configuration: users and permissions from
services/common/natsauth.py, with passwords derived from one random admin password.

Each service's password is HMAC-SHA256(admin password, user name): the local stack and the
tests keep one secret (the admin password, under the state dir) and hand every service a URL
with its own identity (`service_url`). Knowing a service's password reveals nothing of the
admin's. Kubernetes uses independent passwords from Secret nats-credentials instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.common.natsauth import ADMIN, Identity, authorization_block, literal_password


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key (PEM); `ca`: verify client certificates against it."""

    cert: Path
    key: Path
    ca: Path | None = None


def new_admin_password() -> str:
    return secrets.token_hex(24)


def derive_password(admin_password: str, user: str) -> str:
    if user == ADMIN:
        return admin_password
    return hmac.new(admin_password.encode(), user.encode(), hashlib.sha256).hexdigest()[:48]


def with_user(url: str, user: str, password: str) -> str:
    """`url` (one or a comma list of nats:// URLs) with `user:password@` in each."""
    out = []
    for one in (u.strip() for u in url.split(",")):
        parts = urlsplit(one)
        host = parts.netloc.rsplit("@", 1)[-1]
        out.append(urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}")))
    return ",".join(out)


def service_url(admin_url: str, user: str) -> str:
    """The URL for `user` derived from an admin URL (`nats://admin:<password>@host:port`);
    a URL without the admin's credentials (a server without auth) is returned as it is."""
    first = urlsplit(admin_url.split(",")[0].strip())
    if first.username != ADMIN or not first.password:
        return admin_url
    return with_user(admin_url, user, derive_password(first.password, user))


def server_conf(admin_password: str) -> str:
    """The users and their permissions, as a local nats-server config."""

    def password(ident: Identity) -> str:
        return literal_password(derive_password(admin_password, ident.user))

    return authorization_block(password)


def tls_block(tls: TlsFiles) -> str:
    lines = ["tls {", f'  cert_file: "{tls.cert}"', f'  key_file: "{tls.key}"']
    if tls.ca is not None:
        lines += [f'  ca_file: "{tls.ca}"', "  verify: true"]
    lines += ["  timeout: 2", "}"]
    return "\n".join(lines) + "\n"
