"""`botfactory chat BOT`: chat with a bot in the terminal, over the gateway's HTTP API.

Type a message and press Enter; when the bot offers buttons, type a button's number to press
it. Messages the bot sends later (e.g. when a workflow finishes) arrive over the WebSocket.
`/quit` (or end of input) leaves.

`--debug` shows why the bot did what it did, before each turn's replies: the intent, its
confidence and the entities NLU found, the flow step after the turn (`?include=nlu`), and with
an agent or admin key the turn's events from the transcript (`?include=events`): slots set,
values refused and why (`slot_rejected`: regex, lookup, currency, type, validation), questions
asked again, flows started and ended, fallbacks, workflow results with their error details.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TextIO

import aiohttp

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
QUIT = ("/quit", "/exit")
# How long --debug waits for a turn's events to be stored (they follow the replies).
EVENTS_WAIT_S = 2.0
EVENTS_POLL_S = 0.1
EVENTS_LIMIT = 200


class ChatError(Exception):
    """The gateway refused a request or could not be reached."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("chat", help="chat with a bot through the gateway",
                                   description=__doc__)
    parser.add_argument("bot", help="bot id")
    parser.add_argument("--gateway", default=os.environ.get("BOTFACTORY_GATEWAY_URL",
                                                            DEFAULT_GATEWAY),
                        help="gateway URL (default: $BOTFACTORY_GATEWAY_URL or %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("BOTFACTORY_API_KEY"),
                        help="API key (default: $BOTFACTORY_API_KEY)")
    parser.add_argument("--conversation", default=None,
                        help="conversation id to continue (default: a new one)")
    parser.add_argument("--debug", action="store_true",
                        help="show each turn's intent, entities, flow step and (agent or admin "
                             "key) events: slot changes, refused values and why, ...")
    parser.set_defaults(func=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    if not args.api_key:
        print("error: give --api-key or set BOTFACTORY_API_KEY", file=sys.stderr)
        return 2
    conversation = args.conversation or uuid.uuid4().hex
    try:
        return asyncio.run(_chat(args.gateway, args.api_key, args.bot, conversation,
                                 args.debug))
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _chat(gateway: str, key: str, bot: str, conversation: str, debug: bool) -> int:
    async with ChatClient(gateway, key, bot, conversation, debug=debug) as client:
        print(f"chatting with {bot} (conversation {conversation}); /quit to leave")
        return await chat_loop(client, read_stdin_line, sys.stdout, live=True)


async def read_stdin_line() -> str | None:
    try:
        return await asyncio.to_thread(input, "> ")
    except EOFError:
        return None


class ChatClient:
    """The gateway's conversation API for one conversation; with `debug`, sends ask for the
    NLU result and `events` reads a turn's events."""

    def __init__(self, gateway: str, key: str, bot: str, conversation: str, *,
                 debug: bool = False) -> None:
        self.base = f"{gateway.rstrip('/')}/v1/bots/{bot}/conversations/{conversation}"
        self.headers = {"Authorization": f"Bearer {key}"}
        self.debug = debug
        self._seen_events: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChatClient:
        self._session = aiohttp.ClientSession(headers=self.headers,
                                              timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use ChatClient in `async with`")
        return self._session

    async def send(self, text: str) -> dict[str, Any]:
        """Post a message (retried once with the same id on a network error)."""
        body = {"text": text, "message_id": uuid.uuid4().hex}
        try:
            return await self._post(body)
        except aiohttp.ClientConnectionError:
            return await self._post(body)

    async def events(self, message_id: str) -> list[dict[str, Any]]:
        """The events of the turn of `message_id` (`?include=events`), once the transcript
        has its user message (the events are written with it), and those of the turns no
        user message started (workflow results) not returned before; [] when none came in
        time. ChatError (403) for a key that may not read them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENTS_WAIT_S
        while True:
            entries = await self._transcript_events()
            if any(e.get("message_id") == message_id for e in entries) \
                    or loop.time() >= deadline:
                return self._unseen(entries, message_id)
            await asyncio.sleep(EVENTS_POLL_S)

    def _unseen(self, entries: list[dict[str, Any]], message_id: str) -> list[dict[str, Any]]:
        found = []
        for entry in entries:
            key = json.dumps(entry, sort_keys=True, default=str)
            if entry.get("type") == "event" and entry.get("in_reply_to") in (message_id, "") \
                    and key not in self._seen_events:
                self._seen_events.add(key)
                found.append(entry)
        return found

    async def _transcript_events(self) -> list[dict[str, Any]]:
        url = f"{self.base}/transcript?include=events&limit={EVENTS_LIMIT}"
        try:
            async with self.session.get(url) as response:
                body = await _json_or_error(response)
        except aiohttp.ClientError as exc:
            raise ChatError(f"cannot reach the gateway: {exc}") from exc
        return [e for e in body.get("entries") or () if isinstance(e, dict)]

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base}/messages" + ("?include=nlu" if self.debug else "")
        try:
            async with self.session.post(url, json=body) as response:
                return await _json_or_error(response)
        except aiohttp.ClientConnectionError:
            raise
        except aiohttp.ClientError as exc:
            raise ChatError(f"cannot reach the gateway: {exc}") from exc

    async def live(self) -> AsyncIterator[dict[str, Any]]:
        """Bot messages pushed on the conversation's WebSocket."""
        url = f"{self.base}/ws".replace("http", "ws", 1)
        async with self.session.ws_connect(url, protocols=("botfactory.v1",)) as ws:
            async for frame in ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    data = frame.json()
                    if data.get("type") == "message":
                        yield data


async def _json_or_error(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data: dict[str, Any] = await response.json(content_type=None)
    except ValueError:
        data = {}
    if response.status >= 400:
        raise ChatError(f"{response.status}: {data.get('detail') or response.reason}")
    return data


def describe_nlu(nlu: Mapping[str, Any] | None) -> str:
    """One line: the intent and its confidence, the entities, the flow step after the turn."""
    if not nlu:
        return "[nlu] none (a button payload, or NLU was unavailable)"
    entities = ", ".join(f"{e.get('entity')}={e.get('value')!r}"
                         for e in nlu.get("entities") or ())
    line = f"[nlu] {nlu.get('intent') or '-'} {float(nlu.get('confidence') or 0):.2f}"
    line += " out of scope" if nlu.get("out_of_scope") else ""
    line += f" | entities: {entities}" if entities else ""
    if nlu.get("flow"):
        line += f" | flow {nlu['flow']} at {nlu.get('step') or 'end'}"
    return line


def describe_event(entry: Mapping[str, Any]) -> str:
    """One line for a transcript event entry (`?include=events`)."""
    kind, data = str(entry.get("event", "")), entry.get("data") or {}
    if kind == "slot_set":
        return f"[slot_set] {data.get('slot')} = {data.get('value')!r}"
    if kind == "slot_rejected":
        return (f"[slot_rejected] {data.get('slot')}: {data.get('value')!r} refused "
                f"({data.get('reason')}: {data.get('problem')})")
    details = " ".join(f"{k}={_short(v)}" for k, v in data.items())
    return f"[{kind}] {details}".rstrip()


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


class Printer:
    """Shows bot messages once each (they may come both in a response and on the socket)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: set[str] = set()
        self.buttons: list[dict[str, str]] = []
        self.events_refused = False  # --debug with a key that may not read events

    def note(self, line: str) -> None:
        self.out.write(f"  {line}\n")

    def show(self, reply: dict[str, Any]) -> None:
        message_id = reply.get("message_id", "")
        if message_id and message_id in self.seen:
            return
        self.seen.add(message_id)
        who = "agent" if reply.get("role") == "agent" else "bot"
        self.out.write(f"{who}: {reply.get('text', '')}\n")
        buttons = reply.get("buttons") or []
        if buttons:
            self.buttons = list(buttons)
            choices = "  ".join(f"[{i}] {b['title']}" for i, b in enumerate(buttons, 1))
            self.out.write(f"     {choices}\n")
        self.out.flush()

    def resolve(self, line: str) -> str:
        """A button number stands for that button's payload."""
        if line.isdigit() and 1 <= int(line) <= len(self.buttons):
            button = self.buttons[int(line) - 1]
            return button.get("payload") or button["title"]
        return line


async def chat_loop(client: ChatClient, read_line: Callable[[], Awaitable[str | None]],
                    out: TextIO, *, live: bool = True) -> int:
    printer = Printer(out)
    listener = asyncio.create_task(_listen(client, printer)) if live else None
    try:
        while (line := await read_line()) is not None:
            line = line.strip()
            if line in QUIT:
                break
            if line:
                await _turn(client, printer, printer.resolve(line))
    finally:
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
    return 0


async def _turn(client: ChatClient, printer: Printer, text: str) -> None:
    result = await client.send(text)
    if client.debug:
        await _debug(client, printer, result)
    for reply in result.get("replies", []):
        printer.show(reply)
    if not result.get("complete", True):
        printer.out.write("(the bot is still working; its answer will follow)\n")


async def _debug(client: ChatClient, printer: Printer, result: Mapping[str, Any]) -> None:
    printer.note(describe_nlu(result.get("nlu")))
    if printer.events_refused:
        return
    try:
        events = await client.events(str(result.get("message_id", "")))
    except ChatError as exc:
        if not str(exc).startswith("403"):
            raise
        printer.events_refused = True
        printer.note("(the turn's events need an agent or admin key; NLU only)")
        return
    for entry in events:
        printer.note(describe_event(entry))


async def _listen(client: ChatClient, printer: Printer) -> None:
    try:
        async for reply in client.live():
            printer.show(reply)
    except aiohttp.ClientError:
        printer.out.write("(live messages unavailable: answers come only in responses)\n")
