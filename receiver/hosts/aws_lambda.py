"""AWS Lambda: `handler(event, context)` for API Gateway (REST payload 1.0, HTTP API 1.0
and 2.0) and Lambda Function URL events.

Deploy with handler `receiver.hosts.aws_lambda.handler`. One event loop and one
Runtime per container, both created on the first invocation and reused by the next ones
(Lambda runs one invocation at a time per container). The write happens before the
answer: a frozen container does no background work.

Python's garbage collector sits out the cold start. Up to its first answer a container
only builds what it keeps: modules, classes, the Runtime, ~48,000 objects of which ~0.1 MB
is garbage, and the collector would walk them some fifty times on the way (~7 ms of a
~120 ms cold start, bench/cold_start.py). So it is paused below, before anything else is
imported, when the runtime client (which sets AWS_LAMBDA_RUNTIME_API) imports this module;
the first invocation freezes what start-up built out of its way and resumes it. A test or
a tool that imports the module keeps its collector. The long-running server settles its
heap with a collection instead (`cli.settle_heap`): its start is on nobody's request.
"""

from __future__ import annotations

import gc
import os

COLLECTOR_PAUSED = "AWS_LAMBDA_RUNTIME_API" in os.environ and gc.isenabled()
if COLLECTOR_PAUSED:
    gc.disable()

# isort: split
import asyncio
import base64
import binascii
import json
import signal
import sys
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from receiver import core
from receiver.hosts.serverless import RuntimeHolder, request_id, serve, sweep_once

T = TypeVar("T")


class _Container:
    """What outlives an invocation: the event loop and the Runtime bound to it."""

    def __init__(self, *, collector_paused: bool = False) -> None:
        self.runner: asyncio.Runner | None = None
        self.holder = RuntimeHolder()
        self.collector_paused = collector_paused  # until the first invocation has answered

    def run(self, request: core.InboundRequest) -> core.Outcome:
        return self._invoke(serve(self.holder, request))

    def sweep(self) -> dict[str, int]:
        return self._invoke(sweep_once(self.holder))

    def _invoke(self, work: Coroutine[Any, Any, T]) -> T:
        try:
            return self._runner().run(work)
        finally:
            self.cold_start_over()

    def cold_start_over(self) -> None:
        """After an invocation: the collector, paused since import, runs from now on,
        clear of what start-up built."""
        if self.collector_paused:
            self.collector_paused = False
            gc.freeze()
            gc.enable()

    def _runner(self) -> asyncio.Runner:
        if self.runner is None:
            self.runner = asyncio.Runner()
            _close_on_sigterm(self)
        return self.runner

    def close(self) -> None:
        """Close the Runtime (and with it a database pool) on the loop it was opened on."""
        if self.runner is not None:
            self.runner.run(self.holder.aclose())
            self.runner.close()
            self.runner = None


_container = _Container(collector_paused=COLLECTOR_PAUSED)


def _close_on_sigterm(container: _Container) -> None:
    """Lambda sends SIGTERM before it ends an environment (when an extension is
    registered): close connections rather than leave them for the server to time out.

    The runtime client waits for the next invocation inside native code, where a Python
    signal handler would never run; so SIGTERM is blocked here, before any other thread
    exists (threads inherit the mask), and a watcher thread takes it with sigwait."""
    if threading.current_thread() is not threading.main_thread():
        return  # not under the runtime client (tests call the handler from threads)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def watch() -> None:
        signal.sigwait({signal.SIGTERM})
        container.close()  # between invocations: the loop is idle
        sys.stdout.flush()
        os._exit(0)

    threading.Thread(target=watch, name="sigterm", daemon=True).start()


class NotAnHttpEvent(ValueError):
    pass


def sweep_handler(event: Any, context: Any) -> dict[str, int]:
    """A scheduled event (EventBridge): remove stale values of ours, as `sweep` does."""
    return _container.sweep()


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    try:
        request = inbound_request(event, getattr(context, "aws_request_id", None))
    except NotAnHttpEvent as exc:
        _container.cold_start_over()  # a misrouted first event must not keep it paused
        return response(core.Outcome(400, {"error": "bad_request", "detail": str(exc)}))
    return response(_container.run(request))


def inbound_request(event: Mapping[str, Any], invocation_id: str | None) -> core.InboundRequest:
    if not isinstance(event, Mapping):
        raise NotAnHttpEvent("not an API Gateway or Function URL event")
    context = event.get("requestContext") or {}
    if event.get("version") == "2.0":  # HTTP API 2.0 and Function URLs
        http = context.get("http") or {}
        method, path = http.get("method"), event.get("rawPath") or http.get("path")
        remote = http.get("sourceIp")
        stage = context.get("stage")
        if stage and stage != "$default" and path and path.startswith(f"/{stage}/"):
            path = path[len(stage) + 1 :]  # a named HTTP API stage prefixes the raw path
        headers = _lower(event.get("headers"))
    else:  # REST API and HTTP API 1.0: `path` is the resource path, without the stage
        method, path = event.get("httpMethod"), event.get("path")
        remote = (context.get("identity") or {}).get("sourceIp")
        headers = _lower(event.get("headers"))
        multi = event.get("multiValueHeaders") or {}
        headers.update({k.lower(): ", ".join(map(str, v)) for k, v in multi.items() if v})
    if not isinstance(method, str) or not isinstance(path, str):
        raise NotAnHttpEvent("not an API Gateway or Function URL event")
    return core.InboundRequest(
        method=method.upper(),
        path=path,
        headers=headers,
        body=_body(event),
        request_id=request_id(headers.get("x-request-id"), context.get("requestId")),
        remote=remote,
        host=headers.get("host"),
        query=_query(event.get("queryStringParameters")),
    )


def _query(parameters: object) -> dict[str, str]:
    if not isinstance(parameters, Mapping):
        return {}
    return {str(k): str(v) for k, v in parameters.items() if isinstance(v, str)}


def _lower(headers: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items() if v is not None}


def _body(event: Mapping[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise NotAnHttpEvent("event body is not a string")
    if not event.get("isBase64Encoded"):
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        raise NotAnHttpEvent("isBase64Encoded is set but the body is not base64") from None


def response(outcome: core.Outcome) -> dict[str, Any]:
    """Valid for both payload formats (and Function URLs)."""
    if outcome.text is not None:
        content_type, body = "text/plain; charset=utf-8", outcome.text
    else:
        content_type, body = "application/json", json.dumps(outcome.body)
    return {
        "statusCode": outcome.status,
        "headers": {"Content-Type": content_type, **outcome.headers},
        "body": body,
        "isBase64Encoded": False,
    }
