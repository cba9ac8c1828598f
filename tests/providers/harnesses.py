"""One harness per registered provider: how to build it, and how to see what it did.

A harness builds adapters the way production does where it can, and observes the backend
through a path that does not use the adapter under test (for `local`, real DNS queries to
the built-in responder). Adding a provider means adding a harness here and nothing else;
`test_conformance.test_every_provider_has_a_harness` fails until you do.

A harness also declares the faults its backend can be made to commit (`Fault`), and the
suite runs every declared fault against the adapter. A fault a backend can inject but
the harness does not declare is a hole in the suite: declare all it can.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

import dns.asyncquery
import dns.message
import dns.rcode
import dns.tsig
import pytest
from aiohttp.test_utils import TestServer

from providers import errors
from providers.base import Provider
from providers.gcloud import GcloudSettings
from providers.local import ChallengeStore, LocalSettings
from providers.memory import MemoryProvider, MemorySettings, MemoryStore, _RecordSet
from providers.rate_budget import UNLIMITED, RateBudget
from providers.registry import load_provider_class
from providers.rfc2136 import Rfc2136Settings
from providers.route53 import Route53Settings
from providers.secret import Secret
from receiver import dnsserver

from ..backends.bind import KEY_NAME, Bind
from ..backends.moto import MotoServer
from ..fakes.cis import FakeCis, FakeIam
from ..fakes.cloudflare import CloudflareFake
from ..fakes.dns_proxy import DnsProxy
from ..fakes.gcloud import CloudDnsFake
from ..fakes.route53 import Route53Stub

ZONE = "conformance.test"
FAST = 0.3  # the adapter's timeout while a TIMEOUT fault is injected
HANG = 2.0  # how long a hanging backend takes to answer: well past FAST
MIXED_RATE = 0.3
MIXED_SEED = int(os.environ.get("CONFORMANCE_FAULT_SEED", "20261101"))  # any must pass


class Fault(enum.Enum):
    """What a backend can do wrong. A harness declares the ones its backend can inject;
    the suite runs every declared fault against the adapter."""

    THROTTLED = "throttled, Retry-After in seconds"
    THROTTLED_UNTIL = "throttled, Retry-After as an HTTP date"
    SERVER_ERROR = "a server error (5xx, SERVFAIL)"
    TIMEOUT = "no answer within the adapter's timeout"
    AUTH = "the credentials are refused"
    CONFLICT = "the record set changed under the write"
    LOST_ANSWER = "a write applied, then answered with an error"
    MIXED = f"{MIXED_RATE:.0%} of calls failing transiently, some after taking effect"


# The contract error each fault must surface as.
EXPECTED: dict[Fault, type[errors.ProviderError]] = {
    Fault.THROTTLED: errors.ProviderRateLimited,
    Fault.THROTTLED_UNTIL: errors.ProviderRateLimited,
    Fault.SERVER_ERROR: errors.ProviderUnavailable,
    Fault.TIMEOUT: errors.ProviderUnavailable,
    Fault.AUTH: errors.ProviderAuthError,
    Fault.CONFLICT: errors.ProviderConflict,
    Fault.LOST_ANSWER: errors.ProviderUnavailable,
    Fault.MIXED: errors.ProviderError,
}


# What an HTTP API can be made to do wrong by its fake.
ALL_HTTP = frozenset(
    {
        Fault.THROTTLED,
        Fault.THROTTLED_UNTIL,
        Fault.SERVER_ERROR,
        Fault.TIMEOUT,
        Fault.AUTH,
        Fault.LOST_ANSWER,
        Fault.MIXED,
    }
)


@dataclass(frozen=True)
class Injected:
    """What the backend was made to do: the error expected, and the wait it announced
    (None: this provider's throttling says nothing about when to retry)."""

    error: type[errors.ProviderError]
    retry_after: float | None = None


def spelled(value: str, *, base: int = 10) -> str:
    """`value` in two quoted strings, the second's first character as `\\DDD`."""
    first, second = value[:20], value[20:]
    digits = f"{ord(second[0]):03o}" if base == 8 else f"{ord(second[0]):03d}"
    return f'"{first}" "\\{digits}{second[1:]}"'


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


def announced(fault: Fault, wait: float) -> str:
    """The Retry-After header for a throttling fault."""
    return http_date(wait) if fault is Fault.THROTTLED_UNTIL else f"{wait:g}"


class Harness(Protocol):
    name: str
    zone: str
    settings: Any
    shared_backend: bool  # several processes can write one backend
    faults: ClassVar[frozenset[Fault]]  # what its backend can be made to do wrong
    has_api: ClassVar[bool]  # makes API calls that draw from a rate budget
    keeps_spellings: ClassVar[bool]  # TXT data can be split in strings and escaped

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        """A new adapter instance on the same backend."""
        ...

    async def observe(self, fqdn: str) -> list[str]:
        """Every TXT value at `fqdn`, duplicates included, seen without the adapter."""
        ...

    async def observed_ttl(self, fqdn: str) -> int | None: ...

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        """A value someone else put at the name, behind the adapter's back."""
        ...

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        """`value` as another tool may have written it: in two character strings, one
        character escaped as `\\DDD` (in the provider's base). Only where the backend
        keeps presentation form (`keeps_spellings`)."""
        ...

    def inject(
        self, fault: Fault, *, wait: float = 7.0
    ) -> contextlib.AbstractAsyncContextManager[Injected]:
        """Until exit, the backend fails this way on every call (on every write, for
        CONFLICT and LOST_ANSWER; on a share of calls, for MIXED). Throttling announces
        `wait` seconds. Adapters made inside the block get the fault's settings (a wrong
        credential, a short timeout)."""
        ...

    def api_calls(self) -> int:
        """API calls the backend has received so far, counted there."""
        ...


@dataclass
class MemoryHarness:
    """No backend to observe independently: the shared store is the only view there is."""

    faults: ClassVar[frozenset[Fault]] = frozenset()
    has_api: ClassVar[bool] = False
    keeps_spellings: ClassVar[bool] = False

    tmp_path: Path
    shared_backend: bool = False
    name: str = "memory"
    zone: str = ZONE
    settings: Any = field(default_factory=MemorySettings)
    store: MemoryStore = field(default_factory=MemoryStore)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryHarness]:
        yield self

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        assert load_provider_class(self.name) is MemoryProvider
        return MemoryProvider(self.settings, store=self.store)

    async def observe(self, fqdn: str) -> list[str]:
        found = self.store.sets.get(fqdn)
        return sorted(found.values) if found else []

    async def observed_ttl(self, fqdn: str) -> int | None:
        found = self.store.sets.get(fqdn)
        return found.ttl if found else None

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        raise AssertionError("values are kept as text: there is no other spelling")

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        current = self.store.sets.get(fqdn)
        values = tuple(dict.fromkeys((*(current.values if current else ()), value)))
        self.store.sets[fqdn] = _RecordSet(current.ttl if current else 300, values)

    def inject(
        self, fault: Fault, *, wait: float = 7.0
    ) -> contextlib.AbstractAsyncContextManager[Injected]:
        raise AssertionError("memory has no backend that can fail")

    def api_calls(self) -> int:
        raise AssertionError("memory makes no API calls")


