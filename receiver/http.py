"""The aiohttp door: an app factory, its middlewares, health endpoints, and `serving`,
which runs the app as the long-running server with its connection limits.

The Runtime is entered in a cleanup context (torn down only if it opened) and kept
under a typed AppKey; handlers translate to and from `core.handle` and do nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from providers.base import Secret
from receiver import core
from receiver.config import Settings
from receiver.doors import acme_dns, httpreq
from receiver.doors.digicert import FileAuth
from receiver.errors import (
    BadRequest,
    PayloadTooLarge,
    ReceiverError,
    RequestRejected,
    Unauthorized,
)
from receiver.listener import (
    GuardedSite,
    Tally,
    connection_budget,
    connection_of,
    quiet_accept_errors,
)
from receiver.logs import bind_request
from receiver.prometheus import CONTENT_TYPE
from receiver.runtime import Runtime, passed
from receiver.sweep import sweep_periodically
from receiver.workers import ALONE, Slot

if TYPE_CHECKING:  # dnspython: imported only when the DNS listener runs
    from receiver.dnsserver import Responder

RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", Settings)
SLOT = web.AppKey("slot", Slot)
DNS_ADDRESS = web.AppKey("dns_address", tuple[str, int])
DNS_RESPONDER: web.AppKey[Responder] = web.AppKey("dns_responder")  # the `local` zones'
RFC2136_ADDRESS = web.AppKey("rfc2136_address", tuple[str, int])
REQUEST_ID = web.RequestKey("request_id", str)
FILEAUTH = web.AppKey("fileauth", FileAuth)
FILEAUTH_PATH = "/.well-known/pki-validation/fileauth.txt"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}\Z")
MAX_JOURNAL_LIMIT = 10_000
_STATUS_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
}
# After an answer given before the body was read, aiohttp keeps reading (and dropping)
# it this long, so that the client sees the answer rather than a reset.
LINGER_SECONDS = 2.0

log = structlog.get_logger("receiver.http")


@contextlib.asynccontextmanager
async def serving(settings: Settings, slot: Slot = ALONE) -> AsyncIterator[GuardedSite]:
    """The app listening on `server.listen` until the block exits, then shut down
    gracefully (in-flight requests get `shutdown_timeout_seconds`). A worker's `slot`
    shares the port with the other workers (`receiver.workers`).

    aiohttp's own limits are used where it has them: `keepalive_timeout` for idle
    connections, `lingering_time` for unread bodies, `client_max_size` (in
    `create_app`). The rest (header timeout, connection cap, quiet accept errors) is
    `receiver.listener`'s; the body timeout is `read_body`'s.
    """
    server = settings.server
    loop = asyncio.get_running_loop()
    tally = Tally()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(quiet_accept_errors(tally))
    runner = web.AppRunner(
        create_app(settings, slot),
        access_log=None,
        shutdown_timeout=server.shutdown_timeout_seconds,
        keepalive_timeout=server.keepalive_timeout_seconds,
        lingering_time=min(LINGER_SECONDS, server.body_timeout_seconds),
    )
    await runner.setup()
    try:
        site = GuardedSite(
            runner,
            server.host,
            server.port,
            max_connections=_connection_budget(server.max_connections),
            header_timeout=server.header_timeout_seconds,
            tally=tally,
            reuse_port=not slot.alone,
        )
        await site.start()
        yield site
    finally:
        await runner.cleanup()
        tally.close()
        loop.set_exception_handler(previous_handler)


def _connection_budget(configured: int) -> int:
    budget = connection_budget(configured)
    if budget < configured:
        log.warning(
            "max_connections_lowered",
            configured=configured,
            effective=budget,
            reason="the descriptor limit (ulimit -n) leaves no more; raise it to allow more",
        )
    return budget


def create_app(settings: Settings, slot: Slot = ALONE) -> web.Application:
    """The app; `slot` says whether it shares its ports and runs the periodic sweep."""
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[head_received, request_context, json_errors, declared_length],
    )
    app[SETTINGS] = settings
    app[SLOT] = slot
    app.cleanup_ctx.append(_runtime_context)
    if any(zone.capabilities.serves_dns for zone in settings.zones):
        app.cleanup_ctx.append(_local_dns_context)
    if settings.rfc2136_door.enabled:  # after the local responder: it may share its socket
        app.cleanup_ctx.append(_rfc2136_context)
    if settings.certificate_manager.enabled:
        app.router.add_post(settings.server.callback_path, notification)
    if settings.httpreq.enabled:
        for path in httpreq.PATHS:
            app.router.add_post(path, notification)
    if settings.acme_dns.enabled:
        for path in acme_dns.PATHS:
            app.router.add_post(path, notification)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if settings.digicert.fileauth:
        app[FILEAUTH] = FileAuth(settings.digicert)
        app.router.add_get(FILEAUTH_PATH, fileauth)
    if settings.journal.enabled:
        if slot.sweeps:
            app.cleanup_ctx.append(_sweep_context)
        if settings.journal.admin_token is not None:
            app.router.add_get("/journal", journal_entries)
    return app


async def _runtime_context(app: web.Application) -> AsyncIterator[None]:
    async with Runtime.open(app[SETTINGS], long_running=True) as runtime:
        await runtime.state.prepare()
        app[RUNTIME] = runtime
        yield


async def _local_dns_context(app: web.Application) -> AsyncIterator[None]:
    """The built-in responder: only in the long-running server, never in serverless doors."""
    from receiver import dnsserver  # dnspython is imported only when a zone is `local`

    settings, runtime, slot = app[SETTINGS], app[RUNTIME], app[SLOT]
    local = [zone for zone in settings.zones if zone.capabilities.serves_dns]
    async with contextlib.AsyncExitStack() as stack:
        view, records = None, None
        if runtime.state.shared:  # answers from memory, following the shared database
            view = await runtime.state.mirror(stack)
            records = runtime.state.local_records(local[0].options)
        responder = await stack.enter_async_context(
            dnsserver.running(
                [z.name for z in local],
                local[0].options,
                view=view,
                records=records,
                reuse_port=not slot.alone,
                purge=slot.sweeps,
            )
        )
        app[DNS_ADDRESS] = responder.address
        app[DNS_RESPONDER] = responder
        host, port = responder.address
        log.info("dns_listening", address=f"{host}:{port}", zones=[z.name for z in local])
        yield


async def _rfc2136_context(app: web.Application) -> AsyncIterator[None]:
    """The RFC 2136 door on the built-in DNS listener (long-running server only)."""
    from receiver.doors import rfc2136  # dnspython is imported only when the door is on

    local = app.get(DNS_RESPONDER)
    async with rfc2136.serving(app[RUNTIME], local, reuse_port=not app[SLOT].alone) as address:
        app[RFC2136_ADDRESS] = address
        app.setdefault(DNS_ADDRESS, address)
        yield


async def _sweep_context(app: web.Application) -> AsyncIterator[None]:
    """The periodic sweep: long-running server only (serverless uses `sweep` on a timer)."""
    task = asyncio.create_task(sweep_periodically(app[RUNTIME]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class BearerRequired(Unauthorized):
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


async def journal_entries(request: web.Request) -> web.Response:
    """The audit trail, for holders of the admin token only (the route exists only then)."""
    settings = request.app[SETTINGS].journal
    assert settings.admin_token is not None
    check_bearer(request.headers.get("Authorization", ""), settings.admin_token)
    journal = request.app[RUNTIME].journal
    assert journal is not None
    query = JournalQuery.parse(request.query)
    entries = await journal.entries(since=query.since, domain=query.domain, limit=query.limit)
    return web.json_response({"entries": [e.as_dict() for e in entries]})


@dataclass(frozen=True)
class JournalQuery:
    """`GET /journal?since=<epoch>&domain=<name>&limit=<n>`, checked."""

    since: float | None = None
    domain: str | None = None
    limit: int = 1000

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> JournalQuery:
        """`BadRequest` unless since is a finite number and limit is 1..MAX_JOURNAL_LIMIT:
        SQLite reads a negative LIMIT as "no limit", and NaN compares false with anything."""
        try:
            since = float(query["since"]) if "since" in query else None
            limit = int(query.get("limit", cls.limit))
        except ValueError:
            raise BadRequest("since is epoch seconds, limit an integer") from None
        if since is not None and not math.isfinite(since):
            raise BadRequest("since is epoch seconds")
        if not 1 <= limit <= MAX_JOURNAL_LIMIT:
            raise BadRequest(f"limit must be from 1 to {MAX_JOURNAL_LIMIT}")
        return cls(since, query.get("domain"), limit)


def check_bearer(header: str, token: Secret) -> None:
    """`Bearer <token>` (RFC 6750), the scheme in any case (RFC 7235); `BearerRequired`
    for anything else, compared in constant time as the bytes that were sent."""
    scheme, _, offered = header.partition(" ")
    offered = offered.lstrip(" ")
    if scheme.lower() != "bearer" or not offered or not _same_bytes(offered, token.reveal()):
        raise BearerRequired("send Authorization: Bearer <admin token>", code="unauthorized")


def _same_bytes(offered: str, expected: str) -> bool:
    """aiohttp decodes header bytes as UTF-8 and keeps the undecodable ones as surrogates
    (surrogateescape): encoding back the same way gives exactly the bytes sent."""
    try:
        sent = offered.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no byte decodes to: not from the wire
        return False
    return hmac.compare_digest(sent, expected.encode())


@web.middleware
async def head_received(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's head is complete: its connection's header timeout stops until the
    next request's first byte (`receiver.listener.Connection`; absent in test servers)."""
    connection = connection_of(request)
    if connection is None:
        return await handler(request)
    connection.request_started()
    try:
        return await handler(request)
    finally:
        connection.request_finished()


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get("X-Request-Id", "")
    request_id = offered if _SAFE_REQUEST_ID.match(offered) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    bind_request(request_id)
    response = await handler(request)
    response.headers["X-Request-Id"] = request_id
    return response


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (404, 405, 408, 413) and the rejections of handlers
    outside `core` (the journal, `read_body`) as JSON bodies like every other error,
    each logged once."""
    try:
        return await handler(request)
    except RequestRejected as exc:
        return _rejection(request, exc.status, exc.code, exc.detail, exc.headers())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "http_error")
        return _rejection(request, exc.status, code, exc.reason, _allow(exc))


def _rejection(
    request: web.Request, status: int, code: str, detail: str, headers: dict[str, str]
) -> web.Response:
    log.info(
        "request_rejected",
        status=status,
        error=code,
        method=request.method,
        path=request.path,
        remote=request.remote,
    )
    response = web.json_response({"error": code, "detail": detail}, status=status, headers=headers)
    if not request.content.is_eof():
        response.force_close()  # the rest of the body is not wanted: say so
    return response


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


@web.middleware
async def declared_length(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A Content-Length over `max_body_bytes` is refused before any of the body is read.

    aiohttp checks `client_max_size` only while reading, so a client that declares 10^12
    bytes and sends none would otherwise hold the request open waiting for them.
    """
    limit = request.app[SETTINGS].server.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the declared body of {declared} bytes exceeds {limit} bytes")
    return await handler(request)


