"""The Secrets Manager door against the faithful fake (real HTTP on loopback), with a
scripted CA: publish, validate once, follow, remove; and the faults around it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from providers.base import ZoneRef
from receiver import config
from receiver import secrets_manager_api as api_module
from receiver.doors import serving_runtime
from receiver.doors.secrets_manager import SecretsManagerDoor, parse_order
from receiver.runtime import Runtime

from .fakes.secrets_manager import FakeSecretsManager, ScriptedCa

API_KEY = "sm-test-api-key"
CHALLENGE = "_acme-challenge.example.com"


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_module, "RETRY_INITIAL_SECONDS", 0.01)
    monkeypatch.setenv("SM_API_KEY", API_KEY)


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Any]) -> FakeSecretsManager:
    sm = FakeSecretsManager(ScriptedCa(), api_key=API_KEY)
    server = await aiohttp_server(sm.app())
    sm.url = str(server.make_url("")).rstrip("/")
    return sm


def sm_settings(fake: FakeSecretsManager, tmp_path: Path, **instance: Any) -> config.Settings:
    data: dict[str, Any] = {
        "certificate_manager": {"enabled": False},
        "propagation": {"check": False},
        "local": {"database": str(tmp_path / "store.sqlite3"), "dns_listen": "127.0.0.1:0"},
        "zones": [{"name": "example.com", "provider": "local", "ttl": 30}],
        "secrets_manager": {
            "enabled": True,
            "instances": [
                {
                    "instance_id": fake.instance_id,
                    "region": fake.region,
                    "endpoint": fake.url,
                    "iam_url": f"{fake.url}/identity/token",
                    "api_key_env": "SM_API_KEY",
                    **instance,
                }
            ],
        },
    }
    return config.from_mapping(data, base_dir=tmp_path)


@asynccontextmanager
async def door_of(
    settings: config.Settings, *, long_running: bool = False
) -> AsyncIterator[tuple[SecretsManagerDoor, Runtime]]:
    async with serving_runtime(settings, long_running=long_running) as runtime:
        door = runtime.doors.named("secrets_manager")
        assert isinstance(door, SecretsManagerDoor)
        yield door, runtime


async def served(runtime: Runtime, fqdn: str = CHALLENGE) -> frozenset[str]:
    (provider,) = {id(p): p for p in runtime.providers.values()}.values()
    return await provider.list_txt(ZoneRef("example.com", "example.com"), fqdn)


def validations(fake: FakeSecretsManager) -> int:
    return sum(1 for method, path, _ in fake.calls if method == "POST" and "/actions" in path)


async def test_sync_publishes_validates_once_and_removes(
    fake: FakeSecretsManager, tmp_path: Path
) -> None:
    secret = await fake.create_secret("example.com", ["*.example.com"])
    values = {c["txt_record_value"] for c in secret.challenges}
    async with door_of(sm_settings(fake, tmp_path)) as (door, runtime):
        report = await door.sync_once()
        assert report.published == [secret.crn] and not report.failed
        assert await served(runtime) == values  # both values at the one shared name
        assert await fake.settled(secret) == 1
        again = await door.sync_once()
        assert again.removed == 2 and not again.failed
        assert await served(runtime) == frozenset()
        await door.sync_once()
    assert validations(fake) == 1
    entries = await _journal(tmp_path)
    adds = [e for e in entries if e.action == "add"]
    assert {e.certificate for e in adds} == {secret.crn}
    assert {e.sender for e in adds} == {fake.instance_crn}
    assert {e.door for e in entries} == {"secrets_manager"}
    assert {e.domain for e in adds} == {"example.com", "*.example.com"}


async def test_pages_filters_and_other_secrets(fake: FakeSecretsManager, tmp_path: Path) -> None:
    for index in range(5):
        await fake.create_secret(f"a{index}.example.com", labels=["bridge"])
    await fake.create_secret("b.example.com")  # no label: not ours
    await fake.create_secret("c.example.com", labels=["bridge"], dns="cis-config")
    api_module.PAGE_SIZE, saved = 2, api_module.PAGE_SIZE
    try:
        async with door_of(sm_settings(fake, tmp_path, labels=["bridge"])) as (door, _):
            report = await door.sync_once()
    finally:
        api_module.PAGE_SIZE = saved
    assert len(report.published) == 5
    lists = [path for method, path, _ in fake.calls if path == "/api/v2/secrets"]
    assert len(lists) == 3  # 2 + 2 + 1
    assert validations(fake) == 5


async def test_retries_429_and_5xx(fake: FakeSecretsManager, tmp_path: Path) -> None:
    secret = await fake.create_secret("example.com")
    fake.inject(429, retry_after=0.05)
    fake.inject(503, times=2)
    async with door_of(sm_settings(fake, tmp_path)) as (door, _):
        report = await door.sync_once()
    assert report.published == [secret.crn]
    assert [status for _, _, status in fake.calls[1:5]] == [429, 503, 503, 200]  # after IAM


async def test_gives_up_after_bounded_retries(fake: FakeSecretsManager, tmp_path: Path) -> None:
    await fake.create_secret("example.com")
    fake.inject(500, times=10)
    async with door_of(sm_settings(fake, tmp_path)) as (door, _):
        report = await door.sync_once()
    assert report.failed and not report.published
    assert len([c for c in fake.calls if c[1].startswith("/api/")]) == 5  # 1 + 4 retries


async def test_token_expiring_mid_pass_is_renewed(fake: FakeSecretsManager, tmp_path: Path) -> None:
    secret = await fake.create_secret("example.com")
    fake.expire_tokens_at_call = 2  # after the token and the list: the metadata read 401s
    async with door_of(sm_settings(fake, tmp_path)) as (door, _):
        report = await door.sync_once()
    assert report.published == [secret.crn]
    assert fake.token_grants == 2
    assert 401 in [status for _, _, status in fake.calls]


async def test_wrong_api_key_fails_the_instance(
    fake: FakeSecretsManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fake.create_secret("example.com")
    monkeypatch.setenv("SM_API_KEY", "wrong")
    with structlog.testing.capture_logs() as logs:
        async with door_of(sm_settings(fake, tmp_path)) as (door, _):
            report = await door.sync_once()
    assert report.failed == [(fake.instance_id, "iam_refused")]
    assert "wrong" not in repr(logs) and API_KEY not in repr(logs)


async def test_a_name_outside_the_zones_skips_the_whole_secret(
    fake: FakeSecretsManager, tmp_path: Path
) -> None:
    secret = await fake.create_secret("example.com", ["example.org"])
    with structlog.testing.capture_logs() as logs:
        async with door_of(sm_settings(fake, tmp_path), long_running=True) as (door, runtime):
            first = await door.sync_once()
            second = await door.sync_once()
            assert await served(runtime) == frozenset()
            metrics = runtime.metrics.render().decode()
    assert first.skipped and second.skipped and not first.published
    assert validations(fake) == 0
    skipped = [e for e in logs if e["event"] == "secrets_manager_secret_skipped"]
    assert len(skipped) == 1 and skipped[0]["secret_crn"] == secret.crn  # logged once
    assert 'door="secrets_manager",event_type="order",outcome="outside_zones"' in metrics


async def test_bad_data_skips_that_secret_only(fake: FakeSecretsManager, tmp_path: Path) -> None:
    bad = await fake.create_secret("bad.example.com")
    bad.challenges[0]["txt_record_value"] = "not a digest"
    worse = await fake.create_secret("worse.example.com")
    worse.challenges[0]["txt_record_name"] = "_acme-challenge.elsewhere.example.com."
    good = await fake.create_secret("example.com")
    async with door_of(sm_settings(fake, tmp_path)) as (door, _):
        report = await door.sync_once()
    assert report.published == [good.crn]
    assert {crn for crn, _ in report.skipped} == {bad.crn, worse.crn}


def test_parse_order_refuses_unknown_states() -> None:
    from receiver.doors.secrets_manager import BadSecret

    with pytest.raises(BadSecret, match="unknown state"):
        parse_order({"id": "x", "crn": "crn:v1:a:b:c:d:e:f:secret:x", "state": 7})


async def test_failed_validation_removes_the_values(
    fake: FakeSecretsManager, tmp_path: Path
) -> None:
    assert isinstance(fake.ca, ScriptedCa)
    fake.ca.fail_with = "DNS problem: NXDOMAIN looking up TXT"
    secret = await fake.create_secret("example.com")
    with structlog.testing.capture_logs() as logs:
        async with door_of(sm_settings(fake, tmp_path)) as (door, runtime):
            await door.sync_once()
            assert await fake.settled(secret) == 3
            report = await door.sync_once()
            assert await served(runtime) == frozenset()
    assert report.removed == 1
    (failed,) = [e for e in logs if e["event"] == "secrets_manager_validation_failed"]
    assert failed["error_code"] == "secrets-manager.Error07035"
    assert "NXDOMAIN" in failed["error_message"]


async def test_expired_challenges_are_removed(fake: FakeSecretsManager, tmp_path: Path) -> None:
    secret = await fake.create_secret("example.com")
    async with door_of(sm_settings(fake, tmp_path)) as (door, runtime):
        await door.sync_once()
        await fake.settled(secret)
        secret.state = 0  # validation never finished: the order stays pending...
        for challenge in secret.challenges:  # ...until its challenges expire
            challenge["expiration"] = "2020-01-01T00:00:00Z"
        report = await door.sync_once()
        assert report.removed == 1 and await served(runtime) == frozenset()


async def test_deleted_secret_values_are_removed(fake: FakeSecretsManager, tmp_path: Path) -> None:
    secret = await fake.create_secret("example.com")
    async with door_of(sm_settings(fake, tmp_path)) as (door, runtime):
        await door.sync_once()
        await fake.settled(secret)
        del fake.secrets[secret.id]
        report = await door.sync_once()
        assert report.removed == 1 and await served(runtime) == frozenset()


async def test_two_syncs_racing_validate_once(fake: FakeSecretsManager, tmp_path: Path) -> None:
    secret = await fake.create_secret("example.com", ["*.example.com"])
    settings = sm_settings(fake, tmp_path)
    async with door_of(settings) as (first, runtime), door_of(settings) as (second, _):
        reports = await asyncio.gather(first.sync_once(), second.sync_once())
        assert [r.published for r in reports].count([secret.crn]) == 1
        assert len(await served(runtime)) == 2
        await fake.settled(secret)
        await asyncio.gather(first.sync_once(), second.sync_once())
        assert await served(runtime) == frozenset()
    assert validations(fake) == 1


async def test_restart_between_publishing_and_validating(
    fake: FakeSecretsManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = await fake.create_secret("example.com", ["*.example.com"])
    settings = sm_settings(fake, tmp_path)

    async def crash(self: Any, secret_id: str) -> None:
        raise asyncio.CancelledError  # the process is stopped right before it asks

    with monkeypatch.context() as patch:
        patch.setattr(api_module.SecretsManagerApi, "validate", crash)
        async with door_of(settings) as (door, runtime):
            with pytest.raises(asyncio.CancelledError):
                await door.sync_once()
            assert len(await served(runtime)) == 2
    assert validations(fake) == 0
    async with door_of(settings) as (door, runtime):  # the restarted process
        report = await door.sync_once()
        assert report.published == [secret.crn]
        await fake.settled(secret)
        await door.sync_once()
        assert await served(runtime) == frozenset()
    assert validations(fake) == 1


async def test_restart_after_validating_never_asks_again(
    fake: FakeSecretsManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = await fake.create_secret("example.com")
    settings = sm_settings(fake, tmp_path)
    assert isinstance(fake.ca, ScriptedCa)
    slow = asyncio.Event()

    async def pending(handle: Any) -> tuple[str | None, str | None]:
        await slow.wait()
        return "cert", None

    monkeypatch.setattr(fake.ca, "validate", pending)

    async def crash(self: Any, secret_id: str, order_key: str) -> None:
        raise asyncio.CancelledError  # asked, then stopped before it could note it

    with monkeypatch.context() as patch:
        patch.setattr("receiver.sm_leases.Leases.mark_validated", crash)
        async with door_of(settings) as (door, _):
            with pytest.raises(asyncio.CancelledError):
                await door.sync_once()
    async with door_of(settings) as (door, _):
        report = await door.sync_once()
        assert report.waiting == [secret.crn] and not report.published
    slow.set()
    assert await fake.settled(secret) == 1
    assert validations(fake) == 1


async def _journal(tmp_path: Path) -> list[Any]:
    from receiver.sqlite.journal import SqliteJournal

    journal = SqliteJournal(tmp_path / "store.sqlite3")
    try:
        return await journal.entries()
    finally:
        await journal.aclose()


def _config(tmp_path: Path, **instance: Any) -> dict[str, Any]:
    return {
        "certificate_manager": {"enabled": False},
        "zones": [{"name": "example.com", "provider": "memory"}],
        "secrets_manager": {
            "enabled": True,
            "instances": [
                {
                    "instance_id": "6b4a4c55-0f5e-4f5a-9d3c-8a5d2c1e7b10",
                    "region": "us-south",
                    "api_key_env": "SM_API_KEY",
                    **instance,
                }
            ],
        },
    }


def test_config_defaults_and_endpoints(tmp_path: Path) -> None:
    settings = config.from_mapping(_config(tmp_path), base_dir=tmp_path)
    sm = settings.secrets_manager
    assert sm.interval_seconds == 60 and sm.rate_per_second == 20
    (instance,) = sm.instances
    assert instance.api_key is not None and instance.api_key.reveal() == API_KEY
    assert api_module.base_url(instance) == (
        "https://6b4a4c55-0f5e-4f5a-9d3c-8a5d2c1e7b10.private.us-south"
        ".secrets-manager.appdomain.cloud"
    )
    public = config.from_mapping(_config(tmp_path, endpoint="public"), base_dir=tmp_path)
    assert api_module.base_url(public.secrets_manager.instances[0]).startswith(
        "https://6b4a4c55-0f5e-4f5a-9d3c-8a5d2c1e7b10.us-south."
    )


@pytest.mark.parametrize(
    ("instance", "problem"),
    [
        ({"instance_id": "not-a-guid"}, "instance_id: must be the instance's GUID"),
        ({"region": "mars-1"}, "region: must be one of"),
        ({"endpoint": "http://sm.example.com"}, "endpoint: http:// only for a loopback"),
        ({"endpoint": "ftp://x"}, "endpoint: must be an https:// URL"),
        ({"iam_url": "http://iam.example.com/token"}, "iam_url: http:// only for a loopback"),
        ({"cr_token_file": "token"}, "set exactly one of"),
        ({"labels": "bridge"}, "labels: must be a list"),
        ({"surprise": 1}, "surprise: unknown setting"),
    ],
)
def test_config_problems(tmp_path: Path, instance: dict[str, Any], problem: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.from_mapping(_config(tmp_path, **instance), base_dir=tmp_path)
    assert problem in str(caught.value.problems)


def test_config_trusted_profile_and_loopback_http(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("cr")
    data = _config(
        tmp_path,
        cr_token_file="token",
        trusted_profile_id="Profile-1",
        endpoint="http://127.0.0.1:9999",
    )
    del data["secrets_manager"]["instances"][0]["api_key_env"]
    settings = config.from_mapping(data, base_dir=tmp_path)
    assert settings.secrets_manager.instances[0].cr_token_file == tmp_path / "token"


async def test_trusted_profile_token_file(fake: FakeSecretsManager, tmp_path: Path) -> None:
    token = tmp_path / "cr-token"
    token.write_text(fake.cr_token + "\n")
    secret = await fake.create_secret("example.com")
    data_settings = sm_settings(fake, tmp_path)
    instance = data_settings.secrets_manager.instances[0]
    import dataclasses

    profile = dataclasses.replace(
        instance, api_key=None, cr_token_file=token, trusted_profile_id=fake.profile_id
    )
    settings = dataclasses.replace(
        data_settings,
        secrets_manager=dataclasses.replace(data_settings.secrets_manager, instances=(profile,)),
    )
    async with door_of(settings) as (door, _):
        report = await door.sync_once()
    assert report.published == [secret.crn]


async def test_the_server_polls(
    fake: FakeSecretsManager, tmp_path: Path, aiohttp_client: Callable[..., Any]
) -> None:
    from receiver.hosts.http import create_app
    from receiver.workers import ALONE

    secret = await fake.create_secret("example.com")
    settings = config.from_mapping(
        {
            "certificate_manager": {"enabled": False},
            "propagation": {"check": False},
            "local": {"database": str(tmp_path / "store.sqlite3"), "dns_listen": "127.0.0.1:0"},
            "zones": [{"name": "example.com", "provider": "local", "ttl": 30}],
            "secrets_manager": {
                "enabled": True,
                "interval_seconds": 10,  # the first pass within 1 s of the start
                "instances": [
                    {
                        "instance_id": fake.instance_id,
                        "region": fake.region,
                        "endpoint": fake.url,
                        "iam_url": f"{fake.url}/identity/token",
                        "api_key_env": "SM_API_KEY",
                    }
                ],
            },
        },
        base_dir=tmp_path,
    )
    assert ALONE.sweeps
    client = await aiohttp_client(create_app(settings))
    async with asyncio.timeout(10):
        while validations(fake) == 0:  # noqa: ASYNC110 - watching another process's work
            await asyncio.sleep(0.05)
    assert await fake.settled(secret) == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'door="secrets_manager",event_type="order",outcome="validated"' in metrics


async def test_names_are_canonicalised(fake: FakeSecretsManager, tmp_path: Path) -> None:
    secret = await fake.create_secret("EXAMPLE.com", ["*.Bücher.example.com"])
    secret.challenges[0]["txt_record_name"] = "_ACME-CHALLENGE.EXAMPLE.COM."
    secret.challenges[1]["txt_record_name"] = "_acme-challenge.xn--bcher-kva.example.com."
    async with door_of(sm_settings(fake, tmp_path)) as (door, runtime):
        report = await door.sync_once()
        assert report.published == [secret.crn], report.skipped
        assert len(await served(runtime)) == 1
        assert len(await served(runtime, "_acme-challenge.xn--bcher-kva.example.com")) == 1


def test_a_previous_orders_validation_time_does_not_count() -> None:
    crn = "crn:v1:bluemix:public:secrets-manager:us-south:a/acc:inst:secret:x"
    info = {
        "state": 0,
        "ordered_on": "2026-08-10T06:21:33Z",
        "dns_challenge_validation_time": "2026-05-01T00:00:00Z",
    }
    assert not parse_order({"id": "x", "crn": crn, "issuance_info": info}).validation_asked
    info["dns_challenge_validation_time"] = "2026-08-10T07:00:00Z"
    assert parse_order({"id": "x", "crn": crn, "issuance_info": info}).validation_asked


async def test_only_pending_challenges_are_published(
    fake: FakeSecretsManager, tmp_path: Path
) -> None:
    secret = await fake.create_secret("example.com", ["www.example.com"])
    secret.challenges[1]["status"] = "valid"  # validated by an earlier order
    async with door_of(sm_settings(fake, tmp_path)) as (door, runtime):
        report = await door.sync_once()
        assert report.published == [secret.crn]
        assert len(await served(runtime)) == 1
        assert await served(runtime, "_acme-challenge.www.example.com") == frozenset()


async def test_iam_token_is_cached_and_renewed_before_it_expires(
    fake: FakeSecretsManager,
) -> None:
    import aiohttp

    from providers.secret import Secret
    from receiver.ibm_iam import IamTokens

    fake.token_lifetime = 100
    now = [1000.0]
    async with aiohttp.ClientSession() as session:
        tokens = IamTokens(
            session, f"{fake.url}/identity/token", api_key=Secret(API_KEY), clock=lambda: now[0]
        )
        first = await tokens.token()
        now[0] += 79
        assert await tokens.token() == first and fake.token_grants == 1
        now[0] += 2  # past 80% of its lifetime
        assert await tokens.token() != first and fake.token_grants == 2
        assert repr(first) == "Secret('***')"


async def test_two_replicas_on_postgres_validate_once(
    fake: FakeSecretsManager, tmp_path: Path, postgres_url: str
) -> None:
    """[state]: replicas share the leases and the validations through PostgreSQL."""
    secret = await fake.create_secret("example.com", ["*.example.com"])
    data: dict[str, Any] = {
        "certificate_manager": {"enabled": False},
        "propagation": {"check": False},
        "state": {"url_env": "DCR_DATABASE_URL"},
        "local": {"dns_listen": "127.0.0.1:0"},
        "zones": [{"name": "example.com", "provider": "local", "ttl": 30}],
        "secrets_manager": {
            "enabled": True,
            "instances": [
                {
                    "instance_id": fake.instance_id,
                    "region": fake.region,
                    "endpoint": fake.url,
                    "iam_url": f"{fake.url}/identity/token",
                    "api_key_env": "SM_API_KEY",
                }
            ],
        },
    }
    environ = {"DCR_DATABASE_URL": postgres_url, "SM_API_KEY": API_KEY}
    settings = config.from_mapping(data, base_dir=tmp_path, environ=environ)
    async with door_of(settings) as (first, runtime), door_of(settings) as (second, _):
        reports = await asyncio.gather(first.sync_once(), second.sync_once())
        assert [r.published for r in reports].count([secret.crn]) == 1
        assert len(await served(runtime)) == 2
        await asyncio.gather(first.sync_once(), second.sync_once())  # waiting, on both
        await fake.settled(secret)
        await asyncio.gather(first.sync_once(), second.sync_once())
        assert await served(runtime) == frozenset()
    assert validations(fake) == 1


async def test_a_lease_lost_during_the_waits_never_validates(
    fake: FakeSecretsManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver.sm_leases import Leases

    secret = await fake.create_secret("example.com")
    taken = Leases.acquire
    calls = [0]

    async def acquire(self: Leases, secret_crn: str, holder: str, seconds: float) -> bool:
        calls[0] += 1
        if calls[0] == 2:  # the renewal before validating: ours expired, another took it
            await self.release(secret_crn, holder)
            assert await taken(self, secret_crn, "another-process", seconds)
        return await taken(self, secret_crn, holder, seconds)

    monkeypatch.setattr(Leases, "acquire", acquire)
    async with door_of(sm_settings(fake, tmp_path)) as (door, _):
        report = await door.sync_once()
    assert not report.published and validations(fake) == 0
    assert secret.state == 0


async def test_an_unexpected_failure_on_one_secret_spares_the_others(
    fake: FakeSecretsManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver.doors import secrets_manager as door_module

    broken = await fake.create_secret("broken.example.com")
    good = await fake.create_secret("example.com")
    original = door_module.SecretsManagerDoor._order

    async def order(self: Any, client: Any, order: Any, *args: Any) -> None:
        if order.crn == broken.crn:
            raise RuntimeError("a bug")
        await original(self, client, order, *args)

    monkeypatch.setattr(door_module.SecretsManagerDoor, "_order", order)
    async with door_of(sm_settings(fake, tmp_path)) as (door, _):
        report = await door.sync_once()
    assert report.published == [good.crn]
    assert report.failed == [(broken.crn, "internal_error")]


async def test_neither_the_key_nor_a_token_is_logged(
    fake: FakeSecretsManager, tmp_path: Path
) -> None:
    secret = await fake.create_secret("example.com")
    fake.expire_tokens_at_call = 2  # two tokens, a 401 and a renewal in between
    fake.inject(429, retry_after=0.01)
    with structlog.testing.capture_logs() as logs:
        async with door_of(sm_settings(fake, tmp_path)) as (door, _):
            await door.sync_once()
            await fake.settled(secret)
            await door.sync_once()
    text = repr(logs)
    assert len(fake.tokens) == 2 and API_KEY not in text
    assert not [token for token in fake.tokens if token in text]
    assert "secrets_manager_retry" in text