@dataclass
class LocalHarness:
    """Observed through the built-in responder over UDP, as a CA's resolver sees it."""

    faults: ClassVar[frozenset[Fault]] = frozenset({Fault.TIMEOUT})
    has_api: ClassVar[bool] = False
    keeps_spellings: ClassVar[bool] = False

    tmp_path: Path
    shared_backend: bool = True
    name: str = "local"
    zone: str = ZONE
    settings: Any = None
    port: int = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LocalHarness]:
        self.settings = LocalSettings(
            database=self.tmp_path / "conformance.sqlite3", dns_listen="127.0.0.1:0"
        )
        async with dnsserver.running([self.zone], self.settings) as responder:
            self.port = responder.address[1]
            yield self

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        return await load_provider_class(self.name).open(self.settings, budget)

    async def _query(self, fqdn: str) -> dns.message.Message:
        query = dns.message.make_query(fqdn, "TXT")
        return await dns.asyncquery.tcp(query, "127.0.0.1", port=self.port, timeout=3)

    async def observe(self, fqdn: str) -> list[str]:
        response = await self._query(fqdn)
        assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
        return sorted(b"".join(r.strings).decode() for rrset in response.answer for r in rrset)

    async def observed_ttl(self, fqdn: str) -> int | None:
        response = await self._query(fqdn)
        return response.answer[0].ttl if response.answer else None

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        raise AssertionError("values are kept as text: there is no other spelling")

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        store = ChallengeStore(self.settings.database, lifetime=3600)
        store.add(fqdn, value, 300)
        store.close()

    @contextlib.asynccontextmanager
    async def inject(self, fault: Fault, *, wait: float = 7.0) -> AsyncIterator[Injected]:
        """TIMEOUT: another process holds the write lock past the busy timeout."""
        from providers import local

        assert fault is Fault.TIMEOUT
        blocker = sqlite3.connect(self.settings.database, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        saved, local.BUSY_TIMEOUT_MS = local.BUSY_TIMEOUT_MS, 100
        try:
            yield Injected(errors.ProviderUnavailable)
        finally:
            local.BUSY_TIMEOUT_MS = saved
            blocker.execute("ROLLBACK")
            blocker.close()

    def api_calls(self) -> int:
        raise AssertionError("local makes no API calls")


@dataclass
class LocalPostgresHarness:
    """`local` on the shared database ([state]): two responders, each with its own pool
    and mirror as two processes would have, observed over DNS through both; they must
    agree, and an observation waits until both have caught up with the database."""

    faults: ClassVar[frozenset[Fault]] = frozenset({Fault.TIMEOUT})
    has_api: ClassVar[bool] = False
    keeps_spellings: ClassVar[bool] = False

    tmp_path: Path
    url: str
    shared_backend: bool = True
    name: str = "local"
    zone: str = ZONE
    settings: Any = None
    ports: list[int] = field(default_factory=list)
    databases: list[Any] = field(default_factory=list)
    mirrors: list[Any] = field(default_factory=list)

    def _database(self) -> Any:
        from receiver.config import StateSettings
        from receiver.postgres.database import Database

        state = StateSettings(url=Secret(self.url), statement_timeout_seconds=0.5)
        database = Database(state)
        self.databases.append(database)
        return database

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LocalPostgresHarness]:
        from receiver.postgres.records import PostgresRecords, RecordMirror

        self.settings = LocalSettings(dns_listen="127.0.0.1:0")
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._close_databases)
            for _ in range(2):
                database = self._database()
                mirror = RecordMirror(database)
                await mirror.start()
                stack.push_async_callback(mirror.aclose)
                self.mirrors.append(mirror)
                responder = await stack.enter_async_context(
                    dnsserver.running(
                        [self.zone],
                        self.settings,
                        view=mirror,
                        records=PostgresRecords(database, lifetime=3600),
                    )
                )
                self.ports.append(responder.address[1])
            yield self

    async def _close_databases(self) -> None:
        for database in self.databases:  # the adapters' too: they do not own theirs
            await database.aclose()

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        from providers.local import LocalProvider
        from receiver.postgres.records import PostgresRecords

        records = PostgresRecords(self._database(), lifetime=3600)
        return LocalProvider(self.settings, store=records)

    async def _caught_up(self) -> None:
        import asyncpg

        db = await asyncpg.connect(self.url)
        try:
            serial = int(await db.fetchval("SELECT value FROM store_meta WHERE key = 'serial'"))
        finally:
            await db.close()
        async with asyncio.timeout(5):
            while any(m.serial() != serial for m in self.mirrors):  # noqa: ASYNC110
                await asyncio.sleep(0.005)

    async def _query(self, fqdn: str, port: int) -> dns.message.Message:
        query = dns.message.make_query(fqdn, "TXT")
        return await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=3)

    async def observe(self, fqdn: str) -> list[str]:
        await self._caught_up()
        seen = []
        for port in self.ports:
            response = await self._query(fqdn, port)
            assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
            seen.append(sorted(b"".join(r.strings).decode() for rs in response.answer for r in rs))
        assert seen[0] == seen[1], f"the two responders disagree: {seen}"
        return seen[0]

    async def observed_ttl(self, fqdn: str) -> int | None:
        await self._caught_up()
        response = await self._query(fqdn, self.ports[1])
        return response.answer[0].ttl if response.answer else None

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        raise AssertionError("values are kept as text: there is no other spelling")

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        import time

        import asyncpg

        db = await asyncpg.connect(self.url)
        try:
            async with db.transaction():
                now = time.time()
                await db.execute(
                    "INSERT INTO txt_values VALUES ($1, $2, 300, $3, $4)",
                    fqdn,
                    value,
                    now,
                    now + 3600,
                )
                serial = await db.fetchval(
                    "UPDATE store_meta SET value = value + 1 WHERE key = 'serial' RETURNING value"
                )
                if serial is None:
                    serial = await db.fetchval(
                        "INSERT INTO store_meta VALUES ('serial', 1) RETURNING value"
                    )
                await db.execute("SELECT pg_notify('dcr_records', $1)", str(serial))
        finally:
            await db.close()

    @contextlib.asynccontextmanager
    async def inject(self, fault: Fault, *, wait: float = 7.0) -> AsyncIterator[Injected]:
        """TIMEOUT: another session holds the table past the statement timeout."""
        import asyncpg

        assert fault is Fault.TIMEOUT
        blocker = await asyncpg.connect(self.url)
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE txt_values IN ACCESS EXCLUSIVE MODE")
        try:
            yield Injected(errors.ProviderUnavailable)
        finally:
            await transaction.rollback()
            await blocker.close()

    def api_calls(self) -> int:
        raise AssertionError("local makes no API calls")


