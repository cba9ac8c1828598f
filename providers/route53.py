"""Amazon Route 53 through boto3.

Route 53 changes whole record sets, and a change batch is atomic: a DELETE must name the
exact current values or the whole batch fails. So every write deletes the exact set it
believes is there and creates the new one; if anyone else changed the set meanwhile, the
batch fails, the adapter raises `ProviderConflict`, and the core retries after a fresh
read. Lost updates are impossible, also between processes.

To keep a 100-name certificate at a handful of API calls, the adapter remembers the sets
it last read or wrote and writes from that memory without reading first
(`providers.txtsets.Hints`). The memory is only a hint: a wrong guess fails the batch like
a concurrent writer would, and the retry reads. boto3 is blocking: every call runs in a
worker thread and draws from the account's rate budget first.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from providers.txt import unescape
from providers.txtsets import Hints, RecordSet

Route53Client = Any  # boto3 ships no type information
T = TypeVar("T")
NAME = "route53"
# Route 53's limits per ChangeResourceRecordSets call.
MAX_RECORDS_PER_BATCH = 1000
MAX_VALUE_CHARS_PER_BATCH = 32000
_THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "PriorRequestNotComplete",
    "TooManyRequestsException",
    "RequestLimitExceeded",
}
_AUTH = {
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "UnrecognizedClientException",
    "MissingAuthenticationToken",
    "InvalidSignatureException",
}
_CONFLICT = re.compile(r"already exists|was not found|values provided do not match", re.I)
_NAMES_IN_MESSAGE = re.compile(r"name='([^']+)'")


@dataclass(frozen=True)
class Route53Settings:
    hosted_zone_id: str | None = setting(
        default=None,
        help="Use this hosted zone instead of finding it by name (e.g. Z0123456789ABC).",
    )
    private: bool = setting(
        default=False, help="Find the private hosted zone of that name instead of the public one."
    )
    endpoint: str | None = setting(
        default=None, help="API endpoint URL, for API-compatible services and tests."
    )
    region: str = setting(default="us-east-1", help="Region for request signing.")
    timeout_seconds: float = setting(
        default=15.0, help="Timeout of one API request (connecting: at most 5 s)."
    )
    wait_insync: bool = setting(
        default=False,
        help="Answer only once the change is INSYNC on every Route 53 server (takes tens of"
        " seconds: raise dispatch.deadline_seconds to match).",
    )
    insync_poll_seconds: float = setting(
        default=5.0, help="How often to ask whether a change is INSYNC."
    )


class Route53Provider:
    name: ClassVar[str] = NAME
    Settings: ClassVar[type[Route53Settings]] = Route53Settings
    capabilities: ClassVar[Capabilities] = Capabilities()
    wants_user_token: ClassVar[bool] = False
    # Route 53 documents 5 requests per second per account.
    default_rate_per_second: ClassVar[float | None] = 5.0

    def __init__(self, settings: Route53Settings, budget: RateBudget) -> None:
        self.settings = settings
        self._budget = budget
        self._client: Route53Client | None = None
        self._client_lock = threading.Lock()
        self._hints = Hints()

    @classmethod
    async def open(cls, settings: Route53Settings, budget: RateBudget) -> Self:
        return cls(settings, budget)

    # --- the contract -------------------------------------------------------------------

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        if self.settings.hosted_zone_id:
            return self.settings.hosted_zone_id.removeprefix("/hostedzone/")
        labels = zone_name.split(".")
        for start in range(len(labels) - 1):  # longest hosted zone containing zone_name
            candidate = ".".join(labels[start:])
            found = await self._call(functools.partial(self._zones_named, candidate))
            if len(found) > 1:
                raise ProviderRejected(
                    NAME, f"{len(found)} hosted zones are named {candidate}: set hosted_zone_id"
                )
            if found:
                return found[0]
        kind = "private" if self.settings.private else "public"
        raise ZoneNotFound(NAME, f"no {kind} hosted zone contains {zone_name}")

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
        groups = [
            _rrset_changes(fqdn, plan.current[fqdn], plan.wanted[fqdn]) for fqdn in plan.changed()
        ]
        for batch in _split(groups):
            batch_names = [fqdn for fqdn, _ in batch]
            try:
                change_id = await self._call(functools.partial(self._change, zone.handle, batch))
            except ProviderConflict as exc:
                self._hints.forget(zone, _names_in(str(exc), batch_names))
                raise
            except ProviderError:
                self._hints.forget(zone, batch_names)  # the outcome is unknown
                raise
            for fqdn in batch_names:
                self._hints.wrote(zone, fqdn, plan.wanted[fqdn])
            if self.settings.wait_insync:
                await self._wait_insync(change_id)
        self._hints.settled(zone, plan.names)

    async def aclose(self) -> None:
        self._hints.clear()
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    # --- Route 53 calls (each runs in a worker thread) ----------------------------------

    def _route53(self) -> Route53Client:
        with self._client_lock:
            if self._client is None:
                import boto3  # imported only when a zone uses route53
                from botocore.config import Config

                client = boto3.session.Session().client(
                    "route53",
                    endpoint_url=self.settings.endpoint,
                    region_name=self.settings.region,
                    # The core owns retries; the SDK must not retry behind its back.
                    config=Config(
                        # `max_attempts` would count retries; this counts calls.
                        retries={"total_max_attempts": 1, "mode": "standard"},
                        connect_timeout=min(5.0, self.settings.timeout_seconds),
                        read_timeout=self.settings.timeout_seconds,
                    ),
                )
                client.meta.events.register(
                    "before-call.route53", lambda **_: self._budget.take_blocking()
                )
                self._client = client
            return self._client

    async def _call(self, operation: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(operation)
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc) from None

    def _zones_named(self, name: str) -> list[str]:
        response = self._route53().list_hosted_zones_by_name(DNSName=name, MaxItems="100")
        return [
            zone["Id"].removeprefix("/hostedzone/")
            for zone in response["HostedZones"]
            if _plain(zone["Name"]) == name
            and bool(zone.get("Config", {}).get("PrivateZone")) == self.settings.private
        ]

    async def _read(self, zone: ZoneRef, fqdn: str) -> RecordSet | None:
        def read() -> RecordSet | None:
            response = self._route53().list_resource_record_sets(
                HostedZoneId=zone.handle,
                StartRecordName=fqdn,
                StartRecordType="TXT",
                MaxItems="1",
            )
            for found in response["ResourceRecordSets"]:
                if _plain(found["Name"]) == fqdn and found["Type"] == "TXT":
                    records = (r["Value"] for r in found.get("ResourceRecords", []))
                    return RecordSet.decoded(int(found.get("TTL", 300)), records, base=8)
            return None

        current = await self._call(read)
        self._hints.saw(zone, fqdn, current)
        return current

    def _change(self, hosted_zone: str, batch: list[tuple[str, list[dict[str, Any]]]]) -> str:
        response = self._route53().change_resource_record_sets(
            HostedZoneId=hosted_zone,
            ChangeBatch={
                "Comment": "dns-challenge-receiver",
                "Changes": [change for _, changes in batch for change in changes],
            },
        )
        return str(response["ChangeInfo"]["Id"])

    async def _wait_insync(self, change_id: str) -> None:
        while True:
            status = await self._call(
                lambda: self._route53().get_change(Id=change_id)["ChangeInfo"]["Status"]
            )
            if status == "INSYNC":
                return
            await asyncio.sleep(self.settings.insync_poll_seconds)


def _rrset_changes(
    fqdn: str, old: RecordSet | None, new: RecordSet | None
) -> tuple[str, list[dict[str, Any]]]:
    """DELETE the exact old set and CREATE the new one: atomic, and fails if stale."""
    changes = []
    for action, rrset in (("DELETE", old), ("CREATE", new)):
        if rrset is not None:
            changes.append(
                {
                    "Action": action,
                    "ResourceRecordSet": {
                        "Name": fqdn,
                        "Type": "TXT",
                        "TTL": rrset.ttl,
                        "ResourceRecords": [{"Value": record} for record in rrset.rrdatas],
                    },
                }
            )
    return fqdn, changes


def _split(
    groups: list[tuple[str, list[dict[str, Any]]]],
) -> list[list[tuple[str, list[dict[str, Any]]]]]:
    """Batches within Route 53's limits; a name's DELETE and CREATE stay together."""
    batches: list[list[tuple[str, list[dict[str, Any]]]]] = []
    records = chars = 0
    for group in groups:
        values = [r["Value"] for c in group[1] for r in c["ResourceRecordSet"]["ResourceRecords"]]
        size, length = len(values), sum(len(v) for v in values)
        if (
            not batches
            or records + size > MAX_RECORDS_PER_BATCH
            or (chars + length > MAX_VALUE_CHARS_PER_BATCH)
        ):
            batches.append([])
            records = chars = 0
        batches[-1].append(group)
        records += size
        chars += length
    return batches


def _names_in(message: str, batch_names: list[str]) -> list[str]:
    named = [_plain(n) for n in _NAMES_IN_MESSAGE.findall(message)]
    return [n for n in named if n in batch_names] or batch_names


def _plain(name: str) -> str:
    """Route 53's name form (trailing dot, octal escapes like \\052) -> canonical."""
    return unescape(name, base=8).rstrip(".").lower()


def _translate(exc: Exception) -> ProviderError:
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ProviderAuthError(NAME, f"no usable AWS credentials ({exc})")
    if isinstance(exc, EndpointConnectionError | ConnectionError):
        return ProviderUnavailable(NAME, f"cannot reach the API ({type(exc).__name__})")
    if not isinstance(exc, ClientError):
        return ProviderUnavailable(NAME, f"{type(exc).__name__}: {exc}")
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    messages: Any = exc.response.get("Messages", [])  # InvalidChangeBatch's own body shape
    message = error.get("Message") or " ".join(str(m) for m in messages)
    text = f"{code or 'InvalidChangeBatch'}: {message}"
    if code == "InvalidChangeBatch" or (not code and "Messages" in exc.response):
        if _CONFLICT.search(message):
            return ProviderConflict(NAME, text)
        return ProviderRejected(NAME, text)
    if code in _THROTTLED:
        return ProviderRateLimited(NAME, text)
    if code in _AUTH or status in (401, 403):
        return ProviderAuthError(NAME, text)
    if code in ("NoSuchHostedZone", "HostedZoneNotFound"):
        return ZoneNotFound(NAME, text)
    if status >= 500 or code in ("ServiceUnavailable", "InternalError", "InternalFailure"):
        return ProviderUnavailable(NAME, text)
    return ProviderRejected(NAME, text)
