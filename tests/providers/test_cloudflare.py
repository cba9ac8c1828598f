"""Cloudflare beyond the conformance suite (which holds it to every fault its fake can
inject): Cloudflare's own error codes, zone discovery, pagination, quoting, the default
rate, the token's isolation from the environment and the lazy SDK import. The official
SDK talks HTTP to the fake in tests/fakes/cloudflare.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from providers import errors
from providers.base import UNLIMITED, ChangeContext, RateBudget, Secret, ZoneRef
from providers.cloudflare import CloudflareProvider, CloudflareSettings
from receiver import config, signing
from receiver.config import DispatchSettings, ZoneSettings
from receiver.dispatch import Dispatcher

from ..conftest import ServiceFactory, SettingsFactory
from ..fakes.cloudflare import CloudflareFake

CTX = ChangeContext(request_id="cloudflare-test")
TOKEN = "cf-test-token-0123456789"
ZONE = "example.com"
FQDN = f"_acme-challenge.{ZONE}"
REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
FOREIGN = "google-site-verification=not-ours"


@pytest.fixture
async def fake() -> AsyncIterator[CloudflareFake]:
    fake = CloudflareFake(seed=20260101)
    fake.add_token(TOKEN)
    fake.add_zone(ZONE)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/client/v4"))
    yield fake
    await server.close()


_opened: list[CloudflareProvider] = []


@pytest.fixture(autouse=True)
async def _close_adapters() -> AsyncIterator[None]:
    """Every adapter a test opens is closed after it (each holds an HTTP client)."""
    yield
    while _opened:
        await _opened.pop().aclose()


def zone_id(fake: CloudflareFake, name: str = ZONE) -> str:
    (found,) = [z.id for z in fake.zones.values() if z.name == name]
    return found


async def adapter(
    fake: CloudflareFake, budget: RateBudget = UNLIMITED, token: str = TOKEN, **options: Any
) -> CloudflareProvider:
    settings = CloudflareSettings(api_token=Secret(token), endpoint=fake.url, **options)
    provider = await CloudflareProvider.open(settings, budget)
    _opened.append(provider)
    return provider


def dispatcher(provider: CloudflareProvider, **settings: Any) -> tuple[Dispatcher, ZoneSettings]:
    zone = ZoneSettings(name=ZONE, provider="cloudflare", ttl=60, options=provider.settings)
    options = {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.05, **settings}
    return Dispatcher({zone.provider_key: provider}, DispatchSettings(**options)), zone


def service_zones(fake: CloudflareFake, **options: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": ZONE,
            "provider": "cloudflare",
            "options": {"endpoint": fake.url, "api_token_env": "CF_TEST_TOKEN", **options},
        }
    ]


async def test_the_default_budget_reaches_the_adapter(
    start_service: ServiceFactory, fake: CloudflareFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CF_TEST_TOKEN", TOKEN)
    service = await start_service(zones=service_zones(fake))
    (provider,) = service.runtime.providers.values()
    assert isinstance(provider, CloudflareProvider)
    assert provider._budget.per_second == CloudflareProvider.default_rate_per_second


def test_the_default_rate_keeps_within_1200_requests_per_5_minutes() -> None:
    rate = CloudflareProvider.default_rate_per_second
    assert rate is not None
    budget = RateBudget(rate, clock=lambda: 0.0)  # everyone asks at once, as a burst would
    starts = [budget.reserve() for _ in range(1300)]
    assert sum(start < 300 for start in starts) <= 1200
    assert sum(start < 300 for start in starts) >= 1100  # and does not waste much of it


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 409])
async def test_other_client_errors_are_rejections(fake: CloudflareFake, status: int) -> None:
    """Throttling, 5xx and auth failures are the conformance suite's; the rest of 4xx
    is final."""
    provider = await adapter(fake)
    zone = ZoneRef(ZONE, await provider.zone_handle(ZONE))
    fake.inject(status, times=1)
    with pytest.raises(errors.ProviderRejected, match=f"HTTP {status}"):
        await provider.add_txt(zone, FQDN, "v" * 43, 60, ctx=CTX)


async def test_errors_from_the_api_itself(fake: CloudflareFake, unused_tcp_port: int) -> None:
    provider = await adapter(fake)
    with pytest.raises(errors.ZoneNotFound, match="7003"):  # an id of no zone: 404
        await provider.add_txt(ZoneRef(ZONE, "0" * 32), FQDN, "v" * 43, 60, ctx=CTX)
    with pytest.raises(errors.ZoneNotFound, match="7003"):  # not even an id: 400
        await provider.list_txt(ZoneRef(ZONE, ZONE), FQDN)
    zone = ZoneRef(ZONE, zone_id(fake))
    with pytest.raises(errors.ProviderRejected, match="9021"):  # below Cloudflare's minimum
        await provider.add_txt(zone, FQDN, "v" * 43, 30, ctx=CTX)
    other = fake.add_zone("example.org")
    fake.add_token("scoped", zones=[ZONE])
    scoped = await adapter(fake, token="scoped")
    fake.add_token("read-only", dns_edit=False)  # Zone:Read and DNS:Read only
    with pytest.raises(errors.ProviderAuthError, match="HTTP 403"):
        await (await adapter(fake, token="read-only")).add_txt(zone, FQDN, "v" * 43, 60, ctx=CTX)
    with pytest.raises(errors.ProviderAuthError):  # a zone outside the token's scope
        await scoped.add_txt(
            ZoneRef("example.org", other), "_acme-challenge.example.org", "v", 60, ctx=CTX
        )

    dead = CloudflareSettings(
        api_token=Secret(TOKEN), endpoint=f"http://127.0.0.1:{unused_tcp_port}"
    )
    unreachable = await CloudflareProvider.open(dead, UNLIMITED)
    _opened.append(unreachable)
    with pytest.raises(errors.ProviderUnavailable, match="cannot reach"):
        await unreachable.zone_handle(ZONE)


# --- zones -------------------------------------------------------------------------------


async def test_zone_discovery_by_longest_match(fake: CloudflareFake) -> None:
    apex = zone_id(fake)
    dev = fake.add_zone(f"dev.{ZONE}")
    fake.add_zone(f"x{ZONE}")  # "xexample.com" ends like example.com but is another zone
    provider = await adapter(fake)
    assert await provider.zone_handle(f"a.b.dev.{ZONE}") == dev
    assert fake.calls["zones"] == 3  # a.b.dev..., b.dev..., dev... (found)
    assert await provider.zone_handle(f"www.{ZONE}") == apex
    assert await provider.zone_handle(ZONE) == apex
    assert await provider.zone_handle(f"x{ZONE}") != apex
    with pytest.raises(errors.ZoneNotFound):
        await provider.zone_handle("example.net")
    fake.add_token("dev-only", zones=[f"dev.{ZONE}"])
    with pytest.raises(errors.ZoneNotFound):  # the token cannot see example.com
        await (await adapter(fake, token="dev-only")).zone_handle(f"www.{ZONE}")


async def test_duplicate_zone_names(fake: CloudflareFake) -> None:
    """The same name in two accounts the token can see: the active one, else ask."""
    fake.add_zone(ZONE, status="pending")
    provider = await adapter(fake)
    assert await provider.zone_handle(ZONE) == next(
        z.id for z in fake.zones.values() if z.name == ZONE and z.status == "active"
    )
    fake.add_zone(ZONE)
    with pytest.raises(errors.ProviderRejected, match=r"3 zones are named example\.com: set"):
        await provider.zone_handle(ZONE)
    for zone in list(fake.zones.values()):
        zone.status = "pending"  # none live: still ask, never fall back to a parent zone
    fake.add_zone("com")
    with pytest.raises(errors.ProviderRejected, match="set zone_id"):
        await provider.zone_handle(ZONE)


async def test_configured_zone_id_needs_no_lookup_and_no_zone_read(fake: CloudflareFake) -> None:
    fake.add_token("dns-only", zone_read=False)
    provider = await adapter(fake, token="dns-only", zone_id=zone_id(fake))
    zone = ZoneRef(ZONE, await provider.zone_handle(ZONE))
    assert zone.handle == zone_id(fake) and fake.calls["zones"] == 0
    await provider.add_txt(zone, FQDN, "z" * 43, 60, ctx=CTX)
    assert fake.txt(FQDN) == ["z" * 43]
    with pytest.raises(errors.ZoneNotFound):  # without zone_id, Zone:Read is needed
        await (await adapter(fake, token="dns-only")).zone_handle(ZONE)


# --- records -----------------------------------------------------------------------------


async def test_reads_are_one_request_per_page(fake: CloudflareFake) -> None:
    provider = await adapter(fake)
    zone = ZoneRef(ZONE, zone_id(fake))
    fake.add_record(zone.handle, FQDN, FOREIGN)
    before = fake.calls["list"]
    assert await provider.list_txt(zone, FQDN) == {FOREIGN}
    assert fake.calls["list"] - before == 1  # no extra request for an empty next page
    values = {f"v{i:03}" for i in range(150)}
    for value in values:
        fake.add_record(zone.handle, FQDN, f'"{value}"')
    before = fake.calls["list"]
    assert await provider.list_txt(zone, FQDN) == values | {FOREIGN}
    assert fake.calls["list"] - before == 2  # 100 + 51
    await provider.remove_txt(zone, FQDN, "v149", ctx=CTX)  # found on the second page
    assert "v149" not in fake.txt(FQDN) and len(fake.txt(FQDN)) == 150


async def test_quoted_and_unquoted_content(fake: CloudflareFake) -> None:
    provider = await adapter(fake)
    zone = ZoneRef(ZONE, zone_id(fake))
    value = signing.challenge_value()
    fake.add_record(zone.handle, FQDN, value)  # written unquoted by another tool
    fake.add_record(zone.handle, FQDN, f'"{value}"')  # and quoted
    fake.add_record(zone.handle, FQDN, '"two " "strings"')  # split, as for >255 bytes
    fake.add_record(zone.handle, FQDN, r'"say \"hi\" \092o/"')  # escapes, decimal \DDD
    assert await provider.list_txt(zone, FQDN) == {value, "two strings", 'say "hi" \\o/'}
    await provider.remove_txt(zone, FQDN, value, ctx=CTX)
    assert fake.txt(FQDN) == sorted(["two strings", 'say "hi" \\o/'])


async def test_adding_an_existing_value_is_one_refused_create(fake: CloudflareFake) -> None:
    provider = await adapter(fake)
    zone = ZoneRef(ZONE, zone_id(fake))
    await provider.add_txt(zone, FQDN, "a" * 43, 60, ctx=CTX)
    await provider.add_txt(zone, FQDN, "a" * 43, 60, ctx=CTX)  # 81058: already there
    assert fake.calls == {"create": 2}
    assert fake.txt(FQDN) == ["a" * 43]
    assert [r.content for r in fake.txt_records(FQDN)] == [f'"{"a" * 43}"']  # quoted, as asked


async def test_a_record_removed_meanwhile_is_not_an_error(
    fake: CloudflareFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process deletes the record between our lookup and our delete (81044)."""
    provider = await adapter(fake)
    zone = ZoneRef(ZONE, zone_id(fake))
    await provider.add_txt(zone, FQDN, "g" * 43, 60, ctx=CTX)
    real = provider._records

    async def lookup_then_lose_the_race(z: ZoneRef, fqdn: str) -> list[tuple[str, str]]:
        found = await real(z, fqdn)
        for record in fake.txt_records(fqdn):
            del fake.records[record.id]
        return found

    monkeypatch.setattr(provider, "_records", lookup_then_lose_the_race)
    await provider.remove_txt(zone, FQDN, "g" * 43, ctx=CTX)
    assert fake.calls["delete"] == 1 and fake.txt(FQDN) == []


async def test_only_the_configured_token_is_sent(
    fake: CloudflareFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK would prefer CLOUDFLARE_API_KEY/EMAIL from the environment over the token."""
    monkeypatch.setenv("CLOUDFLARE_API_KEY", "ambient-global-key")
    monkeypatch.setenv("CLOUDFLARE_EMAIL", "someone@example.com")
    monkeypatch.setenv("CLOUDFLARE_BASE_URL", "http://127.0.0.1:9/client/v4")
    provider = await adapter(fake)
    await provider.zone_handle(ZONE)
    ((_, _, _, headers),) = fake.requests
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert "x-auth-key" not in headers and "x-auth-email" not in headers


# --- configuration and import ----------------------------------------------------------


def test_the_token_comes_from_env_or_file_only(
    make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def zones(**options: Any) -> list[dict[str, Any]]:
        return [{"name": ZONE, "provider": "cloudflare", "options": options}]

    with pytest.raises(config.ConfigError, match="api_token_env or api_token_file"):
        make_settings(zones=zones(api_token=TOKEN))
    with pytest.raises(config.ConfigError, match="required: set api_token_env"):
        make_settings(zones=zones(zone_id="z"))
    (tmp_path / "cf-token").write_text(TOKEN + "\n")
    settings = make_settings(zones=zones(api_token_file="cf-token", zone_id="abc"))
    options = settings.zones[0].options
    assert isinstance(options, CloudflareSettings)
    assert options.api_token.reveal() == TOKEN and options.zone_id == "abc"
    assert TOKEN not in repr(options)
    monkeypatch.setenv("CF_TOKEN", TOKEN)
    from_env = make_settings(zones=zones(api_token_env="CF_TOKEN"))
    assert from_env.zones[0].options.api_token.reveal() == TOKEN
    assert from_env.zones[0].options.endpoint == "https://api.cloudflare.com/client/v4"


PROBE = """
import asyncio, sys
from providers.base import UNLIMITED, Secret
from providers.registry import load_provider_class, provider_names
names = provider_names()
cls = load_provider_class("cloudflare")
on_load = "cloudflare" in sys.modules

async def main():
    settings = cls.Settings(api_token=Secret("t"), endpoint="http://127.0.0.1:9/client/v4")
    adapter = await cls.open(settings, UNLIMITED)
    await adapter.aclose()

asyncio.run(main())
print("cloudflare" in names, on_load, "cloudflare" in sys.modules)
"""


def test_the_sdk_is_imported_only_when_a_zone_uses_cloudflare() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "False", "True"]


async def test_check_config_probe(
    fake: CloudflareFake, tmp_path: Path, public_key_file: Path
) -> None:
    """The operator's proof that the token and zone are right, as a real CLI process."""
    import os

    from ..conftest import INSTANCE

    fake.add_token("read-only", dns_edit=False)
    path = tmp_path / "cf.toml"
    path.write_text(f"""
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{public_key_file}"
[cloudflare]
endpoint = "{fake.url}"
api_token_env = "CF_PROBE_TOKEN"
[[zones]]
name = "{ZONE}"
provider = "cloudflare"
""")

    async def run(token: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "receiver", "check-config", "--probe", "--config", str(path)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "CF_PROBE_TOKEN": token},
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await run(TOKEN)
    assert code == 0, out
    assert f"ok   {ZONE}" in out and f"zone {zone_id(fake)}: wrote, read back" in out
    assert fake.calls["create"] == 1 and fake.calls["delete"] == 1
    assert fake.txt(FQDN) == []  # nothing left behind
    code, out = await run("read-only")
    assert code == 1 and f"FAIL {ZONE}" in out and "HTTP 403" in out
