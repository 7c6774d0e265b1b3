"""Per-key token buckets: `rps` tokens a second, at most `burst` saved up.

Held in process memory: with N gateway replicas behind a load balancer a key gets up to N times
the rate in the worst case (the usual trade for not paying a round trip per request).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import ResourceExhausted

MAX_BUCKETS = 100_000


class RateLimited(ResourceExhausted):
    """Too many requests for one key; `retry_after_s` is when the next one will be allowed."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("rate limit exceeded for this API key; retry later")
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


class AuthThrottled(RateLimited):
    """Too many failed authentications from one client address (key brute force)."""

    def __init__(self, retry_after_s: float) -> None:
        ResourceExhausted.__init__(self, "too many failed authentication attempts from this "
                                         "address; retry later")
        self.retry_after_s = retry_after_s


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rps: float, burst: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rps <= 0 or burst < 1:
            raise ValueError("rps must be > 0 and burst >= 1")
        self.rps = rps
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens from `key`'s bucket or raise RateLimited (taking none)."""
        now = self._clock()
        bucket = self._refilled(key, now)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return
        raise RateLimited((cost - bucket.tokens) / self.rps)

    def peek(self, key: str, cost: float = 1.0) -> float:
        """Seconds until `key` has `cost` tokens (0.0: it has them now); takes none."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + max(0.0, self._clock() - bucket.updated) *
                     self.rps)
        return 0.0 if tokens >= cost else (cost - tokens) / self.rps

    def _refilled(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            return bucket
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rps)
        bucket.updated = now
        return bucket

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled (forgetting them changes nothing); else all."""
        refill_s = self.burst / self.rps
        stale = [k for k, b in self._buckets.items() if now - b.updated >= refill_s]
        for key in stale:
            del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:
            self._buckets.clear()
