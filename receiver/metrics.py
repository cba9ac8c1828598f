"""What the core counts, as an interface with two implementations.

`PrometheusMetrics` (receiver/prometheus.py) backs the long-running server's `/metrics`.
Serverless doors and one-shot CLI commands get `Uncounted`: nobody scrapes them, and
importing prometheus-client would only add to every cold start.

Labels stay low-cardinality: door, event type (documented ones only), outcome, provider,
error code. Names and values are never labels (they would grow without bound and leak
what is being validated).
"""

from __future__ import annotations

from typing import Literal, Protocol

ProviderErrorKind = Literal["retry", "failure"]


class Metrics(Protocol):
    def count_request(self, door: str, event_type: str, outcome: str, seconds: float) -> None:
        """One answered request."""

    def count_error(self, code: str) -> None:
        """One error answer, by its code (`receiver.errors.CODES`: a bounded set)."""

    def provider_call(self, provider: str, result: str, seconds: float) -> None:
        """One attempt at a provider change (or batch); `result` is "ok" or an error code."""

    def provider_error(self, kind: ProviderErrorKind, provider: str, code: str) -> None:
        """A provider call retried, or a change given up on (answered 502/503)."""

    def propagation(self, outcome: str, seconds: float | None = None) -> None:
        """A propagation check: live (with its duration), timeout, lagging, error, skipped
        (no DNS to ask) or dropped (over `max_pending`)."""

    def propagation_pending(self, count: int) -> None:
        """Propagation checks pending now (background and waited for)."""

    def throttled(self, limit: str) -> None:
        """A request refused by a limit on unauthenticated work (`limit` names which)."""

    def password_checks_pending(self, count: int) -> None:
        """acme-dns password checks running or waiting now."""

    def render(self) -> bytes:
        """The exposition text for `GET /metrics`."""


class Uncounted:
    """Counts nothing: for doors that are never scraped."""

    def count_request(self, door: str, event_type: str, outcome: str, seconds: float) -> None:
        return None

    def count_error(self, code: str) -> None:
        return None

    def provider_call(self, provider: str, result: str, seconds: float) -> None:
        return None

    def provider_error(self, kind: ProviderErrorKind, provider: str, code: str) -> None:
        return None

    def propagation(self, outcome: str, seconds: float | None = None) -> None:
        return None

    def propagation_pending(self, count: int) -> None:
        return None

    def throttled(self, limit: str) -> None:
        return None

    def password_checks_pending(self, count: int) -> None:
        return None

    def render(self) -> bytes:
        return b""
