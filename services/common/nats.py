"""NATS / JetStream connection and idempotent provisioning of the platform's streams and buckets.

KV `trackers`, `rpa_runs`, `bots`, `handoffs`, `review`, `apikeys`, `trainings`; object store
`models`; streams `CONV_IN` (inbound conversation messages, work queue), `CONV` (bot messages
and conversation events), `RPA` and `TRAIN` (work queues), `EVENTS` (model published,
training progress, feedback, audit). Who reads and writes
each: docs/architecture.md, "Subjects, streams and buckets".
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from services.common.config import load_config, require
from services.common.logging import get_logger

log = get_logger(__name__)

DRAIN_TIMEOUT_S = 5.0
KV_TRACKERS = "trackers"
KV_RPA_RUNS = "rpa_runs"
KV_BOTS = "bots"
KV_HANDOFFS = "handoffs"
KV_REVIEW = "review"  # the annotation inbox (services/common/reviewqueue.py)
KV_APIKEYS = "apikeys"  # the gateway's API key records (services/gateway/auth.py)
KV_CHANNELS = "channels"  # channel conversations' addresses (services/gateway/channels)
KV_CHANNEL_SENT = "channel_sent"  # replies a channel's platform took (gateway/channels/outbox)
KV_SERVED = "served"  # which dialogue replicas serve which bots (services/common/served.py)
KV_TRAININGS = "trainings"  # training jobs: records, inputs, logs (services/common/trainings.py)
KV_BOT_VERSIONS = "bot_versions"  # bot versions and environments (services/common/botversions)
OBJ_MODELS = "models"

STREAM_CONV, STREAM_CONV_IN = "CONV", "CONV_IN"
INBOUND_SUBJECTS = "conv.in.>"
# Inbound conversation messages are a work queue: a message is removed once the dialogue acks
# it (the raw user text is stored only while it waits or is being handled). The replies and
# events stay in CONV, the conversation's record.
CONV_CONFIG = StreamConfig(name=STREAM_CONV, subjects=["conv.out.>", "conv.event.>"],
                           retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                           duplicate_window=120.0)
CONV_IN_CONFIG = StreamConfig(name=STREAM_CONV_IN, subjects=[INBOUND_SUBJECTS],
                              retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                              duplicate_window=120.0)
OLD_CONV_SUBJECTS = "conv.>"  # before CONV_IN, CONV held the inbound messages too
STREAMS = (
    CONV_CONFIG,
    CONV_IN_CONFIG,
    StreamConfig(name="RPA", subjects=["rpa.jobs.>"], retention=RetentionPolicy.WORK_QUEUE,
                 storage=StorageType.FILE, duplicate_window=120.0),
    # Training jobs (services/common/trainings.py): a work queue the trainers share.
    StreamConfig(name="TRAIN", subjects=["train.jobs.>"], retention=RetentionPolicy.WORK_QUEUE,
                 storage=StorageType.FILE, duplicate_window=120.0),
    StreamConfig(name="EVENTS", subjects=["events.>"], retention=RetentionPolicy.LIMITS,
                 storage=StorageType.FILE, duplicate_window=120.0),
)
KV_BUCKETS = ((KV_TRACKERS, 1), (KV_RPA_RUNS, 1), (KV_BOTS, 5), (KV_HANDOFFS, 1),
              (KV_REVIEW, 1), (KV_APIKEYS, 5), (KV_SERVED, 1),
              (KV_CHANNELS, 1), (KV_CHANNEL_SENT, 1), (KV_TRAININGS, 1), (KV_BOT_VERSIONS, 1))
SERVED_TTL_S = 30.0
"""How long a served-bot announcement lives (services/common/served.py)."""
CHANNEL_SENT_TTL_S = 24 * 3600.0
"""How long the channel outbox remembers a reply the platform took (a redelivery later than
this would be sent again)."""
TRAININGS_TTL_S = 30 * 24 * 3600.0
"""How long a training job's record, input and log are kept after their last write."""
KV_MAX_AGE_S = {KV_SERVED: SERVED_TTL_S, KV_CHANNEL_SENT: CHANNEL_SENT_TTL_S,
                KV_TRAININGS: TRAININGS_TTL_S}
