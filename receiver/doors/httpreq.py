"""lego's `httpreq` DNS provider protocol: `POST /present` and `POST /cleanup`.

Default mode sends `{"fqdn": "_acme-challenge.example.com.", "value": DIGEST}`; RAW mode
sends `{"domain", "token", "keyAuth"}` and leaves the digest to us (base64url of the
SHA-256 of keyAuth, unpadded, as RFC 8555 §8.4 defines). Both are told apart by their
keys. HTTP basic auth is checked in constant time before the body is looked at.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from receiver.challenge import (
    CHALLENGE_LABEL,
    Action,
    Challenge,
    canonical_domain,
    canonical_name,
    challenge_name,
    check_challenge_value,
)
from receiver.core import ChangeRequest, apply
from receiver.door import InboundRequest, Origin, Outcome, Route
from receiver.door_settings import HttpreqSettings
from receiver.doors.body import json_object
from receiver.errors import BadRequest, Unauthorized
from receiver.runtime import Runtime

DOOR = "httpreq"
PATHS = {"/present": Action.ADD, "/cleanup": Action.REMOVE}
_KEY_AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{1,512}\.[A-Za-z0-9_-]{43}\Z")


class BasicAuthRequired(Unauthorized):
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="dns-challenge-receiver", charset="UTF-8"'}


@dataclass(frozen=True)
class Request:
    challenge: Challenge
    user: str
    mode: str  # "default" or "raw"


def receive(
    settings: HttpreqSettings, path: str, headers: Mapping[str, str], body: bytes
) -> Request:
    user = authenticate(settings, headers.get("authorization", ""))
    message = json_object(body)
    action = PATHS[path]
    if "keyAuth" in message:
        return Request(_raw(action, message), user, "raw")
    if "fqdn" in message:
        return Request(_default(action, message), user, "default")
    raise BadRequest(
        "send {fqdn, value} or, in RAW mode, {domain, token, keyAuth}", code="invalid_request"
    )


def authenticate(settings: HttpreqSettings, header: str) -> str:
    """The user name, once the password matched; both compared in constant time."""
    assert settings.password is not None  # config requires it when the door is enabled
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise BasicAuthRequired("send HTTP basic credentials", code="credentials_required")
    try:
        user, sep, password = _decode_basic(encoded).partition(":")
    except ValueError:
        raise BasicAuthRequired("malformed basic credentials", code="invalid_credentials") from None
    user_ok = hmac.compare_digest(user.encode(), settings.username.encode())
    password_ok = hmac.compare_digest(password.encode(), settings.password.reveal().encode())
    if not (sep and user_ok and password_ok):
        raise BasicAuthRequired("wrong user name or password", code="invalid_credentials")
    return user


def _decode_basic(encoded: str) -> str:
    """user:password from the base64 part of the header; `ValueError` if malformed.

    The header arrives as text decoded from arbitrary bytes (aiohttp keeps undecodable
    bytes as surrogates). `b64decode` raises a bare `ValueError` for non-ASCII text,
    `binascii.Error` for bad base64 and `.decode()` `UnicodeDecodeError`: all three are
    `ValueError`s, and the ASCII check says why the first one happens.
    """
    if not encoded.isascii():
        raise ValueError("basic credentials are base64, hence ASCII")
    return base64.b64decode(encoded, validate=True).decode()


def _default(action: Action, message: dict[str, Any]) -> Challenge:
    fqdn = canonical_name(message.get("fqdn"), allow_underscore=True)
    label, _, domain = fqdn.partition(".")
    if label != CHALLENGE_LABEL or not domain:
        raise BadRequest(
            f"fqdn {message.get('fqdn')!r} is not an {CHALLENGE_LABEL} name",
            code="invalid_record_name",
        )
    canonical_name(domain)  # the rest must be a plain host name
    return Challenge(action, domain, fqdn, check_challenge_value(message.get("value")))


def _raw(action: Action, message: dict[str, Any]) -> Challenge:
    key_authorization = message.get("keyAuth")
    if not isinstance(key_authorization, str) or not _KEY_AUTHORIZATION.match(key_authorization):
        raise BadRequest("keyAuth must be token.thumbprint (base64url)", code="invalid_value")
    token = message.get("token")
    if token is not None and (
        not isinstance(token, str) or key_authorization.split(".")[0] != token
    ):
        raise BadRequest("token does not match keyAuth", code="invalid_value")
    base, wildcard = canonical_domain(message.get("domain"))
    digest = hashlib.sha256(key_authorization.encode()).digest()
    value = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    domain = "*." + base if wildcard else base
    return Challenge(action, domain, challenge_name(base), value)


class HttpreqDoor:
    name = DOOR
    routes = tuple(Route("POST", path) for path in PATHS)
    events = frozenset(path.lstrip("/") for path in PATHS)

    def __init__(self, runtime: Runtime, settings: HttpreqSettings) -> None:
        self.runtime = runtime
        self.settings = settings

    async def handle(self, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
        summary["event_type"] = request.path.lstrip("/")
        received = receive(self.settings, request.path, request.headers, request.body)
        challenge = received.challenge
        summary.update(user=received.user, mode=received.mode, domain=challenge.domain)
        summary["fqdn"] = challenge.fqdn
        origin = Origin(DOOR, sender=received.user, domain=challenge.domain)
        return await apply(
            self.runtime, ChangeRequest(challenge, origin, request.request_id), summary
        )

    async def readiness(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass
