"""The receiver's exceptions and the HTTP status each one means.

A `RequestRejected` is the caller's fault (4xx); a `ServiceFault` is ours or the
provider's (5xx). Every instance carries a stable machine `code` and a human `detail`,
which become the JSON error body `{"error": code, "detail": detail}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar


class ReceiverError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self, detail: str, *, code: str | None = None, internal: str | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        # Logged, never sent: provider messages may name accounts, ARNs or hosts.
        self.internal = internal

    def headers(self) -> dict[str, str]:
        return {}


class RequestRejected(ReceiverError):
    """The request cannot be trusted or is malformed; nothing was written."""

    status = 400
    default_code = "bad_request"


class BadRequest(RequestRejected):
    pass


class Unauthorized(RequestRejected):
    status = 401
    default_code = "unauthorized"


class Forbidden(RequestRejected):
    status = 403
    default_code = "forbidden"


class NotFound(RequestRejected):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(RequestRejected):
    status = 405
    default_code = "method_not_allowed"

    def __init__(self, detail: str, *, allow: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)} if self.allow else {}  # RFC 9110 15.5.6


class PayloadTooLarge(RequestRejected):
    status = 413
    default_code = "body_too_large"


class UnsupportedMediaType(RequestRejected):
    status = 415
    default_code = "unsupported_media_type"


class TooManyRequests(RequestRejected):
    """This caller asked too often; it may try again after `retry_after` seconds."""

    status = 429
    default_code = "too_many_requests"

    def __init__(self, detail: str, *, retry_after: float, internal: str | None = None) -> None:
        super().__init__(detail, internal=internal)
        self.retry_after = max(1, math.ceil(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class DnsRefused(RequestRejected):
    """A DNS message answered with an RCODE other than NOERROR (the RFC 2136 door), and
    for a TSIG failure the TSIG error of RFC 8945; nothing was written. `detail` is the
    reason: logged, never sent (DNS answers carry no text)."""

    def __init__(self, rcode: int, reason: str, *, tsig_error: int = 0) -> None:
        super().__init__(reason, internal=reason)
        self.rcode = rcode
        self.tsig_error = tsig_error


class ServiceFault(ReceiverError):
    """Our fault or the provider's; the caller may try again later."""


class UpstreamFailed(ServiceFault):
    """The DNS provider refused for a reason retrying will not fix (credentials, zone)."""

    status = 502
    default_code = "provider_failed"


