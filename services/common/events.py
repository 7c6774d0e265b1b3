"""Conversation events on `conv.event.<bot>.<conversation>`: the dialogue writes all the events
of one turn as one `ConversationEvents` message (header `Bf-Kind: events`); other writers (the
gateway's feedback) write a single `ConversationEvent`. Every reader decodes both with
`decode_events`, in the order they happened."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.common.pb.botfactory.v1 import conversation_pb2
from services.common.subjects import HEADER_KIND, KIND_EVENTS


def encode_events(events: Sequence[conversation_pb2.ConversationEvent]) -> bytes:
    """The body of one turn's events message (send it with `events_headers`)."""
    return conversation_pb2.ConversationEvents(events=events).SerializeToString()


def is_batch(headers: Mapping[str, str] | None) -> bool:
    return (headers or {}).get(HEADER_KIND) == KIND_EVENTS


def decode_events(data: bytes,
                  headers: Mapping[str, str] | None) -> list[conversation_pb2.ConversationEvent]:
    """The events of one message; raises `google.protobuf.message.DecodeError` on garbage."""
    if is_batch(headers):
        return list(conversation_pb2.ConversationEvents.FromString(data).events)
    return [conversation_pb2.ConversationEvent.FromString(data)]
