"""IBM Cloud Internet Services' DNS records API and IAM's token endpoint, faked faithfully.

`FakeCis` answers `/v1/{percent-encoded instance CRN}/zones[/{zone}/dns_records[/{id}]]`
as CIS does: the Cloudflare-style envelope `{"success", "errors": [{"code", "message"}],
"messages", "result", "result_info"}`; list filters `type`, `name`, `content` with `page`
/ `per_page` pagination (`result_info` carries `page`, `per_page`, `count`,
`total_count`, as in IBM's SDK models); one record per value, an identical create refused
with HTTP 400 and code 81057 "The record already exists." (what IBM's CIS sample checks
for); a missing record is 404 with code 81044; an unknown zone 404 with Cloudflare's 7003
"Could not route ..." wording (CIS's exact code there is not documented: illustrative).
Requests authenticate with `X-Auth-User-Token` (raw or "Bearer "-prefixed: both forms
appear in IBM material); only tokens the fake was told are valid pass.

Faults, checked before authentication as a gateway would: `inject` N times (any status,
with Retry-After), or `fail_at_rate` with a seed. A failing write may be applied before
its error answer goes out ("after"), as when a response is lost: retries must cope.

`FakeIam` answers `POST /identity/token` with the API key grant, issuing tokens it also
registers as valid with the fake CIS; a wrong key is HTTP 400 `BXNIM0415E`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from aiohttp import web

ALREADY_EXISTS = (81057, "The record already exists.")
RECORD_MISSING = (81044, "Record does not exist.")
WRITES = ("create", "delete")


@dataclass
class Record:
    id: str
    zone_id: str
    name: str
    type: str
    content: str
    ttl: int
    created_on: str

    def as_json(self, zone_name: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "zone_id": self.zone_id,
            "zone_name": zone_name,
            "name": self.name,
            "type": self.type,
            "content": self.content,
            "proxiable": False,
            "proxied": False,
            "ttl": self.ttl,
            "created_on": self.created_on,
            "modified_on": self.created_on,
        }


@dataclass
class Fault:
    status: int
    remaining: int
    operation: str  # "zones", "list", "create", "delete" or "any"
    retry_after: str | None = None
    after: bool = False  # apply the write, then answer with the error
    hang_seconds: float = 0.0  # answer only this late (a client's timeout fires first)
    fired: int = 0


@dataclass
class FakeCis:
    instance_crn: str
    valid_tokens: set[str] = field(default_factory=set)
    denied_tokens: set[str] = field(default_factory=set)  # authenticated, lacking a role
    max_per_page: int = 100
    zones: dict[str, str] = field(default_factory=dict)  # id -> name
    records: dict[str, Record] = field(default_factory=dict)
    seen_tokens: list[str] = field(default_factory=list)
    raw_paths: list[str] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    injected: Counter[str] = field(default_factory=Counter)
    fail_rate: float = 0.0
    url: str = ""
    _random: random.Random = field(default_factory=lambda: random.Random(0))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # --- set-up and observation (never through the adapter) -----------------------------

    def add_zone(self, name: str) -> str:
        zone_id = secrets.token_hex(16)
        self.zones[zone_id] = name
        return zone_id

    def zone_id(self, name: str) -> str:
        return next(i for i, n in self.zones.items() if n == name)

    def seed(self, fqdn: str, content: str, ttl: int = 300) -> None:
        zone_id = self._zone_of(fqdn)
        self._insert(zone_id, fqdn, content, ttl)

    def values(self, fqdn: str) -> list[str]:
        return sorted(r.content for r in self.records.values() if r.name == fqdn)

    def ttls(self, fqdn: str) -> set[int]:
        return {r.ttl for r in self.records.values() if r.name == fqdn}

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        operation: str = "any",
        retry_after: str | None = None,
        after: bool = False,
        hang_seconds: float = 0.0,
    ) -> Fault:
        fault = Fault(status, times, operation, retry_after, after, hang_seconds)
        self.faults.append(fault)
        return fault

    def fail_at_rate(self, rate: float, seed: int) -> None:
        """Transient failures (500, an HTML 502, 503, 429) at `rate`; half of the failing
        writes are applied before the error goes out."""
        self.fail_rate = rate
        self._random = random.Random(seed)

    # --- the API -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # Parse the raw path: the CRN must arrive as ONE percent-encoded segment.
        self.raw_paths.append(request.raw_path)
        parts = request.raw_path.split("?", 1)[0].split("/")
        if len(parts) < 4 or parts[1] != "v1":
            return _error(404, 7000, "No route for that URI")
        crn, rest = unquote(parts[2]), [unquote(p) for p in parts[3:]]
        operation = _operation(request.method, rest)
        self.calls[operation] += 1
        fault = self._fault(operation)
        if fault is not None and fault.hang_seconds:
            await asyncio.sleep(fault.hang_seconds)
        if fault is not None and not (fault.after and operation in WRITES):
            return _fault_response(fault)
        token = request.headers.get("X-Auth-User-Token", "").removeprefix("Bearer ")
        self.seen_tokens.append(token)
        if token not in self.valid_tokens | self.denied_tokens:
            return _error(401, 10000, "Authentication error")
        if crn != self.instance_crn:
            return _error(404, 10001, "Service instance not found")  # illustrative code
        if token in self.denied_tokens:
            return _error(403, 10000, "Authorization error: no access to this resource")
        answer = await self._route(request, operation, rest)
        if fault is not None:  # the write happened; its answer is lost
            return _fault_response(fault)
        return answer

    def _fault(self, operation: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining > 0 and fault.operation in (operation, "any"):
                fault.remaining -= 1
                fault.fired += 1
                self.injected[str(fault.status)] += 1
                return fault
        if self.fail_rate and self._random.random() < self.fail_rate:
            status = self._random.choice([500, 502, 503, 429])
            after = operation in WRITES and self._random.random() < 0.5
            self.injected[f"{status}{'-after' if after else ''}"] += 1
            return Fault(status, 1, operation, "0" if status == 429 else None, after)
        return None

    async def _route(self, request: web.Request, operation: str, rest: list[str]) -> web.Response:
        if operation == "zones":
            return self._list_zones(request)
        if operation == "other":
            return _error(404, 7000, "No route for that URI")
        zone_id = rest[1]
        if zone_id not in self.zones:
            return _error(
                404,
                7003,
                f"Could not route to /zones/{zone_id}/dns_records, perhaps your object"
                " identifier is invalid?",
            )
        if operation == "list":
            return self._list_records(request, zone_id)
        if operation == "create":
            return self._create(zone_id, await request.json())
        return self._delete(zone_id, rest[3])

    def _list_zones(self, request: web.Request) -> web.Response:
        name = request.query.get("name")
        zones = [
            {"id": zone_id, "name": zone_name, "status": "active", "paused": False}
            for zone_id, zone_name in self.zones.items()
            if name is None or zone_name == name.lower()
        ]
        return self._page(request, zones)

    def _list_records(self, request: web.Request, zone_id: str) -> web.Response:
        query = request.query
        zone_name = self.zones[zone_id]
        found = [
            r.as_json(zone_name)
            for r in self.records.values()
            if r.zone_id == zone_id
            and ("type" not in query or r.type == query["type"])
            and ("name" not in query or r.name == query["name"].lower().rstrip("."))
            and ("content" not in query or r.content == query["content"])
        ]
        return self._page(request, found)

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        try:
            page = max(1, int(request.query.get("page", "1")))
            per_page = min(self.max_per_page, max(1, int(request.query.get("per_page", "20"))))
        except ValueError:
            return _error(400, 1004, "page and per_page must be integers")
        chunk = items[(page - 1) * per_page : page * per_page]
        info = {"page": page, "per_page": per_page, "count": len(chunk), "total_count": len(items)}
        return _ok(chunk, result_info=info)

    def _create(self, zone_id: str, body: Any) -> web.Response:
        if not isinstance(body, dict) or body.get("type") != "TXT":
            return _error(400, 1004, "DNS Validation Error: only TXT records in this fake")
        name, content, ttl = body.get("name"), body.get("content"), body.get("ttl", 1)
        if not isinstance(name, str) or not name or not isinstance(content, str) or not content:
            return _error(400, 1004, "DNS Validation Error: name and content are required")
        if not isinstance(ttl, int) or not (ttl == 1 or 60 <= ttl <= 86400):
            return _error(400, 1004, "DNS Validation Error: ttl must be 1 (automatic) or 60-86400")
        zone_name = self.zones[zone_id]
        name = name.lower().rstrip(".")
        if name != zone_name and not name.endswith("." + zone_name):
            name = f"{name}.{zone_name}"  # CIS appends the domain to a relative name
        if any(
            (r.zone_id, r.name, r.type, r.content) == (zone_id, name, "TXT", content)
            for r in self.records.values()
        ):
            return _error(400, *ALREADY_EXISTS)
        return _ok(self._insert(zone_id, name, content, ttl).as_json(zone_name))

    def _delete(self, zone_id: str, record_id: str) -> web.Response:
        record = self.records.get(record_id)
        if record is None or record.zone_id != zone_id:
            return _error(404, *RECORD_MISSING)
        del self.records[record_id]
        return _ok({"id": record_id})

    def _insert(self, zone_id: str, name: str, content: str, ttl: int) -> Record:
        record_id = f"{next(self._ids):032x}"
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record = Record(record_id, zone_id, name, "TXT", content, ttl, created)
        self.records[record_id] = record
        return record

    def _zone_of(self, fqdn: str) -> str:
        matches = [
            (len(n), i) for i, n in self.zones.items() if fqdn == n or fqdn.endswith("." + n)
        ]
        return max(matches)[1]


@dataclass
class FakeIam:
    """IAM's token endpoint for the API key grant."""

    cis: FakeCis
    api_keys: set[str] = field(default_factory=set)
    expires_in: int = 3600
    delay_seconds: float = 0.0  # lets concurrent callers pile up behind one exchange
    failing: int = 0  # answer the next N exchanges with 503
    exchanges: int = 0
    issued: list[str] = field(default_factory=list)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/identity/token", self._token)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        self.exchanges += 1
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.failing > 0:
            self.failing -= 1
            return web.Response(status=503, text="Service Unavailable")
        if request.content_type != "application/x-www-form-urlencoded":
            return _iam_error(400, "BXNIM0109E", "Property missing or empty. Property: grant_type")
        form = await request.post()
        if form.get("grant_type") != "urn:ibm:params:oauth:grant-type:apikey":
            return _iam_error(400, "BXNIM0104E", "Grant type is not supported.")
        if form.get("apikey") not in self.api_keys:
            return _iam_error(400, "BXNIM0415E", "Provided API key could not be found.")
        token = f"iam-{secrets.token_urlsafe(24)}"
        self.issued.append(token)
        self.cis.valid_tokens.add(token)
        now = int(time.time())
        return web.json_response(
            {
                "access_token": token,
                "refresh_token": "not_supported",
                "token_type": "Bearer",
                "expires_in": self.expires_in,
                "expiration": now + self.expires_in,
                "scope": "ibm openid",
            }
        )


