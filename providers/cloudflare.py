"""Cloudflare DNS through the official SDK's async client.

Cloudflare keeps every TXT value as a record of its own, with its own id. So adding is
one create (an "identical record already exists" answer means it is there already), and
removing looks the value up by name and deletes the records that hold it, by id. Nothing
is remembered between calls: a fresh process removes what another one added, and two
writers cannot lose each other's values, since no call rewrites a set.

Cloudflare asks for TXT content as quoted character strings and now writes `"value"`,
but it stores what it is given: records made by other tools or by hand may be unquoted.
Reading accepts both forms; removing deletes every record whose text is the value.

The SDK (about 1 s and 100 MB to import) is imported only here, when a zone uses it.
List calls read exactly one page: the SDK's auto-pagination always fetches one more.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

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
from providers.txt import quote, unquote

if TYPE_CHECKING:
    from cloudflare import AsyncCloudflare

T = TypeVar("T")
NAME = "cloudflare"
DEFAULT_ENDPOINT = "https://api.cloudflare.com/client/v4"
# Page sizes within the API schema's bounds (zones: at most 50; DNS records: 1-5,000,000).
ZONES_PER_PAGE = 50
RECORDS_PER_PAGE = 100
# Error codes in Cloudflare's response envelope.
_ALREADY_THERE = frozenset({81057, 81058})  # record exists / identical record exists
_RECORD_GONE = frozenset({81044})  # record does not exist
_NO_SUCH_ZONE = frozenset({7003})  # "Could not route to /zones/<id>/...": no such zone id
_AUTH = frozenset({6003, 6111, 9106, 9109, 10000})  # bad header, bad token, no permission


@dataclass(frozen=True)
class CloudflareSettings:
    api_token: Secret = setting(
        help="API token with Zone:Read and DNS:Edit on the zone (never an account-wide"
        " Global API Key).",
        secret=True,
    )
    zone_id: str | None = setting(
        default=None,
        help="Use this zone id instead of finding the zone by name (then Zone:Read is not needed).",
    )
    endpoint: str = setting(
        default=DEFAULT_ENDPOINT, help="API base URL, for API-compatible services and tests."
    )
    timeout_seconds: float = setting(default=15.0, help="Timeout of each API request.")


class CloudflareProvider:
    name: ClassVar[str] = NAME
    Settings: ClassVar[type[CloudflareSettings]] = CloudflareSettings
    capabilities: ClassVar[Capabilities] = Capabilities()
    wants_user_token: ClassVar[bool] = False
    # Cloudflare allows 1,200 requests per 5 minutes per token (4/s). A little under, so
    # that the bucket's burst cannot carry a busy 5 minutes over the limit.
    default_rate_per_second: ClassVar[float | None] = 3.8

    def __init__(self, settings: CloudflareSettings, budget: RateBudget) -> None:
        self.settings = settings
        self._budget = budget
        self._client: AsyncCloudflare | None = None

    @classmethod
    async def open(cls, settings: CloudflareSettings, budget: RateBudget) -> Self:
        provider = cls(settings, budget)
        # No network I/O; the SDK import happens here, at startup, rather than blocking
        # the event loop for a second on the first challenge.
        provider._client = _client(settings)
        return provider

    # --- the contract -------------------------------------------------------------------

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        if self.settings.zone_id:
            return self.settings.zone_id
        labels = zone_name.split(".")
        for start in range(len(labels) - 1):  # the longest zone that contains zone_name
            candidate = ".".join(labels[start:])
            page = await self._read(
                functools.partial(self._cf().zones.list, name=candidate, per_page=ZONES_PER_PAGE)
            )
            found = [zone for zone in page.result if zone.name.lower() == candidate]
            if len(found) > 1:  # the token sees several accounts: only a live one will do
                active = [zone for zone in found if zone.status == "active"]
                if len(active) != 1:
                    raise ProviderRejected(
                        NAME, f"{len(found)} zones are named {candidate}: set zone_id"
                    )
                found = active
            if found:
                return found[0].id
        raise ZoneNotFound(NAME, f"no zone this token can read contains {zone_name}")

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        return frozenset(value for _, value in await self._records(zone, fqdn))

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None:
        await self._call(
            lambda: self._cf().dns.records.create(
                zone_id=zone.handle, type="TXT", name=fqdn, content=quote(value), ttl=ttl
            ),
            success_codes=_ALREADY_THERE,
        )

    async def remove_txt(self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext) -> None:
        for record_id, found in await self._records(zone, fqdn):
            if found == value:
                await self._call(
                    functools.partial(
                        self._cf().dns.records.delete, record_id, zone_id=zone.handle
                    ),
                    success_codes=_RECORD_GONE,  # someone else removed it meanwhile
                )

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # --- Cloudflare calls ---------------------------------------------------------------

    def _cf(self) -> AsyncCloudflare:
        if self._client is None:
            raise ProviderUnavailable(NAME, "the adapter is closed")
        return self._client

    async def _records(self, zone: ZoneRef, fqdn: str) -> list[tuple[str, str]]:
        """(record id, unquoted text) of every TXT record at `fqdn`, one page at a time."""
        found: list[tuple[str, str]] = []
        page_number = 1
        while True:
            page = await self._read(
                functools.partial(
                    self._cf().dns.records.list,
                    zone_id=zone.handle,
                    type="TXT",
                    name={"exact": fqdn},
                    page=page_number,
                    per_page=RECORDS_PER_PAGE,
                )
            )
            for record in page.result:
                record_any: Any = record  # a union of record types; all TXT here
                if record_any.type == "TXT" and record_any.name.lower() == fqdn:
                    found.append((str(record_any.id), unquote(record_any.content or "")))
            if len(page.result) < RECORDS_PER_PAGE:
                return found
            page_number += 1

    async def _read(self, operation: Callable[[], Awaitable[T]]) -> T:
        result = await self._call(operation)
        assert result is not None  # only success_codes make None
        return result

    async def _call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        success_codes: Collection[int] = (),
    ) -> T | None:
        """One API request: drawn from the token's budget, errors translated.

        An error whose Cloudflare codes include one of `success_codes` means the wanted
        state is already there; it returns None.
        """
        import cloudflare

        await self._budget.take()
        try:
            return await operation()
        except cloudflare.APIStatusError as exc:
            if success_codes and _codes(exc.body) & set(success_codes):
                return None
            raise _translate_status(exc.status_code, exc.response.headers, exc.body) from None
        except cloudflare.APITimeoutError:
            raise ProviderUnavailable(
                NAME, f"no answer within {self.settings.timeout_seconds:g}s"
            ) from None
        except cloudflare.APIConnectionError as exc:
            raise ProviderUnavailable(
                NAME, f"cannot reach the API ({type(exc.__cause__).__name__})"
            ) from None
        except cloudflare.APIError as exc:  # e.g. a response the SDK could not read
            raise ProviderUnavailable(NAME, f"{type(exc).__name__}: {exc.message}") from None


def _client(settings: CloudflareSettings) -> AsyncCloudflare:
    from cloudflare import AsyncCloudflare  # imported only when a zone uses cloudflare

    client = AsyncCloudflare(
        api_token=settings.api_token.reveal(),
        base_url=settings.endpoint,  # explicit: CLOUDFLARE_BASE_URL must not redirect us
        max_retries=0,  # the core owns retries
        timeout=settings.timeout_seconds,
    )
    # The SDK also picks up CLOUDFLARE_API_KEY / CLOUDFLARE_EMAIL from the environment
    # and prefers them over the token. Only the configured token may be used.
    client.api_key = client.api_email = client.user_service_key = None
    client.zones, client.dns.records  # noqa: B018 - import the SDK's lazy resources now
    return client


def _codes(body: object) -> set[int]:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set()
    return {e["code"] for e in errors if isinstance(e, dict) and isinstance(e.get("code"), int)}


def _describe(status: int, body: object) -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        text = "; ".join(
            f"{e.get('code')}: {e.get('message')}" if isinstance(e, dict) else str(e)
            for e in errors
        )
        return f"HTTP {status}: {text}"
    return f"HTTP {status}"  # Cloudflare's edge answers 5xx with an HTML page


def _translate_status(status: int, headers: Any, body: object) -> ProviderError:
    text, codes = _describe(status, body), _codes(body)
    if status == 429:
        return ProviderRateLimited(
            NAME, text, retry_after=retry_after_seconds(headers.get("retry-after"))
        )
    if status >= 500:
        return ProviderUnavailable(NAME, text)
    if status in (401, 403) or codes & _AUTH:
        return ProviderAuthError(NAME, text)
    if status == 404 or codes & _NO_SUCH_ZONE:
        return ZoneNotFound(NAME, text)
    return ProviderRejected(NAME, text)
