"""`botfactory chat BOT`: chat with a bot in the terminal, over the gateway's HTTP API.

Type a message and press Enter; when the bot offers buttons, type a button's number to press
it. Messages the bot sends later (e.g. when a workflow finishes) arrive over the WebSocket.
`/quit` (or end of input) leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, TextIO

import aiohttp

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
QUIT = ("/quit", "/exit")


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
    parser.set_defaults(func=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    if not args.api_key:
        print("error: give --api-key or set BOTFACTORY_API_KEY", file=sys.stderr)
        return 2
    conversation = args.conversation or uuid.uuid4().hex
    try:
        return asyncio.run(_chat(args.gateway, args.api_key, args.bot, conversation))
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _chat(gateway: str, key: str, bot: str, conversation: str) -> int:
    async with ChatClient(gateway, key, bot, conversation) as client:
        print(f"chatting with {bot} (conversation {conversation}); /quit to leave")
        return await chat_loop(client, read_stdin_line, sys.stdout, live=True)


async def read_stdin_line() -> str | None:
    try:
        return await asyncio.to_thread(input, "> ")
    except EOFError:
        return None


class ChatClient:
    """The gateway's conversation API for one conversation."""

    def __init__(self, gateway: str, key: str, bot: str, conversation: str) -> None:
        self.base = f"{gateway.rstrip('/')}/v1/bots/{bot}/conversations/{conversation}"
        self.headers = {"Authorization": f"Bearer {key}"}
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

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.session.post(f"{self.base}/messages", json=body) as response:
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


class Printer:
    """Shows bot messages once each (they may come both in a response and on the socket)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: set[str] = set()
        self.buttons: list[dict[str, str]] = []

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
    for reply in result.get("replies", []):
        printer.show(reply)
    if not result.get("complete", True):
        printer.out.write("(the bot is still working; its answer will follow)\n")


async def _listen(client: ChatClient, printer: Printer) -> None:
    try:
        async for reply in client.live():
            printer.show(reply)
    except aiohttp.ClientError:
        printer.out.write("(live messages unavailable: answers come only in responses)\n")