@dataclass
class Route53Harness:
    """moto_server behind the Route 53 stub; observed by a separate boto3 client on moto."""

    faults: ClassVar[frozenset[Fault]] = frozenset(
        {
            Fault.THROTTLED,  # Route 53 sends no Retry-After: the core backs off itself
            Fault.SERVER_ERROR,
            Fault.TIMEOUT,
            Fault.AUTH,
            Fault.CONFLICT,
            Fault.LOST_ANSWER,
            Fault.MIXED,
        }
    )
    has_api: ClassVar[bool] = True
    keeps_spellings: ClassVar[bool] = True

    tmp_path: Path
    moto: MotoServer
    shared_backend: bool = True
    name: str = "route53"
    zone: str = ZONE
    settings: Any = None
    stub: Route53Stub | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Route53Harness]:
        await asyncio.to_thread(self.moto.reset)
        await asyncio.to_thread(self.moto.create_zone, self.zone)
        self.stub = Route53Stub(self.moto.url)
        server = TestServer(self.stub.app(), host="127.0.0.1")
        await server.start_server()
        self.stub.url = str(server.make_url("")).rstrip("/")
        self.settings = Route53Settings(endpoint=self.stub.url)
        try:
            yield self
        finally:
            await server.close()

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        return await load_provider_class(self.name).open(self.settings, budget)

    def _rrset(self, fqdn: str) -> dict[str, Any] | None:
        client = self.moto.client()
        zone_id = client.list_hosted_zones_by_name(DNSName=self.zone)["HostedZones"][0]["Id"]
        found = client.list_resource_record_sets(
            HostedZoneId=zone_id, StartRecordName=fqdn, StartRecordType="TXT", MaxItems="1"
        )["ResourceRecordSets"]
        if found and found[0]["Name"].rstrip(".") == fqdn and found[0]["Type"] == "TXT":
            return dict(found[0])
        return None

    async def observe(self, fqdn: str) -> list[str]:
        rrset = await asyncio.to_thread(self._rrset, fqdn)
        records = rrset["ResourceRecords"] if rrset else []
        return sorted(r["Value"][1:-1] for r in records)  # test values need no unescaping

    async def observed_ttl(self, fqdn: str) -> int | None:
        rrset = await asyncio.to_thread(self._rrset, fqdn)
        return int(rrset["TTL"]) if rrset else None

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        await self._upsert(fqdn, spelled(value, base=8))  # Route 53's escapes are octal

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        await self._upsert(fqdn, f'"{value}"')

    async def _upsert(self, fqdn: str, rrdata: str) -> None:
        """Add one record (an rrdata as Route 53 takes it) to the set, behind our back."""

        def upsert() -> None:
            client = self.moto.client()
            zone_id = client.list_hosted_zones_by_name(DNSName=self.zone)["HostedZones"][0]["Id"]
            existing = self._rrset(fqdn)
            records = existing["ResourceRecords"] if existing else []
            client.change_resource_record_sets(
                HostedZoneId=zone_id,
                ChangeBatch={
                    "Changes": [
                        {
                            "Action": "UPSERT",
                            "ResourceRecordSet": {
                                "Name": fqdn,
                                "Type": "TXT",
                                "TTL": existing["TTL"] if existing else 300,
                                "ResourceRecords": [*records, {"Value": rrdata}],
                            },
                        }
                    ]
                },
            )

        await asyncio.to_thread(upsert)

    @contextlib.asynccontextmanager
    async def inject(self, fault: Fault, *, wait: float = 7.0) -> AsyncIterator[Injected]:
        stub = self.stub
        assert stub is not None
        forever = 1_000_000
        saved = self.settings
        if fault is Fault.THROTTLED:
            stub.inject("Throttling", times=forever)
        elif fault is Fault.SERVER_ERROR:
            stub.inject("ServiceUnavailable", status=503, times=forever)
        elif fault is Fault.TIMEOUT:
            self.settings = dataclasses.replace(saved, timeout_seconds=FAST)
            stub.inject("ServiceUnavailable", status=503, times=forever, hang_seconds=HANG)
        elif fault is Fault.AUTH:
            stub.inject("AccessDenied", status=403, times=forever)
        elif fault is Fault.CONFLICT:
            stub.inject(
                "InvalidChangeBatch",
                operation="write",
                times=forever,
                message="[Tried to delete resource record set [name='other.', type='TXT']"
                " but the values provided do not match the current values]",
            )
        elif fault is Fault.LOST_ANSWER:
            stub.inject(
                "ServiceUnavailable",
                status=503,
                operation="write",
                times=forever,
                after_applying=True,
            )
        else:
            assert fault is Fault.MIXED
            stub.fail_at_rate(MIXED_RATE, MIXED_SEED, operations=("zones", "read", "write"))
        try:
            yield Injected(EXPECTED[fault])
        finally:
            self.settings = saved
            stub.faults.clear()
            stub.flaky = None

    def api_calls(self) -> int:
        assert self.stub is not None
        return sum(self.stub.calls.values())


