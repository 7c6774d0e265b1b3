"""gRPC DialogueAdmin: read and reset conversation trackers."""

from __future__ import annotations

import json

import grpc

from services.common.errors import NotFound, grpc_errors
from services.common.pb.botfactory.v1 import dialogue_pb2, dialogue_pb2_grpc
from services.common.subjects import check_id, tracker_key
from services.dialogue.store import TrackerStore

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class DialogueAdminServicer(dialogue_pb2_grpc.DialogueAdminServicer):
    def __init__(self, store: TrackerStore) -> None:
        self._store = store

    @grpc_errors
    async def GetTracker(self, request: dialogue_pb2.GetTrackerRequest,
                         context: grpc.aio.ServicerContext) -> dialogue_pb2.TrackerView:
        key = _key(request.bot_id, request.conversation_id)
        record = await self._store.load(key)
        if record is None:
            raise NotFound(f"no conversation {request.conversation_id!r} for bot "
                           f"{request.bot_id!r}")
        tracker = record.tracker
        return dialogue_pb2.TrackerView(
            bot_id=request.bot_id, conversation_id=request.conversation_id,
            tracker_json=tracker.to_json().decode(), revision=record.revision or 0,
            slots={k: json.dumps(v) if not isinstance(v, str) else v
                   for k, v in tracker.slots.items() if v is not None},
            active_flow=tracker.active_flow or "", handed_off=tracker.handed_off)

    @grpc_errors
    async def ListConversations(
            self, request: dialogue_pb2.ListConversationsRequest,
            context: grpc.aio.ServicerContext) -> dialogue_pb2.ListConversationsResponse:
        check_id(request.bot_id, "bot_id")
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        keys = await self._store.keys(f"{request.bot_id}.", limit)
        return dialogue_pb2.ListConversationsResponse(
            conversation_ids=[k.split(".", 1)[1] for k in keys])

    @grpc_errors
    async def ResetConversation(
            self, request: dialogue_pb2.ResetConversationRequest,
            context: grpc.aio.ServicerContext) -> dialogue_pb2.ResetConversationResponse:
        key = _key(request.bot_id, request.conversation_id)
        if await self._store.load(key) is None:
            raise NotFound(f"no conversation {request.conversation_id!r}")
        await self._store.delete(key)
        return dialogue_pb2.ResetConversationResponse()


def _key(bot_id: str, conversation_id: str) -> str:
    return tracker_key(check_id(bot_id, "bot_id"), check_id(conversation_id, "conversation_id"))
