"""Who may do what: permissions, the roles that grant them, and which tenant owns a bot.

Every route of the gateway declares the one permission it needs (services/gateway/http/
routes.py); the guard checks it in one place, for API keys, people signed in with OIDC and
visitor tokens alike (docs/security.md, "Roles and permissions"):

| permission | what it opens |
|---|---|
| `widget` | the web widget's two routes (a publishable key's only ones) |
| `converse` | the conversation API: send, follow, rate, issue visitor tokens |
| `agent` | the agent desk: transcripts, handoffs, workflow runs (start, approve, cancel) |
| `read` | a bot's administration, read only: models, webhook, channels, review queue, owner |
| `edit` | what a bot says and knows: its definition, review decisions |
| `operate` | running it: model activation and rollouts, webhooks, channels, run retries |
| `admin` | the tenant itself: API keys, moving bots between tenants |

A role is a set of permissions. API keys keep their four roles, each with exactly the routes
it opened before permissions existed (`publishable` < `client` < `agent` < `admin`); people
get `viewer` < `editor` < `operator` < `admin` per tenant from the identity provider, plus
`agent` for the handoff desk.

Bots belong to tenants: KV `bots`, key `owner.<bot>` (services/gateway/owners.py). A bot with
no owner record (a bot folder loaded by the dialogue service, e.g. `make run`, or one deployed
before tenancy) belongs to the default tenant (`BOTFACTORY_GATEWAY_DEFAULT_TENANT`, `default`).
"""

from __future__ import annotations

import enum
import re

from services.common.errors import NotFound

DEFAULT_TENANT = "default"
ALL_TENANTS = "*"
TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Permission(enum.StrEnum):
    WIDGET = "widget"
    CONVERSE = "converse"
    AGENT = "agent"
    READ = "read"
    EDIT = "edit"
    OPERATE = "operate"
    ADMIN = "admin"


EVERYTHING = frozenset(Permission)
_CLIENT = frozenset({Permission.WIDGET, Permission.CONVERSE})
_AGENT = _CLIENT | {Permission.AGENT}
_VIEWER = frozenset({Permission.READ})
_EDITOR = _VIEWER | {Permission.EDIT}
_OPERATOR = _EDITOR | {Permission.OPERATE}

# Every role by name: the API keys' (services/gateway/ports.py Role) and the people's.
ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "publishable": frozenset({Permission.WIDGET}),
    "client": _CLIENT,
    "agent": _AGENT,
    "viewer": _VIEWER,
    "editor": _EDITOR,
    "operator": _OPERATOR,
    "admin": EVERYTHING,
}
# The roles an identity provider may give a person (a tenant's `client` or `publishable` is
# for machines: API keys).
HUMAN_ROLES = ("viewer", "editor", "operator", "agent", "admin")


def permissions_of(roles: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[Permission]:
    """The union of the permissions of `roles` (unknown names grant nothing)."""
    granted: frozenset[Permission] = frozenset()
    for role in roles:
        granted |= ROLE_PERMISSIONS.get(role, frozenset())
    return granted


def least_key_role(permission: Permission) -> str:
    """The least API key role that has `permission` (what the OpenAPI document shows)."""
    for role in ("publishable", "client", "agent", "admin"):
        if permission in ROLE_PERMISSIONS[role]:
            return role
    raise AssertionError(permission)


class BotNotFound(NotFound):
    """A bot out of the caller's reach: another tenant's, one not in its key's bots, or one
    that does not exist. One answer for all three, so it tells nothing about other tenants."""

    def __init__(self, bot: str) -> None:
        super().__init__(f"no bot {bot!r} here")


def bot_tenant(owner: str | None, default_tenant: str = DEFAULT_TENANT) -> str:
    """The tenant a bot belongs to: its owner record's, else the default tenant."""
    return owner if owner is not None else default_tenant
