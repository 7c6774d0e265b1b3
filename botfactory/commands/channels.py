"""`botfactory channels telegram set-webhook` / `webhook-info`: point a Telegram bot at the
gateway's channel route (docs/channels.md, "Telegram"), and check what Telegram has.

The bot token and secret token come from `--bot-token` / `--secret-token` or, better (they
stay out of the shell history and the process list), the environment variables
TELEGRAM_BOT_TOKEN and TELEGRAM_SECRET_TOKEN."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

TELEGRAM_API = "https://api.telegram.org"
TIMEOUT_S = 15.0
EXIT_USAGE = 2
ALLOWED_UPDATES = ["message", "callback_query"]


class TelegramError(Exception):
    """Telegram refused the call or could not be reached; the message says why."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("channels", help="set up messaging channels "
                                                    "(docs/channels.md)")
    platforms = parser.add_subparsers(dest="platform", required=True, metavar="PLATFORM")
    telegram = platforms.add_parser("telegram", help="Telegram Bot API")
    actions = telegram.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_hook = actions.add_parser("set-webhook", help="point the Telegram bot at the gateway")
    set_hook.add_argument("--url", required=True,
                          help="the public HTTPS URL of the gateway's route, e.g. "
                               "https://chat.example.com/v1/channels/telegram/banking")
    _token_options(set_hook)
    set_hook.add_argument("--secret-token", default=None,
                          help="the channel's secret_token (default: $TELEGRAM_SECRET_TOKEN)")
    set_hook.set_defaults(func=set_webhook)
    info = actions.add_parser("webhook-info", help="what Telegram has: URL, pending updates, "
                                                   "last error")
    _token_options(info)
    info.set_defaults(func=webhook_info)


def _token_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bot-token", default=None,
                        help="the bot token from @BotFather (default: $TELEGRAM_BOT_TOKEN)")
    parser.add_argument("--api-base", default=TELEGRAM_API,
                        help=f"the Bot API's base URL (default {TELEGRAM_API})")


def set_webhook(args: argparse.Namespace) -> int:
    token = args.bot_token or os.environ.get("TELEGRAM_BOT_TOKEN", "")
    secret = args.secret_token or os.environ.get("TELEGRAM_SECRET_TOKEN", "")
    if not token or not secret:
        print("error: give the bot token and the secret token (--bot-token / "
              "--secret-token, or TELEGRAM_BOT_TOKEN / TELEGRAM_SECRET_TOKEN)", file=sys.stderr)
        return EXIT_USAGE
    if not args.url.startswith("https://"):
        print("error: Telegram calls HTTPS URLs only (--url https://...)", file=sys.stderr)
        return EXIT_USAGE
    body = {"url": args.url, "secret_token": secret, "allowed_updates": ALLOWED_UPDATES}
    try:
        answer = call(args.api_base, token, "setWebhook", body)
    except TelegramError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Telegram will send updates to {args.url} ({answer.get('description', 'ok')})")
    return 0


def webhook_info(args: argparse.Namespace) -> int:
    token = args.bot_token or os.environ.get("TELEGRAM_BOT_TOKEN", "")
    if not token:
        print("error: give the bot token (--bot-token or TELEGRAM_BOT_TOKEN)", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = call(args.api_base, token, "getWebhookInfo", {})
    except TelegramError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer.get("result", {}), indent=2, sort_keys=True))
    return 0


def call(api_base: str, token: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """One Bot API call; TelegramError with Telegram's description when it says no."""
    request = urllib.request.Request(
        f"{api_base.rstrip('/')}/bot{token}/{method}", data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise TelegramError(f"Telegram answered HTTP {exc.code}: "
                            f"{_description(exc.read())}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise TelegramError(f"cannot reach {api_base}: {exc}") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise TelegramError(f"Telegram said no: {_description(json.dumps(answer).encode())}")
    return answer


def _description(raw: bytes) -> str:
    try:
        answer = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:200]
    return str(answer.get("description", answer))[:200] if isinstance(answer, dict) else ""
