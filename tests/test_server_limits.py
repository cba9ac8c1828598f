"""What a client cannot make the HTTP server do: wait for a body it declared too large,
hold a connection open without sending, or use up its file descriptors.

Requests are written by hand to sockets (tests/rawhttp.py): the point is the bytes and
the timing that a well-behaved client would never produce.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import io
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from receiver import listener, signing
from receiver.hosts.http import serving
from receiver.listener import GuardedSite

from . import rawhttp
from .conftest import ServiceFactory, SettingsFactory, service_events

PASSWORD = "correct horse battery staple"


def basic(password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"lego:{password}".encode())


def present(password: str) -> bytes:
    body = json.dumps(
        {"fqdn": "_acme-challenge.example.com.", "value": signing.challenge_value()}
    ).encode()
    headers = [(b"Authorization", basic(password)), (b"Content-Type", b"application/json")]
    return rawhttp.request("POST", "/present", headers, body)


@pytest.fixture
def httpreq_on(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("HTTPREQ_PASSWORD", PASSWORD)
    return {"enabled": True, "username": "lego", "password_env": "HTTPREQ_PASSWORD"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/callback"), ("POST", "/present"), ("GET", "/healthz"), ("POST", "/nowhere")],
)
@pytest.mark.parametrize("declared", [10**12, 65537])
async def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    captured: io.StringIO,
    start_service: ServiceFactory,
    httpreq_on: dict[str, Any],
    method: str,
    path: str,
    declared: int,
) -> None:
    """413 at once, with no byte of the body sent: the server must not wait for it."""
    service = await start_service(httpreq=httpreq_on)
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % declared)]
    started = time.monotonic()
    request = rawhttp.request(method, path, headers, keep_alive=True)
    response = await rawhttp.exchange(service.client.host, service.client.port, request)
    assert time.monotonic() - started < 1
    assert response.status == 413
    assert response.json()["error"] == "body_too_large" and response.json()["detail"]
    assert response.headers["connection"] == "close"
    assert await service.all_records() == {}
    rejected = [e for e in service_events(captured) if "status" in e]
    assert [(e["event"], e["status"], e["error"]) for e in rejected] == [
        ("request_rejected", 413, "body_too_large")
    ]


async def test_a_declared_length_at_the_limit_is_read(
    start_service: ServiceFactory, httpreq_on: dict[str, Any]
) -> None:
    service = await start_service(httpreq=httpreq_on)
    body = b"{" + b" " * (65536 - 2) + b"}"
    headers = [(b"Content-Type", b"application/json")]
    response = await rawhttp.exchange(
        service.client.host,
        service.client.port,
        rawhttp.request("POST", "/present", headers, body),
    )
    assert response.status == 401  # read, then refused for its missing credentials


# --- `serve`'s timeouts and connection cap, in-process ------------------------------------


@pytest.fixture
def served(
    make_settings: SettingsFactory, httpreq_on: dict[str, Any]
) -> Callable[..., contextlib.AbstractAsyncContextManager[GuardedSite]]:
    """`serving()` on a free loopback port, with these `[server]` settings."""

    def serve(**server: Any) -> contextlib.AbstractAsyncContextManager[GuardedSite]:
        settings = make_settings(server={"listen": "127.0.0.1:0", **server}, httpreq=httpreq_on)
        return serving(settings)

    return serve


Connect = Callable[[GuardedSite], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens client connections to a site, and closes them after the test."""
    writers: list[asyncio.StreamWriter] = []

    async def open_one(site: GuardedSite) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(*site.addresses[0])
        writers.append(writer)
        return reader, writer

    yield open_one
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader, *, within: float = 5) -> tuple[float, bytes]:
    """(seconds until the server closed the connection, what it sent meanwhile)."""
    started, received = time.monotonic(), b""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                received += chunk
    return time.monotonic() - started, received


def tallied(captured: io.StringIO, event: str) -> list[int]:
    """The counts of every logged `event` line (one line per interval, not per event)."""
    found = service_events(captured)
    assert not [e for e in found if "exception" in e], found
    return [e["count"] for e in found if e["event"] == event]


HEALTHZ = rawhttp.request("GET", "/healthz", [], keep_alive=True)


