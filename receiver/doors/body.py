"""JSON request bodies for the lego-style doors (httpreq, acme-dns)."""

from __future__ import annotations

import json
from typing import Any

from receiver.errors import BadRequest


def json_value(body: bytes, *, code: str = "malformed_body", **options: Any) -> Any:
    """The body's one JSON value; `BadRequest` for anything that is not JSON.

    Nesting deep enough to exhaust the parser's recursion is malformed input too, not
    our fault: it must never become a 500.
    """
    try:
        return json.loads(body, **options)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body is not JSON", code=code) from None


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; `BadRequest` (malformed_body) for anything else."""
    message = json_value(body)
    if not isinstance(message, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_body")
    return message
