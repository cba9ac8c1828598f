"""Compact JWS parsing and claim checks shared by the sender envelope and the user token.

PyJWT does the cryptography (its algorithm objects verify signatures, its `PyJWK` reads
JWKS keys). The compact form is parsed here, once per token: PyJWT 2.15 re-parses a token
for every call and checks each character in a Python loop (about 150 us per call for an
envelope that carries a user token, against 27 us for the RSA check itself), and a
notification needs the header, then the claims, then the verified claims. Parsing is
strict: the base64url alphabet, canonical encoding without padding, JSON objects only.
Only one configured asymmetric algorithm is ever accepted; `none` and HMAC never are,
and neither is a token that marks a header extension critical (`crit`).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import InvalidKeyError

from receiver.errors import BadRequest, RequestRejected, Unauthorized
from receiver.untrusted import json_loads

_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\Z")


@dataclass(frozen=True)
class CompactJws:
    """A JWS split and decoded once: PyJWT only verifies it (its own parse was slow)."""

    header: dict[str, Any]
    claims: dict[str, Any]  # not to be trusted before `verify`
    signing_input: bytes
    signature: bytes


def parse(
    token: object, *, what: str, code: str, error: type[RequestRejected] = BadRequest
) -> CompactJws:
    """Split and decode a compact JWS; raise `error` for anything malformed."""
    match = _COMPACT_JWS.match(token) if isinstance(token, str) else None
    if match is None:
        raise error(f"{what} is not a compact JWS (header.payload.signature)", code=code)
    header_b64, claims_b64, signature_b64 = match.groups()
    try:
        header = json_loads(_b64decode(header_b64))
        claims = json_loads(_b64decode(claims_b64))
        signature = _b64decode(signature_b64)
    except (ValueError, UnicodeDecodeError):
        raise error(f"{what} is not valid base64url JSON", code=code) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise error(f"{what} header and payload must be JSON objects", code=code)
    signing_input = f"{header_b64}.{claims_b64}".encode("ascii")
    return CompactJws(header, claims, signing_input, signature)


# In a canonical encoding the bits after the data in the last character are zero: with
# 2 leftover characters (1 byte) that leaves 4 data bits, with 3 (2 bytes) 2 data bits.
_LAST = {2: frozenset("AQgw"), 3: frozenset("AEIMQUYcgkosw048")}


def _b64decode(segment: str) -> bytes:
    """Canonical unpadded base64url only (the alphabet is checked by the pattern)."""
    leftover = len(segment) % 4
    if leftover == 1:
        raise ValueError("impossible base64 length")
    if leftover and segment[-1] not in _LAST[leftover]:
        raise ValueError("non-canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


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
    jws: CompactJws,
    key: Any,
    algorithm: str,
    *,
    what: str,
    code_prefix: str,
    leeway: float,
    require: Collection[str] = (),
    issuer: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims, once the header marks no extension critical, the signature verifies
    with `key` and `algorithm`, and the time claims (`exp`, `nbf`, `iat`, checked when
    present, finite numbers) hold within `leeway` seconds."""
    invalid = "invalid_signature" if code_prefix == "envelope" else f"invalid_{code_prefix}"
    _refuse_critical_extensions(jws.header, what=what, code=f"invalid_{code_prefix}")
    if isinstance(key, jwt.PyJWK):
        key = key.key
    try:
        verifier = jwt.get_algorithm_by_name(algorithm)
        valid = verifier.verify(jws.signing_input, verifier.prepare_key(key), jws.signature)
    except (InvalidKeyError, NotImplementedError, TypeError, ValueError) as exc:
        # The key does not fit the algorithm (an EC key for RS256, say).
        raise Unauthorized(
            f"{what} is invalid ({type(exc).__name__})", code=f"invalid_{code_prefix}"
        ) from None
    if not valid:
        raise Unauthorized(f"{what} signature does not verify", code=invalid)
    claims = jws.claims
    for name in require:
        if name not in claims:
            raise Unauthorized(f"{what} lacks the {name!r} claim", code=f"invalid_{code_prefix}")
    now = time.time() if now is None else now
    times = {
        name: _moment(claims[name], name, what=what, code=f"invalid_{code_prefix}")
        for name in ("exp", "nbf", "iat")
        if name in claims
    }
    if "exp" in times and times["exp"] <= now - leeway:
        raise Unauthorized(f"{what} has expired", code=f"{code_prefix}_expired")
    if ("nbf" in times and times["nbf"] > now + leeway) or (
        "iat" in times and times["iat"] > now + leeway
    ):
        raise Unauthorized(
            f"{what} is not valid yet (check clocks)", code=f"{code_prefix}_not_yet_valid"
        )
    if issuer is not None and claims.get("iss") != issuer:
        raise Unauthorized(f"{what} has the wrong issuer", code=f"invalid_{code_prefix}")
    return claims


def _refuse_critical_extensions(header: dict[str, Any], *, what: str, code: str) -> None:
    """RFC 7515 4.1.11: a JWS whose `crit` names an extension the recipient does not
    understand is invalid. We understand none (not even RFC 7797's `b64`, which changes
    what the signature covers), and an empty or malformed `crit` is invalid anyway."""
    if "crit" in header:
        raise Unauthorized(
            f"{what} marks header extensions as critical (crit); none is supported", code=code
        )


def _moment(value: object, name: str, *, what: str, code: str) -> float:
    """A time claim as seconds since the epoch: a finite number. JSON may carry 1e400
    (infinity), NaN (every comparison false) or an integer beyond any float, and each
    would make the claim never expire or never apply."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"{what} claim {name!r} must be a number", code=code)
    try:
        moment = float(value)
    except OverflowError:
        moment = math.inf
    if not math.isfinite(moment):
        raise Unauthorized(f"{what} claim {name!r} must be a finite number", code=code)
    return moment