"""Buckets whose entries expire (seconds after their last write)."""
TLS_SECTION = "nats"


@dataclass(frozen=True)
class NatsTlsConfig:
    """TLS to NATS, from `BOTFACTORY_NATS_TLS_*` (shared by every service of a host or pod).

    `tls_ca`: verify the server against this CA (PEM) instead of the system roots; `tls_cert` /
    `tls_key`: a client certificate, for a server that verifies clients. None of them set and a
    `nats://` URL: plain TCP; a `tls://` URL: TLS with the system roots.
    """

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def validate(self) -> None:
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            require(path is None or path.is_file(), f"BOTFACTORY_NATS_{name.upper()}",
                    f"no such file: {path}")
        require((self.tls_cert is None) == (self.tls_key is None),
                "BOTFACTORY_NATS_TLS_CERT", "needs BOTFACTORY_NATS_TLS_KEY (and the reverse)")

    @property
    def enabled(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=str(self.tls_ca) if self.tls_ca is not None else None)
        if self.tls_cert is not None and self.tls_key is not None:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return context


class ProvisioningRefused(ConnectionError):
    """An asset is missing and this identity may not create it."""


DEFAULT_INBOX_PREFIX = "_INBOX"


def inbox_prefix(user: str | None) -> str:
    """Where replies to a NATS user's requests go: `_INBOX_<user>` for a named user, so the
    server can let each identity read its own replies only (services/common/natsauth.py)."""
    if not user:
        return DEFAULT_INBOX_PREFIX
    return f"{DEFAULT_INBOX_PREFIX}_{re.sub(r'[^A-Za-z0-9_-]', '_', user)}"


_CREDENTIALS = re.compile(r"(://[^/@\s:]+):[^/@\s]+@")


