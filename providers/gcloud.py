"""Google Cloud DNS through google-cloud-dns.

Cloud DNS changes whole record sets, and a Change is atomic: its deletions must name the
exact current sets (else 412 conditionNotMet, or 404 when the set is gone) and its
additions must be new (else 409 alreadyExists). So every write deletes the exact set it
believes is there and adds the new one in ONE Change; if anyone else changed the set
meanwhile, the Change fails, the adapter raises `ProviderConflict`, and the core retries
after a fresh read. Lost updates are impossible, also between processes.

As for Route 53, the adapter remembers the sets it last read or wrote and writes from that
memory without reading first (`providers.txtsets.Hints`). The memory is only a
hint: a wrong guess fails the Change like a concurrent writer would, and the retry reads.

The client library is blocking (requests): every call runs in a worker thread and draws
from the project's rate budget first. Its list methods take no filters, but the iterators
they return accept documented `extra_params`: reads send `name`/`type` (and zone lookups
`dnsName`), so a read costs one small request however big the zone is. Results are still
filtered here, so a server that ignores the filters is only slower, never wrong.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from providers.base import Capabilities, ChangeContext, TxtChange, ZoneRef, setting
from providers.errors import (
    ProviderAuthError,
    ProviderConflict,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ZoneNotFound,
)
from providers.rate_budget import RateBudget
from providers.retry_after import retry_after_seconds
from providers.txtsets import Hints, RecordSet

DnsClient = Any  # google-cloud-dns ships no type information
T = TypeVar("T")
NAME = "gcloud"
SCOPES = ("https://www.googleapis.com/auth/ndev.clouddns.readwrite",)
# Cloud DNS's documented limits per Change.
MAX_RRSETS_PER_CHANGE = 1000  # additions, and separately deletions
MAX_RRDATA_BYTES_PER_CHANGE = 100_000
# Google APIs report some throttling as 403 with one of these reasons.
_THROTTLED_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"}
# "The 'entity.change.deletions[3]' resource named ... does not exist", "Precondition not
# met for 'entity.change.deletions[0]'", "The resource 'entity.change.additions[1]' ..."
_CHANGE_ENTRY = re.compile(r"entity\.change\.(additions|deletions)\[(\d+)\]")


@dataclass(frozen=True)
class GcloudSettings:
    project: str = setting(
        help="Google Cloud project id that owns the managed zones. Always passed to the"
        " client, never guessed from the environment."
    )
    managed_zone: str | None = setting(
        default=None,
        help="The managed zone's name (e.g. example-com). Unset: the longest public managed"
        " zone whose DNS name contains the configured zone; if two public zones share that"
        " name, set this.",
    )
    credentials_file: Path | None = setting(
        default=None,
        help="A credentials JSON file: a service-account key, a workload identity federation"
        " config (external_account) or authorized_user; other kinds are refused. Unset:"
        " Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, the metadata"
        " server on GCE/GKE/Cloud Run, or gcloud auth application-default login).",
    )
    endpoint: str | None = setting(
        default=None,
        help="API base URL (default https://dns.googleapis.com), for compatible services"
        " and tests.",
    )
    anonymous: bool = setting(
        default=False,
        help="Send no credentials at all. Only for a local emulator or test fake, and only"
        " with endpoint (refused otherwise); never switched on implicitly.",
    )
    timeout_seconds: float = setting(
        default=15.0, help="Timeout of one API request (the client library's own is 60 s)."
    )
    wait_for_done: bool = setting(
        default=False,
        help="Poll the Change until Cloud DNS reports it done (usually seconds); still"
        " pending after done_timeout_seconds: provider_unavailable, and the retry waits again.",
    )
    done_poll_seconds: float = setting(
        default=1.0, help="How often to ask whether a change is done."
    )
    done_timeout_seconds: float = setting(
        default=60.0,
        help="Give up waiting for done after this long (the change stays applied; the"
        " request fails and is retried). Keep below dispatch.deadline_seconds.",
    )

    def problems(self) -> list[tuple[str, str]]:
        """(option, why) for options that can never work: reported when the config is read."""
        found = []
        if self.anonymous and not self.endpoint:
            found.append(
                ("anonymous", "anonymous = true is for a local emulator or fake: set endpoint too")
            )
        if self.anonymous and self.credentials_file:
            found.append(("anonymous", "set only one of anonymous and credentials_file"))
        return found


@dataclass(frozen=True)
class _RrsetChange:
    fqdn: str
    old: RecordSet | None
    new: RecordSet | None

    @property
    def size(self) -> int:
        return sum(len(r) for rs in (self.old, self.new) if rs for r in rs.rrdatas)


class GoogleCloudDnsProvider:
    name: ClassVar[str] = NAME
    Settings: ClassVar[type[GcloudSettings]] = GcloudSettings
    capabilities: ClassVar[Capabilities] = Capabilities()
    wants_user_token: ClassVar[bool] = False
    # Cloud DNS meters API requests per user per minute (the default quota is in the
    # thousands); a challenge burst needs few calls, so stay well below it.
    default_rate_per_second: ClassVar[float | None] = 10.0

    def __init__(self, settings: GcloudSettings, budget: RateBudget) -> None:
        self.settings = settings
        self._budget = budget
        self._client: DnsClient | None = None
        self._client_lock = threading.Lock()
        self._hints = Hints()
        self._undone: dict[tuple[str, str], str] = {}  # name -> our change not yet done

    @classmethod
    async def open(cls, settings: GcloudSettings, budget: RateBudget) -> Self:
        for _, problem in settings.problems():
            raise ProviderRejected(NAME, problem)
        return cls(settings, budget)

    # --- the contract -------------------------------------------------------------------

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        if self.settings.managed_zone:
            return self.settings.managed_zone
        labels = zone_name.split(".")
        for start in range(len(labels) - 1):  # longest managed zone containing zone_name
            candidate = ".".join(labels[start:])
            found = await self._call(functools.partial(self._public_zones_named, candidate))
            if len(found) > 1:
                raise ProviderRejected(
                    NAME,
                    f"{len(found)} public managed zones are named {candidate}"
                    f" ({', '.join(found)}): set managed_zone",
                )
            if found:
                return found[0]
        raise ZoneNotFound(
            NAME, f"no public managed zone in project {self.settings.project} contains {zone_name}"
        )

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        current = await self._read(zone, fqdn)
        return frozenset(current.values) if current else frozenset()

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None:
        await self.apply(zone, [TxtChange("add", fqdn, value, ttl)], ctx=ctx)

    async def remove_txt(self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext) -> None:
        await self.apply(zone, [TxtChange("remove", fqdn, value, 0)], ctx=ctx)

    async def apply(
        self, zone: ZoneRef, changes: Sequence[TxtChange], *, ctx: ChangeContext
    ) -> None:
        plan = await self._hints.plan(zone, changes, lambda fqdn: self._read(zone, fqdn))
        rrset_changes = [
            _RrsetChange(fqdn, plan.current[fqdn], plan.wanted[fqdn]) for fqdn in plan.changed()
        ]
        for batch in _split(rrset_changes):
            batch_names = [change.fqdn for change in batch]
            try:
                change_id, done = await self._call(
                    functools.partial(self._create, zone.handle, batch)
                )
            except ProviderConflict as exc:
                self._hints.forget(zone, _names_in(exc.message, batch))
                raise
            except ProviderError:
                self._hints.forget(zone, batch_names)  # the outcome is unknown
                raise
            for fqdn in batch_names:
                self._hints.wrote(zone, fqdn, plan.wanted[fqdn])
                if not done and self.settings.wait_for_done:
                    self._undone[(zone.handle, fqdn)] = change_id
        self._hints.settled(zone, plan.names)
        if self.settings.wait_for_done:
            # Also changes an earlier, timed-out attempt made for these names: a retry
            # that finds nothing left to write must still wait for them.
            pending = {
                self._undone[k] for k in ((zone.handle, n) for n in plan.names) if k in self._undone
            }
            for change_id in sorted(pending):
                await self._wait_done(zone, change_id)

    async def aclose(self) -> None:
        self._hints.clear()
        self._undone.clear()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    # --- Cloud DNS calls (each runs in a worker thread) ---------------------------------

    def _dns(self) -> DnsClient:
        with self._client_lock:
            if self._client is None:
                from google.cloud import dns  # imported only when a zone uses gcloud

                options = (
                    {"api_endpoint": self.settings.endpoint} if self.settings.endpoint else None
                )
                client = dns.Client(
                    project=self.settings.project,  # never guessed from the environment
                    credentials=self._credentials(),
                    client_options=options,
                )
                # Every request (iterators capture this too) with our timeout, not 60 s.
                connection = client._connection
                connection.api_request = functools.partial(
                    connection.api_request, timeout=self.settings.timeout_seconds
                )
                self._client = client
            return self._client

    def _credentials(self) -> Any:
        import google.auth
        from google.auth.credentials import AnonymousCredentials

        if self.settings.anonymous:
            return AnonymousCredentials()
        if self.settings.credentials_file is None:
            credentials, _ = google.auth.default(scopes=SCOPES)
            return credentials
        path = self.settings.credentials_file
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            return _credentials_from_info(info)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProviderAuthError(
                NAME, f"credentials_file {path} is unusable ({type(exc).__name__}: {exc})"
            ) from None

    async def _call(self, operation: Callable[[], T]) -> T:
        from google.api_core.exceptions import GoogleAPICallError
        from google.auth.exceptions import GoogleAuthError
        from requests import RequestException

        try:
            return await asyncio.to_thread(operation)
        except (GoogleAPICallError, GoogleAuthError, RequestException) as exc:
            raise _translate(exc) from None

    def _pages(self, iterator: Any) -> Iterator[Any]:
        """The iterator's pages, one budget token per request actually sent."""
        pages = iterator.pages
        while iterator.page_number == 0 or iterator.next_page_token:
            self._budget.take_blocking()
            page = next(pages, None)
            if page is None:
                return
            yield page

    def _public_zones_named(self, dns_name: str) -> list[str]:
        zones = self._dns().list_zones()
        zones.extra_params = {"dnsName": dns_name + "."}
        return [
            str(zone["name"])
            for page in self._pages(zones)
            for zone in page.raw_page.get("managedZones", [])
            if _plain(zone.get("dnsName", "")) == dns_name
            and zone.get("visibility", "public") == "public"
        ]

    async def _read(self, zone: ZoneRef, fqdn: str) -> RecordSet | None:
        def read() -> RecordSet | None:
            rrsets = self._dns().zone(zone.handle).list_resource_record_sets()
            rrsets.extra_params = {"name": fqdn + ".", "type": "TXT"}
            for page in self._pages(rrsets):
                for rrset in page:
                    if _plain(rrset.name) == fqdn and rrset.record_type == "TXT":
                        return RecordSet.decoded(int(rrset.ttl), rrset.rrdatas, base=10)
            return None

        current = await self._call(read)
        self._hints.saw(zone, fqdn, current)
        return current

    def _create(self, managed_zone: str, batch: list[_RrsetChange]) -> tuple[str, bool]:
        """One Change: delete the exact old sets, add the new ones. Atomic; fails if stale."""
        zone = self._dns().zone(managed_zone)
        change = zone.changes()
        for item in batch:
            if item.old is not None:
                change.delete_record_set(_rrset(zone, item.fqdn, item.old))
            if item.new is not None:
                change.add_record_set(_rrset(zone, item.fqdn, item.new))
        self._budget.take_blocking()
        change.create()
        return str(change.name), change.status == "done"

    def _status(self, managed_zone: str, change_id: str) -> str:
        change = self._dns().zone(managed_zone).changes()
        change.name = change_id
        self._budget.take_blocking()
        change.reload()
        return str(change.status)

    async def _wait_done(self, zone: ZoneRef, change_id: str) -> None:
        give_up_at = time.monotonic() + self.settings.done_timeout_seconds
        while await self._call(lambda: self._status(zone.handle, change_id)) != "done":
            if time.monotonic() + self.settings.done_poll_seconds > give_up_at:
                raise ProviderUnavailable(
                    NAME,
                    f"change {change_id} in {zone.handle} is still pending after"
                    f" {self.settings.done_timeout_seconds:g}s",
                )
            await asyncio.sleep(self.settings.done_poll_seconds)
        for key in [k for k, v in self._undone.items() if v == change_id and k[0] == zone.handle]:
            del self._undone[key]


