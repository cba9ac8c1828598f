"""Token buckets per source address, for what unauthenticated callers can ask for."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable


def source_key(remote: str | None) -> str:
    """The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one subscriber's
    usual allocation, so a caller cannot dodge the limit by walking its own prefix)."""
    if remote is None:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)


class RateLimit:
    """`burst` requests at once per source, refilled at `per_hour`; bounded in memory.

    The least recently seen sources are forgotten first once `max_sources` are tracked
    (forgetting only ever grants a fresh burst, which the total caps bound).
    """

    def __init__(
        self,
        per_hour: float,
        burst: int,
        *,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_hour / 3600
        self.burst = burst
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def wait_for(self, remote: str | None) -> float:
        """0 when the request may go ahead (and is counted); else seconds until it may."""
        key, now = source_key(remote), self._clock()
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        if allowed:
            return 0.0
        return (1 - tokens) / self.rate if self.rate > 0 else float("inf")
