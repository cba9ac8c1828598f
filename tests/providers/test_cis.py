"""The CIS adapter against the fake CIS and IAM: both auth modes, directly and through the
real HTTP service; what is observed is the fake's own state and what it was sent."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestServer

from providers import errors
from providers.base import UNLIMITED, ChangeContext, RateBudget, Secret, ZoneRef
from providers.cis import CisProvider, CisSettings
from providers.memory import MemoryProvider, MemorySettings
from receiver import signing
from receiver.challenge import Action, Challenge
from receiver.config import DispatchSettings, ZoneSettings
from receiver.dispatch import Dispatcher
from receiver.errors import ConfigError, UpstreamFailed
from receiver.sweep import sweep

from ..conftest import INSTANCE, Sender, ServiceFactory, SettingsFactory
from ..fakes.cis import FakeCis, FakeIam

CRN = "crn:v1:bluemix:public:internet-svcs:global:a/0123456789abcdef:7777-8888::"
API_KEY = "test-api-key-not-a-real-one"
REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
ZONE = "example.com"


@dataclass
class Fakes:
    cis: FakeCis
    iam: FakeIam

    def settings(self, auth: str = "api_key", **overrides: Any) -> CisSettings:
        values: dict[str, Any] = {
            "instance_crn": CRN,
            "auth": auth,
            "endpoint": self.cis.url,
            "iam_endpoint": self.iam.url,
        }
        if auth == "api_key":
            values["api_key"] = Secret(API_KEY)
        return CisSettings(**{**values, **overrides})

    def options(self, auth: str, tmp_path: Path) -> dict[str, Any]:
        """The same, as a config file's [[zones]] options."""
        options = {
            "instance_crn": CRN,
            "auth": auth,
            "endpoint": self.cis.url,
            "iam_endpoint": self.iam.url,
        }
        if auth == "api_key":
            key_file = tmp_path / "cis-api-key"
            key_file.write_text(API_KEY + "\n")
            options["api_key_file"] = str(key_file)
        return options


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    cis = FakeCis(CRN)
    cis.add_zone(ZONE)
    iam = FakeIam(cis, api_keys={API_KEY})
    servers = []
    for fake in (cis, iam):
        server = TestServer(fake.app(), host="127.0.0.1")
        await server.start_server()
        fake.url = str(server.make_url("")).rstrip("/")
        servers.append(server)
    yield Fakes(cis, iam)
    for server in servers:
        await server.close()


@pytest.fixture
async def adapter(fakes: Fakes) -> AsyncIterator[CisProvider]:
    provider = await CisProvider.open(fakes.settings(), UNLIMITED)
    yield provider
    await provider.aclose()


def ctx(token: str | None = None) -> ChangeContext:
    return ChangeContext("test", Secret(token) if token is not None else None)


def fqdn(label: str) -> str:
    return f"_acme-challenge.{label}.{ZONE}"


async def zone(provider: CisProvider, token: str | None = None) -> ZoneRef:
    return ZoneRef(ZONE, await provider.zone_handle(ZONE, ctx=ctx(token)))


# --- auth = user_token -----------------------------------------------------------------


async def test_user_token_is_the_only_identity_used(fakes: Fakes) -> None:
    fakes.cis.valid_tokens.add("the-users-token")
    provider = await CisProvider.open(fakes.settings("user_token"), UNLIMITED)
    try:
        ref = await zone(provider, "the-users-token")  # looked up as the user, too
        assert fakes.cis.calls == {"zones": 1}
        value = signing.challenge_value()
        await provider.add_txt(ref, fqdn("u"), value, 60, ctx=ctx("the-users-token"))
        assert fakes.cis.values(fqdn("u")) == [value]
        await provider.remove_txt(ref, fqdn("u"), value, ctx=ctx("the-users-token"))
        assert fakes.cis.values(fqdn("u")) == []
    finally:
        await provider.aclose()
    assert set(fakes.cis.seen_tokens) == {"the-users-token"}
    assert fakes.iam.exchanges == 0


