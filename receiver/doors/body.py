"""The JSON-object request body every lego-style door (httpreq, acme-dns) takes."""

from __future__ import annotations

import json
from typing import Any

from receiver.errors import BadRequest


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; `BadRequest` (malformed_body) for anything else."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON", code="malformed_body") from None
    if not isinstance(message, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_body")
    return message
