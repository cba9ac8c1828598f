"""Key sources: caching, rotation, bounded refetching, JWKS quirks."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from receiver import signing
from receiver.crn import InstanceCrn
from receiver.errors import Unauthorized, Unavailable
from receiver.fetch import AiohttpGet
from receiver.keys import (
    FetchedSenderKeys,
    FileSenderKeys,
    Jwks,
    KeyMaterialError,
    load_public_key_pem,
    parse_jwks,
    public_key_url,
)

from .conftest import INSTANCE, USER_KID, FakeIbmCloud, KeyPair, Sender, ServiceFactory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_key_url_is_built_from_the_crn_region_and_encoded_crn() -> None:
    url = public_key_url(
        "https://{region}.certificate-manager.cloud.ibm.com/api/v1/instances/{instance_crn}"
        "/notifications/publicKey?keyFormat=pem",
        InstanceCrn.parse(INSTANCE),
    )
    assert url.startswith(
        "https://us-south.certificate-manager.cloud.ibm.com/api/v1/instances/crn%3Av1%3A"
    )
    assert "/" not in url.split("/instances/")[1].split("/notifications")[0]


async def test_fetch_once_then_cache(ibm_cloud: FakeIbmCloud, keys: dict[str, KeyPair]) -> None:
    async with aiohttp.ClientSession() as session:
        source = FetchedSenderKeys(
            AiohttpGet(session), ibm_cloud.public_key_url, timeout=2, refetch_interval=60
        )
        instance = InstanceCrn.parse(INSTANCE)
        results = await asyncio.gather(*(source.current(instance) for _ in range(10)))
        assert len({id(k) for k in results}) == 1
        assert ibm_cloud.key_fetches == [INSTANCE]


async def test_rotation_is_picked_up_at_most_once_per_interval(ibm_cloud: FakeIbmCloud) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        source = FetchedSenderKeys(
            AiohttpGet(session),
            ibm_cloud.public_key_url,
            timeout=2,
            refetch_interval=60,
            clock=clock,
        )
        instance = InstanceCrn.parse(INSTANCE)
        old = await source.current(instance)
        ibm_cloud.instance_keys[INSTANCE] = "sender_rotated"
        assert await source.refreshed(instance) is None  # within the interval: no fetch
        assert len(ibm_cloud.key_fetches) == 1
        clock.now += 61
        new = await source.refreshed(instance)
        assert new is not None and new is not old
        assert await source.current(instance) is new
        clock.now += 61
        assert await source.refreshed(instance) is None  # same key again: nothing new
        assert len(ibm_cloud.key_fetches) == 3


async def test_failed_fetch_is_not_retried_immediately(ibm_cloud: FakeIbmCloud) -> None:
    clock = Clock()
    ibm_cloud.failing = True
    async with aiohttp.ClientSession() as session:
        source = FetchedSenderKeys(
            AiohttpGet(session),
            ibm_cloud.public_key_url,
            timeout=2,
            refetch_interval=60,
            clock=clock,
        )
        instance = InstanceCrn.parse(INSTANCE)
        for _ in range(5):
            with pytest.raises(Unavailable) as caught:
                await source.current(instance)
            assert caught.value.code == "sender_key_unavailable"
        assert len(ibm_cloud.key_fetches) == 1
        ibm_cloud.failing = False
        clock.now += 6
        await source.current(instance)
        assert len(ibm_cloud.key_fetches) == 2


async def test_unreachable_key_endpoint_is_503(
    start_service: ServiceFactory, sender: Sender, unused_tcp_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/{{instance_crn}}"
    service = await start_service(certificate_manager={"public_key_url": url})
    resp = await service.post(sender.body())
    assert resp.status == 503
    assert (await resp.json())["error"] == "sender_key_unavailable"
    assert int(resp.headers["Retry-After"]) >= 1
    assert await service.all_records() == {}


async def test_rotation_end_to_end(
    start_service: ServiceFactory, sender: Sender, ibm_cloud: FakeIbmCloud
) -> None:
    service = await start_service(certificate_manager={"key_refetch_interval_seconds": 0.2})
    assert (await service.post(sender.body())).status == 200
    ibm_cloud.instance_keys[INSTANCE] = "sender_rotated"
    rotated = Sender(sender.keys, key_name="sender_rotated")
    await asyncio.sleep(0.25)
    assert (await service.post(rotated.body())).status == 200
    assert (await service.post(rotated.body())).status == 200
    assert ibm_cloud.key_fetches.count(INSTANCE) == 2


async def test_file_keys_follow_the_file(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    clock = Clock()
    path = tmp_path / "key.pem"
    path.write_bytes(keys["sender"].public_pem)
    source = FileSenderKeys(path, refetch_interval=60, clock=clock)
    instance = InstanceCrn.parse(INSTANCE)
    first = await source.current(instance)
    path.write_bytes(keys["sender_rotated"].public_pem + b"\n")
    assert await source.refreshed(instance) is None  # interval not yet over
    clock.now += 61
    assert await source.refreshed(instance) is not None
    assert await source.current(instance) is not first
    path.write_text("garbage")
    clock.now += 61
    assert await source.refreshed(instance) is None  # a broken file keeps the old key


@pytest.mark.parametrize(
    "pem",
    [b"", b"not a key", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"],
)
def test_bad_pem_is_rejected(pem: bytes) -> None:
    with pytest.raises(KeyMaterialError):
        load_public_key_pem(pem, "test")


def test_private_key_pem_is_not_a_public_key(keys: dict[str, KeyPair]) -> None:
    with pytest.raises(KeyMaterialError):
        load_public_key_pem(keys["sender"].private_pem, "test")


def test_jwks_without_use_is_accepted_and_oct_keys_never(keys: dict[str, KeyPair]) -> None:
    document = signing.jwks_document({"a": keys["user"].public_pem})
    assert "use" not in document["keys"][0]
    document["keys"].append({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})
    document["keys"].append({**document["keys"][0], "kid": "enc", "use": "enc"})
    parsed = parse_jwks(json.dumps(document).encode())
    assert set(parsed) == {"a"}


@pytest.mark.parametrize("body", [b"", b"[]", b'{"keys": []}', b'{"keys": [{"kty": "oct"}]}'])
def test_unusable_jwks(body: bytes) -> None:
    with pytest.raises(KeyMaterialError):
        parse_jwks(body)


async def test_jwks_unknown_kid_refetches_once_per_interval(ibm_cloud: FakeIbmCloud) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        jwks = Jwks(
            AiohttpGet(session),
            ibm_cloud.jwks_url,
            timeout=2,
            cache_seconds=3600,
            refetch_interval=60,
            clock=clock,
        )
        await jwks.key(USER_KID)
        for _ in range(5):
            with pytest.raises(Unauthorized):
                await jwks.key("new-kid")
        assert ibm_cloud.jwks_fetches == 1
        ibm_cloud.jwks_keys["new-kid"] = "user_rotated"
        clock.now += 61
        await jwks.key("new-kid")
        assert ibm_cloud.jwks_fetches == 2


async def test_jwks_stale_cache_survives_an_outage(ibm_cloud: FakeIbmCloud) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        jwks = Jwks(
            AiohttpGet(session),
            ibm_cloud.jwks_url,
            timeout=2,
            cache_seconds=10,
            refetch_interval=1,
            clock=clock,
        )
        key = await jwks.key(USER_KID)
        ibm_cloud.failing = True
        clock.now += 100
        assert await jwks.key(USER_KID) is key
        assert ibm_cloud.jwks_fetches == 2


@pytest.fixture
async def deeply_nested_json() -> Any:
    """A key endpoint whose JSON nests deeper than the decoder's recursion limit."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 30_000, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.mark.parametrize("endpoint", ["sender_key", "jwks"])
async def test_a_deeply_nested_key_document_is_unavailable_not_a_crash(
    start_service: ServiceFactory, sender: Sender, deeply_nested_json: str, endpoint: str
) -> None:
    if endpoint == "sender_key":
        sections: dict[str, Any] = {
            "certificate_manager": {"public_key_url": deeply_nested_json + "/{instance_crn}"}
        }
    else:
        sections = {"user_token": {"jwks_url": deeply_nested_json + "/identity/keys"}}
    service = await start_service(**sections)
    resp = await service.post(sender.body(sender.claims(user_token=sender.user_token())))
    assert resp.status == 503, await resp.text()
    assert (await resp.json())["error"] == f"{endpoint}_unavailable"
    assert await service.all_records() == {}


def test_a_deeply_nested_jwks_is_unusable() -> None:
    with pytest.raises(KeyMaterialError):
        parse_jwks(b'{"keys": ' + b"[" * 30_000)


async def test_readiness_does_not_refetch_a_failing_jwks_on_every_probe(
    start_service: ServiceFactory, ibm_cloud: FakeIbmCloud
) -> None:
    """Stale keys and a failing endpoint: 30 probes used to make 30 fetches (and report
    ready). Now one attempt per refetch interval, and the probes report its failure."""
    service = await start_service(
        user_token={"jwks_cache_seconds": 0.2, "jwks_refetch_interval_seconds": 1}
    )
    assert (await service.client.get("/readyz")).status == 200
    assert ibm_cloud.jwks_fetches == 1
    ibm_cloud.failing = True
    await asyncio.sleep(1.1)  # stale, and the interval has passed
    started = time.monotonic()
    probes = [await service.client.get("/readyz") for _ in range(30)]
    intervals = int((time.monotonic() - started) / 1) + 1  # normally 1: 30 probes take ~0.1 s
    assert 2 <= ibm_cloud.jwks_fetches <= 1 + intervals
    for resp in probes:
        body = await resp.json()
        assert resp.status == 503, body
        assert "HTTP 503" in body["checks"]["user_token_keys"]  # the last failure