async def test_without_a_user_token_nothing_is_sent(fakes: Fakes) -> None:
    provider = await CisProvider.open(fakes.settings("user_token"), UNLIMITED)
    try:
        ref = ZoneRef(ZONE, fakes.cis.zone_id(ZONE))
        calls = [
            provider.zone_handle(ZONE, ctx=ctx()),
            provider.zone_handle(ZONE),
            provider.add_txt(ref, fqdn("n"), "v", 60, ctx=ctx()),
            provider.remove_txt(ref, fqdn("n"), "v", ctx=ctx()),
            provider.list_txt(ref, fqdn("n")),
        ]
        for call in calls:
            with pytest.raises(errors.ProviderAuthError, match="no verified user token"):
                await call
    finally:
        await provider.aclose()
    assert sum(fakes.cis.calls.values()) == 0


# --- auth = api_key --------------------------------------------------------------------


async def test_one_iam_exchange_serves_many_concurrent_writes(
    fakes: Fakes, adapter: CisProvider
) -> None:
    fakes.iam.delay_seconds = 0.05  # every caller arrives while the exchange is under way
    ref = ZoneRef(ZONE, fakes.cis.zone_id(ZONE))  # no lookup first: the writes need the token
    values = [signing.challenge_value() for _ in range(20)]
    await asyncio.gather(*(adapter.add_txt(ref, fqdn("many"), v, 60, ctx=ctx()) for v in values))
    assert fakes.cis.values(fqdn("many")) == sorted(values)
    assert fakes.iam.exchanges == 1
    assert set(fakes.cis.seen_tokens) == {fakes.iam.issued[0]}


async def test_the_token_is_refreshed_shortly_before_it_expires(fakes: Fakes) -> None:
    now = [1_000_000.0]
    provider = CisProvider(fakes.settings(), UNLIMITED, clock=lambda: now[0])
    try:
        ref = await zone(provider)
        await provider.add_txt(ref, fqdn("r1"), "v1", 60, ctx=ctx())
        now[0] += 2000  # of 3600 s: still fresh
        await provider.add_txt(ref, fqdn("r2"), "v2", 60, ctx=ctx())
        assert fakes.iam.exchanges == 1
        now[0] += 1000  # 3000 s: within the last fifth of its life
        await provider.add_txt(ref, fqdn("r3"), "v3", 60, ctx=ctx())
        assert fakes.iam.exchanges == 2
    finally:
        await provider.aclose()
    assert fakes.cis.seen_tokens[-1] == fakes.iam.issued[1]
    assert fakes.cis.values(fqdn("r3")) == ["v3"]


async def test_a_refused_api_key_is_an_auth_error_that_never_shows_the_key(
    fakes: Fakes,
) -> None:
    provider = await CisProvider.open(
        fakes.settings(api_key=Secret("wrong-key-0123456789")), UNLIMITED
    )
    try:
        with pytest.raises(errors.ProviderAuthError) as caught:
            await provider.zone_handle(ZONE)
    finally:
        await provider.aclose()
    assert "BXNIM0415E" in str(caught.value)
    assert "wrong-key" not in str(caught.value) + repr(caught.value)
    assert sum(fakes.cis.calls.values()) == 0


async def test_an_iam_outage_is_transient(fakes: Fakes, adapter: CisProvider) -> None:
    fakes.iam.failing = 1
    with pytest.raises(errors.ProviderUnavailable, match="IAM"):
        await adapter.zone_handle(ZONE)
    assert await adapter.zone_handle(ZONE) == fakes.cis.zone_id(ZONE)  # next call: fine


async def test_a_revoked_token_is_exchanged_again(fakes: Fakes, adapter: CisProvider) -> None:
    ref = await zone(adapter)
    fakes.cis.valid_tokens.clear()  # revoked before it expired
    with pytest.raises(errors.ProviderAuthError):
        await adapter.add_txt(ref, fqdn("revoked"), "v", 60, ctx=ctx())
    await adapter.add_txt(ref, fqdn("revoked"), "v", 60, ctx=ctx())
    assert fakes.iam.exchanges == 2
    assert fakes.cis.values(fqdn("revoked")) == ["v"]


