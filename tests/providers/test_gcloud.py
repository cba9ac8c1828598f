"""Google Cloud DNS beyond the conformance suite (which holds it to every fault its fake
can inject): racing writers (the 412 path), waiting for done, zone discovery, filtered
reads, batching within Cloud DNS's limits, credentials and Google's error reasons. The
real google-cloud-dns client talks to the Cloud DNS fake on loopback; results are read
from the fake's state, never through the adapter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from providers import errors
from providers.base import UNLIMITED, ChangeContext, RateBudget, TxtChange, ZoneRef
from providers.gcloud import (
    MAX_RRSETS_PER_CHANGE,
    GcloudSettings,
    GoogleCloudDnsProvider,
    _RrsetChange,
    _split,
)
from providers.txtsets import RecordSet
from receiver import signing
from receiver.challenge import Action, Challenge
from receiver.config import DispatchSettings, ZoneSettings
from receiver.dispatch import Dispatcher

from ..fakes.gcloud import CloudDnsFake

CTX = ChangeContext(request_id="gcloud-test")
ZONE = "example.com"
FQDN = f"_acme-challenge.{ZONE}"
SEED = int(os.environ.get("GCLOUD_FAULT_SEED", "20260101"))  # try others: any must pass


@pytest.fixture
async def fake() -> AsyncIterator[CloudDnsFake]:
    cloud = CloudDnsFake()
    cloud.add_zone(ZONE)
    server = TestServer(cloud.app(), host="127.0.0.1")
    await server.start_server()
    cloud.url = str(server.make_url("")).rstrip("/")
    yield cloud
    await server.close()


def settings(fake: CloudDnsFake, **options: Any) -> GcloudSettings:
    defaults: dict[str, Any] = {"project": fake.project, "endpoint": fake.url, "anonymous": True}
    return GcloudSettings(**{**defaults, **options})


async def adapter(
    fake: CloudDnsFake, budget: RateBudget = UNLIMITED, **options: Any
) -> GoogleCloudDnsProvider:
    return await GoogleCloudDnsProvider.open(settings(fake, **options), budget)


async def zone_ref(provider: GoogleCloudDnsProvider, name: str = ZONE) -> ZoneRef:
    return ZoneRef(name, await provider.zone_handle(name))


def dispatcher(provider: GoogleCloudDnsProvider, **options: Any) -> tuple[Dispatcher, ZoneSettings]:
    zone = ZoneSettings(name=ZONE, provider="gcloud", ttl=60, options=provider.settings)
    dispatch = {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.05, **options}
    return Dispatcher({zone.provider_key: provider}, DispatchSettings(**dispatch)), zone


def zone_options(fake: CloudDnsFake, **extra: Any) -> dict[str, Any]:
    return {
        "name": ZONE,
        "provider": "gcloud",
        "options": {"project": fake.project, "endpoint": fake.url, "anonymous": True, **extra},
    }


# --- through the real core ------------------------------------------------------------


async def test_two_writers_racing_on_one_name_lose_nothing(fake: CloudDnsFake) -> None:
    """Each "process" has its own adapter and hints; stale hints end in 412 (or 404 for a
    set that is gone, 409 for a racing create), a re-read and a retry, never a loss."""
    first, second = await adapter(fake), await adapter(fake)
    (d1, zone), (d2, _) = dispatcher(first), dispatcher(second)
    one, two, three = (signing.challenge_value() for _ in range(3))

    async def apply(d: Dispatcher, action: Action, value: str) -> None:
        await d.apply(Challenge(action, ZONE, FQDN, value), zone, request_id="t")

    await apply(d1, Action.ADD, one)  # first now believes {one}
    await apply(d2, Action.ADD, two)  # second guessed "absent": 409, read, retry
    assert fake.values(FQDN) == sorted([one, two])
    await apply(d1, Action.ADD, three)  # first's hint {one} is stale: 412
    await apply(d1, Action.REMOVE, one)
    assert fake.values(FQDN) == sorted([two, three])
    await apply(d2, Action.REMOVE, two)  # second's hint {one, two} is stale too: 412
    assert fake.values(FQDN) == [three]
    await apply(d1, Action.REMOVE, three)  # the last value: the set goes
    assert fake.rrset(FQDN) is None
    assert fake.rejections["alreadyExists"] >= 1
    assert fake.rejections["conditionNotMet"] >= 2


async def test_concurrent_writers_in_two_processes(fake: CloudDnsFake) -> None:
    d1, zone = dispatcher(await adapter(fake), batch_window_seconds=0.01, deadline_seconds=60)
    d2, _ = dispatcher(await adapter(fake), batch_window_seconds=0.01, deadline_seconds=60)
    keeper = signing.challenge_value()
    await d1.apply(Challenge(Action.ADD, ZONE, FQDN, keeper), zone, request_id="k")
    values = [signing.challenge_value() for _ in range(30)]

    async def pair(index: int, value: str) -> None:
        await (d1, d2)[index % 2].apply(
            Challenge(Action.ADD, ZONE, FQDN, value), zone, request_id="a"
        )
        await asyncio.sleep(0.005 * (index % 4))
        await (d2, d1)[index % 2].apply(
            Challenge(Action.REMOVE, ZONE, FQDN, value), zone, request_id="r"
        )

    await asyncio.gather(*(pair(i, v) for i, v in enumerate(values)))
    assert fake.values(FQDN) == [keeper]
    assert sum(fake.rejections.values()) >= 1  # the writers really raced


async def test_removal_never_deletes_a_sibling_value(fake: CloudDnsFake) -> None:
    provider = await adapter(fake)
    zone = await zone_ref(provider)
    await provider.add_txt(zone, FQDN, "a" * 43, 60, ctx=CTX)
    fake.seed(FQDN, "b" * 43)  # behind the adapter's back: its hint is now stale
    with pytest.raises(errors.ProviderConflict):
        await provider.remove_txt(zone, FQDN, "a" * 43, ctx=CTX)
    assert fake.values(FQDN) == ["a" * 43, "b" * 43]  # the Change was refused whole
    await provider.remove_txt(zone, FQDN, "a" * 43, ctx=CTX)  # re-reads: deletes exactly
    assert fake.values(FQDN) == ["b" * 43]
    (change,) = [c for c in fake.zone_for(ZONE).changes.values() if c["deletions"]]
    assert len(change["deletions"]) == len(change["additions"]) == 1  # ONE Change


# --- waiting for done ------------------------------------------------------------------


async def test_wait_for_done(fake: CloudDnsFake) -> None:
    fake.pending_polls = 2
    provider = await adapter(fake, wait_for_done=True, done_poll_seconds=0.01)
    await provider.add_txt(await zone_ref(provider), FQDN, "d" * 43, 60, ctx=CTX)
    assert fake.calls["change"] == 3  # pending, pending, done
    no_wait = await adapter(fake)
    await no_wait.add_txt(
        await zone_ref(no_wait), f"_acme-challenge.www.{ZONE}", "e" * 43, 60, ctx=CTX
    )
    assert fake.calls["change"] == 3


async def test_wait_for_done_gives_up_and_a_retry_still_waits(fake: CloudDnsFake) -> None:
    fake.pending_polls = 1_000
    provider = await adapter(
        fake, wait_for_done=True, done_poll_seconds=0.01, done_timeout_seconds=0.05
    )
    zone = await zone_ref(provider)
    with pytest.raises(errors.ProviderUnavailable, match="still pending"):
        await provider.add_txt(zone, FQDN, "p" * 43, 60, ctx=CTX)
    assert fake.values(FQDN) == ["p" * 43]  # applied, just not done yet
    # The core's retry finds nothing left to write, but must not answer before done.
    with pytest.raises(errors.ProviderUnavailable, match="still pending"):
        await provider.add_txt(zone, FQDN, "p" * 43, 60, ctx=CTX)
    assert fake.calls["write"] == 1
    fake.pending_polls = 0
    polls = fake.calls["change"]
    await provider.add_txt(zone, FQDN, "p" * 43, 60, ctx=CTX)
    assert fake.calls["change"] == polls + 1
    await provider.add_txt(zone, FQDN, "p" * 43, 60, ctx=CTX)  # done is remembered
    assert fake.calls["change"] == polls + 1


# --- zones and reads --------------------------------------------------------------------


async def test_zone_discovery(fake: CloudDnsFake) -> None:
    fake.add_zone(ZONE, name="internal", visibility="private")  # same name, private
    fake.add_zone(f"dev.{ZONE}", name="dev")
    fake.page_size = 1  # zone lists page one zone at a time
    provider = await adapter(fake)
    assert await provider.zone_handle(ZONE) == "example-com"
    assert await provider.zone_handle(f"a.b.dev.{ZONE}") == "dev"  # the longest match
    assert await provider.zone_handle(f"x.{ZONE}") == "example-com"
    with pytest.raises(errors.ZoneNotFound, match="no public managed zone"):
        await provider.zone_handle("example.org")
    fake.honour_filters = False  # a server that ignores dnsName: pages, still right
    assert await provider.zone_handle(f"a.dev.{ZONE}") == "dev"
    fake.add_zone(ZONE, name="example-com-two")  # two public zones of one name
    with pytest.raises(errors.ProviderRejected, match="set managed_zone"):
        await provider.zone_handle(ZONE)
    calls = fake.calls["zones"]
    explicit = await adapter(fake, managed_zone="example-com-two")
    assert await explicit.zone_handle(ZONE) == "example-com-two"
    assert fake.calls["zones"] == calls  # configured: no lookup at all


async def test_unknown_managed_zone_is_zone_not_found(fake: CloudDnsFake) -> None:
    provider = await adapter(fake, managed_zone="no-such-zone")
    zone = await zone_ref(provider)
    with pytest.raises(errors.ZoneNotFound, match="managedZone"):
        await provider.list_txt(zone, FQDN)
    with pytest.raises(errors.ZoneNotFound):
        await provider.add_txt(zone, FQDN, "z" * 43, 60, ctx=CTX)


async def test_reads_are_filtered_and_correct_without_filters(fake: CloudDnsFake) -> None:
    for index in range(250):
        fake.seed(f"_acme-challenge.h{index}.{ZONE}", f"v{index}")
    fake.page_size = 100
    provider = await adapter(fake)
    zone = await zone_ref(provider)
    assert await provider.list_txt(zone, f"_acme-challenge.h249.{ZONE}") == {"v249"}
    assert fake.calls["read"] == 1 and fake.filtered_reads == 1  # one small request
    fake.honour_filters = False  # as if the filters were dropped: pages, still right
    assert await provider.list_txt(zone, f"_acme-challenge.h249.{ZONE}") == {"v249"}
    reads = fake.calls["read"]
    assert await provider.list_txt(zone, f"_acme-challenge.none.{ZONE}") == frozenset()
    assert fake.calls["read"] - reads == 3  # 251 sets, 100 a page


async def test_many_changes_are_one_change(fake: CloudDnsFake) -> None:
    provider = await adapter(fake)
    zone = await zone_ref(provider)
    fake.seed(FQDN, "foreign")
    await provider.apply(
        zone,
        [
            *(TxtChange("add", f"_acme-challenge.h{i}.{ZONE}", "x" * 43, 60) for i in range(50)),
            TxtChange("add", FQDN, "a" * 43, 60),
            TxtChange("add", FQDN, "b" * 43, 60),
            TxtChange("remove", FQDN, "a" * 43, 0),
        ],
        ctx=CTX,
    )
    assert fake.calls["write"] == 1
    assert fake.calls["read"] == 1  # only the name a removal touches is read first
    assert fake.values(FQDN) == ["b" * 43, "foreign"]
    assert fake.values(f"_acme-challenge.h49.{ZONE}") == ["x" * 43]


def test_changes_respect_cloud_dns_limits() -> None:
    def changes(count: int, length: int, *, replace: bool) -> list[_RrsetChange]:
        rs = RecordSet.decoded(60, ("x" * length,), base=10)
        return [_RrsetChange(f"n{i}", rs if replace else None, rs) for i in range(count)]

    assert [len(b) for b in _split(changes(2500, 10, replace=False))] == [1000, 1000, 500]
    assert [len(b) for b in _split(changes(1200, 10, replace=True))] == [
        MAX_RRSETS_PER_CHANGE,
        200,
    ]
    assert [len(b) for b in _split(changes(30, 2000, replace=True))] == [25, 5]  # 100 kB
    assert _split([]) == []


async def test_pages_and_change_polls_draw_from_the_budget_too(fake: CloudDnsFake) -> None:
    class Counting(RateBudget):
        taken = 0

        def reserve(self) -> float:
            Counting.taken += 1
            return 0.0

    fake.add_zone(f"dev.{ZONE}", name="dev")
    fake.page_size = 1
    fake.honour_filters = False
    provider = await adapter(fake, budget=Counting(None), wait_for_done=True)
    zone = await zone_ref(provider)  # zone lists, paged
    await provider.remove_txt(zone, FQDN, "r" * 43, ctx=CTX)  # a read
    await provider.add_txt(zone, FQDN, "r" * 43, 60, ctx=CTX)  # a write
    fake.pending_polls = 1
    await provider.add_txt(zone, f"_acme-challenge.www.{ZONE}", "r" * 43, 60, ctx=CTX)
    assert fake.calls["zones"] >= 2 and fake.calls["change"] == 2
    assert Counting.taken == sum(fake.calls.values())


# --- credentials and errors -----------------------------------------------------------


async def test_service_account_key_file(fake: CloudDnsFake, tmp_path: Path) -> None:
    """The credentials_file path runs for real: a signed JWT grant at the token endpoint,
    a bearer token on every call, and a refresh when the token is rejected."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = "receiver@test-project.iam.gserviceaccount.com"
    fake.service_accounts[email] = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fake.require_auth = True
    key_file = tmp_path / "key.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": fake.project,
                "private_key_id": "k1",
                "private_key": key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
                "client_email": email,
                "client_id": "1",
                "token_uri": f"{fake.url}/token",
            }
        )
    )
    provider = await adapter(fake, anonymous=False, credentials_file=key_file)
    zone = await zone_ref(provider)
    await provider.add_txt(zone, FQDN, "s" * 43, 60, ctx=CTX)
    assert fake.values(FQDN) == ["s" * 43]
    assert fake.calls["token"] == 1
    fake.tokens.clear()  # the token is revoked: 401, refresh, the call goes through
    await provider.remove_txt(zone, FQDN, "s" * 43, ctx=CTX)
    assert fake.values(FQDN) == []
    assert fake.calls["token"] == 2
    await provider.aclose()

    anonymous = await adapter(fake)  # no token at all against an API that wants one
    with pytest.raises(errors.ProviderAuthError):
        await anonymous.zone_handle(ZONE)
    fake.service_accounts[email] = b"not the key"  # the key is disabled
    fake.tokens.clear()
    refused = await adapter(fake, anonymous=False, credentials_file=key_file)
    with pytest.raises(errors.ProviderAuthError, match="access token"):
        await refused.zone_handle(ZONE)


