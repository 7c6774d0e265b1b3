"""Bus.kv looks each bucket up once: a lookup is a stream-info round trip to the server, which
every KV read or write of the hot paths (channels, dialogue, gateway) paid before."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.nats import Bus


class CountingJetStream:
    def __init__(self) -> None:
        self.lookups: list[str] = []

    async def key_value(self, bucket: str) -> Any:
        self.lookups.append(bucket)
        if bucket == "missing":
            raise LookupError("no such bucket")
        return object()


async def test_each_bucket_is_looked_up_once_and_a_failed_lookup_is_not_kept() -> None:
    js = CountingJetStream()
    bus = Bus(nc=None, js=js)  # type: ignore[arg-type]
    first = await bus.kv("channels")
    assert await bus.kv("channels") is first
    assert await bus.kv("channel_sent") is not first
    for _ in range(2):
        with pytest.raises(LookupError):
            await bus.kv("missing")
    assert js.lookups == ["channels", "channel_sent", "missing", "missing"]
