"""The interfaces the gateway's HTTP layer is written against.

The bus side (publishing user messages to JetStream, collecting replies, the model registry,
deployed definitions, webhook configuration) implements these; the tests use in-memory fakes
(tests/support/memstores.py).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.common.audit import AuditEvent  # one admin action (docs/security.md, "Audit")
from services.common.errors import NotFound
from services.common.modelstore import Activation, Rollout, VersionInfo
from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.trainings import Options, Training

ALL_BOTS = "*"


class BotNotServed(NotFound):
    """No dialogue replica serves the bot (services/common/served.py): 404, nothing kept."""

    def __init__(self, bot: str) -> None:
        super().__init__(f"no bot {bot!r} is served here: check the bot id (a bot is served "
                         "once a dialogue replica has loaded its definition)")


@dataclass(frozen=True)
class SendResult:
    """What `ConversationHub.send` collected within its wait.

    `complete` is True when every reply of the message's turn is here and so are the results
    of the workflows the turn started (they answer the same message: in_reply_to); False when a
    wait ran out: the message is kept and the remaining replies arrive later (WebSocket,
    webhook, transcript). `duplicate` is True when the message id was seen before in the
    conversation (the message is not processed twice). `handoff`: a human agent has the
    conversation (the bot does not answer; the message was passed to the agent). `nlu`: what
    NLU understood and the flow step (None for a duplicate or a turn without NLU).
    `awaited_workflows`: the turn started workflows and the wait went on for their results.
    """

    replies: list[conversation_pb2.BotMessage] = field(default_factory=list)
    complete: bool = True
    duplicate: bool = False
    handoff: bool = False
    nlu: conversation_pb2.TurnNlu | None = None
    awaited_workflows: bool = False


class ConversationHub(Protocol):
    def check_served(self, bot_id: str) -> None:
        """Raise BotNotServed when no dialogue replica serves `bot_id`."""
        ...

    async def send(self, message: conversation_pb2.UserMessage, *, wait_s: float,
                   workflow_wait_s: float = 0.0,
                   on_reply: Callable[[conversation_pb2.BotMessage], None] | None = None
                   ) -> SendResult:
        """Publish `message` and wait up to `wait_s` seconds for its turn's replies (0: don't
        wait), then up to `workflow_wait_s` more for the results of the workflows it started.
        `on_reply` is called with each reply of the turn as it comes (also after the return,
        for a while)."""
        ...

    async def transcript(self, bot_id: str, conversation_id: str, limit: int,
                         *, with_events: bool = False) -> list[dict[str, Any]]:
        """The last `limit` entries, chronological: {"type": "user"|"bot"|"agent",
        "message_id", "text", "buttons", "at_unix_ms", ...}; with `with_events`, also the
        turns' events {"type": "event", "event", "in_reply_to", "data", "at_unix_ms"}."""
        ...

    def subscribe(self, bot_id: str,
                  conversation_id: str) -> AsyncIterator[conversation_pb2.BotMessage]:
        """Live bot (and agent) messages of one conversation, until the iterator is closed."""
        ...

    def handoff_messages(self, bot_id: str) -> AsyncIterator[conversation_pb2.BotMessage]:
        """Live user messages of the bot's handed-off conversations (role "user"), for agent
        desks, until the iterator is closed."""
        ...

    async def feedback(self, feedback: conversation_pb2.Feedback) -> None:
        ...

    async def handoffs(self, bot_id: str) -> list[dict[str, Any]]:
        """The conversations of `bot_id` currently handed off to a human agent."""
        ...

    async def release(self, bot_id: str, conversation_id: str) -> None:
        """Give a handed-off conversation back to the bot."""
        ...


class Role(enum.StrEnum):
    """What a key may do; each role includes the ones before it.

    `publishable` (keys `pk_...`, docs/security.md) is below client: it is made to sit in web
    pages, so it passes only the widget routes (whose least role it is) and nothing else."""

    PUBLISHABLE = "publishable"
    CLIENT = "client"
    AGENT = "agent"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def includes(self, other: Role) -> bool:
        return self.rank >= other.rank


