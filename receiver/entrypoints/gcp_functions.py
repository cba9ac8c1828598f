"""Google Cloud Functions (2nd gen) and Cloud Run functions, under functions-framework --asgi.

Deploy with the `main.py` in deploy/gcp (entry point `handler`). The request is a
starlette Request served on the framework's (uvicorn's) event loop; the Runtime is opened
on the first request and kept for the instance's life. The write happens before the
answer: an instance gets no CPU once it has answered.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import JSONResponse

from receiver import core
from receiver.config import ServerSettings
from receiver.entrypoints.serverless import RuntimeHolder, request_id, serve

_holder = RuntimeHolder()


@functions_framework.aio.http
async def handler(request: Request) -> JSONResponse:
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
        ),
    )
    return JSONResponse(outcome.body, status_code=outcome.status, headers=dict(outcome.headers))


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