@dataclass
class Rfc2136Harness:
    """A real BIND 9 primary; observed by plain DNS queries to it, seeded with its key."""

    faults: ClassVar[frozenset[Fault]] = frozenset(
        {Fault.SERVER_ERROR, Fault.TIMEOUT, Fault.AUTH, Fault.LOST_ANSWER, Fault.MIXED}
    )
    has_api: ClassVar[bool] = True
    keeps_spellings: ClassVar[bool] = True

    tmp_path: Path
    bind: Bind
    shared_backend: bool = True
    name: str = "rfc2136"
    zone: str = ZONE
    settings: Any = None
    proxy: DnsProxy | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Rfc2136Harness]:
        """The adapter talks to BIND through a proxy that can fail; observers do not."""
        key = dns.tsig.Key(KEY_NAME, base64.b64decode(self.bind.secret), "hmac-sha256")
        proxy = DnsProxy(self.bind.port, {key.name: key})
        async with proxy.running():
            self.proxy = proxy
            self.settings = self._settings(self.bind.secret)
            yield self

    def _settings(self, secret: str) -> Any:
        assert self.proxy is not None
        return Rfc2136Settings(
            server=f"127.0.0.1:{self.proxy.port}",
            tsig_key_name=KEY_NAME,
            tsig_secret=Secret(secret),
        )

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        return await load_provider_class(self.name).open(self.settings, budget)

    async def _query(self, fqdn: str) -> dns.message.Message:
        query = dns.message.make_query(fqdn, "TXT")
        return await dns.asyncquery.tcp(query, "127.0.0.1", port=self.bind.port, timeout=3)

    async def observe(self, fqdn: str) -> list[str]:
        response = await self._query(fqdn)
        return sorted(b"".join(r.strings).decode() for rrset in response.answer for r in rrset)

    async def observed_ttl(self, fqdn: str) -> int | None:
        response = await self._query(fqdn)
        return response.answer[0].ttl if response.answer else None

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        await self._add(fqdn, spelled(value))

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        await self._add(fqdn, f'"{value}"')

    async def _add(self, fqdn: str, text: str) -> None:
        """Add one TXT record (presentation form) straight to BIND, with its key."""
        import dns.update

        key = dns.tsig.Key(KEY_NAME, base64.b64decode(self.bind.secret), "hmac-sha256")
        update = dns.update.UpdateMessage(self.zone + ".", keyring=key)
        update.add(fqdn + ".", 300, "TXT", text)
        response = await dns.asyncquery.tcp(update, "127.0.0.1", port=self.bind.port, timeout=3)
        assert response.rcode() == dns.rcode.NOERROR

    @contextlib.asynccontextmanager
    async def inject(self, fault: Fault, *, wait: float = 7.0) -> AsyncIterator[Injected]:
        proxy = self.proxy
        assert proxy is not None
        forever = 1_000_000
        saved = self.settings
        if fault is Fault.SERVER_ERROR:
            proxy.inject("servfail", times=forever)
        elif fault is Fault.TIMEOUT:
            self.settings = dataclasses.replace(saved, timeout_seconds=FAST)
            proxy.inject("hang", times=forever)
        elif fault is Fault.AUTH:  # the server rejects the key (BIND: a TSIG BADSIG error)
            self.settings = self._settings("d3Jvbmcgc2VjcmV0IQ==")
        elif fault is Fault.LOST_ANSWER:
            proxy.inject("lost_answer", times=forever, updates_only=True)
        else:
            assert fault is Fault.MIXED
            proxy.fail_at_rate(MIXED_RATE, MIXED_SEED)
        try:
            yield Injected(EXPECTED[fault])
        finally:
            self.settings = saved
            proxy.faults.clear()
            proxy.rate = 0.0

    def api_calls(self) -> int:
        assert self.proxy is not None
        return self.proxy.messages


CIS_CRN = "crn:v1:bluemix:public:internet-svcs:global:a/0123456789abcdef:1111-2222::"


@dataclass
class CisHarness:
    """The fake CIS and IAM over HTTP, with API key auth (the suite's context carries no
    user token); observed in the fake's own record store."""

    faults: ClassVar[frozenset[Fault]] = ALL_HTTP
    has_api: ClassVar[bool] = True
    keeps_spellings: ClassVar[bool] = True

    tmp_path: Path
    shared_backend: bool = True
    name: str = "cis"
    zone: str = ZONE
    settings: Any = None
    cis: FakeCis = field(default_factory=lambda: FakeCis(CIS_CRN))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CisHarness]:
        from providers.cis import CisSettings

        iam = FakeIam(self.cis, api_keys={"conformance-key"})
        self.cis.add_zone("test")  # a shorter domain: the adapter must pick the longest
        self.cis.add_zone(self.zone)
        async with contextlib.AsyncExitStack() as stack:
            urls = []
            for app in (self.cis.app(), iam.app()):
                server = TestServer(app, host="127.0.0.1")
                await server.start_server()
                stack.push_async_callback(server.close)
                urls.append(str(server.make_url("")).rstrip("/"))
            self.settings = CisSettings(
                instance_crn=CIS_CRN,
                auth="api_key",
                api_key=Secret("conformance-key"),
                endpoint=urls[0],
                iam_endpoint=urls[1],
            )
            yield self

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        return await load_provider_class(self.name).open(self.settings, budget)

    async def observe(self, fqdn: str) -> list[str]:
        return self.cis.values(fqdn)

    async def observed_ttl(self, fqdn: str) -> int | None:
        ttls = self.cis.ttls(fqdn)
        assert len(ttls) <= 1, f"records at {fqdn} disagree on the TTL: {ttls}"
        return ttls.pop() if ttls else None

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        self.cis.seed(fqdn, spelled(value))

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        self.cis.seed(fqdn, value)

    @contextlib.asynccontextmanager
    async def inject(self, fault: Fault, *, wait: float = 7.0) -> AsyncIterator[Injected]:
        forever = 1_000_000
        saved = self.settings
        retry_after = None
        if fault in (Fault.THROTTLED, Fault.THROTTLED_UNTIL):
            self.cis.inject(429, times=forever, retry_after=announced(fault, wait))
            retry_after = wait
        elif fault is Fault.SERVER_ERROR:
            self.cis.inject(503, times=forever)
        elif fault is Fault.TIMEOUT:
            self.settings = dataclasses.replace(saved, timeout_seconds=FAST)
            self.cis.inject(504, times=forever, hang_seconds=HANG)
        elif fault is Fault.AUTH:  # IAM refuses the API key
            self.settings = dataclasses.replace(saved, api_key=Secret("revoked-api-key"))
        elif fault is Fault.LOST_ANSWER:
            for write in ("create", "delete"):
                self.cis.inject(503, times=forever, operation=write, after=True)
        else:
            assert fault is Fault.MIXED
            self.cis.fail_at_rate(MIXED_RATE, seed=MIXED_SEED)
        try:
            yield Injected(EXPECTED[fault], retry_after)
        finally:
            self.settings = saved
            self.cis.faults.clear()
            self.cis.fail_rate = 0.0

    def api_calls(self) -> int:
        return self.cis.calls.total()  # IAM's token exchanges are not CIS calls


@dataclass
class CloudflareHarness:
    """The Cloudflare API fake on loopback; observed through the fake's own records."""

    faults: ClassVar[frozenset[Fault]] = ALL_HTTP
    has_api: ClassVar[bool] = True
    keeps_spellings: ClassVar[bool] = True

    tmp_path: Path
    shared_backend: bool = True
    name: str = "cloudflare"
    zone: str = ZONE
    settings: Any = None
    zone_id: str = ""
    fake: CloudflareFake = field(default_factory=CloudflareFake)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CloudflareHarness]:
        from providers.cloudflare import CloudflareSettings

        self.fake.add_token("conformance-token", zones=[self.zone])
        self.zone_id = self.fake.add_zone(self.zone)
        self.fake.add_zone("other.test")  # outside the token's scope
        server = TestServer(self.fake.app(), host="127.0.0.1")
        await server.start_server()
        self.fake.url = str(server.make_url("/client/v4"))
        self.settings = CloudflareSettings(
            api_token=Secret("conformance-token"), endpoint=self.fake.url
        )
        try:
            yield self
        finally:
            await server.close()

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        return await load_provider_class(self.name).open(self.settings, budget)

    async def observe(self, fqdn: str) -> list[str]:
        return self.fake.txt(fqdn)

    async def observed_ttl(self, fqdn: str) -> int | None:
        ttls = {record.ttl for record in self.fake.txt_records(fqdn)}
        assert len(ttls) <= 1, ttls
        return ttls.pop() if ttls else None

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        self.fake.add_record(self.zone_id, fqdn, spelled(value))

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        self.fake.add_record(self.zone_id, fqdn, value)  # unquoted, as older tools wrote

    @contextlib.asynccontextmanager
    async def inject(self, fault: Fault, *, wait: float = 7.0) -> AsyncIterator[Injected]:
        saved = self.settings
        retry_after = None
        if fault in (Fault.THROTTLED, Fault.THROTTLED_UNTIL):
            self.fake.inject(429, retry_after=announced(fault, wait))
            retry_after = wait
        elif fault is Fault.SERVER_ERROR:
            self.fake.inject([500, 502, 503])  # 502: the edge's HTML page
        elif fault is Fault.TIMEOUT:
            self.settings = dataclasses.replace(saved, timeout_seconds=FAST)
            self.fake.inject(504, hang_seconds=HANG)
        elif fault is Fault.AUTH:  # a token Cloudflare does not know
            self.settings = dataclasses.replace(saved, api_token=Secret("revoked-token"))
        elif fault is Fault.LOST_ANSWER:  # a gateway timeout after the origin did the work
            for write in ("create", "delete"):
                self.fake.inject([502, 504], operation=write, when="after")
        else:
            assert fault is Fault.MIXED
            self.fake.inject([429, 500, 502, 503], rate=0.2, retry_after="0")
            self.fake.inject([502, 504], rate=0.125, when="after")  # 0.2 + 0.8 * 0.125
        try:
            yield Injected(EXPECTED[fault], retry_after)
        finally:
            self.settings = saved
            self.fake.faults.clear()

    def api_calls(self) -> int:
        return len(self.fake.requests)