@dataclass(frozen=True)
class ApiKeyRecord:
    """A stored API key: never the secret, only its keyed hash (see `auth.hash_secret`)."""

    key_id: str
    key_hash: str
    tenant: str
    bots: tuple[str, ...]
    role: Role
    created_at_unix_ms: int
    revoked_at_unix_ms: int | None = None
    description: str = ""
    # The bot environment its conversations use (docs/versions.md); "": the bot's default.
    environment: str = ""

    @property
    def revoked(self) -> bool:
        return self.revoked_at_unix_ms is not None

    def allows_bot(self, bot: str) -> bool:
        return ALL_BOTS in self.bots or bot in self.bots


class KeyStore(Protocol):
    async def create(self, record: ApiKeyRecord) -> None:
        """Store a new key; raises `KeyExists` when its id or hash is taken."""
        ...

    async def get_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        ...

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        ...

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Mark the key revoked now (the record is kept for audit); None when there is no such
        key. Revoking a revoked key returns it unchanged."""
        ...

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        """All keys (of one tenant when given), revoked ones included, oldest first."""
        ...


class BotOwners(Protocol):
    """Which tenant owns each bot (services/gateway/owners.py: KV `bots`, keys `owner.<bot>`).
    A bot without a record belongs to the default tenant (services/gateway/access.py)."""

    async def owner(self, bot: str) -> str | None:
        """The owner record's tenant; None when the bot has none."""
        ...

    async def claim(self, bot: str, tenant: str) -> str:
        """Record `tenant` as the bot's owner unless it has one already (atomic: of two
        concurrent claims one wins); the owner afterwards."""
        ...

    async def set_owner(self, bot: str, tenant: str) -> str | None:
        """Record `tenant` as the bot's owner, replacing any; the previous owner."""
        ...

    async def owners(self) -> dict[str, str]:
        """Every owner record: bot → tenant."""
        ...


class ModelAdmin(Protocol):
    async def activate(self, bot: str, version: str) -> None:
        """Make `version` the bot's active model (services.common.modelstore.activate)."""
        ...

    async def versions(self, bot: str) -> list[str]:
        """The model versions of `bot` in the store."""
        ...


class ModelRollouts(Protocol):
    """Model versions, activation history and rollouts (services.common.modelstore; errors
    are its ModelVersionNotFound / RolloutInvalid / RolloutConflict)."""

    async def versions(self, bot: str) -> list[VersionInfo]:
        ...

    async def active(self, bot: str) -> str | None:
        ...

    async def history(self, bot: str) -> list[Activation]:
        ...

    async def rollout(self, bot: str) -> Rollout | None:
        ...

    async def activate(self, bot: str, version: str, actor: str) -> Activation:
        ...

    async def rollback(self, bot: str, actor: str) -> Activation:
        ...

    async def start_rollout(self, bot: str, rollout: Rollout) -> Rollout:
        ...

    async def promote(self, bot: str, actor: str) -> Activation:
        ...

    async def abort(self, bot: str) -> Rollout:
        ...


class DefinitionStore(Protocol):
    async def put(self, bot: str, files: dict[str, str]) -> int:
        """Store a validated bot definition (relative path → YAML text); returns its revision."""
        ...

    async def exists(self, bot: str) -> bool:
        """Whether the bot has a deployed definition."""
        ...


@dataclass(frozen=True)
class Webhook:
    """Where a bot's messages are POSTed (`services.gateway.webhooks`), and the secret that
    signs them. The secret is stored, never shown back by the API."""

    url: str
    secret: str


class WebhookStore(Protocol):
    async def put(self, bot: str, hook: Webhook) -> None:
        """Set (or replace) the bot's webhook."""
        ...

    async def get(self, bot: str) -> Webhook | None:
        ...

    async def delete(self, bot: str) -> bool:
        """Remove the bot's webhook; False when it had none."""
        ...


class AuditLog(Protocol):
    async def record(self, event: AuditEvent) -> None:
        """Store the event durably (raise when it could not be stored)."""
        ...


class Trainings(Protocol):
    """Training jobs (services/common/trainings.py; errors: its TrainingNotFound,
    TrainingConflict; NotFound for a bot with nothing to train)."""

    async def start(self, bot: str, options: Options, files: dict[str, str] | None,
                    actor: str) -> Training:
        """Queue a training of `files` (None: the bot's deployed definition)."""
        ...

    async def list(self, bot: str, limit: int) -> list[Training]:
        """The bot's trainings, newest first."""
        ...

    async def get(self, bot: str, job_id: str) -> Training:
        ...

    async def cancel(self, bot: str, job_id: str) -> Training:
        ...

    async def logs(self, bot: str, job_id: str) -> str:
        ...
