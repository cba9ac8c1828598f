"""The ordering user's IAM access token (`userToken`), verified against a JWKS.

A present token is always verified (when verification is on) and an invalid one always
rejects the notification; `required` additionally rejects notifications without one.
The token must belong to the account that owns the instance, or to an allowed account.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from receiver import tokens
from receiver.config import UserTokenSettings
from receiver.crn import InstanceCrn
from receiver.errors import Forbidden, Unauthorized
from receiver.keys import Jwks

WHAT = "user token"


@dataclass(frozen=True)
class UserIdentity:
    """Who ordered, from a verified IAM user token: recorded in the journal, never the token."""

    subject: str | None
    iam_id: str | None
    account: str


class VerifiedTokens:
    """Tokens that verified, until their `exp`: every notification of an order carries
    the same user token, so its signature is checked once per order, not per domain.

    Keyed by the exact token string; only successes are kept; bounded (oldest out first).
    The account binding is still checked on every use.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._found: OrderedDict[str, tuple[UserIdentity, float]] = OrderedDict()

    def get(self, token: str, now: float, leeway: float) -> UserIdentity | None:
        found = self._found.get(token)
        if found is None:
            return None
        identity, expires = found
        if expires <= now - leeway:
            del self._found[token]
            return None
        self._found.move_to_end(token)
        return identity

    def put(self, token: str, identity: UserIdentity, expires: float) -> None:
        self._found[token] = (identity, expires)
        self._found.move_to_end(token)
        while len(self._found) > self._size:
            self._found.popitem(last=False)

    def __len__(self) -> int:
        return len(self._found)


async def verify_user_token(
    token: str,
    jwks: Jwks,
    settings: UserTokenSettings,
    instance: InstanceCrn,
    verified: VerifiedTokens | None = None,
) -> UserIdentity:
    identity = verified.get(token, time.time(), settings.clock_skew_seconds) if verified else None
    if identity is None:
        identity, expires = await _verify(token, jwks, settings)
        if verified is not None:
            verified.put(token, identity, expires)
    allowed = {instance.account, *settings.allowed_accounts}
    if identity.account not in allowed:
        raise Forbidden(
            "user token belongs to an account that does not own the instance",
            code="account_mismatch",
        )
    return identity


async def _verify(
    token: str, jwks: Jwks, settings: UserTokenSettings
) -> tuple[UserIdentity, float]:
    jws = tokens.parse(token, what=WHAT, code="invalid_user_token", error=Unauthorized)
    alg = tokens.pinned_algorithm(
        jws.header, settings.algorithms, what=WHAT, code="invalid_user_token"
    )
    kid = jws.header.get("kid")
    key = await jwks.key(kid if isinstance(kid, str) else None)
    claims = tokens.verify(
        jws,
        key,
        alg,
        what=WHAT,
        code_prefix="user_token",
        leeway=settings.clock_skew_seconds,
        require=("exp", "iss"),
        issuer=settings.issuer,
    )
    identity = UserIdentity(
        subject=_text(claims.get("sub")),
        iam_id=_text(claims.get("iam_id")),
        account=_account(claims),
    )
    return identity, float(claims["exp"])


def _account(claims: dict[str, Any]) -> str:
    account = claims.get("account")
    bss = account.get("bss") if isinstance(account, dict) else None
    if not isinstance(bss, str) or not bss:
        raise Unauthorized("user token has no account.bss claim", code="invalid_user_token")
    return bss


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
