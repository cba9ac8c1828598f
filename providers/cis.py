"""IBM Cloud Internet Services (CIS) DNS through its REST API, with aiohttp (no SDK).

CIS keeps one DNS record per TXT value, so the adapter never rewrites a set: an add
creates one record ("the record already exists" counts as success, which makes retries
and concurrent writers harmless) and a removal lists the records at the name and deletes
by id those whose content is the value. Nothing is remembered between calls, so a fresh
process removes what another one added, and other values at the name are never touched.

Two ways to authenticate, both sent as `X-Auth-User-Token`:

* `user_token`: the ordering user's own IAM access token, taken from the verified
  notification (`ctx.user_token`) and used for that one change only (and, the first
  time, to look up the change's zone). The receiver holds
  no standing credential; a change without a token (sweep, CLI) fails with
  `ProviderAuthError` instead of acting under some other identity.
* `api_key`: an API key exchanged at IAM for an access token, cached until shortly
  before it expires; concurrent calls share one exchange.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self
from urllib.parse import quote as percent_encoded

import aiohttp
import yarl

from providers.base import Capabilities, ChangeContext, ZoneRef, setting
from providers.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ZoneNotFound,
)
from providers.rate_budget import RateBudget
from providers.retry_after import retry_after_seconds
from providers.secret import Secret
from providers.txt import unquote

NAME = "cis"
DEFAULT_ENDPOINT = "https://api.cis.cloud.ibm.com"
DEFAULT_IAM_ENDPOINT = "https://iam.cloud.ibm.com"
APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"
PER_PAGE = 100  # a challenge name holds a handful of records: one page, as a rule
MAX_PAGES = 1000
# Cloudflare's codes, which CIS passes through; the message is matched as well.
_ALREADY_EXISTS = frozenset({81057, 81058})
_RECORD_MISSING = frozenset({81044})
# Refresh an IAM token once this share of its lifetime has passed (IBM's SDKs use 80%).
_REFRESH_AFTER = 0.8


@dataclass(frozen=True)
class CisSettings:
    instance_crn: str = setting(
        help="CRN of the CIS instance"
        " (crn:v1:bluemix:public:internet-svcs:global:a/<account>:<guid>::)."
    )
    auth: Literal["user_token", "api_key"] = setting(
        help="user_token: act as the ordering user with the notification's verified IAM"
        " token (no standing credential; sweeps cannot remove; needs user_token.verify)."
        " api_key: exchange api_key at IAM.",
        acts_as_user_when="user_token",
    )
    zone_id: str | None = setting(
        default=None,
        help="The CIS domain's zone id (default: found by name, the longest CIS domain"
        " containing the zone).",
    )
    api_key: Secret | None = setting(
        default=None,
        secret=True,
        help="IBM Cloud API key (of a service ID with Manager on the domain's DNS"
        " records); required when auth = api_key.",
    )
    endpoint: str = setting(
        default=DEFAULT_ENDPOINT,
        help="CIS API base URL (https://api.private.cis.cloud.ibm.com from IBM Cloud's"
        " private network; a fake in tests).",
    )
    iam_endpoint: str = setting(
        default=DEFAULT_IAM_ENDPOINT, help="IAM base URL for the API key exchange."
    )
    timeout_seconds: float = setting(default=15.0, help="Timeout of one HTTP call.")

    def problems(self) -> list[tuple[str, str]]:
        """(option, why) for options that can never work: reported when the config is read."""
        found = []
        if not self.instance_crn.startswith("crn:"):
            found.append(("instance_crn", "instance_crn must be a CRN (crn:v1:...)"))
        if self.auth == "api_key" and self.api_key is None:
            found.append(("api_key", 'auth = "api_key" needs api_key_env or api_key_file'))
        if self.auth == "user_token" and self.api_key is not None:
            found.append(
                ("api_key", 'api_key is set but auth = "user_token" would never use it: remove one')
            )
        return found


@dataclass(frozen=True)
class _Response:
    status: int
    payload: Mapping[str, Any]
    retry_after: str | None

    @property
    def ok(self) -> bool:
        return self.status < 400 and self.payload.get("success", True) is not False

    def error_codes(self) -> set[int]:
        return {e["code"] for e in _errors(self.payload) if isinstance(e.get("code"), int)}

    def describe(self) -> str:
        found = [
            f"{e.get('code', '?')} {e.get('message', '')}".strip() for e in _errors(self.payload)
        ]
        return f"HTTP {self.status}" + (f": {'; '.join(found)}" if found else "")


class IamTokens:
    """API key -> IAM access token, cached and refreshed before expiry, single-flight."""

    def __init__(self, iam_endpoint: str, api_key: Secret, clock: Callable[[], float]) -> None:
        self._url = iam_endpoint.rstrip("/") + "/identity/token"
        self._api_key = api_key
        self._clock = clock
        self._token: Secret | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self, session: aiohttp.ClientSession) -> str:
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token.reveal()
        async with self._lock:  # whoever waited here finds the fresh token
            if self._token is None or self._clock() >= self._refresh_at:
                await self._exchange(session)
            assert self._token is not None
            return self._token.reveal()

    def forget(self, token: str) -> None:
        """CIS refused this token (revoked early?): the next call exchanges again."""
        if self._token is not None and self._token.reveal() == token:
            self._token = None

    async def _exchange(self, session: aiohttp.ClientSession) -> None:
        form = {"grant_type": APIKEY_GRANT, "apikey": self._api_key.reveal()}
        try:
            async with session.post(
                self._url, data=form, headers={"Accept": "application/json"}
            ) as resp:
                status, payload = resp.status, await _json(resp)
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(NAME, f"cannot reach IAM ({type(exc).__name__})") from None
        what = f"IAM API key exchange: HTTP {status}"
        detail = " ".join(str(payload.get(k, "")) for k in ("errorCode", "errorMessage")).strip()
        if detail:
            what += f" {detail}"
        if status in (400, 401, 403):
            raise ProviderAuthError(NAME, what)
        if status == 429:
            raise ProviderRateLimited(NAME, what, retry_after=retry_after_seconds(retry_after))
        if status >= 500:
            raise ProviderUnavailable(NAME, what)
        token = payload.get("access_token")
        if status >= 300 or not isinstance(token, str) or not token:
            raise ProviderAuthError(NAME, f"{what} (no access_token in the answer)")
        now = self._clock()
        lifetime = _lifetime(payload, now)
        self._token = Secret(token)
        self._refresh_at = now + lifetime * _REFRESH_AFTER


class CisProvider:
    name: ClassVar[str] = NAME
    Settings: ClassVar[type[CisSettings]] = CisSettings
    capabilities: ClassVar[Capabilities] = Capabilities()
    wants_user_token: ClassVar[bool] = True
    # CIS inherits Cloudflare's limit of 1200 requests per 5 minutes per user.
    default_rate_per_second: ClassVar[float | None] = 4.0

    def __init__(
        self, settings: CisSettings, budget: RateBudget, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self._budget = budget
        self._base = (
            settings.endpoint.rstrip("/") + "/v1/" + percent_encoded(settings.instance_crn, safe="")
        )
        self._iam = (
            IamTokens(settings.iam_endpoint, settings.api_key, clock)
            if settings.auth == "api_key" and settings.api_key is not None
            else None
        )
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def open(cls, settings: CisSettings, budget: RateBudget) -> Self:
        for option, problem in settings.problems():
            raise (ProviderAuthError if option == "api_key" else ProviderRejected)(NAME, problem)
        return cls(settings, budget)

    # --- the contract -------------------------------------------------------------------

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        if self.settings.zone_id:
            return self.settings.zone_id
        return await self._find_zone(zone_name, await self._token(ctx))

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        token = await self._token(None)
        return frozenset(unquote(r["content"]) for r in await self._records(zone, fqdn, token))

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None:
        token = await self._token(ctx)
        body = {"type": "TXT", "name": fqdn, "content": value, "ttl": ttl}
        path = f"/zones/{_segment(zone.handle)}/dns_records"
        response = await self._call("POST", path, token, body)
        if response.ok or _already_exists(response):
            return
        raise self._error(response, token, "create")

    async def remove_txt(self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext) -> None:
        token = await self._token(ctx)
        for record in await self._records(zone, fqdn, token):
            if unquote(record["content"]) != value:
                continue  # another value at the name: never ours to touch
            path = f"/zones/{_segment(zone.handle)}/dns_records/{_segment(str(record['id']))}"
            response = await self._call("DELETE", path, token)
            if not response.ok and not (
                response.status == 404 and response.error_codes() & _RECORD_MISSING
            ):  # gone already: someone else removed it, which is what we wanted
                raise self._error(response, token, "delete")

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- CIS calls ----------------------------------------------------------------------

    async def _token(self, ctx: ChangeContext | None) -> str:
        if self._iam is not None:
            return await self._iam.token(self._http())
        if ctx is None or ctx.user_token is None:
            raise ProviderAuthError(
                NAME,
                'auth = "user_token" acts only as the ordering user, and this call carries'
                " no verified user token (a sweep, a CLI call, or a notification without"
                ' userToken); use auth = "api_key" to let the receiver act on its own',
            )
        return ctx.user_token.reveal()

    def _error(self, response: _Response, token: str, what: str) -> ProviderError:
        error = _translate(response, what)
        if isinstance(error, ProviderAuthError) and response.status == 401 and self._iam:
            self._iam.forget(token)
        return error

    async def _find_zone(self, zone_name: str, token: str) -> str:
        labels = zone_name.split(".")
        for start in range(len(labels) - 1):  # the longest CIS domain containing zone_name
            candidate = ".".join(labels[start:])
            for zone in await self._pages("/zones", token, {"name": candidate}, "find zone"):
                if str(zone.get("name", "")).lower().rstrip(".") == candidate:
                    return str(zone["id"])
        raise ZoneNotFound(NAME, f"no CIS domain in this instance contains {zone_name}")

    async def _records(self, zone: ZoneRef, fqdn: str, token: str) -> list[dict[str, Any]]:
        path = f"/zones/{_segment(zone.handle)}/dns_records"
        found = await self._pages(path, token, {"type": "TXT", "name": fqdn}, "list")
        return [
            record
            for record in found
            if record.get("type") == "TXT"
            and str(record.get("name", "")).lower().rstrip(".") == fqdn
            and isinstance(record.get("content"), str)
            and record.get("id")
        ]

    async def _pages(
        self, path: str, token: str, query: dict[str, str], what: str
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            params = {**query, "page": str(page), "per_page": str(PER_PAGE)}
            response = await self._call("GET", path, token, params=params)
            if not response.ok:
                raise self._error(response, token, what)
            batch = response.payload.get("result") or []
            if not isinstance(batch, list):
                raise ProviderUnavailable(NAME, f"{what}: malformed answer (result is no list)")
            results.extend(r for r in batch if isinstance(r, dict))
            info = response.payload.get("result_info") or {}
            per_page = info.get("per_page") or PER_PAGE
            total = info.get("total_count")
            if len(batch) < per_page or (isinstance(total, int) and page * per_page >= total):
                break
        return results

    async def _call(
        self,
        method: str,
        path: str,
        token: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
    ) -> _Response:
        url = yarl.URL(self._base + path, encoded=True)  # keep the CRN one encoded segment
        if params:
            url = url.with_query(params)
        headers = {"X-Auth-User-Token": token, "Accept": "application/json"}
        await self._budget.take()
        try:
            async with self._http().request(method, url, json=body, headers=headers) as resp:
                return _Response(resp.status, await _json(resp), resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(NAME, f"cannot reach CIS ({type(exc).__name__})") from None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds, sock_connect=5),
                headers={"User-Agent": "dns-challenge-receiver (cis)"},
            )
        return self._session


def _translate(response: _Response, what: str) -> ProviderError:
    text = f"{what}: {response.describe()}"
    status = response.status
    if status in (401, 403):
        return ProviderAuthError(NAME, text)
    if status == 404:
        return ZoneNotFound(NAME, text)
    if status == 429:
        return ProviderRateLimited(
            NAME, text, retry_after=retry_after_seconds(response.retry_after)
        )
    if status >= 500:
        return ProviderUnavailable(NAME, text)
    return ProviderRejected(NAME, text)


def _already_exists(response: _Response) -> bool:
    if response.status != 400:
        return False
    if response.error_codes() & _ALREADY_EXISTS:
        return True
    return any(
        "already exists" in str(e.get("message", "")).lower() for e in _errors(response.payload)
    )


def _errors(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    errors = payload.get("errors")
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object of an answer; {} for anything else (a proxy's HTML error page)."""
    try:
        payload = await resp.json(content_type=None)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _segment(text: str) -> str:
    return percent_encoded(text, safe="")


def _lifetime(payload: Mapping[str, Any], now: float) -> float:
    expires_in = payload.get("expires_in")
    if isinstance(expires_in, int | float) and expires_in > 0:
        return float(expires_in)
    expiration = payload.get("expiration")
    if isinstance(expiration, int | float) and expiration > now:
        return float(expiration) - now
    return 0.0  # unknown: use it for this call, exchange again next time
