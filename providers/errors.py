"""The only exceptions an adapter may raise.

The dispatcher decides what to do from the type alone: final errors are reported,
retryable ones are retried with backoff (honouring `retry_after` when the provider
gave one). SDK exceptions must be translated into one of these inside the adapter.
"""

from __future__ import annotations

from typing import ClassVar


class ProviderError(Exception):
    """Base class; `provider` names the adapter so every message says who failed."""

    retryable: ClassVar[bool] = False

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.message = message


class ProviderAuthError(ProviderError):
    """Credentials are missing, wrong or lack a permission. Final."""


class ZoneNotFound(ProviderError):
    """The provider has no zone by that name (or the credentials cannot see it). Final."""


class ProviderRejected(ProviderError):
    """The provider refused the change itself (invalid input, quota). Final."""


class ProviderConflict(ProviderError):
    """Someone else changed the record set between our read and our write: re-read, retry."""

    retryable = True


class ProviderUnavailable(ProviderError):
    """5xx, timeout or connection failure: retry with backoff."""

    retryable = True


class ProviderRateLimited(ProviderError):
    """Throttled; `retry_after` seconds when the provider said how long to wait."""

    retryable = True

    def __init__(self, provider: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(provider, message)
        self.retry_after = retry_after
