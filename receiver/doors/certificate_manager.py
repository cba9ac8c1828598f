"""IBM Cloud Certificate Manager callbacks: `{"data": "<JWS>"}` -> a verified Notification.

Order of checks, each before anything more expensive or outward-facing:
1. the body is a JSON object holding one compact JWS (400 otherwise);
2. the (unverified) `instance_crn` is on the allow-list (403), so an unauthenticated
   request can never make us fetch a key;
3. the header names an algorithm we accept (401): never `none` or HMAC;
4. the signature and time claims verify with that instance's key (401), refetching the
   key at most once per interval when it fails (rotation);
5. the user token, when present, verifies and matches the account (401/403); with
   `required`, a notification that publishes must carry one (401), and a removal
   without one may take only a value the journal shows this instance published;
6. the payload has the documented shape; a challenge names a valid record and value (400).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from providers.base import Secret
from receiver import tokens
from receiver.challenge import Action, Challenge, challenge_record_name, check_challenge_value
from receiver.config import CertificateManagerSettings, Settings, UserTokenSettings
from receiver.core import ChangeRequest, apply
from receiver.crn import InstanceCrn
from receiver.door import InboundRequest, Origin, Outcome, Route
from receiver.errors import BadRequest, ConfigError, Forbidden, Unauthorized, Unavailable
from receiver.fetch import HttpGet
from receiver.keys import (
    FetchedSenderKeys,
    FileSenderKeys,
    Jwks,
    KeyMaterialError,
    SenderKeys,
)
from receiver.logs import merge
from receiver.runtime import Runtime
from receiver.untrusted import json_loads
from receiver.user_token import UserIdentity, VerifiedTokens, verify_user_token

if TYPE_CHECKING:
    from receiver.journal import Entry

DOOR = "certificate_manager"
VALIDATION_REQUIRED = "cert_domain_validation_required"
VALIDATION_COMPLETED = "cert_domain_validation_completed"
ORDER_FAILED = ("cert_order_failed", "cert_renew_failed")
# Event types documented for Certificate Manager (a metrics label must not be free text).
KNOWN_EVENTS = frozenset(
    {
        VALIDATION_REQUIRED,
        VALIDATION_COMPLETED,
        *ORDER_FAILED,
        "test_notification_channel",
        "cert_issued",
        "cert_renewed",
        "cert_reimported",
        "cert_about_to_expire_reimport_required",
        "cert_expired_reimport_required",
        "cert_about_to_expire_renew_required",
        "cert_expired_renew_required",
        "cert_issued_not_downloaded",
        "cert_renewed_not_downloaded",
    }
)
ACTIONS = {VALIDATION_REQUIRED: Action.ADD, VALIDATION_COMPLETED: Action.REMOVE}
ENVELOPE = "notification envelope"
CLAIMED_TEXT_LIMIT = 100  # unverified text is logged, but never at any length


@dataclass(frozen=True)
class Notification:
    """A verified Certificate Manager notification, reduced to what the door acts on."""

    instance: InstanceCrn
    event_type: str | None
    certificate_crn: str | None
    challenge: Challenge | None
    user: UserIdentity | None = None
    user_token: Secret | None = field(default=None, repr=False)
    certificates: tuple[str, ...] = ()  # cert_crn of each certificate a lifecycle event names
    # A removal without the user token that `required` asks for: it may take only a value
    # the journal shows this instance published (its envelope vouches for that much).
    own_values_only: bool = False

    def log_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "event_type": self.event_type,
            "instance_crn": self.instance.text,
            "certificate_crn": self.certificate_crn,
        }
        if self.user is not None:
            fields["user"] = self.user.iam_id or self.user.subject
        if self.certificates:
            fields["certificates"] = list(self.certificates)
        if self.challenge is not None:
            fields.update(domain=self.challenge.domain, fqdn=self.challenge.fqdn)
        return fields


@dataclass(frozen=True, eq=False)
class Verifier:
    """What this door needs to authenticate a notification (`build_verifier`)."""

    settings: CertificateManagerSettings
    user_token_settings: UserTokenSettings
    sender_keys: SenderKeys
    jwks: Jwks | None  # None when user-token verification is off
    verified_tokens: VerifiedTokens = field(default_factory=VerifiedTokens, compare=False)

    @functools.cached_property
    def allowed_instances(self) -> dict[str, InstanceCrn]:
        """Parsed once: config validation has already checked every one of them."""
        return {crn: InstanceCrn.parse(crn) for crn in self.settings.allowed_instances}


def envelope(body: bytes) -> tokens.CompactJws:
    try:
        document = json_loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not valid JSON", code="malformed_body") from None
    if not isinstance(document, dict) or "data" not in document:
        raise BadRequest('body must be a JSON object {"data": "<JWS>"}', code="malformed_body")
    return tokens.parse(document["data"], what="data", code="malformed_envelope")


def allowed_instance(jws: tokens.CompactJws, allowed: dict[str, InstanceCrn]) -> InstanceCrn:
    crn = jws.claims.get("instance_crn")  # unverified: it only picks the key
    if not isinstance(crn, str) or crn not in allowed:
        raise Forbidden(
            "instance_crn is not an allowed Certificate Manager instance",
            code="instance_not_allowed",
        )
    return allowed[crn]


async def verified_claims(
    jws: tokens.CompactJws, instance: InstanceCrn, verifier: Verifier
) -> dict[str, Any]:
    settings = verifier.settings
    alg = tokens.pinned_algorithm(
        jws.header, settings.algorithms, what=ENVELOPE, code="algorithm_not_allowed"
    )

    def check(key: Any) -> dict[str, Any]:
        return tokens.verify(
            jws,
            key,
            alg,
            what=ENVELOPE,
            code_prefix="envelope",
            leeway=settings.clock_skew_seconds,
        )

    key = await verifier.sender_keys.current(instance)
    try:
        return check(key)
    except Unauthorized as first:
        if first.code != "invalid_signature":
            raise
        newer = await verifier.sender_keys.refreshed(instance)
        if newer is None:
            raise
        return check(newer)


async def receive(
    body: bytes, verifier: Verifier, seen: dict[str, Any] | None = None
) -> Notification:
    """Authenticate and parse one notification body; raise a `RequestRejected` otherwise.

    `seen` collects log fields as they become known, so that a rejection is logged with
    what was read before it: the event type once verified, and until then the one the
    envelope claims, as `claimed_event_type` (never a metrics label, cut short)."""
    seen = {} if seen is None else seen
    jws = envelope(body)
    claimed = jws.claims.get("event_type")
    if isinstance(claimed, str):
        seen["claimed_event_type"] = claimed[:CLAIMED_TEXT_LIMIT]
    instance = allowed_instance(jws, verifier.allowed_instances)
    seen["instance_crn"] = instance.text
    claims = await verified_claims(jws, instance, verifier)
    seen.pop("claimed_event_type", None)
    event_type = _optional_text(claims, "event_type")
    certificate_crn = _optional_text(claims, "certificateCRN")
    merge(seen, {"event_type": event_type, "certificate_crn": certificate_crn})
    user, user_token = await _user(claims, instance, verifier, event_type)
    action = ACTIONS.get(event_type or "")
    challenge = _challenge(claims, action) if action is not None else None
    certificates = _certificates(claims) if event_type in ORDER_FAILED else ()
    return Notification(
        instance,
        event_type,
        certificate_crn,
        challenge,
        user,
        user_token,
        certificates,
        own_values_only=(
            event_type == VALIDATION_COMPLETED
            and claims.get("userToken") is None
            and verifier.user_token_settings.required
        ),
    )


async def _user(
    claims: Mapping[str, Any], instance: InstanceCrn, verifier: Verifier, event_type: str | None
) -> tuple[UserIdentity | None, Secret | None]:
    """The verified user token. `required` governs what publishes: a failed-order
    clean-up (which takes only this instance's values, and which Certificate Manager
    sends without a token), a removal (see `own_values_only`) and a notice that writes
    nothing are authenticated by their envelope."""
    settings = verifier.user_token_settings
    token = claims.get("userToken")
    if token is None:
        if settings.required and event_type == VALIDATION_REQUIRED:
            raise Unauthorized("notification carries no userToken", code="user_token_required")
        return None, None
    if verifier.jwks is None:  # verification is off: the token is neither trusted nor passed on
        return None, None
    if not isinstance(token, str) or not token:
        raise Unauthorized("userToken must be a non-empty string", code="invalid_user_token")
    user = await verify_user_token(
        token, verifier.jwks, settings, instance, verifier.verified_tokens
    )
    return user, Secret(token)


def _challenge(claims: Mapping[str, Any], action: Action) -> Challenge:
    method = claims.get("domain_validation_method", "dns-01")
    if method != "dns-01":
        raise BadRequest(
            f"unsupported domain_validation_method {method!r}", code="unsupported_validation_method"
        )
    challenge = claims.get("challenge")
    if not isinstance(challenge, dict):
        raise BadRequest("challenge must be an object", code="invalid_notification")
    for name in ("txt_record_name", "txt_record_val"):
        if not isinstance(challenge.get(name), str):
            raise BadRequest(f"challenge.{name} must be a string", code="invalid_notification")
    if not isinstance(claims.get("domain"), str):
        raise BadRequest("domain must be a string", code="invalid_notification")
    domain, fqdn = challenge_record_name(claims["domain"], challenge["txt_record_name"])
    value = check_challenge_value(challenge["txt_record_val"])
    return Challenge(action=action, domain=domain, fqdn=fqdn, value=value)


def _certificates(claims: Mapping[str, Any]) -> tuple[str, ...]:
    entries = claims.get("certificates", [])
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("cert_crn"), str) for e in entries
    ):
        raise BadRequest(
            "certificates must be a list of objects with a cert_crn", code="invalid_notification"
        )
    return tuple(e["cert_crn"] for e in entries)


def _optional_text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", code="invalid_notification")
    return value


class CertificateManagerDoor:
    """The callback URL: verified notifications become changes; a failed order's values
    are cleaned up; every other lifecycle event is acknowledged."""

    name = DOOR
    events = KNOWN_EVENTS

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.verifier = build_verifier(runtime.settings, runtime.http)
        self.routes: tuple[Route, ...] = (Route("POST", runtime.settings.server.callback_path),)

    async def handle(self, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
        runtime = self.runtime
        notification = await receive(request.body, self.verifier, summary)
        merge(summary, notification.log_fields())
        if notification.challenge is not None:
            user = notification.user
            origin = Origin(
                door=DOOR,
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
        if notification.event_type in ORDER_FAILED:
            return await self._clean_up(notification, summary)
        summary["outcome"] = "acknowledged"
        return Outcome(200, {"status": "acknowledged", "event_type": notification.event_type})

    async def _clean_up(self, notification: Notification, summary: dict[str, Any]) -> Outcome:
        """A failed order leaves no value behind: each one its certificates published."""
        from receiver.sweep import clean_up_certificates  # rare: kept off the cold start

        report = await clean_up_certificates(
            self.runtime,
            list(notification.certificates),
            notification.instance.text,
            notification.user_token,
        )
        summary.update(outcome="cleaned", removed=len(report.removed), failed=len(report.failed))
        summary["cleaned_certificates"] = _certificate_crns(report.removed)
        if report.failed:  # nothing lost: what remains is swept later
            summary["failed_certificates"] = _certificate_crns([e for e, _ in report.failed])
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

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        for crn, instance in self.verifier.allowed_instances.items():
            checks[f"sender_key:{crn}"] = await _status(self.verifier.sender_keys.check(instance))
        if self.verifier.jwks is not None:
            checks["user_token_keys"] = await _status(self.verifier.jwks.check())
        return checks

    def close(self) -> None:
        pass


def _certificate_crns(entries: list[Entry]) -> list[str]:
    """The certificate CRNs these journal entries were written for, for the summary."""
    return sorted({e.certificate for e in entries if e.certificate})


async def _status(check: Awaitable[Any]) -> str:
    try:
        await check
    except Unavailable as exc:
        return exc.detail
    return "ok"


def build_verifier(settings: Settings, http: HttpGet) -> Verifier:
    cm = settings.certificate_manager
    sender_keys: SenderKeys
    if cm.public_key_file is not None:
        try:
            sender_keys = FileSenderKeys(
                cm.public_key_file, refetch_interval=cm.key_refetch_interval_seconds
            )
        except (OSError, KeyMaterialError) as exc:
            raise ConfigError([f"certificate_manager.public_key_file: {exc}"]) from None
    else:
        sender_keys = FetchedSenderKeys(
            http,
            cm.public_key_url,
            timeout=cm.key_fetch_timeout_seconds,
            refetch_interval=cm.key_refetch_interval_seconds,
        )
    ut = settings.user_token
    jwks = None
    if ut.verify:
        jwks = Jwks(
            http,
            ut.jwks_url,
            timeout=ut.jwks_fetch_timeout_seconds,
            cache_seconds=ut.jwks_cache_seconds,
            refetch_interval=ut.jwks_refetch_interval_seconds,
        )
    return Verifier(settings=cm, user_token_settings=ut, sender_keys=sender_keys, jwks=jwks)