def without_passwords(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` URL masked, for
    printing commands and URLs."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def url_user(url: str) -> str | None:
    """The user named in the first server URL (`nats://user:password@host`), if any."""
    return urlsplit(url.split(",")[0].strip()).username or None


@dataclass
class Bus:
    """A connected client with its JetStream context; `inbox` is its reply-subject prefix."""

    nc: Client
    js: JetStreamContext
    inbox: str = DEFAULT_INBOX_PREFIX
    _buckets: dict[str, KeyValue] = field(default_factory=dict, repr=False)

    async def kv(self, bucket: str) -> KeyValue:
        """The bucket's handle, looked up once (a lookup is a stream-info round trip to the
        server; the handle holds only names, so it stays valid across reconnects)."""
        found = self._buckets.get(bucket)
        if found is None:
            found = self._buckets[bucket] = await self.js.key_value(bucket)
        return found

    async def object_store(self, bucket: str) -> ObjectStore:
        return await self.js.object_store(bucket)

    async def drain(self) -> None:
        """Flush and unsubscribe gracefully; close anyway when that takes too long."""
        if self.nc.is_connected:
            try:
                await self.nc.drain()
            except (nats.errors.DrainTimeoutError, nats.errors.ConnectionClosedError,
                    TimeoutError) as exc:
                log.warning("nats_drain_incomplete", error=repr(exc))
        if not self.nc.is_closed:
            await self.nc.close()


async def connect(url: str, name: str, *, connect_timeout: float = 5.0,
                  tls: NatsTlsConfig | None = None) -> Bus:
    """Connect (retrying in the background after the first success) and return the bus.

    Credentials come in the URL (`nats://user:password@host:4222`); TLS from `tls` (default:
    the `BOTFACTORY_NATS_TLS_*` variables, NatsTlsConfig).
    """
    tls = tls if tls is not None else load_config(NatsTlsConfig, TLS_SECTION)
    inbox = inbox_prefix(url_user(url))
    connecting = nats.connect(
        servers=[u.strip() for u in url.split(",")],
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        drain_timeout=DRAIN_TIMEOUT_S,
        error_cb=_on_error,
        disconnected_cb=_on_disconnected,
        reconnected_cb=_on_reconnected,
        tls=tls.context() if tls.enabled else None,
        inbox_prefix=inbox.encode(),
    )
    # Reconnects are unlimited once connected; the first connection fails fast (a wrong
    # address or credentials must stop a service at start, not hang it).
    try:
        nc = await asyncio.wait_for(connecting, timeout=connect_timeout * 3)
    except TimeoutError:
        raise ConnectionError(f"cannot connect to NATS at {url} "
                              f"within {connect_timeout * 3:.0f}s") from None
    return Bus(nc=nc, js=nc.jetstream(), inbox=inbox)


async def _on_error(exc: Exception) -> None:
    # One structured line instead of the client's default traceback print.
    log.warning("nats_error", error=repr(exc))


async def _on_disconnected() -> None:
    log.warning("nats_disconnected")


async def _on_reconnected() -> None:
    log.info("nats_reconnected")


async def provision(bus: Bus) -> None:
    """Create the streams, KV buckets and object store if missing; safe to run concurrently.

    With NATS authentication only the admin identity may create them (services/common/
    natsauth.py); a service finds them made and only checks: a missing one stops it with
    ProvisioningRefused instead of waiting for a reply the server never sends.
    """
    try:
        await migrate_inbound(bus.js)
        for config in STREAMS:
            await _ensure_stream(bus.js, config)
        for bucket, history in KV_BUCKETS:
            await _ensure_kv(bus.js, bucket, history, KV_MAX_AGE_S.get(bucket))
        await _ensure_object_store(bus.js, OBJ_MODELS)
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise ProvisioningRefused(
            "a JetStream stream or bucket is missing and this NATS identity may not create it "
            "(or JetStream is not answering): provision as the admin identity first "
            "(docs/security.md, 'NATS identities')") from exc


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream_created", stream=config.name)


async def migrate_inbound(js: JetStreamContext) -> int:
    """From the layout where CONV also held `conv.in.>`: narrow CONV to replies and events,
    create CONV_IN and move the inbound messages not handled yet into it (with their message
    ids, so the dialogue still applies each once). Returns how many moved; 0 when there is
    nothing to migrate. Run by the admin identity (provision). Every step is idempotent and
    the need is judged from what CONV still holds, so a migration interrupted after narrowing
    CONV finishes on the next run."""
    try:
        info = await js.stream_info(STREAM_CONV, subjects_filter=INBOUND_SUBJECTS)
    except NotFoundError:
        return 0
    old_layout = OLD_CONV_SUBJECTS in (info.config.subjects or [])
    if not old_layout and not info.state.subjects:
        return 0
    for name in await _consumer_names(js, STREAM_CONV):  # the old dialogue-p<N> consumers
        if name.startswith("dialogue-p"):
            await js.delete_consumer(STREAM_CONV, name)
    if old_layout:
        info.config.subjects = list(CONV_CONFIG.subjects or [])
        await js.update_stream(info.config)
    await _ensure_stream(js, CONV_IN_CONFIG)
    moved = await _move_inbound(js)
    log.info("stream_migrated", stream=STREAM_CONV, moved_to=STREAM_CONV_IN, messages=moved)
    return moved


async def _consumer_names(js: JetStreamContext, stream: str) -> list[str]:
    names: list[str] = []
    while page := await js.consumers_info(stream, offset=len(names)):
        names.extend(str(c.name) for c in page)
    return names


async def _move_inbound(js: JetStreamContext) -> int:
    moved, seq = 0, 1
    while True:
        try:
            raw = await js.get_msg(STREAM_CONV, seq=seq, subject=INBOUND_SUBJECTS, next=True)
        except NotFoundError:
            break
        assert raw.subject is not None and raw.seq is not None
        await js.publish(raw.subject, raw.data or b"", headers=raw.headers)
        moved, seq = moved + 1, raw.seq + 1
    await js.purge_stream(STREAM_CONV, subject=INBOUND_SUBJECTS)
    return moved


async def _ensure_kv(js: JetStreamContext, bucket: str, history: int,
                     ttl_s: float | None = None) -> None:
    try:
        await js.key_value(bucket)
    except BucketNotFoundError:
        await js.create_key_value(bucket=bucket, history=history, ttl=ttl_s)
        log.info("kv_created", bucket=bucket)


async def _ensure_object_store(js: JetStreamContext, bucket: str) -> None:
    try:
        await js.object_store(bucket)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(bucket=bucket)
        log.info("object_store_created", bucket=bucket)
