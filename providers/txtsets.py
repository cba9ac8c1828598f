"""Whole-set TXT writes, shared by the adapters whose API replaces record sets atomically
(Route 53 change batches, Cloud DNS Changes).

Such an API deletes the exact current set and adds the new one in one atomic change, so
every write needs the set that is there now. `Hints` keeps the set the adapter last read
or wrote at each name and plans a write from it without reading first (a name it never
saw is assumed absent). A hint is never the truth: a wrong one fails the change like a
concurrent writer would, the adapter `forget`s the names involved, and the core's retry
reads them. Values are held quoted, exactly as the provider stores them, because a
deletion must name them verbatim.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from providers.base import TxtChange, ZoneRef
from providers.txt import quote, unquote

# A read made for a plan counts for its retries this long at most (beyond any deadline).
FRESH_READ_SECONDS = 60.0


@dataclass(frozen=True)
class RecordSet:
    ttl: int
    rrdatas: tuple[str, ...]  # quoted, as the provider holds them: needed verbatim to delete
    values: Mapping[str, str] = field(compare=False, repr=False)  # unquoted -> rrdata

    @classmethod
    def decoded(cls, ttl: int, rrdatas: Iterable[str], *, base: int) -> RecordSet:
        """A set read from the provider, whose `\\DDD` escapes are in `base`."""
        held = tuple(rrdatas)
        return cls(ttl, held, {unquote(rrdata, base=base): rrdata for rrdata in held})


def apply_changes(
    current: Mapping[str, RecordSet | None], changes: Iterable[TxtChange]
) -> dict[str, RecordSet | None]:
    """The sets after applying `changes` in order; foreign values are kept verbatim."""
    rrdatas = {fqdn: dict(rs.values) if rs else {} for fqdn, rs in current.items()}
    ttls = {fqdn: rs.ttl for fqdn, rs in current.items() if rs}
    for change in changes:
        values = rrdatas[change.fqdn]
        if change.action == "add":
            values.setdefault(change.value, quote(change.value))
            ttls.setdefault(change.fqdn, change.ttl)
        else:
            values.pop(change.value, None)
    return {
        fqdn: RecordSet(ttls[fqdn], tuple(values.values()), values) if values else None
        for fqdn, values in rrdatas.items()
    }


@dataclass(frozen=True)
class Plan:
    names: list[str]  # every name the changes touch, in first-seen order
    current: dict[str, RecordSet | None]
    wanted: dict[str, RecordSet | None]

    def changed(self) -> list[str]:
        return [fqdn for fqdn in self.names if self.wanted[fqdn] != self.current[fqdn]]


Read = Callable[[str], Awaitable[RecordSet | None]]


class Hints:
    """The set an adapter last read or wrote at each (zone handle, name), and which names
    were read for changes not yet written.

    The core retries a failed `apply` with the same changes. A batch whose answer was
    lost must re-read every name before it may decide "nothing to do"; if each attempt
    started over, a 100-name batch would need 100 reads in a row without one failing
    (one fault run hung with 599 reads). So a read made for a plan counts for the
    retries of that plan for `fresh_for` seconds, until the changes are written
    (`settled`) or a write's outcome is unknown again (`forget`).
    """

    def __init__(
        self,
        *,
        fresh_for: float = FRESH_READ_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._known: dict[tuple[str, str], RecordSet | None] = {}
        self._stale: set[tuple[str, str]] = set()  # after a conflict: read, never guess
        self._read_at: dict[tuple[str, str], float] = {}  # read by a plan not yet written
        self._fresh_for = fresh_for
        self._clock = clock

    async def plan(self, zone: ZoneRef, changes: Sequence[TxtChange], read: Read) -> Plan:
        """Current and wanted sets for `changes`. `read` fetches one name from the provider
        (and reports it back through `saw`)."""
        names = list(dict.fromkeys(change.fqdn for change in changes))
        current: dict[str, RecordSet | None] = {}
        for fqdn in names:
            key = (zone.handle, fqdn)
            if key in self._known and key not in self._stale:
                current[fqdn] = self._known[key]
            elif key not in self._stale and all(
                c.action == "add" for c in changes if c.fqdn == fqdn
            ):
                current[fqdn] = None  # a guess: a wrong one fails the change, and we re-read
            else:
                current[fqdn] = await self._read(zone, fqdn, read)
        wanted = apply_changes(current, changes)
        # "Nothing to do" is decided only on a fresh read: a stale hint that wrongly says
        # so would skip the write, and with it the provider's check. Re-read those names.
        unsure = [
            fqdn for fqdn in names if wanted[fqdn] == current[fqdn] and not self._fresh(zone, fqdn)
        ]
        for fqdn in unsure:
            current[fqdn] = await self._read(zone, fqdn, read)
        if unsure:
            wanted = apply_changes(current, changes)
        return Plan(names, current, wanted)

    async def _read(self, zone: ZoneRef, fqdn: str, read: Read) -> RecordSet | None:
        found = await read(fqdn)
        self._read_at[(zone.handle, fqdn)] = self._clock()
        return found

    def _fresh(self, zone: ZoneRef, fqdn: str) -> bool:
        read_at = self._read_at.get((zone.handle, fqdn))
        return read_at is not None and self._clock() - read_at < self._fresh_for

    def saw(self, zone: ZoneRef, fqdn: str, current: RecordSet | None) -> None:
        """A read from the provider: the best hint there is."""
        self._known[(zone.handle, fqdn)] = current
        self._stale.discard((zone.handle, fqdn))

    def wrote(self, zone: ZoneRef, fqdn: str, written: RecordSet | None) -> None:
        self._known[(zone.handle, fqdn)] = written

    def settled(self, zone: ZoneRef, names: Iterable[str]) -> None:
        """The changes to these names are written: the next changes start afresh."""
        for fqdn in names:
            self._read_at.pop((zone.handle, fqdn), None)

    def forget(self, zone: ZoneRef, names: Iterable[str]) -> None:
        """A change failed for these names, its outcome unknown: read them before the
        next write, and count no earlier read."""
        for fqdn in names:
            self._known.pop((zone.handle, fqdn), None)
            self._stale.add((zone.handle, fqdn))
            self._read_at.pop((zone.handle, fqdn), None)

    def clear(self) -> None:
        self._known.clear()
        self._stale.clear()
        self._read_at.clear()