async def test_bad_settings_fail_on_opening(fakes: Fakes) -> None:
    with pytest.raises(errors.ProviderAuthError, match="api_key_env or api_key_file"):
        await CisProvider.open(fakes.settings(api_key=None), UNLIMITED)
    with pytest.raises(errors.ProviderAuthError, match="never use it"):
        await CisProvider.open(fakes.settings("user_token", api_key=Secret("k")), UNLIMITED)
    with pytest.raises(errors.ProviderRejected, match="CRN"):
        await CisProvider.open(fakes.settings(instance_crn="my-instance"), UNLIMITED)


def test_acting_as_the_user_without_verified_tokens_is_a_config_error(
    fakes: Fakes, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """With `[user_token] verify = false` no token is ever passed on, so a zone with
    auth = "user_token" could never write: refused at start, naming both keys."""
    unverified = {"verify": False}
    with pytest.raises(ConfigError) as caught:
        make_settings(zones=[cis_zone(fakes, "user_token", tmp_path)], user_token=unverified)
    (problem,) = caught.value.problems
    assert problem.startswith('zones[0].options.auth: auth = "user_token"')
    assert "user_token.verify = false" in problem
    options = fakes.options("user_token", tmp_path)
    with pytest.raises(ConfigError) as caught:  # set in [cis], for every zone
        make_settings(cis=options, zones=[{"name": ZONE, "provider": "cis"}], user_token=unverified)
    assert [p.split(":")[0] for p in caught.value.problems] == ["cis.auth"]
    make_settings(zones=[cis_zone(fakes, "api_key", tmp_path)], user_token=unverified)
    make_settings(zones=[cis_zone(fakes, "user_token", tmp_path)])  # verified: fine


# --- the API's behaviour ---------------------------------------------------------------


async def test_the_zone_is_the_longest_cis_domain_containing_it(fakes: Fakes) -> None:
    sub = fakes.cis.add_zone("sub.example.com")
    provider = await CisProvider.open(fakes.settings(), UNLIMITED)
    try:
        assert await provider.zone_handle("deep.sub.example.com") == sub
        assert await provider.zone_handle("other.example.com") == fakes.cis.zone_id(ZONE)
        with pytest.raises(errors.ZoneNotFound):
            await provider.zone_handle("example.org")
    finally:
        await provider.aclose()
    pinned = await CisProvider.open(fakes.settings(zone_id="0" * 32), UNLIMITED)
    calls = fakes.cis.calls.total()
    assert await pinned.zone_handle("anything.example") == "0" * 32
    assert fakes.cis.calls.total() == calls
    await pinned.aclose()


async def test_the_crn_travels_as_one_encoded_path_segment(
    fakes: Fakes, adapter: CisProvider
) -> None:
    await adapter.add_txt(await zone(adapter), fqdn("crn"), "v", 60, ctx=ctx())
    prefix = "/v1/" + quote(CRN, safe="") + "/zones"
    assert fakes.cis.raw_paths and all(p.startswith(prefix) for p in fakes.cis.raw_paths)


async def test_values_on_later_pages_are_found_and_only_ours_removed(fakes: Fakes) -> None:
    fakes.cis.max_per_page = 2
    foreign = [f"foreign-{i}" for i in range(5)]
    for value in foreign:
        fakes.cis.seed(fqdn("paged"), value)
    first = await CisProvider.open(fakes.settings(), UNLIMITED)
    ref = await zone(first)
    await first.add_txt(ref, fqdn("paged"), "ours", 60, ctx=ctx())  # the last, on page 3
    await first.aclose()
    second = await CisProvider.open(fakes.settings(), UNLIMITED)  # as another process
    try:
        assert await second.list_txt(ref, fqdn("paged")) == {*foreign, "ours"}
        fakes.cis.calls.clear()
        await second.remove_txt(ref, fqdn("paged"), "ours", ctx=ctx())
    finally:
        await second.aclose()
    assert fakes.cis.values(fqdn("paged")) == foreign
    assert fakes.cis.calls["list"] == 3 and fakes.cis.calls["delete"] == 1


async def test_quoted_and_duplicate_records_of_a_value_all_go(
    fakes: Fakes, adapter: CisProvider
) -> None:
    fakes.cis.seed(fqdn("dup"), '"twice"')  # content as some clients store TXT
    fakes.cis.seed(fqdn("dup"), "twice")
    fakes.cis.seed(fqdn("dup"), "other")
    ref = await zone(adapter)
    assert await adapter.list_txt(ref, fqdn("dup")) == {"twice", "other"}
    await adapter.remove_txt(ref, fqdn("dup"), "twice", ctx=ctx())
    assert fakes.cis.values(fqdn("dup")) == ["other"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (502, errors.ProviderUnavailable),  # a gateway's HTML page, not the API's envelope
        (409, errors.ProviderRejected),
    ],
)
async def test_answers_outside_the_envelope_and_other_client_errors(
    fakes: Fakes, adapter: CisProvider, status: int, expected: type
) -> None:
    ref = await zone(adapter)
    fakes.cis.inject(status, times=1)
    with pytest.raises(expected, match=f"HTTP {status}"):
        await adapter.add_txt(ref, fqdn("e"), "v", 60, ctx=ctx())


