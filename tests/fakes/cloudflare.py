"""A local fake of the part of Cloudflare's v4 REST API that DNS-01 needs.

An aiohttp app answering what the official SDK sends (deps.md §4): `GET /zones?name=`,
`GET|POST /zones/{id}/dns_records` with `type`, `name.exact`, `content.exact`, `page` and
`per_page`, and `DELETE /zones/{id}/dns_records/{id}`, in Cloudflare's response envelope
(`success`, `errors`, `messages`, `result`, `result_info`). It keeps Cloudflare's rules:
a page past the end is an empty `result`; one record per value, an identical one is
refused with code 81058; a name outside the zone gets the zone appended; TTL 1 (automatic)
or 60-86400; content is stored as given (quoted or not). Bearer tokens with scopes: an
unknown token is 401, a token without DNS:Edit gets 403 on writes, and zones outside a
token's scope are invisible (403 when addressed by id). An unknown zone id is 404 (400
when it is not even shaped like one), as are unknown record ids (code 81044).

Query parameters the fake does not implement are refused with 400, so a test cannot
pass on a filter that was silently ignored. Faults (`inject`) fire at a seeded rate,
optionally a number of times, before or after the operation takes effect.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

PREFIX = "/client/v4"
_ZONE_ID = re.compile(r"^[0-9a-f]{32}$")
_TXT_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(\d{3}|.)")
RECORDS_PER_PAGE_MAX = 5_000_000
ZONES_PER_PAGE_MAX = 50


def unquote(content: str) -> str:
    """Cloudflare's TXT content -> text, independently of the adapter's own parsing."""
    if not content.startswith('"'):
        return content
    strings = _TXT_STRING.findall(content)
    return "".join(
        _ESCAPE.sub(lambda m: chr(int(m[1])) if m[1].isdigit() else m[1], s) for s in strings
    )


@dataclass
class Token:
    zones: frozenset[str] | None = None  # zone names it may use; None: every zone
    zone_read: bool = True
    dns_edit: bool = True  # implies DNS:Read


@dataclass
class Zone:
    id: str
    name: str
    status: str = "active"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "paused": False,
            "type": "full",
            "development_mode": 0,
            "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
            "original_name_servers": [],
            "original_registrar": None,
            "original_dnshost": None,
            "created_on": "2024-01-01T00:00:00.000000Z",
            "modified_on": "2024-01-01T00:00:00.000000Z",
            "activated_on": "2024-01-01T00:00:00.000000Z",
            "meta": {"step": 2, "phishing_detected": False},
            "owner": {"id": None, "type": "user", "email": None},
            "account": {"id": "0" * 32, "name": "Fake account"},
            "permissions": ["#dns_records:edit", "#dns_records:read", "#zone:read"],
            "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website"},
        }


@dataclass
class Record:
    id: str
    zone: Zone
    name: str
    type: str
    content: str
    ttl: int
    created_on: str

    @property
    def text(self) -> str:
        return unquote(self.content)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "content": self.content,
            "proxiable": False,
            "proxied": False,
            "ttl": self.ttl,
            "settings": {},
            "meta": {},
            "comment": None,
            "tags": [],
            "created_on": self.created_on,
            "modified_on": self.created_on,
        }


@dataclass
class Fault:
    statuses: tuple[int, ...]
    rate: float
    remaining: int | None
    operation: str  # "zones", "list", "create", "delete" or "any"
    when: Literal["before", "after"]
    retry_after: str | None
    hang_seconds: float
    fired: int = 0


@dataclass
class CloudflareFake:
    seed: int = 0
    tokens: dict[str, Token] = field(default_factory=dict)
    zones: dict[str, Zone] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)  # by operation, faults included
    requests: list[tuple[float, str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""  # the SDK's base_url, ending in /client/v4
    _random: random.Random = field(init=False)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    # --- set-up and observation, without the API ---------------------------------------

    def add_token(
        self,
        value: str,
        *,
        zones: Sequence[str] | None = None,
        zone_read: bool = True,
        dns_edit: bool = True,
    ) -> None:
        self.tokens[value] = Token(
            frozenset(zones) if zones is not None else None, zone_read, dns_edit
        )

    def add_zone(self, name: str, *, status: str = "active", zone_id: str | None = None) -> str:
        zone = Zone(zone_id or secrets.token_hex(16), name.lower(), status)
        self.zones[zone.id] = zone
        return zone.id

    def add_record(self, zone_id: str, name: str, content: str, ttl: int = 300) -> Record:
        """A record someone else made (the dashboard, another tool): content as given."""
        record = Record(
            secrets.token_hex(16),
            self.zones[zone_id],
            name.lower(),
            "TXT",
            content,
            ttl,
            _now(),
        )
        self.records[record.id] = record
        return record

    def txt_records(self, fqdn: str) -> list[Record]:
        return [r for r in self.records.values() if r.type == "TXT" and r.name == fqdn]

    def txt(self, fqdn: str) -> list[str]:
        """Every TXT value at `fqdn`, unquoted, duplicates included, sorted."""
        return sorted(r.text for r in self.txt_records(fqdn))

    def inject(
        self,
        status: int | Sequence[int],
        *,
        rate: float = 1.0,
        times: int | None = None,
        operation: str = "any",
        when: Literal["before", "after"] = "before",
        retry_after: str | None = "1",
        hang_seconds: float = 0.0,
    ) -> Fault:
        """Fail matching requests at `rate` (seeded), at most `times` times (None: always).

        `when="after"` applies the operation first and then fails, as a gateway timeout
        after the origin has done the work would. `hang_seconds` delays the answer.
        """
        statuses = (status,) if isinstance(status, int) else tuple(status)
        fault = Fault(statuses, rate, times, operation, when, retry_after, hang_seconds)
        self.faults.append(fault)
        return fault

    # --- the HTTP API ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(f"{PREFIX}/zones", self._list_zones)
        app.router.add_get(f"{PREFIX}/zones/{{zone}}/dns_records", self._list_records)
        app.router.add_post(f"{PREFIX}/zones/{{zone}}/dns_records", self._create_record)
        app.router.add_delete(f"{PREFIX}/zones/{{zone}}/dns_records/{{record}}", self._delete)
        app.router.add_route("*", "/{tail:.*}", self._unrouted)
        return app

    async def _unrouted(self, request: web.Request) -> web.Response:
        return _no_route(request.path)

    async def _list_zones(self, request: web.Request) -> web.Response:
        async def answer() -> web.Response:
            token = self._token(request)
            if isinstance(token, web.Response):
                return token
            query = _Query(request, {"name", "status", "page", "per_page"})
            per_page = query.int("per_page", 20, 5, ZONES_PER_PAGE_MAX)
            page = query.int("page", 1, 1, None)
            if query.problem:
                return query.problem
            zones = [
                z
                for z in self.zones.values()
                if token.zone_read and _in_scope(token, z)
                if query.get("name") in (None, z.name)
                if query.get("status") in (None, z.status)
            ]
            return _page([z.as_json() for z in sorted(zones, key=lambda z: z.name)], page, per_page)

        return await self._serve(request, "zones", answer)

    async def _list_records(self, request: web.Request) -> web.Response:
        async def answer() -> web.Response:
            zone = self._zone(request)
            if isinstance(zone, web.Response):
                return zone
            query = _Query(
                request,
                {"type", "name", "name.exact", "content", "content.exact", "page", "per_page"},
            )
            per_page = query.int("per_page", 100, 1, RECORDS_PER_PAGE_MAX)
            page = query.int("page", 1, 1, None)
            if query.problem:
                return query.problem
            name = query.get("name.exact") or query.get("name")
            content = query.get("content.exact") or query.get("content")
            found = [
                r
                for r in self.records.values()
                if r.zone is zone
                if query.get("type") in (None, r.type)
                if name is None or r.name == name.lower()
                if content is None or r.content == content
            ]
            found.sort(key=lambda r: (r.type, r.name, r.created_on, r.id))
            return _page([r.as_json() for r in found], page, per_page)

        return await self._serve(request, "list", answer)

    async def _create_record(self, request: web.Request) -> web.Response:
        async def answer() -> web.Response:
            zone = self._zone(request, write=True)
            if isinstance(zone, web.Response):
                return zone
            try:
                body = json.loads(await request.read())
            except ValueError:
                return _error(400, (9207, "Request body is invalid."))
            kind, content, ttl = body.get("type"), body.get("content"), body.get("ttl", 1)
            if kind != "TXT":
                return _error(400, (9999, f"fake: only TXT records are modelled, not {kind}"))
            if not isinstance(content, str) or not 0 < len(content) <= 2048:
                return _error(400, (9009, "Content for TXT record is invalid."))
            if not isinstance(ttl, int) or not (ttl == 1 or 60 <= ttl <= 86400):
                return _error(
                    400,
                    (
                        9021,
                        "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.",
                    ),
                )
            name = str(body.get("name", "")).lower().rstrip(".")
            if name in ("", "@"):
                name = zone.name
            elif name != zone.name and not name.endswith("." + zone.name):
                name = f"{name}.{zone.name}"  # relative to the zone, as Cloudflare reads it
            if any(
                r.zone is zone and r.name == name and r.type == kind and r.content == content
                for r in self.records.values()
            ):
                return _error(400, (81058, "An identical record already exists."))
            record = Record(secrets.token_hex(16), zone, name, kind, content, ttl, _now())
            self.records[record.id] = record
            return _ok(record.as_json())

        return await self._serve(request, "create", answer)

    async def _delete(self, request: web.Request) -> web.Response:
        async def answer() -> web.Response:
            zone = self._zone(request, write=True)
            if isinstance(zone, web.Response):
                return zone
            record = self.records.get(request.match_info["record"])
            if record is None or record.zone is not zone:
                return _error(404, (81044, "Record does not exist."))
            del self.records[record.id]
            return _ok({"id": record.id})

        return await self._serve(request, "delete", answer)

    # --- shared checks -----------------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        operation: str,
        answer: Callable[[], Awaitable[web.Response]],
    ) -> web.Response:
        """Record the request, then apply the first fault that fires, or answer."""
        self.calls[operation] += 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        loop_time = asyncio.get_running_loop().time()
        self.requests.append((loop_time, request.method, request.path_qs, headers))
        for fault in self.faults:
            if fault.operation not in ("any", operation):
                continue
            if fault.remaining is not None and fault.remaining <= 0:
                continue
            if self._random.random() >= fault.rate:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
            fault.fired += 1
            if fault.hang_seconds:
                await asyncio.sleep(fault.hang_seconds)
            if fault.when == "after":
                await answer()
            return _fault_response(self._random.choice(fault.statuses), fault.retry_after)
        return await answer()

    def _token(self, request: web.Request) -> Token | web.Response:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not value:
            return _error(
                400,
                (6003, "Invalid request headers"),
                (6111, "Invalid format for Authorization header"),
            )
        token = self.tokens.get(value)
        if token is None:
            return _error(401, (9109, "Invalid access token"))
        return token

    def _zone(self, request: web.Request, *, write: bool = False) -> Zone | web.Response:
        token = self._token(request)
        if isinstance(token, web.Response):
            return token
        zone_id = request.match_info["zone"]
        if not _ZONE_ID.match(zone_id):
            return _no_route(request.path)
        zone = self.zones.get(zone_id)
        if zone is None:
            return _error(404, (7003, f"Could not route to {request.path}"))
        if not _in_scope(token, zone) or (write and not token.dns_edit):
            return _error(403, (10000, "Authentication error"))
        return zone


@dataclass
class _Query:
    """Query parameters, refusing any the fake does not implement."""

    request: web.Request
    known: set[str]
    problem: web.Response | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.request.query) - self.known)
        if unknown:
            self.problem = _error(400, (9999, f"fake: query parameters not modelled: {unknown}"))

    def get(self, name: str) -> str | None:
        return self.request.query.get(name)

    def int(self, name: str, default: int, low: int, high: int | None) -> int:
        raw = self.request.query.get(name)
        if raw is None:
            return default
        try:
            value = int(float(raw))
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            self.problem = self.problem or _error(
                400, (1004, f"{name} must be between {low} and {high or 'any'}")
            )
        return value


def _in_scope(token: Token, zone: Zone) -> bool:
    return token.zones is None or zone.name in token.zones


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ok(result: Any, result_info: dict[str, int] | None = None) -> web.Response:
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return web.json_response(body)


def _page(items: list[dict[str, Any]], page: int, per_page: int) -> web.Response:
    chunk = items[(page - 1) * per_page : page * per_page]  # empty past the end
    return _ok(
        chunk,
        {
            "page": page,
            "per_page": per_page,
            "count": len(chunk),
            "total_count": len(items),
            "total_pages": -(-len(items) // per_page),
        },
    )


def _error(status: int, *errors: tuple[int, str]) -> web.Response:
    body = {
        "success": False,
        "errors": [{"code": code, "message": message} for code, message in errors],
        "messages": [],
        "result": None,
    }
    return web.json_response(body, status=status)


def _no_route(path: str) -> web.Response:
    return _error(
        400,
        (7003, f"Could not route to {path}, perhaps your object identifier is invalid?"),
        (7000, "No route for that URI"),
    )


def _fault_response(status: int, retry_after: str | None) -> web.Response:
    if status == 429:
        response = _error(429, (971, "Please wait and consider throttling your request speed"))
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response
    if status in (502, 503, 504, 520, 522, 524):  # Cloudflare's edge: an HTML page
        return web.Response(
            status=status,
            text=f"<html><head><title>{status} | cloudflare</title></head>"
            f"<body><center><h1>{status}</h1></center><hr><center>cloudflare</center></body>"
            "</html>",
            content_type="text/html",
        )
    if status >= 500:
        return _error(status, (10001, "An internal error occurred."))
    codes = {401: (9109, "Invalid access token"), 403: (10000, "Authentication error")}
    return _error(status, codes.get(status, (1000, f"injected {status}")))