async def test_jwks_readiness_follows_the_refetch_interval(ibm_cloud: FakeIbmCloud) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        jwks = Jwks(
            AiohttpGet(session),
            ibm_cloud.jwks_url,
            timeout=2,
            cache_seconds=100,
            refetch_interval=60,
            clock=clock,
        )
        await jwks.check()
        ibm_cloud.failing = True
        clock.now += 101  # stale
        for _ in range(30):
            with pytest.raises(Unavailable) as caught:
                await jwks.check()
            assert caught.value.code == "jwks_unavailable" and "HTTP 503" in caught.value.detail
        assert ibm_cloud.jwks_fetches == 2
        clock.now += 60  # the interval has passed: one more attempt, failing again
        with pytest.raises(Unavailable):
            await jwks.check()
        assert ibm_cloud.jwks_fetches == 3
        ibm_cloud.failing = False
        clock.now += 30  # recovered, but the last attempt was 30 s ago: still the failure
        with pytest.raises(Unavailable):
            await jwks.check()
        clock.now += 30
        await jwks.check()
        assert ibm_cloud.jwks_fetches == 4
        await jwks.check()  # fresh again: no fetch
        assert ibm_cloud.jwks_fetches == 4


async def test_jwks_readiness_without_keys_retries_after_a_few_seconds(
    ibm_cloud: FakeIbmCloud,
) -> None:
    """Nothing cached yet (a pod starting during an IAM blip): retried after 5 s, as a
    notification's fetch is, so the pod becomes ready soon after IAM recovers."""
    clock = Clock()
    ibm_cloud.failing = True
    async with aiohttp.ClientSession() as session:
        jwks = Jwks(
            AiohttpGet(session),
            ibm_cloud.jwks_url,
            timeout=2,
            cache_seconds=3600,
            refetch_interval=60,
            clock=clock,
        )
        for _ in range(30):
            with pytest.raises(Unavailable):
                await jwks.check()
        assert ibm_cloud.jwks_fetches == 1
        ibm_cloud.failing = False
        clock.now += 5
        await jwks.check()
        assert ibm_cloud.jwks_fetches == 2