async def test_denied_unknown_zone_and_invalid_input(fakes: Fakes) -> None:
    fakes.cis.denied_tokens.add("reader-only")
    fakes.cis.valid_tokens.add("manager")
    provider = await CisProvider.open(fakes.settings("user_token"), UNLIMITED)
    try:
        ref = await zone(provider, "manager")
        with pytest.raises(errors.ProviderAuthError, match="HTTP 403"):
            await provider.add_txt(ref, fqdn("d"), "v", 60, ctx=ctx("reader-only"))
        with pytest.raises(errors.ZoneNotFound, match="7003"):
            await provider.add_txt(ZoneRef(ZONE, "f" * 32), fqdn("d"), "v", 60, ctx=ctx("manager"))
        with pytest.raises(errors.ProviderRejected, match="1004"):
            await provider.add_txt(ref, fqdn("d"), "v", 5, ctx=ctx("manager"))  # TTL too low
    finally:
        await provider.aclose()


async def test_an_unreachable_api_is_transient(fakes: Fakes) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    provider = await CisProvider.open(fakes.settings(endpoint=closed), UNLIMITED)
    try:
        with pytest.raises(errors.ProviderUnavailable, match="cannot reach CIS"):
            await provider.add_txt(ZoneRef(ZONE, "z"), fqdn("x"), "v", 60, ctx=ctx())
    finally:
        await provider.aclose()


# --- through the HTTP service ----------------------------------------------------------


class RecordingProvider(MemoryProvider):
    """The memory adapter, keeping every ChangeContext it is handed."""

    name: ClassVar[str] = "recording"
    contexts: ClassVar[list[ChangeContext]] = []

    @classmethod
    async def open(cls, settings: MemorySettings, budget: RateBudget) -> Self:
        return cls(settings)

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None:
        self.contexts.append(ctx)
        await super().add_txt(zone, fqdn, value, ttl, ctx=ctx)

    async def remove_txt(self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext) -> None:
        self.contexts.append(ctx)
        await super().remove_txt(zone, fqdn, value, ctx=ctx)


@pytest.fixture
def recording_registered(monkeypatch: pytest.MonkeyPatch) -> list[ChangeContext]:
    from providers import registry

    real = registry._entry_points
    target = f"{__name__}:RecordingProvider"
    monkeypatch.setattr(
        registry,
        "_entry_points",
        lambda: {
            **real(),
            "recording": EntryPoint("recording", target, registry.ENTRY_POINT_GROUP),
        },
    )
    monkeypatch.setattr(RecordingProvider, "contexts", [])
    return RecordingProvider.contexts


def cis_zone(fakes: Fakes, auth: str, tmp_path: Path) -> dict[str, Any]:
    return {"name": ZONE, "provider": "cis", "options": fakes.options(auth, tmp_path)}


FAST = {"rate_limits": {"cis": 1000.0}}  # the default 4/s would outlast the test deadline


async def post(service: Any, sender: Sender, event: str, domain: str, value: str, **kw: Any) -> Any:
    return await service.post(sender.body(sender.claims(event, domain, value, **kw)))


