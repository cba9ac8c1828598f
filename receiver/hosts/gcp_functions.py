"""Google Cloud Functions (2nd gen) and Cloud Run functions, under functions-framework --asgi.

Deploy with the `main.py` in deploy/gcp: entry point `handler` for the receiver, and
`sweep` as a second function that Cloud Scheduler calls. The request is a starlette
Request served on the framework's (uvicorn's) event loop; the Runtime is opened on the
first request and kept for the instance's life. The write happens before the answer: an
instance gets no CPU once it has answered.
"""

from __future__ import annotations

import functions_framework.aio
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from receiver import core
from receiver.config import ServerSettings
from receiver.errors import ConfigError
from receiver.hosts.serverless import RuntimeHolder, request_id, serve, sweep_once

_holder = RuntimeHolder()
log = structlog.get_logger("receiver.gcp_functions")


@functions_framework.aio.http
async def handler(request: Request) -> Response:
    outcome = await serve(
        _holder,
        core.InboundRequest(
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await _body(request),
            request_id=request_id(
                request.headers.get("x-request-id"), request.headers.get("function-execution-id")
            ),
            remote=request.client.host if request.client else None,
            host=request.headers.get("host"),
            query={key: request.query_params[key] for key in request.query_params},
        ),
    )
    if outcome.text is not None:
        return PlainTextResponse(
            outcome.text, status_code=outcome.status, headers=dict(outcome.headers)
        )
    return JSONResponse(outcome.body, status_code=outcome.status, headers=dict(outcome.headers))


@functions_framework.aio.http
async def sweep(request: Request) -> JSONResponse:
    """Cloud Scheduler's call: remove stale values, as `dns-challenge-receiver sweep` does.

    Deploy it without unauthenticated access: the platform admits only callers allowed to
    invoke it (the scheduler's OIDC token), so nothing here reads the request."""
    try:
        counts = await sweep_once(_holder)
    except Exception as exc:  # a 5xx, so that the scheduler records it and retries
        if isinstance(exc, ConfigError):
            log.error("config_invalid", problems=exc.problems)
        else:
            log.exception("sweep_failed")
        return JSONResponse({"error": "sweep_failed"}, status_code=503)
    return JSONResponse(counts)


async def _body(request: Request) -> bytes:
    """At most one byte past the limit: enough for the core to answer 413, no more kept."""
    try:
        limit = (await _holder.get()).settings.server.max_body_bytes + 1
    except Exception:  # serve() reports it; read no more than the default limit meanwhile
        limit = ServerSettings().max_body_bytes + 1
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) >= limit:
            return bytes(body[:limit])
    return bytes(body)
