"""Removing values nobody will remove: stale ones (the sweep) and those of failed orders.

Only values the journal says we wrote are ever touched, and only through the normal
write path (journalled, retried, one value at a time, other values untouched). An entry
left `pending` by a crash is first settled against the provider's actual state: a value
that is there is ours to remove, one that is not was never written.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from providers.errors import ProviderError
from providers.secret import Secret
from receiver import digicert
from receiver.challenge import Action, Challenge
from receiver.changes import apply_change
from receiver.config import ZoneSettings
from receiver.door import Origin
from receiver.errors import ReceiverError
from receiver.journal import Entry, Journal
from receiver.runtime import Runtime

log = structlog.get_logger("receiver.sweep")


@dataclass
class Report:
    removed: list[Entry] = field(default_factory=list)
    settled: list[Entry] = field(default_factory=list)  # pending entries resolved, no write
    failed: list[tuple[Entry, str]] = field(default_factory=list)
    skipped: list[tuple[Entry, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "removed": len(self.removed),
            "settled": len(self.settled),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
        }


async def sweep(runtime: Runtime, *, max_age: float | None = None, dry_run: bool = False) -> Report:
    """Remove every value of ours whose latest add is older than `max_age`."""
    if runtime.journal is None:
        return Report()
    # Replicas sharing one database take turns; overlapping sweeps would only repeat work.
    async with runtime.state.exclusive("sweep") as ours:
        if not ours:
            log.info("sweep_skipped", reason="another process is sweeping")
            return Report()
        return await _sweep(runtime, runtime.journal, max_age, dry_run=dry_run)


async def _sweep(
    runtime: Runtime, journal: Journal, max_age: float | None, *, dry_run: bool
) -> Report:
    age = runtime.settings.journal.max_age_seconds if max_age is None else max_age
    now = time.time()
    candidates = [
        entry
        for entry in await journal.candidates(added_before=now - age)
        if not digicert.still_needed(entry.door, entry.value, now)
    ]
    report = await _remove(runtime, candidates, Origin("sweep", sender="sweep"), dry_run=dry_run)
    if not dry_run:
        await journal.prune(time.time() - runtime.settings.journal.retention_days * 86400)
    return report


async def clean_up_certificates(
    runtime: Runtime, certificates: list[str], sender: str, user_token: Secret | None = None
) -> Report:
    """After `cert_order_failed`/`cert_renew_failed`: every value still published for
    those certificates, written on behalf of that same sender, whatever its age. The
    failure notification's verified user token goes along (IBM CIS acts as that user)."""
    if runtime.journal is None or not certificates:
        return Report()
    candidates = await runtime.journal.candidates(certificates=certificates, sender=sender)
    origin = Origin("failed_order", sender=sender)
    return await _remove(runtime, candidates, origin, dry_run=False, user_token=user_token)


async def _remove(
    runtime: Runtime,
    candidates: list[Entry],
    origin: Origin,
    *,
    dry_run: bool,
    user_token: Secret | None = None,
) -> Report:
    report = Report()
    zones = {zone.name: zone for zone in runtime.settings.zones if zone.cname_to is None}
    for entry in candidates:
        zone = zones.get(entry.zone)
        if zone is None or zone.provider != entry.provider:
            report.skipped.append(
                (entry, f"zone {entry.zone} ({entry.provider}) is no longer configured")
            )
            continue
        if dry_run:
            report.removed.append(entry)
            continue
        try:
            if entry.outcome == "pending" and await _settle_pending(runtime, entry, zone):
                report.settled.append(entry)
                continue
            challenge = Challenge(
                Action.REMOVE, entry.domain or entry.fqdn, entry.fqdn, entry.value
            )
            await apply_change(
                runtime,
                challenge,
                zone,
                Origin(
                    origin.door,
                    sender=origin.sender,
                    certificate=entry.certificate,
                    domain=entry.domain,
                ),
                request_id=f"{origin.door}-{entry.id}",
                user_token=user_token,
            )
        except (ReceiverError, ProviderError) as exc:
            reason = getattr(exc, "internal", None) or str(exc)
            report.failed.append((entry, reason))
            log.warning("sweep_failed", fqdn=entry.fqdn, value=entry.value, error=reason)
            continue
        report.removed.append(entry)
        log.info(
            "swept",
            door=origin.door,
            fqdn=entry.fqdn,
            value=entry.value,
            zone=entry.zone,
            certificate=entry.certificate,
            written=entry.created,
        )
    return report


async def _settle_pending(runtime: Runtime, entry: Entry, zone: ZoneSettings) -> bool:
    """A crash left this entry pending. True when the provider's state settles it with
    nothing left to do (an add that never landed, a removal that did)."""
    assert runtime.journal is not None
    assert entry.id is not None
    values = await runtime.dispatcher.read(zone, entry.fqdn, request_id="sweep")
    present = entry.value in values
    if entry.action == "add":
        await runtime.journal.settle(
            entry.id,
            "done" if present else "failed",
            None if present else "not found after a crash",
        )
        return not present
    await runtime.journal.settle(
        entry.id,
        "failed" if present else "done",
        "still present after a crash" if present else None,
    )
    return not present


async def sweep_periodically(runtime: Runtime) -> None:
    """The long-running server's sweep: once at start (settles a previous crash), then
    every `sweep_interval_seconds`."""
    while True:
        try:
            report = await sweep(runtime)
        except Exception as exc:  # never let the janitor take the server down
            log.warning("sweep_error", error=str(exc))
        else:
            if any(report.as_dict().values()):
                log.info("sweep", **report.as_dict())
        await asyncio.sleep(runtime.settings.journal.sweep_interval_seconds)