async def test_options_that_cannot_work_are_refused_on_opening(fake: CloudDnsFake) -> None:
    with pytest.raises(errors.ProviderRejected, match="set endpoint"):
        await GoogleCloudDnsProvider.open(GcloudSettings(project="p", anonymous=True), UNLIMITED)
    with pytest.raises(errors.ProviderRejected, match="only one"):
        await adapter(fake, credentials_file=Path("/nonexistent.json"))


async def test_missing_application_default_credentials(
    fake: CloudDnsFake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from google.auth.compute_engine import _metadata

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)  # NO_GCE_CHECK=true, read at import
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud user credentials
    provider = await adapter(fake, anonymous=False)
    with pytest.raises(errors.ProviderAuthError, match="credentials"):
        await provider.zone_handle(ZONE)


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (401, "authError", errors.ProviderAuthError),
        (403, "rateLimitExceeded", errors.ProviderRateLimited),  # Google throttles with 403
        (409, "alreadyExists", errors.ProviderConflict),  # a racing addition
        (400, "invalid", errors.ProviderRejected),
        (413, "quotaExceeded", errors.ProviderRejected),
    ],
)
async def test_google_error_reasons(
    fake: CloudDnsFake, status: int, reason: str, expected: type[errors.ProviderError]
) -> None:
    """Beyond the conformance suite's faults: how Google's status and reason pairs map."""
    provider = await adapter(fake)
    zone = await zone_ref(provider)
    fake.inject(status, reason)
    with pytest.raises(expected, match=reason):
        await provider.add_txt(zone, FQDN, "v" * 43, 60, ctx=CTX)


async def test_unreachable_endpoint(unused_tcp_port: int) -> None:
    dead = await GoogleCloudDnsProvider.open(
        GcloudSettings(project="p", endpoint=f"http://127.0.0.1:{unused_tcp_port}", anonymous=True),
        UNLIMITED,
    )
    with pytest.raises(errors.ProviderUnavailable):
        await dead.zone_handle(ZONE)


PROBE = """
import sys
at_start = set(sys.modules)  # a *-nspkg.pth (functions-framework's) pre-creates `google`
from providers.registry import load_provider_class
cls = load_provider_class("gcloud")
def google():
    return sorted(m for m in set(sys.modules) - at_start if m.split(".")[0] == "google")
before = google()
import asyncio
from providers.base import UNLIMITED
adapter = asyncio.run(cls.open(cls.Settings(project="p"), UNLIMITED))
print(before, google())
"""


def test_the_sdk_is_imported_only_when_used() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[] []"


async def test_a_set_deleted_behind_our_back_is_a_conflict_not_a_lost_zone(
    fake: CloudDnsFake,
) -> None:
    provider = await adapter(fake)
    zone = await zone_ref(provider)
    await provider.add_txt(zone, FQDN, "a" * 43, 60, ctx=CTX)  # the hint is now {a}
    del fake.zone_for(ZONE).rrsets[(FQDN + ".", "TXT")]  # someone removes the set
    with pytest.raises(errors.ProviderConflict, match="deletions"):
        await provider.add_txt(zone, FQDN, "b" * 43, 60, ctx=CTX)  # 404 on the deletion
    assert fake.rejections["notFound"] == 1
    await provider.add_txt(zone, FQDN, "b" * 43, 60, ctx=CTX)  # re-reads, creates
    assert fake.values(FQDN) == ["b" * 43]


