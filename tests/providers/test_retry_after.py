"""The one Retry-After reader every HTTP adapter uses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from providers.retry_after import retry_after_seconds

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def at(offset: float) -> str:
    return format_datetime(NOW + timedelta(seconds=offset), usegmt=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("12", 12.0),
        ("0", 0.0),
        ("0.5", 0.5),
        (" 7 ", 7.0),
        ("-3", 0.0),  # never a negative wait
        (at(30), 30.0),  # an HTTP date (IMF-fixdate)
        ("Thursday, 01-Jan-26 00:00:45 GMT", 45.0),  # the obsolete RFC 850 form
        (at(-60), 0.0),  # a date in the past: now
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("1 Jan 2026 00:00:30 -0000", None),  # no time zone: not an HTTP date
    ],
)
def test_seconds_and_http_dates(header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(header, now=NOW.timestamp) == expected
