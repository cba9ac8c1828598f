"""Is the value served by every authoritative nameserver of its zone?

The receiver answers Certificate Manager at once (it checks DNS itself for 10 minutes),
so by default the check runs in the background of the long-running server, is logged and
counted, and a value that is still missing at the timeout is written once more. A door
may instead wait for it (`wait_for_propagation`), and then a timeout is a 504 naming the
nameservers that lack the value.

Nameservers are asked directly, without recursion, so no resolver cache can hide a
lagging one. They come from the zone's NS set (looked up through `propagation.resolvers`
or the system resolver), or from a per-zone `nameservers` table for split-horizon DNS
and tests.

The cost scales with zones, not values: one checker per zone asks, once per interval,
each nameserver once for each name that some pending value still lacks there (one TXT
answer holds every value of a name), a bounded number of questions at a time. Pending
background checks are capped (`max_pending`, the oldest dropped), and a zone whose
provider's answer is authoritative by construction is not asked at all.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import structlog

from providers.base import Capabilities
from receiver.challenge import Challenge
from receiver.config import PropagationSettings, ZoneSettings
from receiver.errors import PropagationTimeout
from receiver.metrics import Metrics

log = structlog.get_logger("receiver.propagation")

QUERIES_AT_ONCE = 16  # per zone and round: a burst of names never becomes a burst of sockets
REWRITES_AT_ONCE = 16  # lagging values written once more at the same time
DROP_LOG_SECONDS = 10.0  # drops over the cap: one line now, then one summary per window
QUERY_TIMEOUT_SECONDS = 2.0
LOCAL_RESPONDER = "built-in responder"


@dataclass(frozen=True)
class Nameserver:
    """An authoritative nameserver, asked directly (no resolver cache in between)."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class Result:
    """A check's end: live everywhere, or which nameservers still lacked the value."""

    live: bool
    seconds: float
    missing: tuple[str, ...]  # names of the nameservers that did not serve the value


class Checker:
    """Finds a zone's nameservers, and asks one of them what it serves at a name."""

    def __init__(self, settings: PropagationSettings) -> None:
        self._settings = settings

    async def nameservers(self, zone: ZoneSettings) -> list[Nameserver]:
        import dns.asyncresolver  # dnspython only once a check runs (serverless cold starts)
        import dns.resolver

        if zone.nameservers:
            return [Nameserver(name, *_host_port(address)) for name, address in zone.nameservers]
        resolver = dns.asyncresolver.Resolver(configure=not self._settings.resolvers)
        if self._settings.resolvers:
            first = _host_port(self._settings.resolvers[0])
            resolver.nameservers = [_host_port(r)[0] for r in self._settings.resolvers]
            resolver.port = first[1]
        resolver.lifetime = 5
        found: list[Nameserver] = []
        for ns in await resolver.resolve(zone.name, "NS"):
            host = ns.target.to_text(omit_final_dot=True)
            for rdtype in ("A", "AAAA"):
                try:
                    answer = await resolver.resolve(host, rdtype)
                except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                    continue
                found += [
                    Nameserver(host, r.address, self._settings.nameserver_port) for r in answer
                ]
        return found

    async def values(self, nameserver: Nameserver, fqdn: str) -> frozenset[str] | None:
        """The TXT values `nameserver` serves at `fqdn` (every pending value of the name in
        one answer), or None if it did not answer at all."""
        import dns.asyncquery
        import dns.exception
        import dns.flags
        import dns.message
        import dns.rdatatype

        query = dns.message.make_query(fqdn, "TXT")
        query.flags &= ~dns.flags.RD
        host, port, timeout = nameserver.host, nameserver.port, QUERY_TIMEOUT_SECONDS
        try:
            answer = await dns.asyncquery.udp(query, host, port=port, timeout=timeout)
            if answer.flags & dns.flags.TC:
                answer = await dns.asyncquery.tcp(query, host, port=port, timeout=timeout)
        except (dns.exception.DNSException, OSError):
            return None
        return frozenset(
            b"".join(r.strings).decode(errors="replace")
            for rrset in answer.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for r in rrset
        )


Rewrite = Callable[[], Awaitable[None]]


