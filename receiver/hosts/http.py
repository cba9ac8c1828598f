"""The aiohttp host: an app factory, its middlewares, health endpoints, and `serving`,
which runs the app as the long-running server with its connection limits.

The Runtime is entered in a cleanup context (torn down only if it opened) and kept
under a typed AppKey; handlers translate to and from `core.handle` and do nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from receiver import core, door
from receiver.config import Settings
from receiver.doors import serving_runtime
from receiver.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestRejected,
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
from receiver.runtime import Runtime
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
_STATUS_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "body_too_large",
}
# After an answer given before the body was read, aiohttp keeps reading (and dropping)
# it this long, so that the client sees the answer rather than a reset.
LINGER_SECONDS = 2.0

log = structlog.get_logger("receiver.hosts.http")


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
    door = settings.rfc2136_door
    if door is not None and door.enabled:  # after the local responder: it may share its socket
        app.cleanup_ctx.append(_rfc2136_context)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if settings.journal.enabled and slot.sweeps:
        app.cleanup_ctx.append(_sweep_context)
    sm = settings.secrets_manager
    if sm is not None and sm.enabled and slot.sweeps:  # one worker polls
        app.cleanup_ctx.append(_secrets_manager_context)
    # Everything else is a door's, or nobody's: the core routes it (`runtime.doors`).
    app.router.add_route("*", "/{path:.*}", notification)
    return app


async def _runtime_context(app: web.Application) -> AsyncIterator[None]:
    async with serving_runtime(app[SETTINGS], long_running=True) as runtime:
        await runtime.state.prepare()
        app[RUNTIME] = runtime
        yield


async def _local_dns_context(app: web.Application) -> AsyncIterator[None]:
    """The built-in responder: only in the long-running server, never on serverless hosts."""
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


async def _secrets_manager_context(app: web.Application) -> AsyncIterator[None]:
    """The Secrets Manager door's poll loop (`secrets-manager sync` is one pass of it)."""
    from receiver.doors.secrets_manager import SecretsManagerDoor

    door = app[RUNTIME].doors.named("secrets_manager")
    assert isinstance(door, SecretsManagerDoor)
    task = asyncio.create_task(door.run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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
    request_id = door.request_id(request.headers.get("X-Request-Id"))
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
            host=request.host,
            query={key: request.query[key] for key in request.query},
        ),
    )
    if outcome.text is not None:
        return web.Response(text=outcome.text, status=outcome.status, headers=outcome.headers)
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
    outcome = core.alive()
    return web.json_response(outcome.body, status=outcome.status)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def readyz(request: web.Request) -> web.Response:
    outcome = await core.readiness(request.app[RUNTIME])
    return web.json_response(outcome.body, status=outcome.status)