def _credentials_from_info(info: dict[str, Any]) -> Any:
    """Credentials of the kinds a DNS writer is configured with, each by its own loader
    (google-auth deprecates its generic loader: it would accept any kind unchecked)."""
    kind = info.get("type")
    if kind == "service_account":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    if kind == "external_account":  # workload identity federation
        source = info.get("credential_source", {})
        if str(source.get("environment_id", "")).startswith("aws"):
            from google.auth import aws

            return aws.Credentials.from_info(info, scopes=SCOPES)
        if "executable" in source:
            from google.auth import pluggable

            return pluggable.Credentials.from_info(info, scopes=SCOPES)
        from google.auth import identity_pool

        return identity_pool.Credentials.from_info(info, scopes=SCOPES)
    if kind == "authorized_user":
        from google.oauth2 import credentials

        return credentials.Credentials.from_authorized_user_info(info, scopes=list(SCOPES))
    raise ValueError(
        f"type {kind!r} is not one of service_account, external_account, authorized_user"
    )


def _rrset(zone: Any, fqdn: str, record_set: RecordSet) -> Any:
    return zone.resource_record_set(fqdn + ".", "TXT", record_set.ttl, list(record_set.rrdatas))


def _split(changes: list[_RrsetChange]) -> list[list[_RrsetChange]]:
    """Changes within Cloud DNS's limits; a name's deletion and addition stay together."""
    batches: list[list[_RrsetChange]] = []
    additions = deletions = size = 0
    for change in changes:
        adds, dels = int(change.new is not None), int(change.old is not None)
        if (
            not batches
            or additions + adds > MAX_RRSETS_PER_CHANGE
            or deletions + dels > MAX_RRSETS_PER_CHANGE
            or size + change.size > MAX_RRDATA_BYTES_PER_CHANGE
        ):
            batches.append([])
            additions = deletions = size = 0
        batches[-1].append(change)
        additions += adds
        deletions += dels
        size += change.size
    return batches