@dataclass(eq=False, slots=True)
class _Check:
    """One value being checked: in the background (`rewrite`, until it has been written
    once more), or for a request that waits for it (`done`)."""

    zone: ZoneSettings
    fqdn: str
    value: str
    started: float
    rewrite: Rewrite | None = None
    done: asyncio.Future[Result] | None = None
    asked: tuple[Nameserver, ...] = ()  # set at its first round
    missing: frozenset[Nameserver] | None = None  # None until its first round; shared
    rewriting: asyncio.Task[None] | None = None


class Propagation:
    """Runs checks after writes: awaited, or in the background of a long-running server."""

    def __init__(self, settings: PropagationSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.checker = Checker(settings)
        self._zones: dict[str, _ZoneChecker] = {}
        self._capabilities: dict[str, Capabilities] = {}  # by provider name
        self._background: OrderedDict[tuple[str, str], _Check] = OrderedDict()  # oldest first
        self._waiting: set[_Check] = set()
        self._rewrites = asyncio.Semaphore(REWRITES_AT_ONCE)
        self._drops = _DropLog(settings.max_pending)

    async def wait(self, zone: ZoneSettings, challenge: Challenge) -> Result:
        """Inline: raise `PropagationTimeout` (504) unless every nameserver has it.

        A waited-for check holds its request open, so `server.max_connections` bounds
        these, not `max_pending`: they are never dropped."""
        known = self._known(zone, challenge)
        if known is not None:
            return known
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        check = _Check(zone, challenge.fqdn, challenge.value, time.monotonic(), done=done)
        self._waiting.add(check)
        self._zone(zone).add(check)
        self._count()
        try:
            result = await done
        finally:
            self._untrack(check)  # also when the request is cancelled: stop asking for it
        if not result.live:
            raise PropagationTimeout(
                f"{challenge.fqdn} not yet served by: {', '.join(result.missing)}",
                missing=result.missing,
            )
        return result

    def watch(self, zone: ZoneSettings, challenge: Challenge, rewrite: Rewrite) -> None:
        """Check in the background; never blocks: over `max_pending`, the oldest goes."""
        if self._known(zone, challenge) is not None:
            return
        key = (challenge.fqdn, challenge.value)
        previous = self._background.pop(key, None)
        if previous is not None:  # the same value again: its check starts over
            self._untrack(previous)
        check = _Check(zone, challenge.fqdn, challenge.value, time.monotonic(), rewrite=rewrite)
        self._background[key] = check
        self._zone(zone).add(check)
        while len(self._background) > self._settings.max_pending:
            _, oldest = self._background.popitem(last=False)
            self._untrack(oldest)
            self._metrics.propagation("dropped")
            self._drops.dropped(oldest.fqdn)
        self._count()

    def forget(self, challenge: Challenge) -> None:
        """The value is being removed: never check (or rewrite) it again."""
        check = self._background.pop((challenge.fqdn, challenge.value), None)
        if check is not None:
            self._untrack(check)

    async def aclose(self) -> None:
        tasks = [task for zone in self._zones.values() if (task := zone.stop()) is not None]
        for check in [*self._background.values(), *self._waiting]:
            if check.rewriting is not None:
                check.rewriting.cancel()
                tasks.append(check.rewriting)
            if check.done is not None:
                check.done.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._background.clear()
        self._waiting.clear()
        self._drops.close()
        self._count()

    def __len__(self) -> int:
        """Checks pending now: in the background, and waited for."""
        return len(self._background) + len(self._waiting)

    def _known(self, zone: ZoneSettings, challenge: Challenge) -> Result | None:
        """The result, where the provider's own answer is authoritative by construction.

        An adapter that publishes to no DNS (`memory`) leaves nothing to ask (counted as
        skipped). One the built-in responder serves (`local`) answers from the store the
        write has just committed (SQLite: read on every query; PostgreSQL: a mirror
        following within milliseconds), so the value is live now: asking would only
        query this process's own responder about its own store, once per value. A zone
        with a `nameservers` table is always asked there: the table says who serves it."""
        if zone.nameservers:
            return None
        capabilities = self._capabilities.get(zone.provider)
        if capabilities is None:  # looked up once: an entry point's costs a scan
            capabilities = self._capabilities[zone.provider] = zone.capabilities
        if not capabilities.publishes_to_dns:
            self._metrics.propagation("skipped")
            return Result(True, 0.0, ())
        if capabilities.serves_dns:
            result = Result(True, 0.0, ())
            self._outcome(challenge.fqdn, challenge.value, result, [LOCAL_RESPONDER])
            return result
        return None

    def _zone(self, zone: ZoneSettings) -> _ZoneChecker:
        checker = self._zones.get(zone.name)
        if checker is None:
            checker = self._zones[zone.name] = _ZoneChecker(zone, self, self._settings)
        return checker

    def _settled(self, check: _Check, result: Result) -> None:
        """A check's outcome from its zone's round: logged, counted, then a lagging
        background value is written once more and checked once more."""
        self._outcome(check.fqdn, check.value, result, [ns.name for ns in check.asked])
        if check.done is not None:
            if not check.done.done():
                check.done.set_result(result)
            self._untrack(check)
            return
        rewrite, check.rewrite = check.rewrite, None
        if result.live or rewrite is None or not self._settings.rewrite_lagging:
            self._untrack(check)
            return
        log.warning(
            "propagation_lagging",
            fqdn=check.fqdn,
            value=check.value,
            missing=list(result.missing),
            seconds=round(result.seconds, 1),
        )
        self._metrics.propagation("lagging")
        self._zone(check.zone).discard(check)  # not asked while it is written again
        check.rewriting = asyncio.create_task(self._rewrite(check, rewrite))

    async def _rewrite(self, check: _Check, rewrite: Rewrite) -> None:
        try:
            async with self._rewrites:
                await rewrite()
        except Exception as exc:  # a background check must never take the server down
            check.rewriting = None
            self._failed(check, exc)
            return
        check.rewriting = None
        if self._background.get((check.fqdn, check.value)) is check:
            check.started, check.missing, check.asked = time.monotonic(), None, ()
            self._zone(check.zone).add(check)

    def _failed(self, check: _Check, exc: Exception) -> None:
        log.warning("propagation_failed", fqdn=check.fqdn, error=str(exc))
        self._metrics.propagation("error")
        if check.done is not None and not check.done.done():
            check.done.set_exception(exc)
        self._untrack(check)

    def _outcome(self, fqdn: str, value: str, result: Result, nameservers: list[str]) -> None:
        outcome = "live" if result.live else "timeout"
        self._metrics.propagation(outcome, result.seconds if result.live else None)
        log.info(
            "propagation",
            fqdn=fqdn,
            value=value,
            outcome=outcome,
            seconds=round(result.seconds, 2),
            nameservers=nameservers,
            missing=list(result.missing),
        )

    def _untrack(self, check: _Check) -> None:
        """No longer pending: out of its zone's rounds, its rewrite (if any) cancelled."""
        self._zone(check.zone).discard(check)
        key = (check.fqdn, check.value)
        if self._background.get(key) is check:
            del self._background[key]
        self._waiting.discard(check)
        if check.rewriting is not None:
            check.rewriting.cancel()
            check.rewriting = None
        self._count()

    def _count(self) -> None:
        self._metrics.propagation_pending(len(self))


class _ZoneChecker:
    """One zone's checks: one round per interval, while any are pending; its task ends
    when none are (and starts again with the next)."""

    def __init__(
        self, zone: ZoneSettings, owner: Propagation, settings: PropagationSettings
    ) -> None:
        self._zone = zone
        self._owner = owner
        self._settings = settings
        self._checks: dict[_Check, None] = {}  # an ordered set
        self._task: asyncio.Task[None] | None = None
        self._nameservers: tuple[list[Nameserver], float] | None = None  # and when looked up

    def add(self, check: _Check) -> None:
        self._checks[check] = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def discard(self, check: _Check) -> None:
        self._checks.pop(check, None)

    def stop(self) -> asyncio.Task[None] | None:
        self._checks.clear()
        if self._task is not None:
            self._task.cancel()
        return self._task

    async def _run(self) -> None:
        while self._checks:  # nothing awaited between this test and returning: no check lost
            try:
                await self._round()
            except Exception as exc:  # a background check must never take the server down
                for check in list(self._checks):
                    self._owner._failed(check, exc)
            if self._checks:
                await asyncio.sleep(self._settings.interval_seconds)

    async def _round(self) -> None:
        """Ask every nameserver once for each name some check still lacks there, then
        settle the checks that are live or out of time."""
        checks = list(self._checks)
        unresolved = [check for check in checks if check.missing is None]
        if unresolved:
            try:
                nameservers = await self._current_nameservers()
            except Exception as exc:  # the NS lookup: those checks fail, the others go on
                for check in unresolved:
                    self._owner._failed(check, exc)
                checks = [check for check in checks if check.missing is not None]
            else:  # one tuple and one set for all: a pending check costs little memory
                asked, everyone = tuple(nameservers), frozenset(nameservers)
                for check in unresolved:
                    check.asked, check.missing = asked, everyone
            checks = [check for check in checks if check in self._checks]  # none forgotten
        questions: dict[Nameserver, dict[str, None]] = {}
        for check in checks:
            for nameserver in check.missing or ():
                questions.setdefault(nameserver, {})[check.fqdn] = None
        answers = await _ask(self._owner.checker, questions)
        now = time.monotonic()
        for check in checks:
            if check not in self._checks or check.missing is None:
                continue  # forgotten, dropped or failed during the round
            lacking = [
                ns for ns in check.missing if check.value not in answers.get((ns, check.fqdn), ())
            ]
            if len(lacking) < len(check.missing):  # else the shared set stays
                check.missing = frozenset(lacking)
            elapsed = now - check.started
            if not check.missing:
                self._owner._settled(check, Result(True, elapsed, ()))
            elif elapsed + self._settings.interval_seconds > self._settings.timeout_seconds:
                missing = tuple(ns.name for ns in check.asked if ns in check.missing)
                self._owner._settled(check, Result(False, elapsed, missing))

    async def _current_nameservers(self) -> list[Nameserver]:
        """Looked up once for the checks of the next `timeout_seconds`, not per value."""
        now = time.monotonic()
        if self._nameservers is None or now - self._nameservers[1] > self._settings.timeout_seconds:
            self._nameservers = (await self._owner.checker.nameservers(self._zone), now)
        return self._nameservers[0]


async def _ask(
    checker: Checker, questions: dict[Nameserver, dict[str, None]]
) -> dict[tuple[Nameserver, str], frozenset[str]]:
    """One round's questions, QUERIES_AT_ONCE at a time. Each nameserver is asked its first
    name alone; one that does not answer a question is not asked the rest of the round,
    so a silent nameserver costs one timeout per round, not one per name."""
    answers: dict[tuple[Nameserver, str], frozenset[str]] = {}
    silent: set[Nameserver] = set()

    async def worker(pairs: Iterator[tuple[Nameserver, str]]) -> None:
        for nameserver, fqdn in pairs:
            if nameserver in silent:
                continue
            found = await checker.values(nameserver, fqdn)
            if found is None:
                silent.add(nameserver)
            else:
                answers[(nameserver, fqdn)] = found

    async def each(pairs: list[tuple[Nameserver, str]]) -> None:
        shared = iter(pairs)  # the workers take turns at one iterator
        await asyncio.gather(*(worker(shared) for _ in range(min(QUERIES_AT_ONCE, len(pairs)))))

    lists = [(ns, list(names)) for ns, names in questions.items()]
    await each([(ns, names[0]) for ns, names in lists])
    await each([(ns, fqdn) for ns, names in lists for fqdn in names[1:]])
    return answers


class _DropLog:
    """Checks dropped over the cap: one line at the first, then at most one line per
    DROP_LOG_SECONDS with the count since (a flood of drops is not a flood of lines)."""

    def __init__(self, max_pending: int) -> None:
        self._max_pending = max_pending
        self._unlogged = 0
        self._timer: asyncio.TimerHandle | None = None

    def dropped(self, fqdn: str) -> None:
        if self._timer is not None:
            self._unlogged += 1
            return
        self._log(1, oldest=fqdn)
        self._timer = asyncio.get_running_loop().call_later(DROP_LOG_SECONDS, self._window)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unlogged:
            self._log(self._unlogged)
            self._unlogged = 0

    def _window(self) -> None:
        self._timer = None
        if self._unlogged:
            self._log(self._unlogged)
            self._unlogged = 0
            self._timer = asyncio.get_running_loop().call_later(DROP_LOG_SECONDS, self._window)

    def _log(self, count: int, **fields: str) -> None:
        log.warning(
            "propagation_dropped",
            dropped=count,
            max_pending=self._max_pending,
            reason="more pending checks than propagation.max_pending: the oldest went unchecked",
            **fields,
        )


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, 53
    return host.strip("[]"), int(port)
