"""`handle(runtime, InboundRequest) -> Outcome`: the one call every host makes, and
`apply(runtime, ChangeRequest)`: the one path every door's changes take.

Framework-free on purpose: the aiohttp server, Lambda, Cloud Functions and the CLI all
translate their request into an `InboundRequest` and the `Outcome` back, and nothing
else. The core picks the door by path from `runtime.doors` and knows none by name.
Exactly one summary log event is emitted per request, here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import structlog

from providers.base import Secret
from receiver.challenge import Action, Challenge
from receiver.changes import apply_change
from receiver.config import ZoneSettings
from receiver.door import InboundRequest, Origin, Outcome
from receiver.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ReceiverError,
    RequestRejected,
    UnsupportedMediaType,
)
from receiver.logs import bind_request
from receiver.runtime import Runtime, passed

__all__ = ["ChangeRequest", "InboundRequest", "Outcome", "alive", "apply", "handle", "readiness"]

log = structlog.get_logger("receiver")
JSON_TYPES = ("application/json",)


async def handle(runtime: Runtime, request: InboundRequest) -> Outcome:
    bind_request(request.request_id)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "remote": request.remote,
    }
    try:
        outcome = await _route(runtime, request, summary)
    except ReceiverError as exc:
        summary.update(error=exc.code, reason=exc.internal or exc.detail)
        summary.setdefault("outcome", "rejected" if isinstance(exc, RequestRejected) else "failed")
        outcome = Outcome(exc.status, {"error": exc.code, "detail": exc.detail}, exc.headers())
    except Exception:
        summary["outcome"] = "error"
        log.exception("unhandled_error", request_id=request.request_id)
        outcome = Outcome(500, {"error": "internal_error", "detail": "unexpected error; see logs"})
    elapsed = time.perf_counter() - started
    summary.update(status=outcome.status, duration_ms=round(elapsed * 1000, 2))
    event_type = summary.get("event_type")
    known = event_type is None or event_type in runtime.doors.events
    runtime.metrics.count_request(
        summary.get("door", "none"),
        (event_type or "none") if known else "other",
        summary.get("outcome", "rejected"),
        elapsed,
    )
    if outcome.status >= 400:
        runtime.metrics.count_error(str(outcome.body.get("error")))
    level = log.info if outcome.status < 500 else log.error
    level("notification", **summary)
    return outcome


def alive() -> Outcome:
    """`GET /healthz`: the process answers. Needs nothing, not even a Runtime."""
    return Outcome(200, {"status": "alive"})


async def readiness(runtime: Runtime) -> Outcome:
    """`GET /readyz`: 200 when every check passed (state, each door's keys), else 503."""
    checks = await runtime.readiness()
    ready = all(passed(value) for value in checks.values())
    if not ready:
        log.warning("not_ready", checks=checks)
    return Outcome(
        200 if ready else 503, {"status": "ready" if ready else "not_ready", "checks": checks}
    )


async def _route(runtime: Runtime, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
    """Pick the door by path; a disabled door's paths do not exist."""
    found = runtime.doors.at(request.path)
    if found is None:
        raise NotFound(f"no endpoint at {request.path}")
    door, routes = found
    route = next((r for r in routes if r.method == request.method), None)
    if route is None:
        allowed = tuple(sorted({r.method for r in routes}))
        raise MethodNotAllowed(f"use {' or '.join(allowed)}", allow=allowed)
    summary["door"] = door.name
    if route.method == "POST":
        _check_body(runtime, request, any_content_type=route.any_content_type)
    return await door.handle(request, summary)


@dataclass(frozen=True)
class ChangeRequest:
    """What a door hands the core: add or remove one value at one name, for `origin`.

    `remover`: the sender a removal acts for, when it may not take another sender's
    values (checked against the journal before anything is touched). `own_values_only`:
    the journal must also show that `remover` published the value (a removal without the
    required user token). `wait_for_propagation`: answer only once the authoritative
    nameservers serve an added value."""

    challenge: Challenge
    origin: Origin
    request_id: str
    user_token: Secret | None = None
    remover: str | None = None
    own_values_only: bool = False
    wait_for_propagation: bool = False


async def apply(runtime: Runtime, change: ChangeRequest, summary: dict[str, Any]) -> Outcome:
    """Every door's write: policy, journal and provider, then propagation."""
    challenge, origin = change.challenge, change.origin
    route = runtime.policy.route(challenge)
    summary.update(zone=route.zone.name, provider=route.zone.provider, value=challenge.value)
    if route.delegated_from is not None:
        summary["record"] = route.fqdn
    written = challenge if route.fqdn == challenge.fqdn else replace(challenge, fqdn=route.fqdn)

    # A pending propagation check keeps the write for its rewrite: see `_Write`.
    user_token = change.user_token
    if not runtime.dispatcher.provider_for(route.zone).wants_user_token:
        user_token = None
    write = _Write(runtime, written, route.zone, origin, change.request_id, user_token)

    if challenge.action is Action.REMOVE and change.remover is not None:
        own = await write(origin.door, remover=change.remover, own_only=change.own_values_only)
        summary["publisher"] = "self" if own else "unknown"
    else:
        await write(origin.door)
    if challenge.action is Action.ADD:
        if change.wait_for_propagation:
            result = await runtime.propagation.wait(route.zone, written)
            summary["propagation_s"] = round(result.seconds, 2)
        elif runtime.long_running and runtime.settings.propagation.check:
            runtime.propagation.watch(route.zone, written, rewrite=write.again)
    status = "published" if challenge.action is Action.ADD else "removed"
    summary["outcome"] = status
    return Outcome(200, {"status": status, "fqdn": challenge.fqdn, "record": route.fqdn})


@dataclass(frozen=True, slots=True, eq=False)
class _Write:
    """One change's provider write, kept by a pending propagation check to write it once
    more. It keeps only what a write needs: the request's id, not the request (body and
    headers), and the user token only for an adapter that uses it. One small object, not
    closures: with `max_pending` checks pending, closures and their cells cost ~900 bytes
    each, this ~100."""

    runtime: Runtime
    challenge: Challenge
    zone: ZoneSettings
    origin: Origin
    request_id: str
    user_token: Secret | None

    async def __call__(
        self, door: str, *, remover: str | None = None, own_only: bool = False
    ) -> bool:
        origin = self.origin if door == self.origin.door else replace(self.origin, door=door)
        return await apply_change(
            self.runtime,
            self.challenge,
            self.zone,
            origin,
            request_id=self.request_id,
            user_token=self.user_token,
            remover=remover,
            own_only=own_only,
        )

    async def again(self) -> None:
        """The rewrite of a value still missing from a nameserver, journalled as such."""
        await self("propagation")


def _check_body(runtime: Runtime, request: InboundRequest, *, any_content_type: bool) -> None:
    if len(request.body) > runtime.settings.server.max_body_bytes:
        raise PayloadTooLarge(f"body exceeds {runtime.settings.server.max_body_bytes} bytes")
    if any_content_type:
        return
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES and not content_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
