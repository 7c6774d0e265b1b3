"""Wires the gateway from its config: bus, hub, key store, HTTP app, gRPC API, webhook relay,
the RPA runner client, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from services.common.definitions import DefinitionStore
from services.common.grpc_server import GrpcServer, ServerTls
from services.common.logging import get_logger
from services.common.metrics import MetricsServer, start_metrics_server
from services.common.nats import KV_REVIEW, Bus, connect, provision
from services.common.partitions import agreed_partitions
from services.common.reviewqueue import ReviewQueue
from services.common.served import ServedBots
from services.gateway.audit import BusAuditLog
from services.gateway.auth import NatsKeyStore
from services.gateway.backpressure import Backpressure, Limits, dialogue_backlog
from services.gateway.channels import all_channels
from services.gateway.channels.metrics import ChannelMetrics
from services.gateway.channels.outbox import ChannelOutbox, Retries
from services.gateway.channels.secrets import SecretBox
from services.gateway.channels.service import CHANNELS, Channels, secret_names
from services.gateway.channels.store import ChannelStore, ConversationRefs
from services.gateway.config import GatewayConfig
from services.gateway.grpc_api import SERVICE_NAME, ChatServicer, add_chat_service
from services.gateway.http.app import build_authenticator, build_limiter, create_app
from services.gateway.http.bot_versions import BOT_VERSIONS
from services.gateway.http.metrics import GatewayMetrics
from services.gateway.http.model_versions import MODEL_ROLLOUTS
from services.gateway.http.review import REVIEW
from services.gateway.http.trainings import TRAININGS
from services.gateway.hub import BusHub, BusModelAdmin
from services.gateway.oidc import OidcSettings, OidcVerifier
from services.gateway.owners import CachedBotOwners, NatsBotOwners
from services.gateway.rollouts import BusModelRollouts
from services.gateway.runs import GrpcRunsClient
from services.gateway.trainings import BusTrainings
from services.gateway.webhook_relay import FollowedWebhookStore, WebhookRelay
from services.gateway.webhook_store import CachedWebhookStore, NatsWebhookStore
from services.gateway.webhooks import WebhookSender, WebhookSettings

log = get_logger(__name__)


class GatewayServer:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = GatewayMetrics.create()
        self.bus: Bus | None = None
        self.hub: BusHub | None = None
        self.served: ServedBots | None = None
        self.backpressure: Backpressure | None = None
        self.runner: web.AppRunner | None = None
        self.metrics_server: MetricsServer | None = None
        self.grpc: GrpcServer | None = None
        self.chat: ChatServicer | None = None
        # Webhook delivery: one HTTP client session for every delivery, owned here.
        self.webhook_session: aiohttp.ClientSession | None = None
        self.webhooks: WebhookRelay | None = None
        # Replies to messaging-platform conversations (services/gateway/channels).
        self.outbox: ChannelOutbox | None = None
        # The RPA runner's gRPC API, for the workflow run routes.
        self.runs: GrpcRunsClient | None = None
        self.port = 0
        self.grpc_port = 0

    async def start(self) -> None:
        self.bus = await connect(self.config.nats_url, name="gateway")
        await provision(self.bus)
        partitions = await agreed_partitions(self.bus, self.config.partitions)
        self.backpressure = Backpressure(limits(self.config), self.metrics.registry,
                                         dialogue_backlog(self.bus.js, partitions))
        await self.backpressure.start()
        self.served = ServedBots(self.bus)
        await self.served.start()
        self.hub = BusHub(self.bus, partitions, self.backpressure,
                          publish_timeout_s=self.config.publish_timeout_s, served=self.served)
        await self.hub.start()
        keys = await NatsKeyStore.open(self.bus)
        hub, bus = self.hub, self.bus
        # The admin API's store tells this replica's relay at once (the others watch KV).
        # Webhook secrets are sealed at rest with the channels' key when there is one.
        box = SecretBox(self.config.channel_secrets_key) if self.config.channel_secrets_key \
            else None
        webhook_store = CachedWebhookStore(NatsWebhookStore(bus, box))
        self.webhook_session = aiohttp.ClientSession()
        sender = WebhookSender(self.webhook_session, WebhookSettings.of(self.config),
                               self.metrics)
        self.webhooks = WebhookRelay(bus, NatsWebhookStore(bus, box), sender)
        await self.webhooks.start()
        # One Authenticator and RateLimiter for HTTP and gRPC: a key's rate is shared by both.
        # Bots' tenants (services/gateway/owners.py) and people's tokens (OIDC) as well.
        owners = CachedBotOwners(await NatsBotOwners.open(bus), self.config.key_cache_s)
        people = OidcVerifier(OidcSettings.of(self.config)) if self.config.oidc_enabled \
            else None
        auth = build_authenticator(keys, self.config, owners=owners, people=people)
        limiter = build_limiter(self.config)
        if self.config.rpa_address:
            self.runs = GrpcRunsClient(self.config.rpa_address, self.config.rpa_timeout_s)
        app = create_app(hub, keys, self.config, self.metrics, models=BusModelAdmin(bus),
                         definitions=DefinitionStore(bus),
                         webhooks=FollowedWebhookStore(webhook_store, self.webhooks),
                         ready=lambda: hub.connected, auth=auth, limiter=limiter,
                         audit=BusAuditLog(bus), runs=self.runs, owners=owners,
                         people=people)
        app[REVIEW] = ReviewQueue(await bus.kv(KV_REVIEW))
        if self.config.channel_secrets_key:
            app[CHANNELS] = await self._start_channels(bus)
        # versions and rollouts (http/model_versions.py)
        app[MODEL_ROLLOUTS] = BusModelRollouts(bus)
        # training jobs (http/trainings.py, docs/training.md)
        app[TRAININGS] = BusTrainings(bus)
        app[BOT_VERSIONS] = bus  # bot versions and environments (http/bot_versions.py)
        self.runner = web.AppRunner(app, access_log=None,
                                    shutdown_timeout=self.config.shutdown_grace_s)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.http_host, self.config.http_port)
        await site.start()
        self.port = _bound_port(site)
        self.grpc = GrpcServer([SERVICE_NAME], self.config.grpc_host, self.config.grpc_port,
                               tls=public_grpc_tls(self.config))
        self.chat = add_chat_service(self.grpc.server, hub, auth, limiter, self.config,
                                     self.metrics)
        await self.grpc.start()
        self.grpc_port = self.grpc.port
        self.metrics_server = start_metrics_server(self.metrics.registry,
                                                   self.config.metrics_host,
                                                   self.config.metrics_port)
        log.info("gateway_started", http_port=self.port, grpc_port=self.grpc_port,
                 metrics_port=self.metrics_server.port, partitions=partitions)

    async def _start_channels(self, bus: Bus) -> Channels:
        """The messaging channels: their settings, conversation references and outbox."""
        adapters = all_channels()
        assert self.webhook_session is not None
        config = self.config
        channels = Channels(
            adapters, ChannelStore(bus, SecretBox(config.channel_secrets_key),
                                   secret_names(adapters), cache_s=config.key_cache_s),
            ConversationRefs(bus), self.webhook_session,
            ChannelMetrics.create(self.metrics.registry))
        assert self.hub is not None
        self.outbox = channels.outbox = ChannelOutbox(
            bus, adapters, channels.store, channels.refs, self.webhook_session, channels.metrics,
            retries=Retries(config.channel_send_attempts, config.channel_backoff_s,
                            config.channel_backoff_max_s, config.channel_max_retry_after_s),
            ours=self.hub.owns)
        await self.outbox.start()
        return channels

    async def stop(self) -> None:
        """Stop accepting HTTP and gRPC, finish in-flight requests and webhook deliveries,
        drain NATS."""
        if self.chat is not None:
            self.chat.close()
        # HTTP, gRPC and the webhook relay drain their in-flight work at once (each within the
        # grace period; webhook deliveries still running then are redelivered later).
        draining: list[Coroutine[Any, Any, None]] = []
        if self.grpc is not None:
            draining.append(self.grpc.stop(self.config.shutdown_grace_s))
        if self.runner is not None:
            draining.append(self.runner.cleanup())
        if self.webhooks is not None:
            draining.append(self.webhooks.stop(self.config.shutdown_grace_s))
        if self.outbox is not None:
            draining.append(self.outbox.stop(self.config.shutdown_grace_s))
        await asyncio.gather(*draining)
        if self.webhook_session is not None:
            await self.webhook_session.close()
        if self.runs is not None:
            await self.runs.close()
        if self.backpressure is not None:
            await self.backpressure.stop()
        if self.hub is not None:
            await self.hub.stop()
        if self.served is not None:
            await self.served.stop()
        if self.bus is not None:
            await self.bus.drain()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        log.info("gateway_stopped")


def limits(config: GatewayConfig) -> Limits:
    return Limits(max_pending=config.max_pending, max_pending_per_bot=config.max_pending_per_bot,
                  max_backlog=config.max_backlog, backlog_check_s=config.backlog_check_s,
                  pending_expiry_s=config.pending_expiry_s,
                  retry_after_s=config.overload_retry_after_s)


def public_grpc_tls(config: GatewayConfig) -> ServerTls | None:
    """The public gRPC API's TLS (None: the internal BOTFACTORY_GRPC_TLS_* setting)."""
    if config.grpc_tls_cert is None or config.grpc_tls_key is None:
        return None
    return ServerTls(config.grpc_tls_cert, config.grpc_tls_key, config.grpc_tls_client_ca)


def _bound_port(site: web.TCPSite) -> int:
    server: Any = site._server  # aiohttp keeps the asyncio server here
    return int(server.sockets[0].getsockname()[1])
