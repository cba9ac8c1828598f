"""What a door is, and the request and answer every host translates to and from.

A door is one inbound protocol (Certificate Manager's callback, lego's httpreq, acme-dns,
DigiCert's file check): its routes, parsing, authentication and its own rules. It hands
the core typed changes (`receiver.core.ChangeRequest`); the core runs the one shared path
and knows no door by name. A host (the aiohttp server, Lambda, Cloud Functions) turns a
platform request into an `InboundRequest` and the `Outcome` back, nothing more.

This module sits below both: the Runtime holds the open doors as `Doors` without
importing any of them, and the composition root (`receiver.doors.open_doors`) imports
only the doors that are enabled.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")


def request_id(*offered: str | None) -> str:
    """The first offered id that is safe to log (the caller's X-Request-Id, then the
    platform's), else a new one. Every host names its requests this way."""
    for candidate in offered:
        if candidate and _SAFE_REQUEST_ID.match(candidate):
            return candidate
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Origin:
    """Who asked for a write, and why: recorded with it."""

    door: str
    sender: str | None = None  # instance CRN, httpreq user, "sweep", ...
    user: str | None = None  # the ordering user's IAM id or subject (never a token)
    certificate: str | None = None
    domain: str | None = None


@dataclass(frozen=True)
class InboundRequest:
    """A request as every host hands it to the core: no framework object gets past a host."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    request_id: str
    remote: str | None = None
    host: str | None = None  # the Host header's name, for doors that answer per host
    query: Mapping[str, str] = field(default_factory=dict)  # the first of repeated keys


@dataclass(frozen=True)
class Outcome:
    """An answer: a JSON `body`, or `text` (text/plain) when a door answers with text."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    text: str | None = None


@dataclass(frozen=True)
class Route:
    """One path a door answers. `any_content_type`: the body is read whatever the
    Content-Type says (acme-dns clients rely on it); otherwise it must be JSON."""

    method: str
    path: str
    any_content_type: bool = False


class Door(Protocol):
    name: str  # in logs, metrics and the journal's origin
    routes: tuple[Route, ...]
    events: frozenset[str]  # the event labels it reports (metrics keep them bounded)

    async def handle(self, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
        """Answer `request`; raise a `ReceiverError` to reject it. `summary` is the
        request's one log line: add what an operator needs to know."""
        ...

    async def readiness(self) -> dict[str, str]:
        """Checks of what the door depends on ("ok" or why not), for `/readyz`."""
        ...

    def close(self) -> None: ...


class Doors:
    """The open doors, by path: what the core routes a request through."""

    def __init__(self, doors: Iterable[Door] = ()) -> None:
        self.all = tuple(doors)
        self._by_path: dict[str, tuple[Door, list[Route]]] = {}
        for door in self.all:
            for route in door.routes:
                owner, routes = self._by_path.setdefault(route.path, (door, []))
                if owner is not door:  # two doors on one path: a configuration error
                    raise ValueError(f"{route.path} is both {owner.name}'s and {door.name}'s")
                routes.append(route)
        self.events = frozenset().union(*(door.events for door in self.all))

    def at(self, path: str) -> tuple[Door, list[Route]] | None:
        return self._by_path.get(path)

    def named(self, name: str) -> Door:
        for door in self.all:
            if door.name == name:
                return door
        raise KeyError(name)

    def close(self) -> None:
        for door in reversed(self.all):
            door.close()