async def test_user_token_end_to_end(
    fakes: Fakes, start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    user_token = sender.user_token()
    fakes.cis.valid_tokens.add(user_token)
    service = await start_service(zones=[cis_zone(fakes, "user_token", tmp_path)], dispatch=FAST)
    value = signing.challenge_value()
    resp = await post(service, sender, REQUIRED, "www.example.com", value, user_token=user_token)
    assert resp.status == 200, await resp.text()
    assert fakes.cis.values("_acme-challenge.www.example.com") == [value]
    resp = await post(service, sender, COMPLETED, "www.example.com", value, user_token=user_token)
    assert (resp.status, (await resp.json())["status"]) == (200, "removed")
    assert fakes.cis.values("_acme-challenge.www.example.com") == []
    assert fakes.cis.seen_tokens and set(fakes.cis.seen_tokens) == {user_token}
    assert fakes.iam.exchanges == 0


async def test_no_other_adapter_ever_receives_the_user_token(
    fakes: Fakes,
    start_service: ServiceFactory,
    sender: Sender,
    tmp_path: Path,
    recording_registered: list[ChangeContext],
) -> None:
    user_token = sender.user_token()
    fakes.cis.valid_tokens.add(user_token)
    zones = [
        cis_zone(fakes, "user_token", tmp_path),
        {"name": "example.net", "provider": "recording"},
    ]
    service = await start_service(zones=zones, dispatch=FAST)
    for domain in ("example.net", "example.com", "www.example.net"):
        value = signing.challenge_value()
        for event in (REQUIRED, COMPLETED):
            resp = await post(service, sender, event, domain, value, user_token=user_token)
            assert resp.status == 200, await resp.text()
    assert len(recording_registered) == 4
    assert all(c.user_token is None for c in recording_registered)
    assert user_token not in repr(recording_registered)
    assert set(fakes.cis.seen_tokens) == {user_token}


async def test_a_user_token_cis_refuses_is_final_and_never_logged(
    fakes: Fakes,
    start_service: ServiceFactory,
    sender: Sender,
    tmp_path: Path,
    captured: io.StringIO,
) -> None:
    user_token = sender.user_token()  # CIS does not know it: the user lacks the role
    service = await start_service(zones=[cis_zone(fakes, "user_token", tmp_path)], dispatch=FAST)
    resp = await post(
        service, sender, REQUIRED, ZONE, signing.challenge_value(), user_token=user_token
    )
    assert resp.status == 502
    assert (await resp.json())["error"] == "provider_auth_failed"
    assert fakes.cis.calls.total() == 1  # final: not retried
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]
    failed = [e for e in lines if e.get("provider") == "cis" and e.get("zone") == ZONE]
    assert failed and failed[-1]["status"] == 502 and "HTTP 401" in failed[-1]["reason"]
    assert user_token not in captured.getvalue()
    assert user_token.split(".")[2] not in captured.getvalue()