def _names_in(message: str, batch: list[_RrsetChange]) -> list[str]:
    """The names a conflict message points at (by position in the Change), else all."""
    entries = {
        "additions": [c.fqdn for c in batch if c.new is not None],
        "deletions": [c.fqdn for c in batch if c.old is not None],
    }
    named = []
    for kind, index in _CHANGE_ENTRY.findall(message):
        if int(index) < len(entries[kind]):
            named.append(entries[kind][int(index)])
    return named or [c.fqdn for c in batch]


def _plain(name: str) -> str:
    return name.rstrip(".").lower()


def _translate(exc: Exception) -> ProviderError:
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import (
        GoogleAuthError,
        InvalidOperation,
        RefreshError,
        TransportError,
    )

    if isinstance(exc, TransportError):
        return ProviderUnavailable(NAME, f"cannot reach the token endpoint ({exc})")
    if isinstance(exc, RefreshError):
        kind = ProviderUnavailable if getattr(exc, "retryable", False) else ProviderAuthError
        return kind(NAME, f"cannot obtain an access token ({exc})")
    if isinstance(exc, InvalidOperation):  # a 401 made google-auth refresh anonymous creds
        return ProviderAuthError(NAME, "the API answered 401 authError to anonymous requests")
    if isinstance(exc, GoogleAuthError):
        return ProviderAuthError(NAME, f"no usable Google credentials ({exc})")
    if not isinstance(exc, GoogleAPICallError):  # requests: connection, timeout, bad body
        return ProviderUnavailable(NAME, f"cannot reach the API ({type(exc).__name__})")
    status = int(exc.code or 0)
    reasons = [str(e.get("reason", "")) for e in exc.errors if isinstance(e, dict)]
    message = exc.message.split(": ", 1)[-1]  # drop the "METHOD url: " prefix
    text = f"{status} {'/'.join(filter(None, reasons)) or type(exc).__name__}: {message}"
    if status in (409, 412) or (status == 404 and _CHANGE_ENTRY.search(message)):
        return ProviderConflict(NAME, text)  # a stale deletion or a racing addition
    if status == 429 or (status == 403 and _THROTTLED_REASONS.intersection(reasons)):
        return ProviderRateLimited(
            NAME,
            text,
            retry_after=retry_after_seconds(
                getattr(exc.response, "headers", {}).get("Retry-After")
            ),
        )
    if status in (401, 403):
        return ProviderAuthError(NAME, text)
    if status == 404:
        return ZoneNotFound(NAME, text)
    if status >= 500:
        return ProviderUnavailable(NAME, text)
    return ProviderRejected(NAME, text)
