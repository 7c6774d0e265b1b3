"""A fake Telegram Bot API for the benchmarks (e2e_load.py's telegram shape, chaos.py's
Telegram users), and what a Telegram client of the gateway needs: the update shape, the
secret-token header, the channel set up through the admin API.

The fake lives in the benchmark's process (aiohttp, a free port on 127.0.0.1), so it outlives
every restart of the gateway. It answers `sendMessage` like Telegram and hands each message it
took to `received` (overridden, or the `on_message` callback). It can refuse a share of the
calls the way Telegram does when it is busy (429 with `parameters.retry_after`) or broken
(500), to exercise the channel outbox's retries: a refused call is not taken."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TELEGRAM_SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_PATH = "/v1/channels/telegram/{bot}"


def bot_token() -> str:
    """A token shaped like one from @BotFather (`<digits>:<secret>`)."""
    return f"{random.randrange(10**8, 10**9)}:{secrets.token_urlsafe(30)}"


@dataclass
class Faults:
    """The share of `sendMessage` calls answered 429 (retry_after `retry_after_s`) or 500."""

    share_429: float = 0.0
    share_500: float = 0.0
    retry_after_s: int = 1
    rng: random.Random | None = None

    def pick(self) -> int:
        draw = (self.rng or random).random()
        if draw < self.share_429:
            return 429
        if draw < self.share_429 + self.share_500:
            return 500
        return 200


class FakeBotApi:
    """The Bot API's `sendMessage`, answered like Telegram (faults aside)."""

    def __init__(self, token: str, faults: Faults | None = None,
                 on_message: Callable[[str, str, float], None] | None = None) -> None:
        self.token = token
        self.faults = faults or Faults()
        self.on_message = on_message
        self.sent = 0  # messages taken
        self.refused: dict[int, int] = {429: 0, 500: 0}  # calls refused on purpose, by status
        self._runner: Any = None

    async def start(self) -> str:
        """Serve on a free port; the base URL (the channel's `api_base`)."""
        from aiohttp import web

        app = web.Application()
        app.router.add_post(f"/bot{self.token}/sendMessage", self._send_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def received(self, chat_id: str, text: str, at: float) -> None:
        """A message the fake took (answered 200), with its arrival time (perf_counter)."""
        if self.on_message is not None:
            self.on_message(chat_id, text, at)

    async def _send_message(self, request: Any) -> Any:
        from aiohttp import web

        at = time.perf_counter()
        body = await request.json()
        status = self.faults.pick()
        if status == 429:
            self.refused[429] += 1
            return web.json_response(
                {"ok": False, "error_code": 429,
                 "description": f"Too Many Requests: retry after {self.faults.retry_after_s}",
                 "parameters": {"retry_after": self.faults.retry_after_s}}, status=429)
        if status == 500:
            self.refused[500] += 1
            return web.json_response({"ok": False, "error_code": 500,
                                      "description": "Internal Server Error"}, status=500)
        chat_id, text = str(body.get("chat_id", "")), str(body.get("text", ""))
        self.sent += 1
        self.received(chat_id, text, at)
        return web.json_response({"ok": True, "result": {
            "message_id": self.sent, "date": int(time.time()), "text": text,
            "chat": {"id": int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id,
                     "type": "private"}}})


async def set_up_telegram(base: str, admin_key: str, token: str, api_base: str,
                          secret: str, bot: str = "banking") -> None:
    """The bot's telegram channel, pointed at a fake, through the admin API."""
    import aiohttp

    body = {"bot_token": token, "secret_token": secret, "api_base": api_base}
    async with aiohttp.ClientSession() as session, session.put(
            f"{base}/v1/admin/bots/{bot}/channels/telegram", json=body,
            headers={"Authorization": f"Bearer {admin_key}"}) as response:
        if response.status != 200:
            raise RuntimeError(f"setting the telegram channel: {response.status} "
                               f"{await response.text()}")


def telegram_update(update_id: int, chat_id: int, text: str) -> dict[str, Any]:
    """A text message update (https://core.telegram.org/bots/api#update)."""
    person = {"id": chat_id, "is_bot": False, "first_name": "Bench"}
    return {"update_id": update_id, "message": {
        "message_id": update_id, "date": int(time.time()), "text": text, "from": person,
        "chat": {**person, "type": "private"}}}
