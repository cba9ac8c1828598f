"""`handle(runtime, InboundRequest) -> Outcome`: the one call every door makes.

Framework-free on purpose: the aiohttp server, Lambda, Cloud Functions and the CLI all
translate their request into an `InboundRequest` and the `Outcome` back, and nothing
else. Exactly one summary log event is emitted per request, here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from providers.base import Secret
from receiver.challenge import Action, Challenge
from receiver.changes import apply_change, published_by
from receiver.doors import acme_dns, certificate_manager, httpreq
from receiver.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ReceiverError,
    RequestRejected,
    Unauthorized,
    UnsupportedMediaType,
)
from receiver.journal import Entry, Origin
from receiver.logs import bind_request, merge
from receiver.runtime import Runtime
from receiver.sweep import clean_up_certificates

log = structlog.get_logger("receiver")
JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class InboundRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    request_id: str
    remote: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


Door = Callable[[Runtime, "InboundRequest", dict[str, Any]], Awaitable[Outcome]]
DOOR_EVENTS = frozenset({"present", "cleanup", "register", "update"})


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
    door = summary.get("door", "none")
    event_type = summary.get("event_type")
    known = (
        event_type is None
        or event_type in certificate_manager.KNOWN_EVENTS
        or event_type in DOOR_EVENTS
    )
    runtime.metrics.count_request(
        door,
        (event_type or "none") if known else "other",
        summary.get("outcome", "rejected"),
        elapsed,
    )
    if outcome.status >= 400:
        runtime.metrics.count_error(str(outcome.body.get("error")))
    level = log.info if outcome.status < 500 else log.error
    level("notification", **summary)
    return outcome


async def _route(runtime: Runtime, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
    """Pick the door by path; a disabled door's paths do not exist."""
    settings = runtime.settings
    door: Door
    if request.path == settings.server.callback_path and settings.certificate_manager.enabled:
        door = _certificate_manager
    elif request.path in httpreq.PATHS and settings.httpreq.enabled:
        door = _httpreq
    elif request.path in acme_dns.PATHS and runtime.acme_dns is not None:
        door = _acme_dns
    else:
        raise NotFound(f"no endpoint at {request.path}")
    if request.method != "POST":
        raise MethodNotAllowed("use POST")
    # The acme-dns reference server reads JSON whatever the Content-Type says, and its
    # clients rely on that (acme.sh posts a form type, pyacmedns none).
    _check_body(runtime, request, any_content_type=door is _acme_dns)
    return await door(runtime, request, summary)


async def _certificate_manager(
    runtime: Runtime, request: InboundRequest, summary: dict[str, Any]
) -> Outcome:
    summary["door"] = certificate_manager.DOOR
    notification = await certificate_manager.receive(request.body, runtime.verifier, summary)
    merge(summary, notification.log_fields())
    if notification.challenge is not None:
        user = notification.user
        origin = Origin(
            door=certificate_manager.DOOR,
            sender=notification.instance.text,
            user=(user.iam_id or user.subject) if user else None,
            certificate=notification.certificate_crn,
            domain=notification.challenge.domain,
        )
        change = ChangeRequest(
            notification.challenge,
            origin,
            request.request_id,
            user_token=notification.user_token,
            remover=notification.instance.text,
            own_values_only=notification.own_values_only,
            wait_for_propagation=runtime.settings.certificate_manager.wait_for_propagation,
        )
        return await apply(runtime, change, summary)
    if notification.event_type in certificate_manager.ORDER_FAILED:
        report = await clean_up_certificates(
            runtime,
            list(notification.certificates),
            notification.instance.text,
            notification.user_token,
        )
        summary.update(outcome="cleaned", removed=len(report.removed), failed=len(report.failed))
        summary["cleaned_certificates"] = _certificates(report.removed)
        if report.failed:
            summary["failed_certificates"] = _certificates([e for e, _ in report.failed])
        if report.failed:  # nothing lost: what remains is swept later
            summary["outcome"] = "cleaned_partly"
        return Outcome(
            200,
            {
                "status": "cleaned",
                "event_type": notification.event_type,
                "removed": len(report.removed),
                "failed": len(report.failed),
            },
        )
    summary["outcome"] = "acknowledged"
    return Outcome(200, {"status": "acknowledged", "event_type": notification.event_type})