def _operation(method: str, rest: list[str]) -> str:
    if rest == ["zones"] and method == "GET":
        return "zones"
    if len(rest) == 3 and rest[0] == "zones" and rest[2] == "dns_records":
        return {"GET": "list", "POST": "create"}.get(method, "other")
    if len(rest) == 4 and rest[0] == "zones" and rest[2] == "dns_records" and method == "DELETE":
        return "delete"
    return "other"


def _ok(result: Any, **extra: Any) -> web.Response:
    return web.json_response(
        {"success": True, "errors": [], "messages": [], "result": result, **extra}
    )


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {
            "success": False,
            "errors": [{"code": code, "message": message}],
            "messages": [],
            "result": None,
        },
        status=status,
    )


def _fault_response(fault: Fault) -> web.Response:
    if fault.status == 502:  # a gateway's page, not the API's envelope
        return web.Response(
            status=502, text="<html>502 Bad Gateway</html>", content_type="text/html"
        )
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    if fault.status == 429:
        response = _error(429, 971, "Please wait and consider throttling your request speed")
    else:
        response = _error(fault.status, 10001 if fault.status < 500 else 10002, "injected fault")
    if headers:
        response.headers.update(headers)
    return response


def _iam_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {
            "errorCode": code,
            "errorMessage": message,
            "context": {
                "requestId": secrets.token_hex(8),
                "requestType": "incoming.Identity_Token",
            },
        },
        status=status,
    )