@dataclass
class GcloudHarness:
    """The real google-cloud-dns client against the Cloud DNS fake; observed in its state."""

    faults: ClassVar[frozenset[Fault]] = ALL_HTTP | {Fault.CONFLICT}
    has_api: ClassVar[bool] = True
    keeps_spellings: ClassVar[bool] = True

    tmp_path: Path
    shared_backend: bool = True
    name: str = "gcloud"
    zone: str = ZONE
    settings: Any = None
    fake: CloudDnsFake = field(default_factory=CloudDnsFake)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[GcloudHarness]:
        self.fake.add_zone(self.zone.split(".", 1)[1])  # a parent: the longest match wins
        self.fake.add_zone(self.zone, name="private-twin", visibility="private")
        self.fake.add_zone(self.zone)
        server = TestServer(self.fake.app(), host="127.0.0.1")
        await server.start_server()
        self.fake.url = str(server.make_url("")).rstrip("/")
        self.settings = GcloudSettings(
            project=self.fake.project, endpoint=self.fake.url, anonymous=True
        )
        try:
            yield self
        finally:
            await server.close()

    async def provider(self, budget: RateBudget = UNLIMITED) -> Provider:
        return await load_provider_class(self.name).open(self.settings, budget)

    async def observe(self, fqdn: str) -> list[str]:
        return self.fake.values(fqdn)

    async def observed_ttl(self, fqdn: str) -> int | None:
        rrset = self.fake.rrset(fqdn)
        return int(rrset["ttl"]) if rrset else None

    async def seed_spelled(self, fqdn: str, value: str) -> None:
        self.fake.seed(fqdn, value, rrdata=spelled(value))

    async def seed_foreign(self, fqdn: str, value: str) -> None:
        self.fake.seed(fqdn, value)

    @contextlib.asynccontextmanager
    async def inject(self, fault: Fault, *, wait: float = 7.0) -> AsyncIterator[Injected]:
        forever = 1_000_000
        saved = self.settings
        retry_after = None
        if fault in (Fault.THROTTLED, Fault.THROTTLED_UNTIL):
            header = announced(fault, wait)
            self.fake.inject(429, "rateLimitExceeded", times=forever, retry_after=header)
            retry_after = wait
        elif fault is Fault.SERVER_ERROR:
            self.fake.inject(503, "backendError", times=forever)
        elif fault is Fault.TIMEOUT:
            self.settings = dataclasses.replace(saved, timeout_seconds=FAST)
            self.fake.inject(503, "backendError", times=forever, hang_seconds=HANG)
        elif fault is Fault.AUTH:
            self.fake.inject(403, "forbidden", times=forever, message="dns.changes denied")
        elif fault is Fault.CONFLICT:
            self.fake.inject(412, "conditionNotMet", times=forever, operation="write")
        elif fault is Fault.LOST_ANSWER:
            self.fake.inject(
                503, "backendError", times=forever, operation="write", after_applying=True
            )
        else:
            assert fault is Fault.MIXED
            self.fake.fail_at_rate(MIXED_RATE, seed=MIXED_SEED)
        try:
            yield Injected(EXPECTED[fault], retry_after)
        finally:
            self.settings = saved
            self.fake.faults.clear()
            self.fake.flaky = None

    def api_calls(self) -> int:
        return sum(self.fake.calls.values())


