"""`check-config --probe`: prove each zone's credentials and zone choice by really writing.

For every zone with a provider, a random value is added at `_acme-challenge.<zone>` (the
one name a least-privilege policy is sure to allow), read back, removed and checked gone,
through the same dispatcher the service uses. Only that value is ever touched.
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass

from providers.errors import ProviderError
from receiver.challenge import CHALLENGE_LABEL, Action, Challenge
from receiver.config import ZoneSettings
from receiver.errors import ReceiverError, StateUnavailable
from receiver.runtime import Runtime


@dataclass(frozen=True)
class ProbeResult:
    zone: str
    provider: str
    ok: bool
    detail: str
    seconds: float


def probe_name(zone: str) -> str:
    return zone if zone.startswith(CHALLENGE_LABEL + ".") else f"{CHALLENGE_LABEL}.{zone}"


async def probe(runtime: Runtime) -> list[ProbeResult]:
    results = [await _probe_database(runtime)] if runtime.state.shared else []
    return results + [
        await _probe_zone(runtime, zone) for zone in runtime.settings.zones if zone.cname_to is None
    ]


async def _probe_database(runtime: Runtime) -> ProbeResult:
    """`[state]`: connect (and migrate, as a server would at start) and read the schema."""
    started = time.monotonic()
    assert runtime.state.database is not None
    try:
        version = await runtime.state.database.schema_version()
    except StateUnavailable as exc:
        return ProbeResult("[state]", "postgres", False, exc.reason, time.monotonic() - started)
    detail = f"connected; schema version {version}"
    return ProbeResult("[state]", "postgres", True, detail, time.monotonic() - started)


async def _probe_zone(runtime: Runtime, zone: ZoneSettings) -> ProbeResult:
    started = time.monotonic()
    fqdn = probe_name(zone.name)
    value = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    dispatcher = runtime.dispatcher
    try:
        ref = await dispatcher.zone_ref(zone, request_id="probe")
        await dispatcher.apply(
            Challenge(Action.ADD, zone.name, fqdn, value), zone, request_id="probe"
        )
        if value not in await dispatcher.read(zone, fqdn, request_id="probe"):
            raise _ProbeFailed(f"wrote a value at {fqdn} but cannot read it back")
        await dispatcher.apply(
            Challenge(Action.REMOVE, zone.name, fqdn, value), zone, request_id="probe"
        )
        if value in await dispatcher.read(zone, fqdn, request_id="probe"):
            raise _ProbeFailed(f"removed the value at {fqdn} but it is still there")
    except (ReceiverError, ProviderError, _ProbeFailed) as exc:
        detail = getattr(exc, "internal", None) or getattr(exc, "detail", None) or str(exc)
        return ProbeResult(zone.name, zone.provider, False, detail, time.monotonic() - started)
    return ProbeResult(
        zone.name,
        zone.provider,
        True,
        f"zone {ref.handle}: wrote, read back and removed a value at {fqdn}",
        time.monotonic() - started,
    )


class _ProbeFailed(Exception):
    pass
