"""JWT checks shared by the sender envelope and the user token; pure functions.

PyJWT does the cryptography; this module pins what PyJWT is allowed to accept (one
configured asymmetric algorithm, never `none` or HMAC) and turns each failure into a
`receiver.errors` rejection with a stable code.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

import jwt

from receiver.errors import BadRequest, RequestRejected, Unauthorized

_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\Z")


def check_compact(
    token: object, *, what: str, code: str, error: type[RequestRejected] = BadRequest
) -> str:
    if not isinstance(token, str) or not _COMPACT_JWS.match(token):
        raise error(f"{what} is not a compact JWS (header.payload.signature)", code=code)
    return token


def unverified_header(
    token: str, *, what: str, code: str, error: type[RequestRejected] = BadRequest
) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise error(f"{what} has an unreadable header", code=code) from None
    return header


def unverified_claims(token: str, *, what: str, code: str) -> dict[str, Any]:
    """Claims before verification: only ever used to pick the key, never trusted."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise BadRequest(f"{what} has an unreadable payload", code=code) from None
    if not isinstance(claims, dict):
        raise BadRequest(f"{what} payload is not a JSON object", code=code)
    return claims


def pinned_algorithm(
    header: dict[str, Any], allowed: Collection[str], *, what: str, code: str
) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise Unauthorized(
            f"{what} uses algorithm {alg!r}; accepted: {', '.join(sorted(allowed))}", code=code
        )
    return alg


def verify(
    token: str,
    key: Any,
    algorithm: str,
    *,
    what: str,
    code_prefix: str,
    leeway: float,
    require: Collection[str] = (),
    issuer: str | None = None,
) -> dict[str, Any]:
    """Verify signature and time claims (`exp`, `nbf`, `iat` when present) with `leeway`."""
    options: Any = {"require": list(require), "verify_aud": False}
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[algorithm], options=options, leeway=leeway, issuer=issuer
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized(f"{what} has expired", code=f"{code_prefix}_expired") from None
    except jwt.ImmatureSignatureError:
        raise Unauthorized(
            f"{what} is not valid yet (check clocks)", code=f"{code_prefix}_not_yet_valid"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(
            f"{what} lacks the {exc.claim!r} claim", code=f"invalid_{code_prefix}"
        ) from None
    except jwt.InvalidIssuerError:
        raise Unauthorized(f"{what} has the wrong issuer", code=f"invalid_{code_prefix}") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized(
            f"{what} signature does not verify",
            code="invalid_signature" if code_prefix == "envelope" else f"invalid_{code_prefix}",
        ) from None
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        # Wrong key type for the algorithm, malformed claims, undecodable segments.
        raise Unauthorized(
            f"{what} is invalid ({type(exc).__name__})", code=f"invalid_{code_prefix}"
        ) from None
    return claims
