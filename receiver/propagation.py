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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from receiver.challenge import Challenge
from receiver.config import PropagationSettings, ZoneSettings
from receiver.errors import PropagationTimeout
from receiver.metrics import Metrics

log = structlog.get_logger("receiver.propagation")


@dataclass(frozen=True)
class Nameserver:
    name: str
    host: str
    port: int


@dataclass(frozen=True)
class Result:
    live: bool
    seconds: float
    missing: tuple[str, ...]  # names of the nameservers that did not serve the value


class Checker:
    def __init__(self, settings: PropagationSettings) -> None:
        self._settings = settings
        # Set by the long-running server: the built-in responder is the authoritative
        # server of every zone on the `local` provider.
        self.local_responder: tuple[str, int] | None = None

    async def nameservers(self, zone: ZoneSettings) -> list[Nameserver]:
        import dns.asyncresolver  # dnspython only once a check runs (serverless cold starts)
        import dns.resolver

        if zone.nameservers:
            return [Nameserver(name, *_host_port(address)) for name, address in zone.nameservers]
        if zone.provider == "local" and self.local_responder is not None:
            host, port = self.local_responder
            # A wildcard listen address is reached through loopback.
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
            return [Nameserver("built-in responder", host, port)]
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

    async def serves(self, nameserver: Nameserver, fqdn: str, value: str) -> bool:
        import dns.asyncquery
        import dns.exception
        import dns.flags
        import dns.message
        import dns.rdatatype

        query = dns.message.make_query(fqdn, "TXT")
        query.flags &= ~dns.flags.RD
        try:
            answer = await dns.asyncquery.udp(
                query, nameserver.host, port=nameserver.port, timeout=2
            )
            if answer.flags & dns.flags.TC:
                answer = await dns.asyncquery.tcp(
                    query, nameserver.host, port=nameserver.port, timeout=2
                )
        except (dns.exception.DNSException, OSError):
            return False
        return any(
            b"".join(r.strings).decode(errors="replace") == value
            for rrset in answer.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for r in rrset
        )

    async def wait(
        self, nameservers: list[Nameserver], fqdn: str, value: str, within: float
    ) -> Result:
        started = time.monotonic()
        pending = list(nameservers)
        while True:
            checks = await asyncio.gather(*(self.serves(ns, fqdn, value) for ns in pending))
            pending = [ns for ns, ok in zip(pending, checks, strict=True) if not ok]
            elapsed = time.monotonic() - started
            if not pending:
                return Result(True, elapsed, ())
            if elapsed + self._settings.interval_seconds > within:
                return Result(False, elapsed, tuple(ns.name for ns in pending))
            await asyncio.sleep(self._settings.interval_seconds)


Rewrite = Callable[[], Awaitable[None]]


class Propagation:
    """Runs checks after writes: awaited, or in the background of a long-running server."""

    def __init__(self, settings: PropagationSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.checker = Checker(settings)
        self._background: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def wait(self, zone: ZoneSettings, challenge: Challenge) -> Result:
        """Inline: raise `PropagationTimeout` (504) unless every nameserver has it."""
        result = await self._check(zone, challenge)
        if not result.live:
            raise PropagationTimeout(
                f"{challenge.fqdn} not yet served by: {', '.join(result.missing)}",
                missing=result.missing,
            )
        return result

    def watch(self, zone: ZoneSettings, challenge: Challenge, rewrite: Rewrite) -> None:
        key = (challenge.fqdn, challenge.value)
        previous = self._background.pop(key, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.create_task(self._watch(zone, challenge, rewrite))
        self._background[key] = task
        task.add_done_callback(
            lambda t: self._background.pop(key, None) if self._background.get(key) is t else None
        )

    def forget(self, challenge: Challenge) -> None:
        """The value is being removed: never check (or rewrite) it again."""
        task = self._background.pop((challenge.fqdn, challenge.value), None)
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        tasks = list(self._background.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._background)

    async def _watch(self, zone: ZoneSettings, challenge: Challenge, rewrite: Rewrite) -> None:
        try:
            result = await self._check(zone, challenge)
            if not result.live and self._settings.rewrite_lagging:
                log.warning(
                    "propagation_lagging",
                    fqdn=challenge.fqdn,
                    value=challenge.value,
                    missing=list(result.missing),
                    seconds=round(result.seconds, 1),
                )
                self._metrics.propagation("lagging")
                await rewrite()
                result = await self._check(zone, challenge)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a background check must never take the server down
            log.warning("propagation_failed", fqdn=challenge.fqdn, error=str(exc))
            self._metrics.propagation("error")

    async def _check(self, zone: ZoneSettings, challenge: Challenge) -> Result:
        nameservers = await self.checker.nameservers(zone)
        result = await self.checker.wait(
            nameservers, challenge.fqdn, challenge.value, self._settings.timeout_seconds
        )
        outcome = "live" if result.live else "timeout"
        self._metrics.propagation(outcome, result.seconds if result.live else None)
        log.info(
            "propagation",
            fqdn=challenge.fqdn,
            value=challenge.value,
            outcome=outcome,
            seconds=round(result.seconds, 2),
            nameservers=[n.name for n in nameservers],
            missing=list(result.missing),
        )
        return result


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, 53
    return host.strip("[]"), int(port)
