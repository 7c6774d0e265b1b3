"""Conversation subjects and headers on the bus, shared by the gateway and the dialogue.

Order per conversation: the inbound subject space is partitioned by a hash of the
conversation id (`conv.in.<partition>.<bot>.<conversation>`); each partition has one durable
consumer with one message in flight, so a conversation's messages are applied strictly in
order by whichever worker holds the partition's next message.
"""

from __future__ import annotations

import re
import zlib

from services.common.errors import InvalidArgument

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
DEFAULT_PARTITIONS = 16
PARTITIONS_KEY = "config.partitions"

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_CORRELATION = "Correlation-Id"
HEADER_REPLY_INBOX = "Bf-Reply-Inbox"
# The gateway's reply inboxes are `<its inbox prefix>.gw.<replica>.<message id>`.
GATEWAY_REPLIES = "gw"
HEADER_KIND = "Bf-Kind"
# On a workflow's `notify` message: the run that sent it (its replies answer the message whose
# turn started the run).
HEADER_RUN_ID = "Bf-Run-Id"
# On the replies and events of a bot that keeps PII (bot.yml `privacy: {redact_pii: false}`):
# readers such as the transcript leave their text as it is instead of masking it.
HEADER_PII = "Bf-Pii"
PII_KEEP = "keep"

KIND_MESSAGE = "message"
KIND_AGENT = "agent"
KIND_RELEASE = "release"
KIND_WORKFLOW_RESULT = "workflow_result"
# A run the conversation waits for is taking long (JSON {run_id, workflow, elapsed_s}; the
# dialogue says its "still working" response).
KIND_WORKFLOW_PROGRESS = "workflow_progress"
# A message a workflow sends into the conversation (relayed as a bot message).
KIND_NOTIFY = "notify"
# On conv.event.*: the message is a ConversationEvents (all events of one turn), not a single
# ConversationEvent (services/common/events.py).
KIND_EVENTS = "events"
# On the waiting gateway's reply inbox only: the TurnSummary that ends a turn's replies
# (conversation.proto), published to `<reply inbox>.turn` (a gateway older than the summary
# finds no waiter for that subject and ignores it).
KIND_TURN = "turn"
# On conv.out: a user's message relayed to the human agent of a handed-off conversation (a
# BotMessage with role "user"; not a reply: the waiting gateway does not get it).
KIND_RELAYED_USER = "relayed_user"


def check_id(value: str, what: str) -> str:
    """A bot or conversation id must be one subject token: letters, digits, '_' or '-'."""
    if not ID_RE.match(value):
        raise InvalidArgument(f"{what} must be 1-128 characters of letters, digits, '_' or '-'")
    return value


def scoped_id(bot_id: str, conversation_id: str, message_id: str) -> str:
    """The bus-wide key of a message id, which is unique only within its conversation:
    `<bot>.<conversation>.<id>`. Every dedupe store keys by it (the `Nats-Msg-Id` of conv.in,
    conv.out, conv.event and rpa.jobs, the gateway's waiters, reply inboxes and pending
    messages). Bots are globally unique and belong to one tenant, so this scopes by tenant too;
    ids hold no dots (check_id), so the parts can be told apart."""
    return f"{bot_id}.{conversation_id}.{message_id}"


def unscoped_id(msg_id: str) -> str:
    """The conversation's own id in a (possibly) scoped `Nats-Msg-Id`: `m1:e` of
    `banking.c1.m1:e`; an id stored before scoping (`m1:e`) is returned as it is."""
    return msg_id.rsplit(".", 1)[-1]


def partition(conversation_id: str, partitions: int) -> int:
    return zlib.crc32(conversation_id.encode()) % partitions


def inbound(bot_id: str, conversation_id: str, partitions: int) -> str:
    return f"conv.in.{partition(conversation_id, partitions)}.{bot_id}.{conversation_id}"


def inbound_filter(part: int) -> str:
    return f"conv.in.{part}.>"


def outbound(bot_id: str, conversation_id: str) -> str:
    return f"conv.out.{bot_id}.{conversation_id}"


def events(bot_id: str, conversation_id: str) -> str:
    return f"conv.event.{bot_id}.{conversation_id}"


def tracker_key(bot_id: str, conversation_id: str) -> str:
    return f"{bot_id}.{conversation_id}"


def parse_inbound(subject: str) -> tuple[str, str]:
    """(bot, conversation) of an inbound subject."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:2] != ["conv", "in"]:
        raise ValueError(f"not an inbound conversation subject: {subject}")
    return parts[3], parts[4]
