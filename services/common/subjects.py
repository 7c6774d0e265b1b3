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


def check_id(value: str, what: str) -> str:
    """A bot or conversation id must be one subject token: letters, digits, '_' or '-'."""
    if not ID_RE.match(value):
        raise InvalidArgument(f"{what} must be 1-128 characters of letters, digits, '_' or '-'")
    return value


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