async def notification(request: web.Request) -> web.Response:
    body = await read_body(request)
    outcome = await core.handle(
        request.app[RUNTIME],
        core.InboundRequest(
            method=request.method,
            path=request.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            request_id=request[REQUEST_ID],
            remote=request.remote,
        ),
    )
    return web.json_response(outcome.body, status=outcome.status, headers=outcome.headers)


async def read_body(request: web.Request) -> bytes:
    """The whole body within `body_timeout_seconds` of the head, or 408; 413 beyond
    `client_max_size`. aiohttp has no body timeout: a trickling client would hold the
    request (and its connection) for as long as it keeps sending.

    A client that goes away mid-body is a 400 (nobody reads it) with one log line;
    unhandled, aiohttp would log a traceback for each such request.
    """
    seconds = request.app[SETTINGS].server.body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        detail = f"the body did not arrive within {seconds:g} s"
        raise web.HTTPRequestTimeout(reason=detail) from None
    except ConnectionError:
        raise BadRequest(
            "the connection closed before the body was complete", code="malformed_body"
        ) from None


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def fileauth(request: web.Request) -> web.Response:
    """DigiCert's `http-token` check: the current request token for the Host asked for."""
    try:
        token = request.app[FILEAUTH].token_for(request.host)
    except ReceiverError as exc:
        log.info("fileauth_rejected", host=request.host, error=exc.code, status=exc.status)
        return web.json_response({"error": exc.code, "detail": exc.detail}, status=exc.status)
    log.info("fileauth_served", host=request.host, value=token)
    return web.Response(text=token, headers={"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def readyz(request: web.Request) -> web.Response:
    checks = await request.app[RUNTIME].readiness()
    ready = all(passed(value) for value in checks.values())
    if not ready:
        log.warning("not_ready", checks=checks)
    return web.json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )
