"""A `ChatClient` (botfactory.conversation_tests) for the running stack.

Messages go over the gateway's HTTP API (`POST .../messages`, replies in the response); the
bot's asynchronous messages (a workflow's result, sent once the RPA runner has finished) come
on the conversation's WebSocket; the conversation state (slots, active flow) is read with the
dialogue service's admin gRPC `DialogueAdmin.GetTracker`, since the gateway has no route for
it.

Which asynchronous messages belong to a step: the tracker's `turn` counts the calls the
dialogue has handled (user messages and workflow results). After a step's message, the client
waits until the tracker no longer waits for a workflow and one group of asynchronous messages
has come for every workflow result applied since the step began (a short grace then lets the
rest of the last group arrive).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import grpc

from services.common.pb.botfactory.v1 import dialogue_pb2, dialogue_pb2_grpc

DEFAULT_DIALOGUE = "127.0.0.1:50061"
WS_PROTOCOL = "botfactory.v1"
# How often the tracker is read while waiting; how long the messages of an applied workflow
# result may take to arrive.
POLL_S = 0.2
SETTLE_S = 2.0


class ChatClientError(Exception):
    """The stack refused a request, answered something unexpected or could not be reached."""


@dataclass(frozen=True)
class Reply:
    """A bot message as the gateway's JSON has it."""

    message_id: str
    text: str
    buttons: tuple[Mapping[str, str], ...] = ()
    in_reply_to: str = ""
    role: str = "bot"

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Reply:
        buttons = tuple({"title": str(b.get("title", "")), "payload": str(b.get("payload", ""))}
                        for b in data.get("buttons") or () if isinstance(b, Mapping))
        return cls(message_id=str(data.get("message_id", "")), text=str(data.get("text", "")),
                   buttons=buttons, in_reply_to=str(data.get("in_reply_to") or ""),
                   role=str(data.get("role") or "bot"))

    @property
    def group(self) -> str:
        """The id of the call that caused it (bot message ids are `<call id>:<index>`)."""
        return self.message_id.rpartition(":")[0] or self.message_id


@dataclass(frozen=True)
class TrackerState:
    turn: int
    waiting_workflow: bool
    slots: dict[str, Any]
    active_flow: str | None


class _Socket:
    """The WebSocket of one conversation: its bot messages, queued."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[Reply] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type is not aiohttp.WSMsgType.TEXT:
                continue
            try:
                data = json.loads(frame.data)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("type") == "message":
                self.queue.put_nowait(Reply.of(data))

    async def next(self, timeout_s: float) -> Reply | None:
        """The next message within `timeout_s` (None when none came)."""
        try:
            if timeout_s <= 0:
                return self.queue.get_nowait()
            return await asyncio.wait_for(self.queue.get(), timeout_s)
        except (TimeoutError, asyncio.QueueEmpty):
            if self.reader.done() and self.queue.empty():
                raise ChatClientError("the conversation's WebSocket was closed") from None
            return None

    async def close(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.ws.close()


class HttpChatClient:
    """Talks to `bot` through the gateway at `gateway` with `api_key`; reads trackers from the
    dialogue's admin gRPC at `dialogue` (HOST:PORT). Use it in `async with` (which checks that
    both are reachable and that the key may use the bot)."""

    def __init__(self, gateway: str, api_key: str, bot: str, dialogue: str = DEFAULT_DIALOGUE,
                 *, initial_slots: Mapping[str, Any] | None = None, timeout_s: float = 30.0,
                 workflow_timeout_s: float = 30.0, grace_s: float = 0.3) -> None:
        self.gateway = gateway.rstrip("/")
        self.bot = bot
        self.dialogue = dialogue
        self.initial_slots = dict(initial_slots or {})
        self.timeout_s = timeout_s
        self.workflow_timeout_s = workflow_timeout_s
        self.grace_s = grace_s
        self.started: list[str] = []
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._sockets: dict[str, _Socket] = {}
        self._seen: dict[str, set[str]] = {}

    async def __aenter__(self) -> HttpChatClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._channel = grpc.aio.insecure_channel(self.dialogue)
        self._stub = dialogue_pb2_grpc.DialogueAdminStub(self._channel)
        try:
            await self.check()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        for socket in self._sockets.values():
            await socket.close()
        self._sockets.clear()
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use HttpChatClient in `async with`")
        return self._session

    def _url(self, conversation_id: str, tail: str) -> str:
        return f"{self.gateway}/v1/bots/{self.bot}/conversations/{conversation_id}/{tail}"

    # -- checks -------------------------------------------------------------------------------

    async def check(self) -> None:
        """Fail with a clear message unless the gateway accepts the key for the bot and the
        dialogue service answers."""
        probe = f"probe-{uuid.uuid4().hex[:12]}"
        try:
            # Asking for a visitor token checks the key and its bot, and changes nothing.
            async with self.session.post(self._url(probe, "tokens")) as response:
                await _json_or_error(response)
        except aiohttp.ClientError as exc:
            raise ChatClientError(f"cannot reach the gateway at {self.gateway}: {exc}") from exc
        except ChatClientError as exc:
            raise ChatClientError(f"the gateway at {self.gateway} refused the API key for bot "
                                  f"{self.bot!r}: {exc}") from exc
        try:
            await self._tracker(probe, timeout_s=min(self.timeout_s, 5.0))
        except grpc.aio.AioRpcError as exc:
            raise ChatClientError(
                f"cannot reach the dialogue service at {self.dialogue} (give its admin gRPC "
                f"address with --dialogue HOST:PORT): {exc.code().name}: {exc.details()}"
            ) from exc

    # -- ChatClient ---------------------------------------------------------------------------

    async def start(self, conversation_id: str) -> None:
        """Open the conversation's WebSocket (asynchronous messages); close the previous
        conversations' ones."""
        for socket in self._sockets.values():
            await socket.close()
        self._sockets.clear()
        try:
            ws = await self.session.ws_connect(self._url(conversation_id, "ws"),
                                               protocols=(WS_PROTOCOL,))
        except aiohttp.ClientError as exc:
            raise ChatClientError(f"cannot open the conversation's WebSocket: {exc}") from exc
        self._sockets[conversation_id] = _Socket(ws)
        self._seen[conversation_id] = set()
        self.started.append(conversation_id)

    async def send(self, conversation_id: str, text: str) -> list[Reply]:
        """The replies to `text`, then the messages of the workflows it started."""
        before = await self._state(conversation_id)
        message_id = uuid.uuid4().hex
        body = {"text": text, "message_id": message_id}
        try:
            async with self.session.post(self._url(conversation_id, "messages"),
                                         json=body) as response:
                data = await _json_or_error(response)
        except aiohttp.ClientError as exc:
            raise ChatClientError(f"cannot reach the gateway: {exc}") from exc
        replies = [Reply.of(r) for r in data.get("replies") or () if isinstance(r, Mapping)]
        if not data.get("complete", True):
            replies.extend(await self._late_replies(conversation_id, message_id,
                                                    before.turn + 1, replies))
        self._seen[conversation_id].update(r.message_id for r in replies)
        replies.extend(await self._asynchronous(conversation_id, before.turn + 1, message_id,
                                                replies))
        return replies

    async def state(self, conversation_id: str) -> dict[str, Any]:
        found = await self._state(conversation_id)
        return {"slots": found.slots, "active_flow": found.active_flow}

    # -- waiting for messages -----------------------------------------------------------------

    def _socket(self, conversation_id: str) -> _Socket:
        socket = self._sockets.get(conversation_id)
        if socket is None:
            raise RuntimeError(f"conversation {conversation_id!r} was not started")
        return socket

    async def _late_replies(self, conversation_id: str, message_id: str, my_turn: int,
                            got: list[Reply]) -> list[Reply]:
        """The replies the sync wait missed (answer 202), from the socket: once the tracker
        shows the message applied, those that come within a grace period."""
        socket = self._socket(conversation_id)
        have = {r.message_id for r in got}
        late: list[Reply] = []
        deadline = _now() + self.timeout_s
        applied = False
        while True:
            if not applied:
                applied = (await self._state(conversation_id)).turn >= my_turn
                if not applied and _now() >= deadline:
                    raise ChatClientError(f"the message was not answered within "
                                          f"{self.timeout_s:g}s")
            reply = await socket.next(self.grace_s if applied else POLL_S)
            if applied and (reply is None or _now() >= deadline):
                return late
            if reply is not None and reply.group == message_id \
                    and reply.message_id not in have:
                have.add(reply.message_id)
                late.append(reply)

    async def _asynchronous(self, conversation_id: str, my_turn: int, message_id: str,
                            got: list[Reply]) -> list[Reply]:
        """The messages of the workflow results applied after turn `my_turn` (this step's
        message `message_id`), waiting while a workflow runs; those the sync answer brought
        already (`got`: they answer the step's message too) count."""
        socket = self._socket(conversation_id)
        seen = self._seen[conversation_id]
        found: list[Reply] = []
        groups = {r.group for r in got if r.group != message_id}
        deadline = _now() + self.workflow_timeout_s
        settle: float | None = None
        while True:
            state = await self._state(conversation_id)
            due = max(0, state.turn - my_turn)
            if not state.waiting_workflow:
                if len(groups) >= due:
                    # the rest of the last result's messages may still be on their way
                    found.extend(await self._drain(socket, seen, groups, message_id,
                                               self.grace_s if due else 0.0))
                    return found
                # a result is applied but its messages have not all come (or it had none)
                settle = settle if settle is not None else _now() + SETTLE_S
                if _now() >= settle:
                    return found
            elif _now() >= deadline:
                raise ChatClientError(
                    f"a workflow did not finish within {self.workflow_timeout_s:g}s "
                    "(is the RPA runner running?)")
            reply = await socket.next(POLL_S)
            if reply is not None and _asynchronous(reply, seen, message_id):
                seen.add(reply.message_id)
                groups.add(reply.group)
                found.append(reply)

    async def _drain(self, socket: _Socket, seen: set[str], groups: set[str], message_id: str,
                     grace_s: float) -> list[Reply]:
        found = []
        while (reply := await socket.next(grace_s)) is not None:
            if _asynchronous(reply, seen, message_id):
                seen.add(reply.message_id)
                groups.add(reply.group)
                found.append(reply)
        return found

    # -- the tracker --------------------------------------------------------------------------

    async def _tracker(self, conversation_id: str,
                       timeout_s: float | None = None) -> dialogue_pb2.TrackerView | None:
        request = dialogue_pb2.GetTrackerRequest(bot_id=self.bot,
                                                 conversation_id=conversation_id)
        try:
            view: dialogue_pb2.TrackerView = await self._stub.GetTracker(
                request, timeout=timeout_s or self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return view

    async def _state(self, conversation_id: str) -> TrackerState:
        try:
            view = await self._tracker(conversation_id)
        except grpc.aio.AioRpcError as exc:
            raise ChatClientError(f"the dialogue service at {self.dialogue} failed: "
                                  f"{exc.code().name}: {exc.details()}") from exc
        if view is None:
            return TrackerState(0, False, dict(self.initial_slots), None)
        raw = json.loads(view.tracker_json or "{}")
        slots = {**self.initial_slots, **(raw.get("slots") or {})}
        return TrackerState(turn=int(raw.get("turn", 0)), waiting_workflow=bool(raw.get("wf")),
                            slots=slots, active_flow=view.active_flow or None)


def _asynchronous(reply: Reply, seen: set[str], message_id: str) -> bool:
    """A message of a workflow (its result answers the message whose turn started it, older
    runs' nothing), not taken before."""
    return reply.in_reply_to in ("", message_id) and reply.group != message_id \
        and reply.message_id not in seen


def _now() -> float:
    return asyncio.get_running_loop().time()


async def _json_or_error(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await response.json(content_type=None)
    except ValueError:
        data = None
    body: dict[str, Any] = data if isinstance(data, dict) else {}
    if response.status >= 400:
        raise ChatClientError(f"{response.status} {body.get('detail') or response.reason}")
    return body
