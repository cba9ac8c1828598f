"""The receiver's exceptions and the HTTP status each one means.

A `RequestRejected` is the caller's fault (4xx); a `ServiceFault` is ours or the
provider's (5xx). Every instance carries a stable machine `code` and a human `detail`,
which become the JSON error body `{"error": code, "detail": detail}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
