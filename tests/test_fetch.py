"""The two key-document transports answer alike: the aiohttp one (long-running server) and
the standard-library one (serverless doors), each against a real loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from receiver.errors import Unavailable
from receiver.fetch import MAX_DOCUMENT_BYTES, USER_AGENT, AiohttpGet, HttpGet, StdlibGet, where

Make = Callable[[], AsyncIterator[HttpGet]]


@pytest.fixture(params=["aiohttp", "stdlib"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[HttpGet]:
    if request.param == "stdlib":
        yield StdlibGet()
        return
    async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as session:
        yield AiohttpGet(session)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def document(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=b'{"publicKey": "pem"}', content_type="application/json")

    async def large(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to check up front
        await response.prepare(request)
        for _ in range(MAX_DOCUMENT_BYTES // 1024 + 2):
            await response.write(b"x" * 1024)
        await response.write_eof()
        return response

    async def declared_large(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (MAX_DOCUMENT_BYTES + 1))

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/document")

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=b"late")

    app = web.Application()
    for path, handler in {
        "/document": document,
        "/large": large,
        "/declared-large": declared_large,
        "/redirect": redirect,
        "/failing": failing,
        "/slow": slow,
    }.items():
        app.router.add_get(path, handler)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield str(test_server.make_url("")).rstrip("/"), seen
    await test_server.close()


async def test_a_200_body_with_our_headers(
    http: HttpGet, server: tuple[str, list[dict[str, str]]]
) -> None:
    url, seen = server
    body = await http(f"{url}/document", seconds=2, headers={"Accept": "application/json"})
    assert body == b'{"publicKey": "pem"}'
    assert seen[0]["Accept"] == "application/json"
    assert seen[0]["User-Agent"] == USER_AGENT


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/failing", "answered HTTP 503"),
        ("/redirect", "answered HTTP 302"),  # never followed
        ("/large", "too large"),
        ("/declared-large", "too large"),
        ("/slow", "unreachable (TimeoutError)"),
    ],
)
async def test_anything_but_a_small_200_is_unavailable(
    http: HttpGet, server: tuple[str, list[dict[str, str]]], path: str, message: str
) -> None:
    url, seen = server
    with pytest.raises(Unavailable) as caught:
        await http(f"{url}{path}?token=secret", seconds=0.5, headers={})
    assert message in caught.value.detail
    assert "secret" not in caught.value.detail and path not in caught.value.detail
    assert seen == []  # the redirect was not followed to /document


async def test_nothing_listening_is_unavailable(http: HttpGet, unused_tcp_port: int) -> None:
    with pytest.raises(Unavailable) as caught:
        await http(f"http://127.0.0.1:{unused_tcp_port}/keys", seconds=1, headers={})
    assert caught.value.detail.startswith(f"http://127.0.0.1:{unused_tcp_port} unreachable")


def test_where_names_only_scheme_host_and_port() -> None:
    assert where("https://iam.cloud.ibm.com/identity/keys?x=1") == "https://iam.cloud.ibm.com:443"
    assert where("http://127.0.0.1:8080/a") == "http://127.0.0.1:8080"
