"""The gateway's public gRPC API (`botfactory.v1.ChatService`, protos/botfactory/v1/gateway.proto):
the HTTP conversation operations plus a bidirectional `Converse` stream.

Authentication, rate limits and validation are those of the HTTP API, with the same
Authenticator and RateLimiter objects: the key comes in the metadata `authorization: Bearer
<key>`; a rate-limited call ends with RESOURCE_EXHAUSTED and the trailing metadata
`retry-after` (seconds); so does UNAVAILABLE when the gateway sheds load or the bus is down
(services/gateway/backpressure.py), which a client retries with the same message id.
Errors go through `grpc_errors`: a client never sees a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.common.errors import DomainError, InvalidArgument, Unavailable, grpc_errors
from services.common.logging import get_logger
from services.common.pb.botfactory.v1 import conversation_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.auth import Authenticator, Principal
from services.gateway.backpressure import RetryLater
from services.gateway.config import GatewayConfig
from services.gateway.http import conversations
from services.gateway.http.bodies import FEEDBACK, MESSAGE, check_path_id, grpc_fields
from services.gateway.http.metrics import GatewayMetrics
from services.gateway.ports import ConversationHub, Role
from services.gateway.ratelimit import RateLimited, RateLimiter

log = get_logger(__name__)

SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
AUTHORIZATION = "authorization"
RETRY_AFTER = "retry-after"
CHANNEL = "grpc"
# Kept from a call's deadline for answering after the wait for replies.
DEADLINE_MARGIN_S = 0.2
STREAM_QUEUE = 256
FLUSH_TIMEOUT_S = 5.0
SHUTTING_DOWN = "the gateway is shutting down; reconnect"


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The key of the `authorization: Bearer <key>` metadata entry (None when absent)."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == AUTHORIZATION and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


def peer_address(context: grpc.aio.ServicerContext, header: str) -> str:
    """The caller's address (for the failed-authentication limit): the last entry of the
    `header` metadata when configured (behind a proxy), else the peer (`ipv4:1.2.3.4:5`)."""
    if header:
        for key, value in context.invocation_metadata() or ():
            if key.lower() == header.lower() and isinstance(value, str) and value.strip():
                return value.split(",")[-1].strip()[:64]
    peer = str(context.peer() or "unknown")
    host = peer.split(":", 1)[-1].rsplit(":", 1)[0]
    return host.strip("[]") or peer


@contextlib.contextmanager
def retry_hint(context: grpc.aio.ServicerContext) -> Iterator[None]:
    """A retriable refusal (overload, bus down) ends the call UNAVAILABLE with the trailing
    metadata `retry-after` (seconds)."""
    try:
        yield
    except RetryLater as exc:
        context.set_trailing_metadata(((RETRY_AFTER, exc.retry_after_header),))
        raise


def user_message(request: gateway_pb2.SendMessageRequest | gateway_pb2.ConverseRequest,
                 bot: str, conversation: str, config: GatewayConfig
                 ) -> conversation_pb2.UserMessage:
    """The UserMessage a request asks to send: the HTTP API's body (`bodies.MESSAGE`), so the
    same INVALID_ARGUMENT messages as its 400s."""
    return conversations.user_message(grpc_fields(request, MESSAGE), bot, conversation,
                                      config=config, channel=CHANNEL)


def transcript_entry(entry: dict[str, object]) -> gateway_pb2.TranscriptEntry:
    raw_buttons = entry.get("buttons")
    buttons = raw_buttons if isinstance(raw_buttons, list) else []
    at = entry.get("at_unix_ms")
    return gateway_pb2.TranscriptEntry(
        type=str(entry.get("type") or ""), message_id=str(entry.get("message_id") or ""),
        in_reply_to=str(entry.get("in_reply_to") or ""), text=str(entry.get("text") or ""),
        buttons=[conversation_pb2.Button(title=str(b.get("title", "")),
                                         payload=str(b.get("payload", "")))
                 for b in buttons if isinstance(b, dict)],
        citations=_citations(entry.get("citations")),
        at_unix_ms=at if isinstance(at, int) else 0)


def _citations(raw: object) -> list[conversation_pb2.Citation]:
    """The citations of a transcript entry (its JSON form: hub.py)."""
    items = raw if isinstance(raw, list) else []
    return [conversation_pb2.Citation(
        title=str(c.get("title", "")), document=str(c.get("document", "")),
        heading_path=[str(h) for h in c.get("heading_path") or []], url=str(c.get("url", "")))
        for c in items if isinstance(c, dict)]


class ChatServicer(gateway_pb2_grpc.ChatServiceServicer):
    def __init__(self, hub: ConversationHub, authenticator: Authenticator, limiter: RateLimiter,
                 config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.hub = hub
        self.auth = authenticator
        self.limiter = limiter
        self.config = config
        self.metrics = metrics
        self.closing = asyncio.Event()

    def close(self) -> None:
        """End the open Converse calls (UNAVAILABLE: reconnect); call before the server stops."""
        self.closing.set()

    # -- admission -----------------------------------------------------------------------------

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        """401 then 429, as HTTP does before looking at the request."""
        principal = await self.auth.authenticate(
            bearer_token(context), peer_address(context, self.config.client_ip_header))
        try:
            self.limiter.check(principal.key_id)
        except RateLimited as exc:
            self.metrics.rate_limited.inc()
            context.set_trailing_metadata(((RETRY_AFTER, exc.retry_after_header),))
            raise
        return principal

    async def _admit(self, context: grpc.aio.ServicerContext, bot: str, conversation: str,
                     role: Role = Role.CLIENT) -> Principal:
        """UNAUTHENTICATED → RESOURCE_EXHAUSTED → INVALID_ARGUMENT (ids) → PERMISSION_DENIED
        → NOT_FOUND (a bot out of reach: another tenant's), as HTTP. The conversation's
        visitor token is accepted as well as a key with `role`."""
        principal = await self._authenticate(context)
        check_path_id(bot, "bot")
        check_path_id(conversation, "conversation")
        await self.auth.admit(principal, role, bot, conversation=conversation)
        return principal

    def _wait_s(self, context: grpc.aio.ServicerContext) -> float:
        """The sync wait, shortened to end before the call's deadline."""
        remaining = context.time_remaining()
        if remaining is None:
            return self.config.sync_wait_s
        return max(0.001, min(self.config.sync_wait_s, float(remaining) - DEADLINE_MARGIN_S))

    def _workflow_wait_s(self, context: grpc.aio.ServicerContext, wait_s: float) -> float:
        """The workflow wait, within what the call's deadline leaves after the sync wait."""
        if wait_s <= 0:
            return 0.0
        remaining = context.time_remaining()
        if remaining is None:
            return self.config.workflow_wait_s
        left = float(remaining) - DEADLINE_MARGIN_S - wait_s
        return max(0.0, min(self.config.workflow_wait_s, left))

    # -- unary calls ---------------------------------------------------------------------------

    @grpc_errors
    async def SendMessage(self, request: gateway_pb2.SendMessageRequest,
                          context: grpc.aio.ServicerContext) -> gateway_pb2.SendMessageResponse:
        principal = await self._admit(context, request.bot_id, request.conversation_id)
        message = user_message(request, request.bot_id, request.conversation_id, self.config)
        message.environment = principal.environment
        wait_s = 0.0 if request.no_wait else self._wait_s(context)
        with retry_hint(context):
            result = await self.hub.send(message, wait_s=wait_s,
                                         workflow_wait_s=self._workflow_wait_s(context, wait_s))
        return gateway_pb2.SendMessageResponse(
            message_id=message.message_id, replies=result.replies, complete=result.complete,
            duplicate=result.duplicate, handoff=result.handoff,
            nlu=result.nlu if request.include_nlu else None)

    @grpc_errors
    async def GetTranscript(self, request: gateway_pb2.GetTranscriptRequest,
                            context: grpc.aio.ServicerContext
                            ) -> gateway_pb2.GetTranscriptResponse:
        # Reading a conversation: its visitor token or an agent key (a client key only sends).
        await self._admit(context, request.bot_id, request.conversation_id, Role.AGENT)
        maximum = self.config.transcript_max_limit
        limit = conversations.check_limit(
            request.limit or min(conversations.DEFAULT_TRANSCRIPT_LIMIT, maximum), maximum)
        with retry_hint(context):
            entries = await self.hub.transcript(request.bot_id, request.conversation_id, limit)
        return gateway_pb2.GetTranscriptResponse(
            bot_id=request.bot_id, conversation_id=request.conversation_id,
            entries=[transcript_entry(e) for e in entries])

    @grpc_errors
    async def SendFeedback(self, request: gateway_pb2.SendFeedbackRequest,
                           context: grpc.aio.ServicerContext
                           ) -> gateway_pb2.SendFeedbackResponse:
        feedback = request.feedback
        await self._admit(context, feedback.bot_id, feedback.conversation_id)
        check_path_id(feedback.message_id, "message_id")
        FEEDBACK.read(grpc_fields(feedback, FEEDBACK), self.config)
        with retry_hint(context):
            await conversations.check_rated_message(self.hub, feedback.bot_id,
                                                    feedback.conversation_id,
                                                    feedback.message_id)
            await self.hub.feedback(conversation_pb2.Feedback(
                bot_id=feedback.bot_id, conversation_id=feedback.conversation_id,
                message_id=feedback.message_id, rating=feedback.rating,
                comment=feedback.comment))
        self.metrics.feedback.labels(bot=feedback.bot_id,
                                     rating="up" if feedback.rating == 1 else "down").inc()
        return gateway_pb2.SendFeedbackResponse(message_id=feedback.message_id,
                                                rating=feedback.rating)

    # -- the stream ----------------------------------------------------------------------------

    @grpc_errors
    async def Converse(  # type: ignore[override]  # a reader/writer handler, not a generator
            self, request_iterator: AsyncIterator[gateway_pb2.ConverseRequest],
            context: grpc.aio.ServicerContext) -> None:
        token = bearer_token(context)
        principal = await self._authenticate(context)
        first = await self._first(request_iterator)
        if first is None:
            return
        check_path_id(first.bot_id, "bot")
        check_path_id(first.conversation_id, "conversation")
        await self.auth.admit(principal, Role.CLIENT, first.bot_id)
        session = _Session(self, context, token, first.bot_id, first.conversation_id)
        await session.run(first, request_iterator)

    async def _first(self, requests: AsyncIterator[gateway_pb2.ConverseRequest]
                     ) -> gateway_pb2.ConverseRequest | None:
        """The stream's first request (None: the client closed its side at once)."""
        reading = asyncio.ensure_future(anext(requests, None))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait((reading, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            waiting = not reading.done()
            if waiting:
                reading.cancel()
        if waiting:
            raise Unavailable(SHUTTING_DOWN)
        return reading.result()


@dataclass
class _Session:
    """One Converse call: a reader (requests → publish → ack/error), a pump (the
    conversation's bot messages) and one writer, so that events are written one at a time."""

    service: ChatServicer
    context: grpc.aio.ServicerContext
    token: str | None
    bot: str
    conversation: str
    out: asyncio.Queue[gateway_pb2.ConverseResponse | None] = field(
        default_factory=lambda: asyncio.Queue(STREAM_QUEUE))
    # Messages of this stream whose last reply has not come yet.
    due: set[str] = field(default_factory=set)
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, first: gateway_pb2.ConverseRequest,
                  requests: AsyncIterator[gateway_pb2.ConverseRequest]) -> None:
        self.settled.set()
        replies = self.service.hub.subscribe(self.bot, self.conversation)
        pump = asyncio.create_task(self._pump(replies))
        # One turn of the loop lets the pump subscribe (it queues its SUB on the bus connection)
        # before the reader publishes the first message: no reply can be missed.
        await asyncio.sleep(0)
        writer = asyncio.create_task(self._write())
        reader = asyncio.create_task(self._read(first, requests))
        closing = asyncio.create_task(self.service.closing.wait())
        tasks = (pump, writer, reader, closing)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if closing in done:
                raise Unavailable(SHUTTING_DOWN)
            if reader in done:
                failure = reader.exception()
                if failure is not None:
                    await self._flush(writer)
                    raise failure
                await self._deliver_due(pump, writer, closing)
            elif pump in done:
                log.warning("converse_pump_ended", error=repr(pump.exception()))
                raise Unavailable("live messages are unavailable; reconnect")
            if not writer.done():
                await self._flush(writer)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.shield(_close(tasks, replies))

    async def _deliver_due(self, pump: asyncio.Task[None], writer: asyncio.Task[None],
                           closing: asyncio.Task[bool]) -> None:
        """The client closed its side: wait (bounded) for the replies still due."""
        settled = asyncio.create_task(self.settled.wait())
        try:
            await asyncio.wait((settled, pump, writer, closing),
                               timeout=self.service.config.sync_wait_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()

    async def _flush(self, writer: asyncio.Task[None]) -> None:
        """Let the writer write what is queued, then stop (bounded: the client may not read)."""
        with contextlib.suppress(asyncio.QueueFull):
            self.out.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer), FLUSH_TIMEOUT_S)

    async def _write(self) -> None:
        while (event := await self.out.get()) is not None:
            try:
                await self.context.write(event)
            except Exception as exc:  # the call is over (client gone, cancelled)
                log.info("converse_write_failed", error=repr(exc))
                return

    async def _pump(self, replies: AsyncIterator[conversation_pb2.BotMessage]) -> None:
        async for reply in replies:
            if reply.last and reply.in_reply_to in self.due:
                self.due.discard(reply.in_reply_to)
                if not self.due:
                    self.settled.set()
            await self.out.put(gateway_pb2.ConverseResponse(message=reply))

    async def _read(self, first: gateway_pb2.ConverseRequest,
                    requests: AsyncIterator[gateway_pb2.ConverseRequest]) -> None:
        if first.text or first.message_id:  # else: it only opens the stream
            await self.out.put(await self._answer(first))
        async for request in requests:
            await self.out.put(await self._answer(request))

    async def _answer(self, request: gateway_pb2.ConverseRequest) -> gateway_pb2.ConverseResponse:
        """The ack or error event for one request. A key that stopped working or a request for
        another conversation raises: it ends the call."""
        service = self.service
        principal = await service.auth.authenticate(self.token)
        await service.auth.admit(principal, Role.CLIENT, self.bot)
        if request.bot_id not in ("", self.bot) or \
                request.conversation_id not in ("", self.conversation):
            raise InvalidArgument("a Converse call carries messages of one bot and conversation: "
                                  f"{self.bot!r}, {self.conversation!r}")
        try:
            service.limiter.check(principal.key_id)
            message = user_message(request, self.bot, self.conversation, service.config)
            message.environment = principal.environment
            return await self._send(message)
        except RateLimited as exc:
            service.metrics.rate_limited.inc()
            return _error(request.message_id, exc, retry_after_s=int(exc.retry_after_header))
        except RetryLater as exc:  # UNAVAILABLE: retry with the same message id
            return _error(exc.message_id or request.message_id, exc,
                          retry_after_s=int(exc.retry_after_header))
        except DomainError as exc:
            return _error(request.message_id, exc)
        except Exception:
            log.exception("converse_message_failed")
            return _error(request.message_id, DomainError("internal error"))

    async def _send(self, message: conversation_pb2.UserMessage) -> gateway_pb2.ConverseResponse:
        self.due.add(message.message_id)
        self.settled.clear()
        try:
            result = await self.service.hub.send(message, wait_s=0.0)
        except BaseException:
            self._forget(message.message_id)
            raise
        if result.duplicate:  # answered before: no new replies will come
            self._forget(message.message_id)
        return gateway_pb2.ConverseResponse(ack=gateway_pb2.MessageAck(
            message_id=message.message_id, duplicate=result.duplicate))

    def _forget(self, message_id: str) -> None:
        self.due.discard(message_id)
        if not self.due:
            self.settled.set()


def _error(message_id: str, exc: DomainError, *,
           retry_after_s: int = 0) -> gateway_pb2.ConverseResponse:
    code = exc.grpc_code
    number = code.value[0] if isinstance(code.value, tuple) else 13
    return gateway_pb2.ConverseResponse(error=gateway_pb2.ConverseError(
        message_id=message_id, code=int(number), status=code.name, detail=str(exc),
        retry_after_s=retry_after_s))


async def _close(tasks: Sequence[asyncio.Future[Any]],
                 replies: AsyncIterator[conversation_pb2.BotMessage]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    closer = getattr(replies, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()


def add_chat_service(server: grpc.aio.Server, hub: ConversationHub,
                     authenticator: Authenticator, limiter: RateLimiter, config: GatewayConfig,
                     metrics: GatewayMetrics) -> ChatServicer:
    """Register ChatService on `server`; returns the servicer (call its `close()` on shutdown
    to end open Converse streams)."""
    servicer = ChatServicer(hub, authenticator, limiter, config, metrics)
    gateway_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)
    return servicer
