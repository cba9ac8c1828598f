"""DigiCert request tokens through the receiver's own write path and zone policy.

Placing a token is the same DNS job as publishing a challenge: the zone policy decides
where it may go, the journal records it, the dispatcher writes only that one value. The
sweep leaves a token alone until its 30-day window has closed (`digicert.still_needed`).
These are the `digicert place` and `digicert remove` commands' use cases; the
`fileauth.txt` responder is a door (`receiver.doors.fileauth`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from receiver import digicert
from receiver.challenge import Action, Challenge
from receiver.changes import apply_change
from receiver.digicert import DOOR
from receiver.door import Origin
from receiver.policy import Route
from receiver.runtime import Runtime

log = structlog.get_logger("receiver.digicert")


@dataclass(frozen=True)
class Placement:
    domain: str
    fqdn: str  # where the token is (or was) published
    zone: str
    provider: str
    token: str


def _routes(runtime: Runtime, domains: Sequence[str], dnsauth: bool) -> list[tuple[str, Route]]:
    """Every domain checked against the policy before anything is written."""
    routes = []
    for domain in domains:
        base, fqdn = digicert.record_name(domain, dnsauth=dnsauth)
        routes.append((base, runtime.policy.route_name(fqdn)))
    return routes


async def place(
    runtime: Runtime, token: str, domains: Sequence[str], *, dnsauth: bool
) -> list[Placement]:
    routes = _routes(runtime, domains, dnsauth)
    placed = []
    for base, route in routes:
        await _write(runtime, Action.ADD, base, route, token)
        placed.append(Placement(base, route.fqdn, route.zone.name, route.zone.provider, token))
    return placed


async def remove(
    runtime: Runtime,
    auth_key: str,
    csr: bytes,
    domains: Sequence[str],
    *,
    dnsauth: bool,
    timestamp: str | None = None,
) -> list[Placement]:
    """Remove this CSR's tokens (of any timestamp, or only `timestamp`'s) and nothing else.

    Tokens are recognised by recomputing them, so a token placed by another process or an
    earlier day is found without remembering it.
    """
    if timestamp is not None:
        digicert.parse_timestamp(timestamp)
    removed = []
    for base, route in _routes(runtime, domains, dnsauth):
        values = await runtime.dispatcher.read(route.zone, route.fqdn, request_id=DOOR)
        for value in sorted(values):
            if timestamp is not None and not value.startswith(timestamp):
                continue
            if digicert.is_token_for(value, auth_key, csr):
                await _write(runtime, Action.REMOVE, base, route, value)
                removed.append(
                    Placement(base, route.fqdn, route.zone.name, route.zone.provider, value)
                )
    return removed


async def _write(runtime: Runtime, action: Action, base: str, route: Route, token: str) -> None:
    challenge = Challenge(action, base, route.fqdn, token)
    origin = Origin(DOOR, sender=DOOR, domain=base)
    request_id = f"{DOOR}-{uuid.uuid4().hex[:12]}"
    await apply_change(runtime, challenge, route.zone, origin, request_id=request_id)
    log.info(
        "digicert_token",
        action=action.value,
        fqdn=route.fqdn,
        zone=route.zone.name,
        provider=route.zone.provider,
        value=token,
    )