async def _httpreq(runtime: Runtime, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
    summary.update(door=httpreq.DOOR, event_type=request.path.lstrip("/"))
    received = httpreq.receive(
        runtime.settings.httpreq, request.path, request.headers, request.body
    )
    challenge = received.challenge
    summary.update(user=received.user, mode=received.mode, domain=challenge.domain)
    summary["fqdn"] = challenge.fqdn
    origin = Origin(httpreq.DOOR, sender=received.user, domain=challenge.domain)
    return await apply(runtime, ChangeRequest(challenge, origin, request.request_id), summary)


async def _acme_dns(runtime: Runtime, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
    door = runtime.acme_dns
    assert door is not None
    summary.update(door=acme_dns.DOOR, event_type=request.path.lstrip("/"))
    if request.path == "/register":
        registration = await door.register(request.body, request.remote)
        summary.update(
            outcome="registered", user=registration["username"], fqdn=registration["fulldomain"]
        )
        return Outcome(201, registration)
    update = await door.update(request.headers, request.body, request.remote)
    challenge = update.challenge
    summary.update(user=update.account.username, fqdn=challenge.fqdn, domain=challenge.domain)
    origin = Origin(acme_dns.DOOR, sender=update.account.username, domain=challenge.domain)
    await apply(runtime, ChangeRequest(challenge, origin, request.request_id), summary)
    # Like acme-dns, a subdomain keeps its two most recent values: the older ones go now.
    evicted = await door.store.keep_latest(update.account.subdomain, challenge.value)
    route = runtime.policy.route(challenge)
    for value in evicted:
        stale = dataclasses.replace(challenge, action=Action.REMOVE, value=value)
        runtime.propagation.forget(stale)
        try:
            await apply_change(runtime, stale, route.zone, origin, request_id=request.request_id)
        except ReceiverError as exc:  # journalled: the sweep removes it later
            summary["eviction_failed"] = exc.code
    summary["evicted"] = len(evicted)
    return Outcome(200, {"txt": challenge.value})


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
    written = (
        challenge
        if route.fqdn == challenge.fqdn
        else dataclasses.replace(challenge, fqdn=route.fqdn)
    )

    # A pending propagation check keeps `write` for its rewrite, so `write` keeps only what
    # a write needs: the request's id, not the request (body and headers), and the user
    # token only for an adapter that uses it (the dispatcher drops it for the others).
    request_id = change.request_id
    user_token = change.user_token
    if not runtime.dispatcher.provider_for(route.zone).wants_user_token:
        user_token = None

    async def write(door: str = origin.door) -> None:
        await apply_change(
            runtime,
            written,
            route.zone,
            origin if door == origin.door else dataclasses.replace(origin, door=door),
            request_id=request_id,
            user_token=user_token,
        )

    if challenge.action is Action.REMOVE and change.remover is not None:
        own = await published_by(runtime, written, route.zone, change.remover)
        summary["publisher"] = "self" if own else "unknown"
        if change.own_values_only and not own:
            raise Unauthorized(
                "notification carries no userToken, and the journal does not show that"
                " this instance published the value",
                code="user_token_required",
            )
    if challenge.action is Action.REMOVE:
        runtime.propagation.forget(written)  # before the removal: never rewrite it later
    await write()
    if challenge.action is Action.ADD:
        if change.wait_for_propagation:
            result = await runtime.propagation.wait(route.zone, written)
            summary["propagation_s"] = round(result.seconds, 2)
        elif runtime.long_running and runtime.settings.propagation.check:
            runtime.propagation.watch(route.zone, written, rewrite=lambda: write("propagation"))
    status = "published" if challenge.action is Action.ADD else "removed"
    summary["outcome"] = status
    return Outcome(200, {"status": status, "fqdn": challenge.fqdn, "record": route.fqdn})


def _certificates(entries: list[Entry]) -> list[str]:
    """The certificate CRNs these journal entries were written for, for the summary."""
    return sorted({e.certificate for e in entries if e.certificate})


def _check_body(runtime: Runtime, request: InboundRequest, *, any_content_type: bool) -> None:
    if len(request.body) > runtime.settings.server.max_body_bytes:
        raise PayloadTooLarge(f"body exceeds {runtime.settings.server.max_body_bytes} bytes")
    if any_content_type:
        return
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES and not content_type.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