@dataclass(frozen=True)
class Registered:
    """A harness class, and how to build one for a test (some need backend fixtures)."""

    cls: type[Any]
    build: Callable[[pytest.FixtureRequest, Path], Any]


def _route53(request: pytest.FixtureRequest, tmp_path: Path) -> Route53Harness:
    request.getfixturevalue("aws_credentials")
    return Route53Harness(tmp_path, request.getfixturevalue("moto_server"))


# Keyed by provider name, "+" the backend where one provider has several.
HARNESSES: dict[str, Registered] = {
    "memory": Registered(MemoryHarness, lambda request, tmp_path: MemoryHarness(tmp_path)),
    "local": Registered(LocalHarness, lambda request, tmp_path: LocalHarness(tmp_path)),
    "local+postgres": Registered(
        LocalPostgresHarness,
        lambda request, tmp_path: LocalPostgresHarness(
            tmp_path, request.getfixturevalue("postgres_url")
        ),
    ),
    "route53": Registered(Route53Harness, _route53),
    "rfc2136": Registered(
        Rfc2136Harness,
        lambda request, tmp_path: Rfc2136Harness(tmp_path, request.getfixturevalue("bind_primary")),
    ),
    "cis": Registered(CisHarness, lambda request, tmp_path: CisHarness(tmp_path)),
    "cloudflare": Registered(
        CloudflareHarness, lambda request, tmp_path: CloudflareHarness(tmp_path)
    ),
    "gcloud": Registered(GcloudHarness, lambda request, tmp_path: GcloudHarness(tmp_path)),
}
