"""Retry-After, the one way every HTTP adapter reads it.

RFC 9110 §10.2.3 allows delay-seconds or an HTTP date. Providers send both (Cloudflare's
edge a date, its API seconds), so every adapter understands both, through this one helper.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable


def retry_after_seconds(header: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait, never negative; None when the header is absent or unreadable (the
    core then backs off on its own)."""
    if header is None or not header.strip():
        return None
    try:
        seconds = float(header)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an obsolete date form without a zone: HTTP dates are GMT
        return None
    return max(0.0, when.timestamp() - now())
