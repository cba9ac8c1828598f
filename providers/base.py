"""The adapter contract every DNS provider implements.

The core resolves everything before an adapter is called: the zone (longest configured
match), the canonical record name (absolute, lower case, punycode, no trailing dot), the
unquoted value and the TTL. An adapter translates those to one provider's API and does
nothing else: no retries, no DNS lookups, no policy, no logging of secrets.

Semantics (the conformance suite in `tests/providers` is the executable definition):

* `add_txt` is idempotent and keeps every other value at the name.
* `remove_txt` removes only that value, succeeds when it is already gone, and deletes the
  record set when the last value goes.
* Stateless: a fresh process can remove what another one added (no remembered record ids).
* Errors only from `providers.errors`.

A Settings class may define `problems() -> list[tuple[str, str]]`: (option, why) for
values that can never work. The config reader reports them with every other problem, so
`check-config` catches what would otherwise fail only when `open` refuses it at start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable


class Secret:
    """A credential that cannot leak through `repr`, `str` or a log line by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def setting(*, default: Any = dataclasses.MISSING, help: str, secret: bool = False) -> Any:
    """Declare a setting: its help text and default feed the generated docs (scripts/gen_docs.py).

    A field typed `Secret` is never written in the config file: the file names where it
    lives, with `<field>_env` (an environment variable) or `<field>_file` (a path).
    """
    return dataclasses.field(default=default, metadata={"help": help, "secret": secret})


@dataclasses.dataclass(frozen=True)
class ZoneRef:
    """A zone as the core resolved it: canonical name plus the provider's own id for it."""

    name: str
    handle: str


@dataclasses.dataclass(frozen=True)
class ChangeContext:
    """What a few adapters need beyond the record itself.

    `user_token` is set only for adapters whose class declares `wants_user_token = True`
    (IBM CIS acting as the ordering user); no other adapter ever sees it.
    """

    request_id: str
    user_token: Secret | None = None


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


@dataclasses.dataclass(frozen=True)
class TxtChange:
    """One step of a batch: add or remove one value at one (canonical) name."""

    action: Literal["add", "remove"]
    fqdn: str
    value: str
    ttl: int


class Provider(Protocol):
    """One provider's adapter. See the module docstring for the semantics."""

    name: ClassVar[str]
    Settings: ClassVar[type[Any]]
    wants_user_token: ClassVar[bool]
    default_rate_per_second: ClassVar[float | None]

    @classmethod
    async def open(cls, settings: Any, budget: RateBudget) -> Self:
        """Build the adapter. Cheap: no network I/O here (cold starts matter)."""
        ...

    async def zone_handle(self, zone_name: str) -> str:
        """The provider's id for `zone_name`; raise `ZoneNotFound`. The core caches it."""
        ...

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        """Every TXT value at `fqdn`, unquoted (an empty set when there is none)."""
        ...

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None: ...

    async def remove_txt(
        self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext
    ) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BatchingProvider(Protocol):
    """An adapter that can apply many changes in one provider call (Route 53, Cloud DNS).

    The dispatcher coalesces changes per zone within a short window and calls `apply`
    once; changes are in arrival order and may touch one name several times. All or
    nothing per provider transaction; the same errors as the single-change methods.
    """

    async def apply(
        self, zone: ZoneRef, changes: Sequence[TxtChange], *, ctx: ChangeContext
    ) -> None: ...