async def test_a_sweep_without_a_user_token_fails_clearly_and_a_failed_order_cleans_up(
    fakes: Fakes, start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    user_token = sender.user_token()
    fakes.cis.valid_tokens.add(user_token)
    service = await start_service(zones=[cis_zone(fakes, "user_token", tmp_path)], dispatch=FAST)
    value = signing.challenge_value()
    certificate = INSTANCE.rstrip(":") + ":certificate:cccc"
    resp = await post(
        service, sender, REQUIRED, ZONE, value, user_token=user_token, certificateCRN=certificate
    )
    assert resp.status == 200
    calls = fakes.cis.calls.total()

    report = await sweep(service.runtime, max_age=0)
    assert report.removed == [] and len(report.failed) == 1
    assert "no verified user token" in report.failed[0][1]

    assert fakes.cis.values(f"_acme-challenge.{ZONE}") == [value]  # still there, as recorded
    assert fakes.cis.calls.total() == calls  # nothing reached CIS without a token
    assert service.runtime.journal is not None
    removals = [e for e in await service.runtime.journal.entries() if e.action == "remove"]
    assert [(e.outcome, e.error) for e in removals] == [("failed", "provider_auth_failed")]

    # A failed order's notification carries the user's token: its clean-up acts as them.
    failed_order = {
        "instance_crn": INSTANCE,
        "event_type": "cert_order_failed",
        "version": 4,
        "userToken": user_token,
        "certificates": [{"cert_crn": certificate}],
    }
    resp = await service.post(sender.body(failed_order))
    assert resp.status == 200
    assert await resp.json() == {
        "status": "cleaned",
        "event_type": "cert_order_failed",
        "removed": 1,
        "failed": 0,
    }
    assert fakes.cis.values(f"_acme-challenge.{ZONE}") == []


async def test_with_required_tokens_a_tokenless_removal_on_user_token_cis_fails_clearly(
    fakes: Fakes,
    start_service: ServiceFactory,
    sender: Sender,
    tmp_path: Path,
    captured: io.StringIO,
) -> None:
    """`required = true` no longer turns away a failed order or a removal of this
    instance's own value without a token (issue 21 #12). CIS acting as the user cannot
    remove without one: that must show in the answer and the log, reach no CIS call,
    and leave the value on record as still published."""
    user_token = sender.user_token()
    fakes.cis.valid_tokens.add(user_token)
    service = await start_service(
        zones=[cis_zone(fakes, "user_token", tmp_path)],
        dispatch=FAST,
        user_token={"required": True},
    )
    value = signing.challenge_value()
    certificate = INSTANCE.rstrip(":") + ":certificate:dddd"
    resp = await post(
        service, sender, REQUIRED, ZONE, value, user_token=user_token, certificateCRN=certificate
    )
    assert resp.status == 200
    calls = fakes.cis.calls.total()

    failed_order = {  # the shape Certificate Manager documents: no userToken
        "instance_crn": INSTANCE,
        "event_type": "cert_order_failed",
        "certificates": [{"cert_crn": certificate}],
    }
    resp = await service.post(sender.body(failed_order))
    assert (resp.status, await resp.json()) == (
        200,
        {"status": "cleaned", "event_type": "cert_order_failed", "removed": 0, "failed": 1},
    )
    resp = await post(service, sender, COMPLETED, ZONE, value)
    assert resp.status == 502
    assert (await resp.json())["error"] == "provider_auth_failed"

    assert fakes.cis.values(f"_acme-challenge.{ZONE}") == [value]
    assert fakes.cis.calls.total() == calls  # nothing reached CIS without a token
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]
    summaries = [e for e in lines if e["event"] == "notification"]
    assert [e["outcome"] for e in summaries[-2:]] == ["cleaned_partly", "failed"]
    assert "no verified user token" in summaries[-1]["reason"]
    warnings = [e for e in lines if e["event"] == "sweep_failed"]
    assert warnings and "no verified user token" in warnings[-1]["error"]
    assert service.runtime.journal is not None
    (left,) = await service.runtime.journal.candidates(certificates=[certificate])
    assert left.value == value  # on record as possibly published: never forgotten

    resp = await post(service, sender, COMPLETED, ZONE, value, user_token=user_token)
    assert (resp.status, (await resp.json())["status"]) == (200, "removed")
    assert fakes.cis.values(f"_acme-challenge.{ZONE}") == []


async def test_a_recreated_domain_is_looked_up_again_as_the_user(fakes: Fakes) -> None:
    """The core caches the zone's id; a domain deleted and added again has a new one.
    The change that finds the old id gone fails, and the next one looks the zone up
    again, with its own user's token."""
    fakes.cis.valid_tokens.update({"user", "other-user"})
    provider = await CisProvider.open(fakes.settings("user_token"), UNLIMITED)
    zone_settings = ZoneSettings(name=ZONE, provider="cis", options=provider.settings)
    dispatcher = Dispatcher({zone_settings.provider_key: provider}, DispatchSettings())

    async def add(label: str, token: str) -> None:
        challenge = Challenge(Action.ADD, ZONE, fqdn(label), "v")
        await dispatcher.apply(challenge, zone_settings, request_id="r", user_token=Secret(token))

    try:
        await add("a", "user")
        del fakes.cis.zones[fakes.cis.zone_id(ZONE)]
        fakes.cis.add_zone(ZONE)  # deleted and added again: a new zone id
        with pytest.raises(UpstreamFailed, match="refused"):
            await add("b", "user")
        fakes.cis.seen_tokens.clear()
        await add("b", "other-user")
    finally:
        await provider.aclose()
    assert fakes.cis.values(fqdn("b")) == ["v"]
    assert fakes.cis.calls["zones"] == 2
    assert set(fakes.cis.seen_tokens) == {"other-user"}
