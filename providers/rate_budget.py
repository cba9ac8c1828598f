"""The request budget of one provider account, shared by every adapter that uses it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable


class RateBudget:
    """A token bucket shared by every adapter using one provider account.

    The core creates it (from the adapter's `default_rate_per_second` or the
    `[dispatch] rate_limits` setting) and hands it to `open`; the adapter draws one token
    before every API call, so calls wait their turn instead of drawing throttling errors.
    Reservation-based (GCRA) and thread-safe: blocking SDKs draw from worker threads.
    """

    def __init__(
        self,
        per_second: float | None,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_second = per_second
        self._interval = 1 / per_second if per_second else 0.0
        self._tolerance = self._interval * max(0, (burst or max(1, round(per_second or 1))) - 1)
        self._clock = clock
        self._theoretical_arrival = float("-inf")
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Claim the next slot; return how many seconds to wait before using it."""
        if not self._interval:
            return 0.0
        with self._lock:
            now = self._clock()
            arrival = max(self._theoretical_arrival, now)
            self._theoretical_arrival = arrival + self._interval
            return max(0.0, arrival - self._tolerance - now)

    async def take(self) -> None:
        delay = self.reserve()
        if delay:
            await asyncio.sleep(delay)

    def take_blocking(self) -> None:
        delay = self.reserve()
        if delay:
            time.sleep(delay)


UNLIMITED = RateBudget(None)