async def test_a_request_head_must_be_complete_within_the_header_timeout(
    captured: io.StringIO, served: Any, connect: Connect
) -> None:
    async with served(header_timeout_seconds=0.5, keepalive_timeout_seconds=30) as site:
        silent, _ = await connect(site)
        trickling, writer = await connect(site)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            while not trickling.at_eof():
                writer.write(b"X-Slow: a\r\n")  # busy, but never finishing the head
                await asyncio.sleep(0.1)

        trickler = asyncio.create_task(trickle())
        (quiet_s, quiet_sent), (busy_s, busy_sent) = await asyncio.gather(
            until_closed(silent), until_closed(trickling)
        )
        trickler.cancel()
    assert 0.4 < quiet_s < 1.5 and 0.4 < busy_s < 1.5
    assert quiet_sent == busy_sent == b""  # no answer: there is no request to answer
    assert sum(tallied(captured, "header_timeout")) == 2


async def test_the_header_clock_restarts_at_the_next_requests_first_byte(
    served: Any, connect: Connect
) -> None:
    async with served(header_timeout_seconds=0.5, keepalive_timeout_seconds=3) as site:
        reader, writer = await connect(site)
        writer.write(HEALTHZ)
        assert (await rawhttp.read_response(reader)).status == 200
        await asyncio.sleep(1)  # idle for longer than a head may take: keep-alive applies
        writer.write(HEALTHZ)
        assert (await rawhttp.read_response(reader)).status == 200
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # a next head that never ends
        seconds, sent = await until_closed(reader)
    assert 0.4 < seconds < 1.5 and sent == b""


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    served: Any, connect: Connect
) -> None:
    async with served(header_timeout_seconds=10, keepalive_timeout_seconds=0.5) as site:
        reader, writer = await connect(site)
        writer.write(HEALTHZ)
        assert (await rawhttp.read_response(reader)).status == 200
        seconds, sent = await until_closed(reader)
    assert seconds < 1.5 and sent == b""


async def test_a_trickled_body_is_cut_by_the_body_timeout(
    captured: io.StringIO, served: Any, connect: Connect
) -> None:
    body = json.dumps({"fqdn": "_acme-challenge.example.com.", "value": "A" * 43}).encode()
    head, _, _ = rawhttp.request(
        "POST",
        "/present",
        [(b"Authorization", basic(PASSWORD)), (b"Content-Type", b"application/json")],
        body,
        keep_alive=True,
    ).partition(b"\r\n\r\n")
    async with served(header_timeout_seconds=10, body_timeout_seconds=0.5) as site:
        reader, writer = await connect(site)
        writer.write(head + b"\r\n\r\n")
        started = time.monotonic()

        async def trickle() -> None:
            for byte in body[:-1]:  # the last byte never comes
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickler = asyncio.create_task(trickle())
        response = await rawhttp.read_response(reader)
        answered_after = time.monotonic() - started
        closed_after, _ = await until_closed(reader)
        trickler.cancel()
    assert response.status == 408 and 0.4 < answered_after < 1.5
    assert response.json() == {
        "error": "request_timeout",
        "detail": "the body did not arrive within 0.5 s",
    }
    assert response.headers["connection"] == "close"
    assert closed_after < 1.0  # lingering is bounded by the body timeout too
    logged = [(e["event"], e.get("status")) for e in service_events(captured) if "status" in e]
    assert logged == [("request_rejected", 408)]


async def test_a_client_leaving_mid_body_costs_one_line_and_no_traceback(
    captured: io.StringIO, served: Any, connect: Connect
) -> None:
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", b"100")]
    async with served() as site:
        _, writer = await connect(site)
        writer.write(rawhttp.request("POST", "/present", headers, keep_alive=True) + b'{"fq')
        await asyncio.sleep(0.2)
        writer.transport.abort()
        await asyncio.sleep(0.3)
    found = service_events(captured)
    assert not [e for e in found if "exception" in e or e["level"] == "error"], found
    logged = [(e["event"], e["status"], e["error"]) for e in found if "status" in e]
    assert logged == [("request_rejected", 400, "malformed_body")]


