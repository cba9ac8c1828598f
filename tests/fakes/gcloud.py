"""A faithful local fake of the Cloud DNS v1 REST API, for the real google-cloud-dns client.

There is no Google emulator for Cloud DNS (deps.md §3). This aiohttp app answers the paths
the client library uses, with the JSON shapes it parses, and with Cloud DNS's semantics:

* a Change applies atomically, deletions first: each deletion must match the current set
  exactly (412 conditionNotMet) and exist (404 notFound naming `entity.change.deletions[i]`),
  each addition must be new (409 alreadyExists); any failure leaves the zone untouched;
* a Change is `pending` for `pending_polls` reads, then `done`;
* `rrsets` and `managedZones` lists page with `maxResults`/`pageToken`/`nextPageToken` and
  honour the `name`/`type` and `dnsName` filters (unless `honour_filters` is off);
* errors use Google's body, `{"error": {"code", "message", "errors": [{"reason"}],
  "status"}}`: 401 without a valid token (when `require_auth`), 403 for another project,
  404 for an unknown zone, 429 with Retry-After and 5xx by injection, once, N times or at a
  seeded rate;
* `POST /token` is an OAuth token endpoint for service-account keys (JWT bearer grant,
  signature checked against the registered public key), so the credentials_file path
  runs for real.

Observers read the state directly (`values`, `rrset`); `seed` writes behind the client's
back. Every request is counted by operation in `calls`, every refused Change by reason in
`rejections`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

API = "/dns/v1/projects/{project}/managedZones"
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}
TRANSIENT = ((503, "backendError"), (500, "internalError"), (429, "rateLimitExceeded"))
# google-auth signs service-account grants for this audience whatever the token_uri.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
API_OPERATIONS = ("zones", "zone", "read", "write", "change")


class GoogleError(Exception):
    def __init__(
        self, status: int, reason: str, message: str, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.retry_after = (
            status,
            reason,
            message,
            retry_after,
        )

    def response(self) -> web.Response:
        body = {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
                "status": STATUS_NAMES.get(self.status, "UNKNOWN"),
            }
        }
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        return web.json_response(body, status=self.status, headers=headers)


@dataclass
class Fault:
    status: int
    reason: str
    message: str
    operation: str  # one of API_OPERATIONS, "token" or "any"
    remaining: int
    retry_after: str | None
    after_applying: bool = False  # the request takes effect, its answer is lost
    hang_seconds: float = 0.0  # answer only this late (a client's timeout fires first)
    fired: int = 0


@dataclass
class FlakyRate:
    rate: float
    rng: random.Random
    operations: tuple[str, ...]
    retry_after: str | None
    injected: int = 0
    lost_answers: int = 0


@dataclass
class ManagedZone:
    name: str
    dns_name: str  # absolute, with the trailing dot, lower case
    visibility: str
    id: str
    created: str
    rrsets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    change_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def contains(self, name: str) -> bool:
        return name == self.dns_name or name.endswith("." + self.dns_name)

    def resource(self) -> dict[str, Any]:
        return {
            "kind": "dns#managedZone",
            "name": self.name,
            "dnsName": self.dns_name,
            "id": self.id,
            "description": "",
            "nameServers": [f"ns-cloud-a{i}.googledomains.com." for i in range(1, 5)],
            "creationTime": self.created,
            "visibility": self.visibility,
        }


@dataclass
class CloudDnsFake:
    project: str = "test-project"
    page_size: int = 100
    pending_polls: int = 0
    honour_filters: bool = True
    require_auth: bool = False
    zones: dict[str, ManagedZone] = field(default_factory=dict)
    service_accounts: dict[str, bytes] = field(default_factory=dict)  # email -> public PEM
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> email
    calls: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    filtered_reads: int = 0
    faults: list[Fault] = field(default_factory=list)
    flaky: FlakyRate | None = None
    url: str = ""
    _zone_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    # --- set-up and observation (the test's side, never through the adapter) -----------

    def add_zone(
        self, dns_name: str, *, name: str | None = None, visibility: str = "public"
    ) -> ManagedZone:
        dns_name = dns_name.lower().rstrip(".") + "."
        name = name or dns_name.rstrip(".").replace(".", "-")
        zone = ManagedZone(name, dns_name, visibility, str(next(self._zone_ids)), _now())
        self.zones[name] = zone
        return zone

    def zone_for(self, fqdn: str) -> ManagedZone:
        name = fqdn.lower().rstrip(".") + "."
        public = [z for z in self.zones.values() if z.visibility == "public" and z.contains(name)]
        return max(public, key=lambda z: len(z.dns_name))

    def rrset(self, fqdn: str, rtype: str = "TXT") -> dict[str, Any] | None:
        name = fqdn.lower().rstrip(".") + "."
        return self.zone_for(fqdn).rrsets.get((name, rtype))

    def values(self, fqdn: str) -> list[str]:
        """Every TXT value at `fqdn`, unquoted (test values need no unescaping), sorted."""
        rrset = self.rrset(fqdn)
        return sorted(r[1:-1] for r in rrset["rrdatas"]) if rrset else []

    def seed(self, fqdn: str, value: str, ttl: int = 300, *, rrdata: str | None = None) -> None:
        """Another writer (a console user, another tool) adds a value (`rrdata`: spelled
        so, in presentation form)."""
        name = fqdn.lower().rstrip(".") + "."
        zone = self.zone_for(fqdn)
        current = zone.rrsets.get((name, "TXT"))
        rrdatas = [*(current["rrdatas"] if current else []), rrdata or f'"{value}"']
        ttl = current["ttl"] if current else ttl
        zone.rrsets[(name, "TXT")] = _rrset(name, "TXT", ttl, rrdatas)

    def inject(
        self,
        status: int,
        reason: str,
        *,
        times: int = 1,
        operation: str = "any",
        message: str | None = None,
        retry_after: str | None = None,
        after_applying: bool = False,
        hang_seconds: float = 0.0,
    ) -> Fault:
        """The next `times` requests for `operation` fail with this error (with
        `after_applying`, once they have taken effect: a 5xx whose outcome is unknown;
        with `hang_seconds`, that late)."""
        text = message or f"{reason} (injected)"
        fault = Fault(
            status, reason, text, operation, times, retry_after, after_applying, hang_seconds
        )
        self.faults.append(fault)
        return fault

    def fail_at_rate(
        self,
        rate: float,
        *,
        seed: int,
        operations: tuple[str, ...] = API_OPERATIONS,
        retry_after: str | None = "0",
    ) -> None:
        """Each API request fails with a transient error (503, 500 or 429) at `rate`; a
        failing 5xx Change is applied first half of the time (its answer is lost)."""
        self.flaky = FlakyRate(rate, random.Random(seed), operations, retry_after)

    def issue_token(self, email: str) -> str:
        token = "ya29.fake-" + secrets.token_urlsafe(16)
        self.tokens[token] = email
        return token

    # --- the API ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        zones, zone = API, API + "/{zone}"
        app.router.add_get(zones, self._list_zones, name="zones")
        app.router.add_get(zone, self._get_zone, name="zone")
        app.router.add_get(zone + "/rrsets", self._list_rrsets, name="read")
        app.router.add_post(zone + "/changes", self._create_change, name="write")
        app.router.add_get(zone + "/changes/{change}", self._get_change, name="change")
        app.router.add_post("/token", self._token, name="token")
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        operation = request.match_info.route.name or "unknown"
        self.calls[operation] += 1
        try:
            failure, after_applying, hang_seconds = self._failure(operation)
            if hang_seconds:
                await asyncio.sleep(hang_seconds)
            if failure is not None and not after_applying:
                raise failure
            if operation == "unknown":
                raise GoogleError(404, "notFound", f"{request.path} is not an API path")
            if operation != "token":
                self._authorise(request)
            response: web.StreamResponse = await handler(request)
            if failure is not None:
                raise failure
            return response
        except GoogleError as exc:
            return exc.response()

    def _failure(self, operation: str) -> tuple[GoogleError | None, bool, float]:
        for fault in self.faults:
            if fault.remaining > 0 and fault.operation in (operation, "any"):
                fault.remaining -= 1
                fault.fired += 1
                error = GoogleError(fault.status, fault.reason, fault.message, fault.retry_after)
                return error, fault.after_applying, fault.hang_seconds
        flaky = self.flaky
        if flaky and operation in flaky.operations and flaky.rng.random() < flaky.rate:
            flaky.injected += 1
            status, reason = flaky.rng.choice(TRANSIENT)
            retry_after = flaky.retry_after if status == 429 else None
            lost = operation == "write" and status >= 500 and flaky.rng.random() < 0.5
            flaky.lost_answers += lost
            error = GoogleError(status, reason, f"{reason} (injected at random)", retry_after)
            return error, lost, 0.0
        return None, False, 0.0

    def _authorise(self, request: web.Request) -> None:
        if self.require_auth:
            header = request.headers.get("Authorization", "")
            if header.removeprefix("Bearer ") not in self.tokens:
                raise GoogleError(
                    401,
                    "authError",
                    "Request had invalid authentication credentials. Expected OAuth 2"
                    " access token, login cookie or other valid authentication credential.",
                )
        if request.match_info["project"] != self.project:
            raise GoogleError(
                403,
                "forbidden",
                f"The caller does not have permission on project {request.match_info['project']}",
            )

    def _zone(self, request: web.Request) -> ManagedZone:
        name = request.match_info["zone"]
        if name not in self.zones:
            raise GoogleError(
                404,
                "notFound",
                f"The 'parameters.managedZone' resource named '{name}' does not exist.",
            )
        return self.zones[name]

    async def _list_zones(self, request: web.Request) -> web.Response:
        wanted = request.query.get("dnsName")
        zones = [z.resource() for z in sorted(self.zones.values(), key=lambda z: z.name)]
        if wanted is not None and self.honour_filters:
            zones = [z for z in zones if z["dnsName"] == wanted.lower().rstrip(".") + "."]
        return self._page(request, "dns#managedZonesListResponse", "managedZones", zones)

    async def _get_zone(self, request: web.Request) -> web.Response:
        return web.json_response(self._zone(request).resource())

    async def _list_rrsets(self, request: web.Request) -> web.Response:
        zone = self._zone(request)
        name, rtype = request.query.get("name"), request.query.get("type")
        if rtype is not None and name is None:
            raise GoogleError(400, "required", "Required parameter: name (when type is given)")
        rrsets = [zone.rrsets[key] for key in sorted(zone.rrsets)]
        if name is not None:
            self.filtered_reads += 1
            if self.honour_filters:
                wanted = name.lower()
                rrsets = [r for r in rrsets if r["name"] == wanted and rtype in (None, r["type"])]
        return self._page(request, "dns#resourceRecordSetsListResponse", "rrsets", rrsets)

    def _page(
        self, request: web.Request, kind: str, key: str, items: list[dict[str, Any]]
    ) -> web.Response:
        size = min(self.page_size, int(request.query.get("maxResults", self.page_size)))
        token = request.query.get("pageToken", "offset-0")
        if not token.startswith("offset-") or not token[7:].isdigit():
            raise GoogleError(400, "invalid", f"Invalid value for 'pageToken': {token}")
        start = int(token[7:])
        body: dict[str, Any] = {"kind": kind, key: items[start : start + size]}
        if start + size < len(items):
            body["nextPageToken"] = f"offset-{start + size}"
        return web.json_response(body)

    async def _create_change(self, request: web.Request) -> web.Response:
        zone = self._zone(request)
        try:
            body = json.loads(await request.read())
            additions = [
                self._parsed(zone, r, "additions", i)
                for i, r in enumerate(body.get("additions") or [])
            ]
            deletions = [
                self._parsed(zone, r, "deletions", i)
                for i, r in enumerate(body.get("deletions") or [])
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GoogleError(400, "invalid", f"Invalid JSON payload received. {exc}") from None
        if not additions and not deletions:
            raise GoogleError(
                400, "required", "The 'entity.change' resource must add or delete something."
            )
        # No await from here on: the Change is checked and applied atomically.
        state = dict(zone.rrsets)
        for index, deletion in enumerate(deletions):
            key = (deletion["name"], deletion["type"])
            current = state.get(key)
            if current is None:
                self.rejections["notFound"] += 1
                raise GoogleError(
                    404,
                    "notFound",
                    f"The 'entity.change.deletions[{index}]' resource named"
                    f" '{deletion['name']} ({deletion['type']})' does not exist.",
                )
            if current["ttl"] != deletion["ttl"] or sorted(current["rrdatas"]) != sorted(
                deletion["rrdatas"]
            ):
                self.rejections["conditionNotMet"] += 1
                raise GoogleError(
                    412,
                    "conditionNotMet",
                    f"Precondition not met for 'entity.change.deletions[{index}]'",
                )
            del state[key]
        for index, addition in enumerate(additions):
            key = (addition["name"], addition["type"])
            if key in state:
                self.rejections["alreadyExists"] += 1
                raise GoogleError(
                    409,
                    "alreadyExists",
                    f"The resource 'entity.change.additions[{index}]' named"
                    f" '{addition['name']} ({addition['type']})' already exists",
                )
            state[key] = addition
        zone.rrsets = state
        change_id = str(next(zone.change_ids))
        zone.changes[change_id] = {
            "kind": "dns#change",
            "id": change_id,
            "startTime": _now(),
            "additions": additions,
            "deletions": deletions,
        }
        zone.polls[change_id] = 0
        status = "pending" if self.pending_polls else "done"
        return web.json_response({**zone.changes[change_id], "status": status})

    def _parsed(
        self, zone: ManagedZone, raw: dict[str, Any], kind: str, index: int
    ) -> dict[str, Any]:
        where = f"entity.change.{kind}[{index}]"
        name = str(raw["name"]).lower()
        if not name.endswith(".") or not zone.contains(name):
            raise GoogleError(
                400,
                "invalid",
                f"Invalid value for '{where}.name': '{raw['name']}' is not inside {zone.dns_name}",
            )
        rrdatas = raw.get("rrdatas") or []
        if not rrdatas or len(rrdatas) > 100 or not all(isinstance(r, str) for r in rrdatas):
            raise GoogleError(400, "invalid", f"Invalid value for '{where}.rrdatas'")
        return _rrset(name, str(raw["type"]), int(raw["ttl"]), list(rrdatas))

    async def _get_change(self, request: web.Request) -> web.Response:
        zone = self._zone(request)
        change_id = request.match_info["change"]
        if change_id not in zone.changes:
            raise GoogleError(
                404,
                "notFound",
                f"The 'parameters.changeId' resource named '{change_id}' does not exist.",
            )
        zone.polls[change_id] += 1
        done = zone.polls[change_id] > self.pending_polls
        return web.json_response(
            {**zone.changes[change_id], "status": "done" if done else "pending"}
        )

    async def _token(self, request: web.Request) -> web.Response:
        """OAuth 2.0 JWT bearer grant, as Google's token endpoint answers it."""
        import jwt

        form = await request.post()
        assertion = str(form.get("assertion", ""))
        try:
            issuer = jwt.decode(assertion, options={"verify_signature": False})["iss"]
            jwt.decode(
                assertion,
                self.service_accounts[issuer],
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
            )
        except (jwt.PyJWTError, KeyError, ValueError):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                status=400,
            )
        return web.json_response(
            {"access_token": self.issue_token(issuer), "expires_in": 3599, "token_type": "Bearer"}
        )


def _rrset(name: str, rtype: str, ttl: int, rrdatas: list[str]) -> dict[str, Any]:
    return {
        "kind": "dns#resourceRecordSet",
        "name": name,
        "type": rtype,
        "ttl": ttl,
        "rrdatas": rrdatas,
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
