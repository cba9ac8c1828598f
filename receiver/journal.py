"""The journal: a durable record of every provider write, made before the write and
settled after it.

It answers "who created this record, when, and why?", and it is what makes clean-up safe:
only values the journal says we wrote are ever swept. An entry left `pending` means the
process died between the write and the settle; the sweep settles it against the
provider's actual state.

The interface is small so that a shared backend (for replicated or serverless
deployments) can sit behind it; SQLite is the default, in the same file as the `local`
store, in WAL mode, safe for several processes on one host. No token is ever recorded:
the sender is identified by its instance CRN and the user by IAM id or subject.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import structlog

log = structlog.get_logger("receiver.journal")
Outcome = Literal["pending", "done", "failed"]
COLUMNS = (
    "id",
    "created",
    "settled",
    "action",
    "outcome",
    "door",
    "sender",
    "user",
    "certificate",
    "domain",
    "fqdn",
    "value",
    "provider",
    "zone",
    "request_id",
    "error",
)


@dataclass(frozen=True)
class Entry:
    """One provider write as the journal keeps it: who asked, for what, and how it ended
    (`id` is the store's, left out of comparisons)."""

    action: Literal["add", "remove"]
    outcome: Outcome
    fqdn: str
    value: str
    provider: str
    zone: str
    door: str
    created: float
    sender: str | None = None
    user: str | None = None
    certificate: str | None = None
    domain: str | None = None
    request_id: str | None = None
    settled: float | None = None
    error: str | None = None
    id: int | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reads(Protocol):
    async def candidates(
        self,
        *,
        added_before: float | None = None,
        certificates: Sequence[str] = (),
        sender: str | None = None,
    ) -> list[Entry]:
        """The latest entry of every value we may still have published: its latest entry
        is not a completed removal. Filtered by the age of its latest add, or by
        certificate (and then by the sender that wrote it)."""
        ...

    async def publisher(self, *, zone: str, fqdn: str, value: str) -> Entry | None:
        """The latest add of a value that may still be published (its latest entry is not
        a completed removal), or None: the value is gone, or was never written by us."""
        ...

    async def entries(
        self, *, since: float | None = None, domain: str | None = None, limit: int = 1000
    ) -> list[Entry]: ...

    async def prune(self, before: float) -> int: ...

    async def aclose(self) -> None: ...


class Journal(Reads, Protocol):
    """What the rest of the receiver writes through (`GroupCommit`)."""

    async def begin(self, entry: Entry) -> int:
        """Record the intent; return its id once committed. Raise if it cannot be."""
        ...

    async def begin_removal(self, entry: Entry, check: RemovalCheck) -> Recorded:
        """`begin` for a removal that `check` may refuse (then its id is None)."""
        ...

    async def settle(self, entry_id: int, outcome: Outcome, error: str | None = None) -> None:
        """Record the outcome; return once committed."""
        ...

    def settle_soon(self, entry_id: int, outcome: Outcome, error: str | None = None) -> None:
        """Record the outcome without waiting for it. Safe for the request path: if it is
        lost, the entry stays pending and the sweep settles it from the provider's state."""
        ...

    async def committed_publisher(self, *, zone: str, fqdn: str, value: str) -> Entry | None:
        """`publisher` as committed, without waiting for this process's queued writes:
        for checks that only committed entries can defeat (the RFC 2136 door: a value is
        public, so another sender can copy it, only once its intent committed)."""
        ...


class Settlement(NamedTuple):
    """One per change on the request path: a tuple is cheapest, and its fields are in the
    stores' UPDATE parameter order, so a batch's settlements are their parameters as is."""

    outcome: Outcome
    settled: float
    error: str | None
    entry_id: int


@dataclass(frozen=True, slots=True)
class RemovalCheck:
    """Who may remove a value, judged in the transaction that records the removal: no
    add can come between the check and the record. Never a value the journal shows
    another sender published; with `own_only`, only one it shows `remover` published."""

    remover: str
    own_only: bool = False

    def admits(self, publisher: Entry | None) -> bool:
        if publisher is None:
            return not self.own_only
        return publisher.sender == self.remover


class Recorded(NamedTuple):
    """What a batch did with one entry: its id, or None when its check refused it
    (nothing was recorded); for a checked removal, the add that published the value."""

    entry_id: int | None
    publisher: Entry | None = None


class Store(Reads, Protocol):
    """What a journal store implements (`SqliteJournal`, `PostgresJournal`)."""

    async def write_batch(
        self,
        entries: Sequence[Entry],
        checks: Sequence[RemovalCheck | None],
        settlements: Sequence[Settlement],
    ) -> list[Recorded]:
        """In one transaction: settle `settlements`, then record `entries` in order, each
        whose check (same position in `checks`) admits it against the journal as it
        stands, this batch's earlier entries included."""
        ...


SETTLE_SOON_SECONDS = 0.05
BATCH_INTERVAL_SECONDS = 0.002
# Loop iterations a busy batch waits for more requests. bench/ab.py, CPU per request
# under throughput.py's load: 2 yields 251-254 µs, 4: 244, 6: 240, 8: 235-238, 16: 233,
# with p99 unchanged at 8 (12.4 ms); more only adds latency for little.
BATCH_YIELDS = 8


class GroupCommit:
    """The journal every request writes through: concurrent requests share transactions.

    Each `begin` and `settle` still waits for its own commit, so the promise is unchanged
    (the intent is durable before the provider write); what is shared is the cost. A
    batch is whatever queued while the previous one was committing: no added delay when
    the journal is idle, one transaction for many requests when it is busy. Busy (a batch
    within BATCH_INTERVAL_SECONDS), it first yields BATCH_YIELDS times, so that requests
    ready on the event loop, or arriving meanwhile, join the batch rather than start the
    next one: fewer commits, each carrying more changes.

    `settle_soon` (the long-running server's outcomes, which nobody waits for) starts no
    transaction of its own: it rides with the next `begin`, a read, or at the latest
    SETTLE_SOON_SECONDS later. Under load that halves the commits per change; a crash
    loses at most that window of outcomes, which the sweep settles from the provider.
    """

    def __init__(self, backend: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self._clock = clock
        self._entries: list[Entry] = []
        self._checks: list[RemovalCheck | None] = []
        self._recorded: list[asyncio.Future[Recorded]] = []
        self._settlements: list[Settlement] = []
        self._queued: asyncio.Future[None] | None = None  # the commit of what is queued
        self._last_queued: asyncio.Future[None] | None = None  # batches commit in order
        self._flushing: asyncio.Task[None] | None = None
        self._deferred: asyncio.TimerHandle | None = None  # settle_soon's own flush
        self._due = False  # queued settlements are to be committed now, not deferred
        self._last_batch = -BATCH_INTERVAL_SECONDS

    async def begin(self, entry: Entry) -> int:
        entry_id = (await self._record(entry, None)).entry_id
        assert entry_id is not None  # only a check refuses
        return entry_id

    async def begin_removal(self, entry: Entry, check: RemovalCheck) -> Recorded:
        return await self._record(entry, check)

    def _record(self, entry: Entry, check: RemovalCheck | None) -> asyncio.Future[Recorded]:
        # A cancelled request cancels only its own future: its entry still commits (the
        # sweep settles it), and reads wait on the batch's future, which nobody cancels.
        future: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._entries.append(entry)
        self._checks.append(check)
        self._recorded.append(future)
        self._batch()
        self._flush_now()
        return future

    async def settle(self, entry_id: int, outcome: Outcome, error: str | None = None) -> None:
        committed = self._queue_settlement(entry_id, outcome, error)
        self._flush_now()
        await asyncio.shield(committed)  # the batch's: one caller's cancellation is not all's

    def settle_soon(self, entry_id: int, outcome: Outcome, error: str | None = None) -> None:
        self._queue_settlement(entry_id, outcome, error)
        if self._deferred is None and not self._is_flushing():
            loop = asyncio.get_running_loop()
            self._deferred = loop.call_later(SETTLE_SOON_SECONDS, self._flush_now)

    def _queue_settlement(
        self, entry_id: int, outcome: Outcome, error: str | None
    ) -> asyncio.Future[None]:
        self._settlements.append(Settlement(outcome, self._clock(), error, entry_id))
        return self._batch()

    def _batch(self) -> asyncio.Future[None]:
        """The future of the batch that what is queued now will commit in (one per batch,
        not per change: a change on the request path pays for no future of its own)."""
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_future()
            self._queued.add_done_callback(_log_failed_batch)
        self._last_queued = self._queued
        return self._queued

    async def _caught_up(self) -> None:
        """Reads see this process's own writes, settlements not waited for included.

        A read waits for what was queued before it, not for the journal to fall idle:
        under steady load it never does, and waiting for that starved every read."""
        last = self._last_queued
        if last is not None and not last.done():
            self._flush_now()
            await asyncio.wait([last])

    def _is_flushing(self) -> bool:
        return self._flushing is not None and not self._flushing.done()

    def _flush_now(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        self._due = True
        if not self._is_flushing():
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_batch < BATCH_INTERVAL_SECONDS:
            for _ in range(BATCH_YIELDS):  # busy: let the requests ready now join
                await asyncio.sleep(0)
        while self._entries or (self._settlements and self._due):
            self._due = False
            entries, self._entries = self._entries, []
            checks, self._checks = self._checks, []
            waiting, self._recorded = self._recorded, []
            settlements, self._settlements = self._settlements, []
            committed, self._queued = self._queued, None
            assert committed is not None  # set by whatever queued
            try:
                recorded = await self.backend.write_batch(entries, checks, settlements)
            except Exception as exc:  # every waiter of this batch gets the failure
                for future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                if not committed.done():
                    committed.set_exception(exc)
                continue
            for future, result in zip(waiting, recorded, strict=True):
                if not future.done():
                    future.set_result(result)
            if not committed.done():
                committed.set_result(None)
            self._last_batch = loop.time()
        if self._settlements and self._deferred is None:  # came in during the last batch
            self._deferred = loop.call_later(SETTLE_SOON_SECONDS, self._flush_now)

    async def candidates(
        self,
        *,
        added_before: float | None = None,
        certificates: Sequence[str] = (),
        sender: str | None = None,
    ) -> list[Entry]:
        await self._caught_up()
        return await self.backend.candidates(
            added_before=added_before, certificates=certificates, sender=sender
        )

    async def publisher(self, *, zone: str, fqdn: str, value: str) -> Entry | None:
        await self._caught_up()
        return await self.backend.publisher(zone=zone, fqdn=fqdn, value=value)

    async def committed_publisher(self, *, zone: str, fqdn: str, value: str) -> Entry | None:
        return await self.backend.publisher(zone=zone, fqdn=fqdn, value=value)

    async def entries(
        self, *, since: float | None = None, domain: str | None = None, limit: int = 1000
    ) -> list[Entry]:
        await self._caught_up()
        return await self.backend.entries(since=since, domain=domain, limit=limit)

    async def prune(self, before: float) -> int:
        await self._caught_up()
        return await self.backend.prune(before)

    async def aclose(self) -> None:
        if self._settlements:
            self._flush_now()
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        await self.backend.aclose()


def _log_failed_batch(committed: asyncio.Future[None]) -> None:
    """A batch's failure, said once: outcomes nobody waits for (`settle_soon`) are only
    logged; the sweep settles their entries from the provider."""
    if not committed.cancelled() and committed.exception() is not None:
        log.warning("journal_write_failed", error=str(committed.exception()))


def publisher_of(latest: Sequence[Entry]) -> Entry | None:
    """From a value's latest entry and its latest add (newest first, one entry when they
    are the same): the add, unless a completed removal came after it."""
    if not latest or (latest[0].action == "remove" and latest[0].outcome == "done"):
        return None
    return next((e for e in latest if e.action == "add"), None)