async def test_connections_over_the_cap_are_closed_at_once(
    captured: io.StringIO, served: Any, connect: Connect
) -> None:
    async with served(max_connections=3) as site:
        held = [await connect(site) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert site.open_connections == 3
        for _ in range(2):
            reader, writer = await connect(site)
            writer.write(HEALTHZ)
            seconds, sent = await until_closed(reader)
            assert seconds < 0.5 and sent == b""  # closed before a byte was read
        held[0][1].close()
        await asyncio.sleep(0.1)
        response = await rawhttp.exchange(*site.addresses[0], HEALTHZ)
        assert response.status == 200
    assert tallied(captured, "connections_refused") == [1, 1]  # the first at once, then 1 more


async def test_failed_accepts_are_counted_and_logged_once_per_interval(
    captured: io.StringIO, served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors: no traceback per attempt, no busy loop, service resumes."""
    monkeypatch.setattr(listener, "LOG_INTERVAL_SECONDS", 0.3)
    monkeypatch.setattr(listener, "ACCEPT_RETRY_SECONDS", 0.01)
    loop = asyncio.get_running_loop()
    real_accept, failures = loop.sock_accept, [0]

    async def out_of_descriptors(sock: Any) -> Any:
        if failures[0] < 40:
            failures[0] += 1
            await asyncio.sleep(0)
            raise OSError(errno.EMFILE, "Too many open files")
        return await real_accept(sock)

    monkeypatch.setattr(loop, "sock_accept", out_of_descriptors)
    async with served() as site:
        response = await rawhttp.exchange(*site.addresses[0], HEALTHZ)
        assert response.status == 200
    counts = tallied(captured, "accept_failed")
    assert sum(counts) == 40 and len(counts) <= 3, counts
    (first, *_) = [e for e in service_events(captured) if e["event"] == "accept_failed"]
    assert first["error"] == "EMFILE" and first["interval_seconds"] == 0.3


async def test_asyncios_own_accept_failures_are_counted(captured: io.StringIO, served: Any) -> None:
    """The DNS responder's TCP listener uses asyncio's accept loop, which reports each
    failure to the loop's exception handler: `serving` counts them instead."""
    loop = asyncio.get_running_loop()
    async with served():
        for _ in range(100):
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                }
            )
    assert tallied(captured, "accept_failed") == [1, 99]
    assert loop.get_exception_handler() is None  # put back as it was


@pytest.mark.parametrize(("nofile", "budget"), [(20000, 512), (1024, 512), (256, 128), (100, 1)])
def test_the_connection_cap_fits_the_descriptor_limit(
    monkeypatch: pytest.MonkeyPatch, nofile: int, budget: int
) -> None:
    monkeypatch.setattr(listener.resource, "getrlimit", lambda _: (nofile, nofile))
    assert listener.connection_budget(512) == budget


# --- the real server process under a slow-client flood -----------------------------------

NOFILE = 256  # the server's descriptor limit: fewer than the connections thrown at it
SLOW_HEADS = 200  # connections that never finish their request head
SLOW_BODIES = 100  # heads complete, bodies trickled a byte at a time
TRICKLE_GAP = 0.25
ATTACK_SECONDS = 4.0
ANSWER_WITHIN = 2.0  # every valid request, retries on refused connections included


def flood_config(path: Path) -> Path:
    path.write_text("""
[server]
listen = "127.0.0.1:0"
header_timeout_seconds = 1
body_timeout_seconds = 1
keepalive_timeout_seconds = 1
# max_connections: the default 512, lowered at start to fit the descriptor limit
[log]
format = "json"
[certificate_manager]
enabled = false
[httpreq]
enabled = true
username = "lego"
password_env = "HTTPREQ_PASSWORD"
[journal]
enabled = false
[propagation]
check = false
[[zones]]
name = "example.com"
provider = "memory"
""")
    return path


