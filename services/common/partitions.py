"""The number of inbound conversation partitions, agreed through KV `bots`.

The first service to start records its configured value; later ones use the recorded value
(and log when their own configuration differs), so the gateway and the dialogue never disagree.
"""

from __future__ import annotations

from nats.js.errors import KeyWrongLastSequenceError

from services.common.logging import get_logger
from services.common.nats import KV_BOTS, Bus
from services.common.subjects import PARTITIONS_KEY

log = get_logger(__name__)


async def agreed_partitions(bus: Bus, configured: int) -> int:
    kv = await bus.kv(KV_BOTS)
    try:
        await kv.create(PARTITIONS_KEY, str(configured).encode())
        return configured
    except KeyWrongLastSequenceError:
        entry = await kv.get(PARTITIONS_KEY)
    recorded = int((entry.value or b"0").decode())
    if recorded != configured:
        log.warning("partitions_differ", configured=configured, recorded=recorded)
    return recorded
