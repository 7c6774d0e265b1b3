"""Create the platform's JetStream streams, KV buckets and object store, and set their replicas.

Runs as the gateway's init container (deploy/k8s/base/gateway/deployment.yaml; mounted from
ConfigMap jetstream-setup-script, run by the gateway image's Python). The services create the
same assets at start (services.common.nats.provision) but with one replica each: on a 3-node
cluster this raises every asset to JETSTREAM_REPLICAS (3), so losing one NATS server loses no
data and no availability. Idempotent and safe to run concurrently (each gateway pod runs it):
an asset already at the wanted replica count is left alone.

Environment: NATS_URL (with credentials), JETSTREAM_REPLICAS (default 3), CONNECT_TIMEOUT_S
(default 120: how long NATS may take to form its cluster; until then, connecting, the JetStream
API, creating the assets and setting their replicas are retried: a cluster that has just formed
answers JetStream requests only once it has elected its meta leader). Exit 0 when every asset
has the replica count, 1 otherwise. One JSON line per event on stdout.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors

from services.common.nats import (
    KV_BUCKETS,
    OBJ_MODELS,
    STREAMS,
    Bus,
    ProvisioningRefused,
    provision,
)

RETRY_S = 2.0
T = TypeVar("T")
# What a JetStream that is not ready yet answers: nothing (a timeout), 503, or no responders.
NOT_READY = (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
             nats.js.errors.ServiceUnavailableError, ProvisioningRefused)


def log(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "service": "jetstream-setup", **fields}), flush=True)


def stream_names() -> list[str]:
    """The JetStream streams behind every asset: streams, KV buckets (KV_<bucket>) and the
    object store (OBJ_<bucket>)."""
    names = [config.name for config in STREAMS if config.name is not None]
    names += [f"KV_{bucket}" for bucket, _ in KV_BUCKETS]
    names.append(f"OBJ_{OBJ_MODELS}")
    return names


async def connect_once(url: str, timeout_s: float) -> Bus:
    """One connection attempt that fails instead of retrying (a wrong password must end the
    init container with an error, not hang it); the caller retries."""
    nc = await asyncio.wait_for(
        nats.connect(servers=[u.strip() for u in url.split(",")], name="jetstream-setup",
                     connect_timeout=min(timeout_s, 5.0), allow_reconnect=False,
                     error_cb=_ignore_error),
        timeout=timeout_s)
    return Bus(nc=nc, js=nc.jetstream())


async def _ignore_error(exc: Exception) -> None:
    """Errors surface as exceptions of connect_once; no default traceback print."""


async def retrying(attempt: Callable[[], Awaitable[T]], deadline: float, event: str,
                   retry_on: tuple[type[BaseException], ...]) -> T:
    """`attempt()`, again every RETRY_S seconds while it fails with `retry_on` and the
    deadline (time.monotonic()) has not passed; each failure is logged as `event`."""
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            if time.monotonic() >= deadline:
                raise
            log(event, error=repr(exc))
            await asyncio.sleep(RETRY_S)


async def connect_with_retry(url: str, deadline: float) -> Bus:
    """Connected, retrying until `deadline`: the cluster may still be starting."""
    return await retrying(
        lambda: connect_once(url, max(1.0, min(10.0, deadline - time.monotonic()))),
        deadline, "nats_not_ready", (Exception,))


async def set_replicas(bus: Bus, name: str, replicas: int) -> bool:
    """Set stream `name` to `replicas`; True when it had to change."""
    info = await bus.js.stream_info(name)
    config = info.config
    if config.num_replicas == replicas:
        return False
    config.num_replicas = replicas
    await bus.js.update_stream(config)
    return True


async def run(url: str, replicas: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    bus = await connect_with_retry(url, deadline)
    failed = 0
    try:
        await retrying(bus.js.account_info, deadline, "jetstream_not_ready", NOT_READY)
        await retrying(lambda: provision(bus), deadline, "jetstream_not_ready", NOT_READY)
        for name in stream_names():
            try:
                changed = await retrying(functools.partial(set_replicas, bus, name, replicas),
                                         deadline, "jetstream_not_ready", NOT_READY)
            except Exception as exc:
                failed += 1
                log("replicas_failed", stream=name, replicas=replicas, error=repr(exc))
                continue
            log("replicas_set" if changed else "replicas_ok", stream=name, replicas=replicas)
    finally:
        await bus.drain()
    return 1 if failed else 0


def main() -> int:
    url = os.environ.get("NATS_URL", "")
    if not url:
        log("config_error", error="NATS_URL is required")
        return 2
    try:
        replicas = int(os.environ.get("JETSTREAM_REPLICAS", "3"))
        timeout_s = float(os.environ.get("CONNECT_TIMEOUT_S", "120"))
    except ValueError as exc:
        log("config_error", error=str(exc))
        return 2
    if not 1 <= replicas <= 5:
        log("config_error", error=f"JETSTREAM_REPLICAS must be 1..5, got {replicas}")
        return 2
    try:
        return asyncio.run(run(url, replicas, timeout_s))
    except Exception as exc:
        log("setup_failed", error=repr(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
