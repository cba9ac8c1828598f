"""Prometheus metrics, in a registry owned by the Runtime (no process-global state).

Labels stay low-cardinality: door, outcome, provider, error code. Names and values are
never labels (they would grow without bound and leak what is being validated).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PROPAGATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    provider_retries: Counter
    provider_failures: Counter
    propagation: Counter
    propagation_seconds: Histogram

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            requests=Counter(
                "dcr_requests",
                "Requests handled, by door and outcome.",
                ["door", "outcome"],
                registry=registry,
            ),
            request_seconds=Histogram(
                "dcr_request_duration_seconds",
                "Time to answer a request.",
                ["door"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            provider_retries=Counter(
                "dcr_provider_retries",
                "Provider calls retried.",
                ["provider", "error"],
                registry=registry,
            ),
            provider_failures=Counter(
                "dcr_provider_failures",
                "Changes given up on (answered 502/503).",
                ["provider", "error"],
                registry=registry,
            ),
            propagation=Counter(
                "dcr_propagation_checks",
                "Propagation checks, by outcome (live, lagging, timeout).",
                ["outcome"],
                registry=registry,
            ),
            propagation_seconds=Histogram(
                "dcr_propagation_seconds",
                "Time until every nameserver served a value.",
                buckets=_PROPAGATION_BUCKETS,
                registry=registry,
            ),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
