"""JSON that comes from outside (request bodies, JWS segments, key documents).

`json.loads` raises `RecursionError`, not `ValueError`, when arrays or objects nest
deeper than the interpreter's recursion limit: 30,000 `[` fit in one request and would
slip past every `except ValueError` into a 500 with a traceback. Here any document
that does not decode is a `ValueError` (`UnicodeDecodeError` already is one).
"""

from __future__ import annotations

import json
from typing import Any


def json_loads(data: str | bytes) -> Any:
    """`json.loads`, with nesting too deep to decode reported as a `ValueError`."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nests too deeply") from None
