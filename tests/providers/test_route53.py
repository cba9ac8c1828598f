"""Route 53 beyond the conformance suite (which holds it to every fault its stub can
inject): batching, conflicts between processes, INSYNC waits, zone discovery, Route 53's
error codes and retried batches. moto_server behind the Route 53 stub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from providers import errors
from providers.base import UNLIMITED, ChangeContext, RateBudget, TxtChange, ZoneRef
from providers.route53 import Route53Provider, Route53Settings, _split
from receiver import signing
from receiver.challenge import Action, Challenge
from receiver.config import DispatchSettings, ZoneSettings
from receiver.dispatch import Dispatcher

from ..backends.moto import MotoServer
from ..conftest import Sender, ServiceFactory
from ..fakes.route53 import Route53Stub

CTX = ChangeContext(request_id="route53-test")
ZONE = "example.com"


@pytest.fixture
async def stub(moto_server: MotoServer, aws_credentials: None) -> AsyncIterator[Route53Stub]:
    await asyncio.to_thread(moto_server.reset)
    await asyncio.to_thread(moto_server.create_zone, ZONE)
    fake = Route53Stub(moto_server.url)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


async def adapter(
    stub: Route53Stub, budget: RateBudget = UNLIMITED, **options: Any
) -> Route53Provider:
    return await Route53Provider.open(Route53Settings(endpoint=stub.url, **options), budget)


def observe(moto: MotoServer, fqdn: str, zone: str = ZONE) -> set[str]:
    client = moto.client()
    zone_id = client.list_hosted_zones_by_name(DNSName=zone)["HostedZones"][0]["Id"]
    found = client.list_resource_record_sets(
        HostedZoneId=zone_id, StartRecordName=fqdn, StartRecordType="TXT", MaxItems="1"
    )
    for rrset in found["ResourceRecordSets"]:
        if rrset["Name"].rstrip(".") == fqdn and rrset["Type"] == "TXT":
            return {r["Value"].strip('"') for r in rrset["ResourceRecords"]}
    return set()


def dispatcher(provider: Route53Provider, **settings: Any) -> tuple[Dispatcher, ZoneSettings]:
    zone = ZoneSettings(name=ZONE, provider="route53", ttl=60, options=provider.settings)
    options = {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.05, **settings}
    return Dispatcher({zone.provider_key: provider}, DispatchSettings(**options)), zone


async def test_two_processes_lose_nothing(stub: Route53Stub, moto_server: MotoServer) -> None:
    """Each "process" has its own adapter and hints; stale hints must end in a conflict,
    a re-read and a retry, never in a lost value."""
    fqdn = f"_acme-challenge.{ZONE}"
    first, second = await adapter(stub), await adapter(stub)
    (d1, zone), (d2, _) = dispatcher(first), dispatcher(second)
    one, two, three = (signing.challenge_value() for _ in range(3))

    async def apply(d: Dispatcher, action: Action, value: str) -> None:
        await d.apply(Challenge(action, ZONE, fqdn, value), zone, request_id="t")

    await apply(d1, Action.ADD, one)  # first now believes {one}
    await apply(d2, Action.ADD, two)  # second guessed "absent": conflict, read, retry
    assert observe(moto_server, fqdn) == {one, two}
    await apply(d1, Action.ADD, three)  # first's hint {one} is stale: conflict again
    await apply(d1, Action.REMOVE, one)
    assert observe(moto_server, fqdn) == {two, three}
    await apply(d2, Action.REMOVE, two)  # second's hint is stale too
    assert observe(moto_server, fqdn) == {three}
    assert stub.calls["write"] >= 7  # conflicts really happened (5 changes, 2+ rejected)


async def test_fifty_concurrent_pairs_from_two_processes(
    stub: Route53Stub, moto_server: MotoServer
) -> None:
    fqdn = f"_acme-challenge.{ZONE}"
    d1, zone = dispatcher(await adapter(stub), batch_window_seconds=0.02, deadline_seconds=60)
    d2, _ = dispatcher(await adapter(stub), batch_window_seconds=0.02, deadline_seconds=60)
    values = [signing.challenge_value() for _ in range(50)]

    async def pair(index: int, value: str) -> None:
        d = (d1, d2)[index % 2]
        await d.apply(Challenge(Action.ADD, ZONE, fqdn, value), zone, request_id="a")
        await asyncio.sleep(0.01 * (index % 5))
        await (d2, d1)[index % 2].apply(
            Challenge(Action.REMOVE, ZONE, fqdn, value), zone, request_id="r"
        )

    keeper = signing.challenge_value()
    await d1.apply(Challenge(Action.ADD, ZONE, fqdn, keeper), zone, request_id="k")
    await asyncio.gather(*(pair(i, v) for i, v in enumerate(values)))
    assert observe(moto_server, fqdn) == {keeper}


async def test_a_hundred_notifications_are_a_handful_of_writes(
    start_service: ServiceFactory, sender: Sender, stub: Route53Stub, moto_server: MotoServer
) -> None:
    service = await start_service(
        zones=[{"name": ZONE, "provider": "route53", "options": {"endpoint": stub.url}}],
        dispatch={"deadline_seconds": 20, "batch_window_seconds": 0.2},
    )
    values = {f"h{i}.{ZONE}": signing.challenge_value() for i in range(100)}
    responses = await asyncio.gather(
        *(
            service.post(sender.body(sender.claims("cert_domain_validation_required", d, v)))
            for d, v in values.items()
        )
    )
    assert [r.status for r in responses] == [200] * 100
    assert stub.calls["write"] <= 3, stub.calls
    assert stub.calls["read"] == 0  # fresh names are written without reading first
    for domain, value in list(values.items())[:5]:
        assert observe(moto_server, f"_acme-challenge.{domain}") == {value}
    writes = stub.calls["write"]
    responses = await asyncio.gather(
        *(
            service.post(sender.body(sender.claims("cert_domain_validation_completed", d, v)))
            for d, v in values.items()
        )
    )
    assert [r.status for r in responses] == [200] * 100
    assert stub.calls["write"] - writes <= 3
    assert all(not observe(moto_server, f"_acme-challenge.{d}") for d in list(values)[:5])


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("PriorRequestNotComplete", 400, errors.ProviderRateLimited),
        ("InvalidClientTokenId", 403, errors.ProviderAuthError),
        ("NoSuchHostedZone", 404, errors.ZoneNotFound),
        ("InternalFailure", 500, errors.ProviderUnavailable),
        ("InvalidInput", 400, errors.ProviderRejected),
    ],
)
async def test_route53_error_codes(
    stub: Route53Stub, code: str, status: int, expected: type[errors.ProviderError]
) -> None:
    """Beyond the conformance suite's faults: Route 53's other codes."""
    stub.inject(code, status=status)
    provider = await adapter(stub)
    with pytest.raises(expected, match=code):
        await provider.add_txt(
            ZoneRef(ZONE, await provider.zone_handle(ZONE)),
            f"_acme-challenge.{ZONE}",
            "v" * 43,
            60,
            ctx=CTX,
        )


async def test_unreachable_endpoint_and_missing_credentials(
    stub: Route53Stub, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    dead = await Route53Provider.open(
        Route53Settings(endpoint=f"http://127.0.0.1:{unused_tcp_port}"), UNLIMITED
    )
    with pytest.raises(errors.ProviderUnavailable):
        await dead.zone_handle(ZONE)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    anonymous = await adapter(stub)
    with pytest.raises(errors.ProviderAuthError):
        await anonymous.zone_handle(ZONE)


async def test_wait_for_insync(stub: Route53Stub, moto_server: MotoServer) -> None:
    stub.pending_polls = 2
    provider = await adapter(stub, wait_insync=True, insync_poll_seconds=0.01)
    await provider.add_txt(
        ZoneRef(ZONE, await provider.zone_handle(ZONE)),
        f"_acme-challenge.{ZONE}",
        "i" * 43,
        60,
        ctx=CTX,
    )
    assert stub.calls["change"] == 3  # PENDING, PENDING, INSYNC
    no_wait = await adapter(stub)
    await no_wait.add_txt(
        ZoneRef(ZONE, await no_wait.zone_handle(ZONE)),
        f"_acme-challenge.www.{ZONE}",
        "j" * 43,
        60,
        ctx=CTX,
    )
    assert stub.calls["change"] == 3


async def test_zone_discovery(stub: Route53Stub, moto_server: MotoServer) -> None:
    public = (
        await asyncio.to_thread(moto_server.client().list_hosted_zones_by_name, DNSName=ZONE)
    )["HostedZones"][0]["Id"].split("/")[-1]
    private = await asyncio.to_thread(moto_server.create_zone, ZONE, private=True)
    deeper = await asyncio.to_thread(moto_server.create_zone, f"dev.{ZONE}")
    assert await (await adapter(stub)).zone_handle(ZONE) == public
    assert await (await adapter(stub, private=True)).zone_handle(ZONE) == private
    # the longest hosted zone that contains the configured name
    assert await (await adapter(stub)).zone_handle(f"a.b.dev.{ZONE}") == deeper
    assert await (await adapter(stub)).zone_handle(f"x.{ZONE}") == public
    assert (
        await (await adapter(stub, hosted_zone_id="/hostedzone/ZEXPLICIT")).zone_handle(ZONE)
        == "ZEXPLICIT"
    )
    with pytest.raises(errors.ZoneNotFound):
        await (await adapter(stub)).zone_handle("example.org")
    await asyncio.to_thread(moto_server.create_zone, ZONE)  # a second public one
    with pytest.raises(errors.ProviderRejected, match="hosted_zone_id"):
        await (await adapter(stub)).zone_handle(ZONE)


async def test_rate_budget_is_respected_end_to_end(stub: Route53Stub) -> None:
    provider = await adapter(stub, budget=RateBudget(20, burst=1))
    zone = ZoneRef(ZONE, await provider.zone_handle(ZONE))
    started = time.monotonic()
    for index in range(5):
        await provider.add_txt(zone, f"_acme-challenge.h{index}.{ZONE}", "b" * 43, 60, ctx=CTX)
    assert time.monotonic() - started >= 0.2  # 6 calls at 20/s after the first


def test_batches_respect_route53_limits() -> None:
    def groups(count: int, value: str, per_name: int) -> list[tuple[str, list[dict[str, Any]]]]:
        records = [{"Value": value}] * per_name
        return [
            (f"n{i}", [{"Action": "CREATE", "ResourceRecordSet": {"ResourceRecords": records}}])
            for i in range(count)
        ]

    assert [len(b) for b in _split(groups(700, '"v"', 2))] == [500, 200]  # 1,000 records
    assert [len(b) for b in _split(groups(20, "x" * 4000, 1))] == [8, 8, 4]  # 32,000 chars
    assert _split([]) == []


async def test_a_batch_touching_one_name_twice(stub: Route53Stub, moto_server: MotoServer) -> None:
    provider = await adapter(stub)
    zone = ZoneRef(ZONE, await provider.zone_handle(ZONE))
    fqdn = f"_acme-challenge.{ZONE}"
    await provider.apply(
        zone,
        [
            TxtChange("add", fqdn, "a" * 43, 60),
            TxtChange("add", fqdn, "b" * 43, 60),
            TxtChange("remove", fqdn, "a" * 43, 0),
        ],
        ctx=CTX,
    )
    assert observe(moto_server, fqdn) == {"b" * 43}
    assert stub.calls["write"] == 1


async def test_check_config_probe(
    stub: Route53Stub, moto_server: MotoServer, tmp_path: Any, public_key_file: Any
) -> None:
    import sys

    from ..conftest import INSTANCE

    config = tmp_path / "r.toml"

    async def run(extra: str = "") -> tuple[int, str]:
        config.write_text(f"""
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{public_key_file}"
[route53]
endpoint = "{stub.url}"
{extra}
[local]
database = "store.sqlite3"
[[zones]]
name = "{ZONE}"
provider = "route53"
[[zones]]
name = "acme.example.net"
provider = "local"
""")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "check-config",
            "--probe",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await run()
    assert code == 0, out
    assert "ok   example.com" in out and "ok   acme.example.net" in out
    assert "wrote, read back and removed a value at _acme-challenge.example.com" in out
    assert observe(moto_server, f"_acme-challenge.{ZONE}") == set()  # nothing left behind
    assert stub.calls["write"] == 2

    code, out = await run("private = true")  # there is no private example.com
    assert code == 1
    assert "FAIL example.com" in out and "no private hosted zone" in out
    assert "ok   acme.example.net" in out

    stub.inject("AccessDenied", status=403, times=10)
    code, out = await run()
    assert code == 1 and "FAIL example.com" in out and "AccessDenied" in out


async def test_a_retried_batch_builds_on_the_reads_of_failed_attempts(stub: Route53Stub) -> None:
    """A batch whose answer was lost must re-read every name before deciding "nothing to
    do"; with a fifth of the reads failing, each name is still read successfully once
    (re-reading every name on every attempt needs 30 good reads in a row: ~0.1 %)."""
    provider = await adapter(stub)
    zone = ZoneRef(ZONE, await provider.zone_handle(ZONE))
    names = [f"_acme-challenge.h{i}.{ZONE}" for i in range(30)]
    changes = [TxtChange("add", fqdn, "y" * 43, 60) for fqdn in names]
    stub.inject("ServiceUnavailable", status=503, operation="write", after_applying=True)
    stub.fail_at_rate(0.2, seed=20260101, operations=("read",))
    for attempt in range(100):  # what the core's retries do
        try:
            await provider.apply(zone, changes, ctx=CTX)
            break
        except (errors.ProviderUnavailable, errors.ProviderRateLimited):
            assert attempt < 99, f"{stub.calls['read']} reads and still not done"
    assert stub.flaky is not None and stub.flaky.injected >= 1
    assert stub.calls["write"] == 1  # found applied: nothing written twice
    assert stub.calls["read"] == len(names) + stub.flaky.injected
