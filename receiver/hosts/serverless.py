"""What every serverless shim shares: the container's Runtime, health paths, request ids.

A function container serves many invocations, one after another, on one event loop. The
Runtime (key caches, adapters, budgets) is opened on the first invocation and kept for
the container's life: a cached composition root, not business state. Key documents are
fetched with the standard library (`StdlibGet`), so no serverless path imports aiohttp.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from contextlib import AsyncExitStack

import structlog

from receiver import config, core, door, logs
from receiver.doors import serving_runtime
from receiver.errors import ConfigError
from receiver.fetch import StdlibGet
from receiver.runtime import Runtime

log = structlog.get_logger("receiver.serverless")


def load_settings() -> config.Settings:
    """The TOML named by DNS_CHALLENGE_RECEIVER_CONFIG (secrets come from the environment)."""
    settings = config.load_file(config.config_path(None, os.environ))
    logs.configure(settings.log)
    return settings


class RuntimeHolder:
    """Opens the Runtime on first use and keeps it; concurrent first calls open it once."""

    def __init__(self) -> None:
        self._runtime: Runtime | None = None
        self._stack: AsyncExitStack | None = None
        self._lock: asyncio.Lock | None = None

    async def get(self) -> Runtime:
        if self._runtime is not None:
            return self._runtime
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._runtime is None:
                settings = load_settings()
                stack = AsyncExitStack()
                # Serverless: answer only after the write; never work on after answering.
                self._runtime = await stack.enter_async_context(
                    serving_runtime(settings, long_running=False, http=StdlibGet())
                )
                self._stack = stack
        return self._runtime

    async def aclose(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._runtime = self._stack = None


request_id = door.request_id  # the caller's X-Request-Id if safe, else the platform's


async def serve(holder: RuntimeHolder, request: core.InboundRequest) -> core.Outcome:
    """Health paths answered here, everything else by the core; never raises."""
    if request.path == "/healthz" and request.method == "GET":
        outcome = core.alive()
    else:
        try:
            runtime = await holder.get()
        except Exception as exc:  # reported, and tried again on the next invocation
            if isinstance(exc, ConfigError):
                log.error("config_invalid", problems=exc.problems)
            else:
                log.exception("runtime_unavailable")
            outcome = core.Outcome(
                503, {"error": "not_configured", "detail": "the receiver could not start"}
            )
        else:
            if request.path == "/readyz" and request.method == "GET":
                outcome = await core.readiness(runtime)
            else:
                outcome = await core.handle(runtime, request)
    return dataclasses.replace(
        outcome, headers={**outcome.headers, "X-Request-Id": request.request_id}
    )


async def sweep_once(holder: RuntimeHolder) -> dict[str, int]:
    """A scheduled invocation's sweep (EventBridge, Cloud Scheduler): the long-running
    server sweeps on a timer of its own; a function must be called to."""
    from receiver.sweep import sweep

    report = await sweep(await holder.get())
    counts = report.as_dict()
    log.info("sweep", **counts)
    return counts
