"""DigiCert's `http-token` check as a door: `GET /.well-known/pki-validation/fileauth.txt`
answers the current request token for the Host asked for (text/plain)."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from providers.base import Secret
from receiver import digicert
from receiver.challenge import canonical_name
from receiver.door import InboundRequest, Outcome, Route
from receiver.door_settings import DigicertSettings
from receiver.errors import InvalidName, NotFound, ServiceFault

DOOR = "fileauth"
PATH = "/.well-known/pki-validation/fileauth.txt"
log = structlog.get_logger("receiver.digicert")


class FileAuthDoor:
    name = DOOR
    routes: tuple[Route, ...] = (Route("GET", PATH),)
    events: frozenset[str] = frozenset()

    def __init__(self, settings: DigicertSettings) -> None:
        self.tokens = FileAuth(settings)

    async def handle(self, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
        host = request.host or ""
        summary["host"] = host
        token = self.tokens.token_for(host)
        summary.update(outcome="served", value=token)
        return Outcome(200, {}, {"Cache-Control": "no-store"}, text=token)

    async def readiness(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


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
