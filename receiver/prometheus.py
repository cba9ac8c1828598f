"""Prometheus metrics for the long-running server, in a registry owned by the Runtime
(no process-global state). Implements `receiver.metrics.Metrics`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from receiver.metrics import ProviderErrorKind

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PROPAGATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class PrometheusMetrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    errors: Counter
    provider_seconds: Histogram
    provider_retries: Counter
    provider_failures: Counter
    propagation_checks: Counter
    propagation_seconds: Histogram
    pending_propagation_checks: Gauge
    throttles: Counter
    pending_password_checks: Gauge
    _children: dict[tuple[str, ...], Any] = field(default_factory=dict, compare=False)
    _call_children: dict[tuple[str, str], Any] = field(default_factory=dict, compare=False)

    def count_request(self, door: str, event_type: str, outcome: str, seconds: float) -> None:
        """Per request: label lookups cached (they cost more than the increments)."""
        key = (door, event_type, outcome)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(door, event_type, outcome),
                self.request_seconds.labels(door),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def provider_call(self, provider: str, result: str, seconds: float) -> None:
        """Per provider call: the label lookup cached, as for requests."""
        child = self._call_children.get((provider, result))
        if child is None:
            child = self.provider_seconds.labels(provider, result)
            self._call_children[(provider, result)] = child
        child.observe(seconds)

    def provider_error(self, kind: ProviderErrorKind, provider: str, code: str) -> None:
        counter = self.provider_retries if kind == "retry" else self.provider_failures
        counter.labels(provider, code).inc()

    def propagation(self, outcome: str, seconds: float | None = None) -> None:
        self.propagation_checks.labels(outcome).inc()
        if seconds is not None:
            self.propagation_seconds.observe(seconds)

    def propagation_pending(self, count: int) -> None:
        self.pending_propagation_checks.set(count)

    def throttled(self, limit: str) -> None:
        self.throttles.labels(limit).inc()

    def password_checks_pending(self, count: int) -> None:
        self.pending_password_checks.set(count)

    @classmethod
    def create(cls) -> PrometheusMetrics:
        registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, text: str, labels: list[str]) -> Counter:
            return Counter(name, text, labels, registry=registry)

        def histogram(
            name: str, text: str, labels: list[str], buckets: tuple[float, ...]
        ) -> Histogram:
            return Histogram(name, text, labels, buckets=buckets, registry=registry)

        return cls(
            registry=registry,
            requests=counter(
                "dcr_requests",
                "Requests handled, by door, event type and outcome.",
                ["door", "event_type", "outcome"],
            ),
            request_seconds=histogram(
                "dcr_request_duration_seconds",
                "Time to answer a request.",
                ["door"],
                _LATENCY_BUCKETS,
            ),
            errors=counter(
                "dcr_errors",
                "Error answers by error code (the HTTP API's `error`), 4xx and 5xx.",
                ["error"],
            ),
            provider_seconds=histogram(
                "dcr_provider_call_duration_seconds",
                "One attempt at a provider change (or batch).",
                ["provider", "result"],
                _LATENCY_BUCKETS,
            ),
            provider_retries=counter(
                "dcr_provider_retries", "Provider calls retried.", ["provider", "error"]
            ),
            provider_failures=counter(
                "dcr_provider_failures",
                "Changes given up on (answered 502/503).",
                ["provider", "error"],
            ),
            propagation_checks=counter(
                "dcr_propagation_checks",
                "Propagation checks by outcome: live, timeout, lagging, error, skipped, dropped.",
                ["outcome"],
            ),
            propagation_seconds=histogram(
                "dcr_propagation_seconds",
                "Time until every nameserver served a value.",
                [],
                _PROPAGATION_BUCKETS,
            ),
            pending_propagation_checks=Gauge(
                "dcr_propagation_checks_pending",
                "Propagation checks pending (background and waited for).",
                registry=registry,
            ),
            throttles=counter(
                "dcr_throttled",
                "Requests refused by a limit on unauthenticated work, by limit.",
                ["limit"],
            ),
            pending_password_checks=Gauge(
                "dcr_acme_dns_password_checks_pending",
                "acme-dns password checks running or waiting.",
                registry=registry,
            ),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
