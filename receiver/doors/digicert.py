"""DigiCert request tokens through the receiver's own write path and zone policy.

Placing a token is the same DNS job as publishing a challenge: the zone policy decides
where it may go, the journal records it, the dispatcher writes only that one value. The
sweep leaves a token alone until its 30-day window has closed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from providers.base import Secret, ZoneRef
from receiver import digicert
from receiver.challenge import Action, Challenge, canonical_name
from receiver.changes import apply_change
from receiver.config import DigicertSettings
from receiver.errors import InvalidName, NotFound, ServiceFault
from receiver.journal import Origin
from receiver.policy import Route
from receiver.runtime import Runtime

DOOR = "digicert"
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
        provider = runtime.dispatcher.provider_for(route.zone)
        ref = ZoneRef(route.zone.name, await provider.zone_handle(route.zone.name))
        for value in sorted(await provider.list_txt(ref, route.fqdn)):
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


def still_needed(door: str, value: str, now: float) -> bool:
    """The sweep's exception: a token stays published while DigiCert would accept it."""
    if door != DOOR or not digicert.is_request_token(value):
        return False
    try:
        end = digicert.window(value).end
    except digicert.InvalidTimestamp:
        return False
    return now < end.timestamp()


class FileAuth:
    """`GET /.well-known/pki-validation/fileauth.txt`: the current token for one host.

    The token's timestamp is the start of the current UTC day, so the answer is valid the
    moment it is served and stays the same all day. The CSR is re-read when its file
    changes, so a rotated CSR needs no restart.
    """

    def __init__(
        self,
        settings: DigicertSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        assert settings.auth_key is not None  # config requires it with fileauth on
        self._auth_key: Secret = settings.auth_key
        self._csr_files = settings.fileauth_csr_files
        self._clock = clock
        self._cache: dict[Path, tuple[tuple[int, int], bytes]] = {}

    def token_for(self, host: str) -> str:
        try:
            name = canonical_name(host.rsplit(":", 1)[0] if host.count(":") == 1 else host)
        except InvalidName:
            raise NotFound("no token for that host", code="unknown_host") from None
        path = self._csr_files.get(name)
        if path is None:
            raise NotFound(f"no token is served for {name}", code="unknown_host")
        timestamp = digicert.daily_timestamp(self._clock())
        return digicert.request_token(self._auth_key.reveal(), self._csr(path), timestamp)

    def _csr(self, path: Path) -> bytes:
        try:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._cache.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            data = path.read_bytes()
        except OSError as exc:
            log.error("fileauth_csr_unreadable", path=str(path), error=str(exc))
            raise ServiceFault(
                "the CSR for this host cannot be read", code="csr_unreadable"
            ) from None
        self._cache[path] = (stamp, data)
        return data