def proc_status(pid: int, field: str) -> int:
    """A number from /proc/PID/status, e.g. VmRSS in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def slow_client(
    port: int, head: bytes, trickle: bytes, *, wait: float
) -> tuple[float | None, bytes]:
    """Send `head`, then `trickle` a byte every TRICKLE_GAP seconds: (the seconds from
    connecting until the server closed the connection or None if it never did within
    `wait`, what the server sent)."""
    started, received = time.monotonic(), b""
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return None, received

    async def send() -> None:
        writer.write(head)
        for index in range(len(trickle)):
            await asyncio.sleep(TRICKLE_GAP)
            if writer.is_closing() or reader.at_eof():
                return
            writer.write(trickle[index : index + 1])

    sending = asyncio.create_task(send())
    try:
        async with asyncio.timeout(wait - (time.monotonic() - started)):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(4096):
                    received += chunk
        return time.monotonic() - started, received
    except TimeoutError:
        return None, received
    finally:
        sending.cancel()
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def answered(port: int, request: bytes) -> tuple[int, float]:
    """(status, seconds) of a valid request, retried while the server refuses it."""
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ANSWER_WITHIN * 3):
            while True:
                try:
                    response = await rawhttp.exchange("127.0.0.1", port, request)
                except (OSError, asyncio.IncompleteReadError):
                    await asyncio.sleep(0.05)  # refused at the cap: like any client, retry
                    continue
                return response.status, time.monotonic() - started
    return 0, time.monotonic() - started


@pytest.mark.slow
async def test_slow_clients_and_a_credential_flood_do_not_starve_valid_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_server: Callable[..., Any]
) -> None:
    """`serve` with 256 descriptors and 1 s timeouts; 300 slow clients (half-sent heads
    and trickled bodies) and 8 loops of wrong-password requests against it for 4 s. Valid
    requests (`/healthz`, httpreq `/present`) are answered within 2 s each; the slow
    connections are closed within their timeouts; no traceback, one log line per 10 s
    for each kind of connection trouble; memory and descriptors back where they were.

    Before the limits (same clients, no [server] timeouts): `/healthz` went unanswered
    for 6 s, `/present` took 3.8 s, no slow connection was closed, and asyncio logged
    ~14,000 failed accept()s with tracebacks in 11 s.
    """
    monkeypatch.setenv("HTTPREQ_PASSWORD", PASSWORD)
    server = await run_server(flood_config(tmp_path / "r.toml"), nofile=NOFILE)
    assert (await server.wait_for("listening"))["max_connections"] == (
        NOFILE - listener.RESERVED_DESCRIPTORS  # the default 512 does not fit: lowered
    )
    assert (await server.wait_for("max_connections_lowered"))["effective"] == 128
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    pid = server.proc.pid
    healthz = rawhttp.request("GET", "/healthz", [])
    for _ in range(5):  # warm up: lazy imports, first allocations
        assert (await answered(port, healthz))[0] == 200
        assert (await answered(port, present(PASSWORD)))[0] == 200
    rss_before, fds_before = proc_status(pid, "VmRSS"), descriptors(pid)

    slow_head = b"POST /present HTTP/1.1\r\nHost: x\r\nX-Slow: "
    body_head = present("wrong")
    head, _, body = body_head.partition(b"\r\n\r\n")
    kinds = ["head", "head", "body"] * ((SLOW_HEADS + SLOW_BODIES) // 3)  # interleaved
    slow_tasks = [
        asyncio.create_task(
            slow_client(port, slow_head, b"a" * 100, wait=10)
            if kind == "head"
            else slow_client(port, head + b"\r\n\r\n", body, wait=10)
        )
        for kind in kinds
    ]
    await asyncio.sleep(0.2)  # the slow clients hold (or are refused) their connections

    flooded: list[int] = []
    probes: list[tuple[str, int, float]] = []
    ending = time.monotonic() + ATTACK_SECONDS

    async def flood() -> None:
        while time.monotonic() < ending:
            try:
                flooded.append((await rawhttp.exchange("127.0.0.1", port, present("wrong"))).status)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                flooded.append(0)  # refused at the cap

    async def probe() -> None:
        while time.monotonic() < ending:
            for name, request in (("healthz", healthz), ("present", present(PASSWORD))):
                status, seconds = await answered(port, request)
                probes.append((name, status, seconds))
            await asyncio.sleep(0.1)

    await asyncio.gather(*(flood() for _ in range(8)), probe(), probe())
    results = await asyncio.gather(*slow_tasks)
    await asyncio.sleep(0.5)
    rss_after, fds_after = proc_status(pid, "VmRSS"), descriptors(pid)

    heads = [r for kind, r in zip(kinds, results, strict=True) if kind == "head"]
    bodies = [r for kind, r in zip(kinds, results, strict=True) if kind == "body"]
    answered_408 = [r for r in bodies if r[1].startswith(b"HTTP/1.1 408 ")]
    events = server.events()
    tallies = {
        name: [e["count"] for e in events if e["event"] == name]
        for name in ("header_timeout", "connections_refused", "accept_failed")
    }
    slowest_probe = max(seconds for _, _, seconds in probes)
    print(
        f"\nprobes: {len(probes)} answered, slowest {slowest_probe:.2f} s;"
        f" flood: {len(flooded)} requests, {flooded.count(401)} x 401,"
        f" {flooded.count(0)} refused; slow heads closed after at most"
        f" {max(r[0] or 99 for r in heads):.2f} s, slow bodies after at most"
        f" {max(r[0] or 99 for r in bodies):.2f} s ({len(answered_408)} answered 408);"
        f" RSS {rss_before} -> {rss_after} KiB; descriptors {fds_before} -> {fds_after};"
        f" {len(server.lines)} log lines; tallied (lines: counts) {tallies}"
    )
    assert probes and all(status == 200 for _, status, _ in probes), probes
    assert slowest_probe <= ANSWER_WITHIN, probes
    assert set(flooded) <= {401, 0} and flooded.count(401) > 100
    # Closed by the server: a head within its 1 s; a body within its 1 s, then at most
    # 1 s of lingering for the 408 to be read; over the cap, at once. The client's clock
    # starts at connect(), so it also counts the wait in the listen backlog while the
    # accept loop works through the flood, and this process's own loop, busy with the
    # flood, noticing the close: up to a second more on two loaded cores (CI saw 2.02 s
    # and 3.03 s). Without the timeouts these connections were never closed (None).
    assert all(seconds is not None and seconds <= 3.0 and sent == b"" for seconds, sent in heads)
    assert all(seconds is not None and seconds <= 4.0 for seconds, _ in bodies), bodies
    assert all(sent in (b"", *(r[1] for r in answered_408)) for _, sent in bodies)
    assert len(answered_408) >= 10  # some bodies did get a slot and were cut off
    assert rss_after - rss_before < 20 * 1024, (rss_before, rss_after)
    assert fds_after <= fds_before + 5
    assert not [line for line in server.lines if "Traceback" in line or "exception" in line]
    assert all(len(counts) <= 2 for counts in tallies.values()), tallies
    assert server.proc.returncode is None


@pytest.mark.slow
async def test_an_acme_dns_wrong_key_flood_costs_one_thread_and_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_server: Callable[..., Any]
) -> None:
    """16 clients sending well-formed but wrong acme-dns keys for 4 s (each one a 16 MiB
    scrypt check): httpreq requests stay answered within the bound, the flood gets 401
    or 503 `busy`, and memory returns near where it was. Before checks ran on their own
    bounded thread, 30 such updates grew the process from 56 to 155 MB and a 16-client
    flood slowed other requests fivefold."""
    monkeypatch.setenv("HTTPREQ_PASSWORD", PASSWORD)
    config = flood_config(tmp_path / "r.toml")
    config.write_text(
        config.read_text().replace(
            "[journal]",
            '[acme_dns]\nenabled = true\nzone = "example.com"\nallow_register = true\n[journal]',
        )
    )
    server = await run_server(config)
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    register = rawhttp.request("POST", "/register", [], b"")
    account = (await rawhttp.exchange("127.0.0.1", port, register)).json()
    body = json.dumps({"subdomain": account["subdomain"], "txt": "A" * 43}).encode()
    wrong = rawhttp.request(
        "POST",
        "/update",
        [(b"X-Api-User", account["username"].encode()), (b"X-Api-Key", b"k" * 40)],
        body,
    )
    for _ in range(5):
        assert (await answered(port, present(PASSWORD)))[0] == 200
    rss_before = proc_status(server.proc.pid, "VmRSS")

    statuses: list[int] = []
    probes: list[float] = []
    ending = time.monotonic() + ATTACK_SECONDS

    async def flood() -> None:
        while time.monotonic() < ending:
            statuses.append((await rawhttp.exchange("127.0.0.1", port, wrong)).status)

    async def probe() -> None:
        while time.monotonic() < ending:
            status, seconds = await answered(port, present(PASSWORD))
            assert status == 200
            probes.append(seconds)
            await asyncio.sleep(0.05)

    await asyncio.gather(*(flood() for _ in range(16)), probe())
    await asyncio.sleep(0.5)
    rss_after = proc_status(server.proc.pid, "VmRSS")
    print(
        f"\nflood: {len(statuses)} updates, {statuses.count(401)} x 401 (checked),"
        f" {statuses.count(503)} x 503 busy; probes: {len(probes)}, median"
        f" {sorted(probes)[len(probes) // 2] * 1000:.0f} ms, slowest {max(probes) * 1000:.0f} ms;"
        f" RSS {rss_before} -> {rss_after} KiB"
    )
    assert set(statuses) <= {401, 503} and statuses.count(401) >= 20
    assert max(probes) <= ANSWER_WITHIN
    assert rss_after - rss_before < 40 * 1024, (rss_before, rss_after)
    assert not [line for line in server.lines if "Traceback" in line]