async def test_a_retried_batch_builds_on_the_reads_of_failed_attempts(
    fake: CloudDnsFake,
) -> None:
    """A batch whose answer was lost must re-read every name before deciding "nothing to
    do"; with a fifth of the reads failing, each name is still read successfully once."""
    provider = await adapter(fake)
    zone = await zone_ref(provider)
    names = [f"_acme-challenge.h{i}.{ZONE}" for i in range(30)]
    changes = [TxtChange("add", fqdn, "y" * 43, 60) for fqdn in names]
    fake.inject(503, "backendError", operation="write", after_applying=True)
    fake.fail_at_rate(0.2, seed=SEED, operations=("read",))
    for attempt in range(100):  # what the core's retries do
        try:
            await provider.apply(zone, changes, ctx=CTX)
            break
        except (errors.ProviderUnavailable, errors.ProviderRateLimited):
            assert attempt < 99
    assert fake.flaky is not None and fake.flaky.injected >= 1
    assert fake.calls["write"] == 1  # found applied: nothing written twice
    assert fake.calls["read"] == len(names) + fake.flaky.injected
    assert all(fake.values(fqdn) == ["y" * 43] for fqdn in names)


def test_configuration(make_settings: Any, tmp_path: Path) -> None:
    from receiver.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_settings(zones=[{"name": ZONE, "provider": "gcloud", "options": {"anonymus": True}}])
    assert "zones[0].options.project: required" in caught.value.problems
    assert any("anonymus: unknown setting" in p for p in caught.value.problems)
    built = make_settings(
        zones=[
            {
                "name": ZONE,
                "provider": "gcloud",
                "options": {"project": "p", "credentials_file": "key.json"},
            }
        ]
    )
    options = built.zones[0].options
    assert options == GcloudSettings(project="p", credentials_file=tmp_path / "key.json")
    assert not options.anonymous  # never implied by anything else


async def test_anonymous_without_endpoint_stops_the_service(make_settings: Any) -> None:
    from receiver.errors import ConfigError

    with pytest.raises(ConfigError, match=r"zones\[0\]\.options\.anonymous: anonymous"):
        make_settings(
            zones=[
                {"name": ZONE, "provider": "gcloud", "options": {"project": "p", "anonymous": True}}
            ]
        )
