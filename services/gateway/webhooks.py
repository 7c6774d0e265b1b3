"""Sending one webhook delivery: the payload of a bot message, its signature and the POST with
retries (`WebhookSender`); `verify` is the receiver's side of the signature.

Each POST carries `X-Botfactory-Timestamp: <unix seconds of this attempt>`,
`X-Botfactory-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + raw body, keyed by the
channel's secret>` (the timestamp is signed, so a receiver that rejects old timestamps is safe
from replays; see `verify`) and `X-Botfactory-Delivery: <id>` (the same on every retry, so the
receiver can drop duplicates; the relay passes an id derived from the message). Each attempt is
signed again with its own timestamp. Failed attempts (connection errors, timeouts, 408, 429,
5xx) are retried with exponential backoff and jitter, up to `max_attempts`; other answers are
final. Which messages are sent, and when: `webhook_relay.WebhookRelay` (a JetStream consumer;
docs/gateway.md, "Webhooks").
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.common.logging import get_logger
from services.common.pb.botfactory.v1 import conversation_pb2
from services.gateway.config import GatewayConfig
from services.gateway.http.metrics import GatewayMetrics
from services.gateway.http.wire import reply_json
from services.gateway.ports import Webhook as Webhook  # re-exported: defined with its store

log = get_logger(__name__)

SIGNATURE_HEADER = "X-Botfactory-Signature"
TIMESTAMP_HEADER = "X-Botfactory-Timestamp"
DELIVERY_HEADER = "X-Botfactory-Delivery"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
TOLERANCE_S = 300.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>." + body>`: the timestamp is signed too."""
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, now: float) -> dict[str, str]:
    timestamp = str(int(now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(secret: str, body: bytes, timestamp: str, signature: str, *,
           tolerance_s: float = TOLERANCE_S, now: float | None = None) -> bool:
    """For receivers (and tests): is `timestamp` within `tolerance_s` of `now` (default: the
    clock) and does `signature` match it and `body` under `secret`? An old timestamp is
    refused, so a captured request cannot be replayed later."""
    if not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True)
class WebhookSettings:
    timeout_s: float = 5.0
    max_attempts: int = 5
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    concurrency: int = 8

    @classmethod
    def of(cls, config: GatewayConfig) -> WebhookSettings:
        return cls(config.webhook_timeout_s, config.webhook_max_attempts,
                   config.webhook_backoff_s, config.webhook_backoff_max_s,
                   config.webhook_concurrency)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Backoff before attempt `attempt + 1` (attempt counts from 1): exponential, capped,
        with jitter in [half, full]."""
        full = min(self.backoff_max_s, self.backoff_s * 2.0 ** (attempt - 1))
        return full * (0.5 + 0.5 * rand())


def message_payload(message: conversation_pb2.BotMessage) -> dict[str, Any]:
    """`type` "message" for a bot or agent message; "user_message" for a user's message in a
    handed-off conversation, relayed to the human agent (role "user")."""
    kind = "user_message" if message.role == "user" else "message"
    return {"type": kind, "bot_id": message.bot_id,
            "conversation_id": message.conversation_id, "message": reply_json(message)}


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    retry: bool
    retry_after_s: float | None = None


class WebhookSender:
    """Delivers one payload with retries; `session` is owned by the caller."""

    def __init__(self, session: aiohttp.ClientSession, settings: WebhookSettings,
                 metrics: GatewayMetrics | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.session = session
        self.settings = settings
        self.metrics = metrics
        self._sleep = sleep
        self._clock = clock

    async def deliver(self, hook: Webhook, payload: dict[str, Any], *,
                      delivery_id: str | None = None) -> bool:
        """POST `payload` until it is accepted (2xx) or the attempts run out; True if accepted.

        `delivery_id` (default: a new random one) goes in the body and the delivery header;
        each attempt is signed with its own timestamp."""
        delivery_id = delivery_id or uuid.uuid4().hex
        body = json.dumps({**payload, "delivery_id": delivery_id}, separators=(",", ":")).encode()
        for attempt in range(1, self.settings.max_attempts + 1):
            headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery_id,
                       **signed_headers(hook.secret, body, self._clock())}
            outcome = await self._attempt(hook.url, body, headers)
            if outcome.delivered or not outcome.retry or attempt == self.settings.max_attempts:
                self.count("delivered" if outcome.delivered else "failed")
                return outcome.delivered
            await self._sleep(self._wait(attempt, outcome.retry_after_s))
        return False

    def _wait(self, attempt: int, retry_after_s: float | None) -> float:
        wait = self.settings.delay(attempt)
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.settings.backoff_max_s))
        return wait

    async def _attempt(self, url: str, body: bytes, headers: dict[str, str]) -> _Outcome:
        if self.metrics is not None:
            self.metrics.webhook_attempts.inc()
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with self.session.post(url, data=body, headers=headers, timeout=timeout,
                                         allow_redirects=False) as response:
                return _outcome(response.status, response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("webhook_attempt_failed", url=url, error=type(exc).__name__)
            return _Outcome(delivered=False, retry=True)

    def count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_deliveries.labels(outcome=outcome).inc()


def _outcome(status: int, retry_after: str | None) -> _Outcome:
    if 200 <= status < 300:
        return _Outcome(delivered=True, retry=False)
    seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
    if status not in RETRY_STATUSES:
        log.warning("webhook_rejected", status=status)
    return _Outcome(delivered=False, retry=status in RETRY_STATUSES, retry_after_s=seconds)