class Unavailable(ServiceFault):
    """Transient: the provider or a key endpoint did not answer in time."""

    status = 503
    default_code = "unavailable"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        internal: str | None = None,
        retry_after: float = 5,
    ) -> None:
        super().__init__(detail, code=code, internal=internal)
        self.retry_after = max(1, round(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class StateUnavailable(Unavailable):
    """The shared database (`[state]`) cannot be used now. Callers get a 503 that names
    no detail; `reason` (logged, printed by commands) says why and never holds the URL."""

    default_code = "state_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__("the receiver's database is unavailable; try again later", internal=reason)
        self.reason = reason


class StateMisconfigured(StateUnavailable):
    """Reachable but unusable until the configuration or the database changes (wrong
    password, unknown database, TLS mismatch, a schema newer than this code)."""


class PropagationTimeout(ServiceFault):
    """Waiting for propagation was asked for, and some nameservers still lack the value."""

    status = 504
    default_code = "propagation_timeout"

    def __init__(self, detail: str, *, missing: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.missing = missing


class ConfigError(Exception):
    """Configuration is unusable; lists every problem at once, each naming its key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


class InvalidName(BadRequest):
    """A domain or record name that is not a valid DNS name."""

    default_code = "invalid_name"


@dataclass(frozen=True)
class ErrorCode:
    """One `error` value a caller can receive: the docs' error table is generated from
    `CODES`, and a test keeps it equal to the codes the code raises."""

    code: str
    status: int
    meaning: str


CODES: tuple[ErrorCode, ...] = (
    # 400: the request is malformed.
    ErrorCode(
        "malformed_body", 400, "The body is not a JSON object, or the connection closed mid-body."
    ),
    ErrorCode("malformed_envelope", 400, "`data` is not a compact JWS."),
    ErrorCode(
        "invalid_notification", 400, "The notification's payload lacks the documented shape."
    ),
    ErrorCode(
        "invalid_name",
        400,
        "A domain that is not a valid DNS name, or too long for its challenge name.",
    ),
    ErrorCode(
        "invalid_record_name", 400, "The record name is not the challenge name of the domain."
    ),
    ErrorCode(
        "invalid_value",
        400,
        "The value is not a 43-character base64url digest (httpreq: keyAuth does not match).",
    ),
    ErrorCode(
        "unsupported_validation_method", 400, "A `domain_validation_method` other than DNS-01."
    ),
    ErrorCode(
        "invalid_request", 400, "httpreq: neither {fqdn, value} nor RAW {domain, token, keyAuth}."
    ),
    ErrorCode(
        "invalid_timestamp",
        400,
        "`digicert token --timestamp`: not yyyyMMddHHmmss (the command line only).",
    ),
    ErrorCode(
        "malformed_json_payload",
        400,
        "acme-dns: not JSON, not an object, or a field of the wrong type.",
    ),
    ErrorCode(
        "invalid_allowfrom_cidr", 400, "acme-dns: an `allowfrom` entry that is not a network."
    ),
    ErrorCode("bad_subdomain", 400, "acme-dns: `subdomain` is not the account's subdomain."),
    ErrorCode("bad_txt", 400, "acme-dns: `txt` is not 43 base64url characters."),
    ErrorCode(
        "bad_request",
        400,
        "Any other malformed request (a non-HTTP Lambda event, bad `GET /journal` parameters).",
    ),
    # 401: it is not authentic.
    ErrorCode("algorithm_not_allowed", 401, "The JWS names an algorithm outside `algorithms`."),
    ErrorCode(
        "invalid_signature",
        401,
        "The envelope's signature does not verify with the instance's key.",
    ),
    ErrorCode(
        "invalid_envelope",
        401,
        "A critical header extension, or a time claim that is not a finite number.",
    ),
    ErrorCode(
        "envelope_expired", 401, "The envelope's `exp` has passed (beyond `clock_skew_seconds`)."
    ),
    ErrorCode(
        "envelope_not_yet_valid",
        401,
        "The envelope's `nbf` or `iat` is in the future: check clocks.",
    ),
    ErrorCode(
        "invalid_user_token",
        401,
        "The userToken does not verify, lacks a claim, or has the wrong issuer.",
    ),
    ErrorCode("user_token_expired", 401, "The userToken's `exp` has passed."),
    ErrorCode("user_token_not_yet_valid", 401, "The userToken is not valid yet: check clocks."),
    ErrorCode(
        "user_token_required",
        401,
        "A token is required (`user_token.required`, or a removal the journal cannot attribute).",
    ),
    ErrorCode("credentials_required", 401, "httpreq: no HTTP basic credentials."),
    ErrorCode("invalid_credentials", 401, "httpreq: wrong or malformed basic credentials."),
    ErrorCode(
        "forbidden",
        401,
        "acme-dns: any failed authentication, one answer for all (the reason is logged).",
    ),
    ErrorCode("unauthorized", 401, "`GET /journal` without the admin Bearer token."),
    # 403: authentic, but not allowed.
    ErrorCode("instance_not_allowed", 403, "The sending instance is not in `allowed_instances`."),
    ErrorCode(
        "account_mismatch",
        403,
        "The userToken's account is neither the instance's nor in `allowed_accounts`.",
    ),
    ErrorCode(
        "zone_not_allowed", 403, "The name is in no configured zone (or is delegated twice)."
    ),
    ErrorCode(
        "not_publisher",
        403,
        "A removal of a value that the journal shows another instance published.",
    ),
    ErrorCode(
        "account_limit_reached", 403, "acme-dns `/register` when `max_accounts` accounts exist."
    ),
    # 404, 405, 408, 413, 415: wrong path, host, method, pace, size or type.
    ErrorCode("not_found", 404, "No such path (a door that is off has no paths)."),
    ErrorCode("unknown_host", 404, "DigiCert fileauth: no token is served for the request's Host."),
    ErrorCode("method_not_allowed", 405, "The path exists, the method does not."),
    ErrorCode("request_timeout", 408, "The body took longer than `server.body_timeout_seconds`."),
    ErrorCode(
        "body_too_large",
        413,
        "The body (or its declared Content-Length) exceeds `server.max_body_bytes`.",
    ),
    ErrorCode("unsupported_media_type", 415, "A Content-Type other than application/json."),
    # 429: too often.
    ErrorCode(
        "too_many_requests", 429, "acme-dns `/register` over the per-address rate; see Retry-After."
    ),
    # 500: a bug or a broken deployment.
    ErrorCode("internal_error", 500, "A bug; the log line has the traceback."),
    ErrorCode("csr_unreadable", 500, "DigiCert fileauth: the host's CSR file cannot be read."),
    # 502: the DNS provider refused, and retrying will not help.
    ErrorCode(
        "provider_auth_failed",
        502,
        "The provider refused the credentials (or, for CIS, there is no user token).",
    ),
    ErrorCode(
        "provider_zone_not_found",
        502,
        "The provider has no such zone, or the credentials cannot see it.",
    ),
    ErrorCode(
        "provider_rejected",
        502,
        "The provider refused the change itself (a TTL, an ambiguous zone name).",
    ),
    ErrorCode("provider_failed", 502, "Any other final provider error."),
    # 502, logged by the Secrets Manager door's passes (no caller receives them).
    ErrorCode(
        "iam_unavailable", 502, "IBM Cloud IAM did not answer, or the CR token is unreadable."
    ),
    ErrorCode("iam_refused", 502, "IBM Cloud IAM refused the API key or the trusted profile."),
    ErrorCode("secrets_manager_bad", 502, "Secrets Manager answered with an unusable document."),
    ErrorCode("secrets_manager_failed", 502, "Secrets Manager refused a call, or kept failing."),
    ErrorCode("secret_not_found", 502, "The secret is gone from Secrets Manager (404)."),
    # 503 (with Retry-After): transient.
    ErrorCode(
        "provider_unavailable",
        503,
        "The provider did not answer, or answered 5xx, until the deadline.",
    ),
    ErrorCode("provider_rate_limited", 503, "The provider throttled until the deadline."),
    ErrorCode(
        "provider_conflict",
        503,
        "Concurrent writers kept changing the record set until the deadline.",
    ),
    ErrorCode(
        "provider_timeout", 503, "`dispatch.deadline_seconds` ran out before the provider answered."
    ),
    ErrorCode("sender_key_unavailable", 503, "The sender's public key could not be fetched."),
    ErrorCode("jwks_unavailable", 503, "IAM's keys (JWKS) could not be fetched."),
    ErrorCode(
        "journal_unavailable",
        503,
        "The journal could not record the intent, so nothing was written.",
    ),
    ErrorCode("state_unavailable", 503, "The `[state]` database cannot be used now."),
    ErrorCode("busy", 503, "acme-dns password checks queued past `max_pending_password_checks`."),
    ErrorCode(
        "not_configured",
        503,
        "Serverless: the configuration could not be loaded (logged); the next call tries again.",
    ),
    ErrorCode("sweep_failed", 503, "Serverless sweep function: the sweep could not run (logged)."),
    ErrorCode("unavailable", 503, "Any other transient failure."),
    # 504: only with wait_for_propagation.
    ErrorCode(
        "propagation_timeout",
        504,
        "Some authoritative nameservers did not serve the value in time; `detail` names them.",
    ),
)
