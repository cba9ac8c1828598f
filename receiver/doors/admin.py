"""The audit trail as a door: `GET /journal?since=&domain=&limit=` for holders of the
admin token only (the route exists only when `journal.admin_token` is set). Every host
serves it the same way, and each call is logged like any other request."""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from providers.base import Secret
from receiver.door import InboundRequest, Outcome, Route
from receiver.errors import BadRequest, Unauthorized
from receiver.journal import Journal

DOOR = "admin"
MAX_JOURNAL_LIMIT = 10_000


class AdminDoor:
    name = DOOR
    routes: tuple[Route, ...] = (Route("GET", "/journal"),)
    events = frozenset({"journal"})

    def __init__(self, journal: Journal, admin_token: Secret) -> None:
        self.journal = journal
        self.admin_token = admin_token

    async def handle(self, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
        summary["event_type"] = "journal"
        check_bearer(request.headers.get("authorization", ""), self.admin_token)
        query = JournalQuery.parse(request.query)
        entries = await self.journal.entries(
            since=query.since, domain=query.domain, limit=query.limit
        )
        summary.update(outcome="read", entries=len(entries))
        return Outcome(200, {"entries": [e.as_dict() for e in entries]})

    async def readiness(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


class BearerRequired(Unauthorized):
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class JournalQuery:
    """`GET /journal?since=<epoch>&domain=<name>&limit=<n>`, checked."""

    since: float | None = None
    domain: str | None = None
    limit: int = 1000

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> JournalQuery:
        """`BadRequest` unless since is a finite number and limit is 1..MAX_JOURNAL_LIMIT:
        SQLite reads a negative LIMIT as "no limit", and NaN compares false with anything."""
        try:
            since = float(query["since"]) if "since" in query else None
            limit = int(query.get("limit", cls.limit))
        except ValueError:
            raise BadRequest("since is epoch seconds, limit an integer") from None
        if since is not None and not math.isfinite(since):
            raise BadRequest("since is epoch seconds")
        if not 1 <= limit <= MAX_JOURNAL_LIMIT:
            raise BadRequest(f"limit must be from 1 to {MAX_JOURNAL_LIMIT}")
        return cls(since, query.get("domain"), limit)


def check_bearer(header: str, token: Secret) -> None:
    """`Bearer <token>` (RFC 6750), the scheme in any case (RFC 7235); `BearerRequired`
    for anything else, compared in constant time as the bytes that were sent."""
    scheme, _, offered = header.partition(" ")
    offered = offered.lstrip(" ")
    if scheme.lower() != "bearer" or not offered or not _same_bytes(offered, token.reveal()):
        raise BearerRequired("send Authorization: Bearer <admin token>", code="unauthorized")


def _same_bytes(offered: str, expected: str) -> bool:
    """aiohttp decodes header bytes as UTF-8 and keeps the undecodable ones as surrogates
    (surrogateescape): encoding back the same way gives exactly the bytes sent."""
    try:
        sent = offered.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte decodes to: not from the wire
        return False
    return hmac.compare_digest(sent, expected.encode())
