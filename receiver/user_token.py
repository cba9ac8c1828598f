"""The ordering user's IAM access token (`userToken`), verified against a JWKS.

A present token is always verified (when verification is on) and an invalid one always
rejects the notification; `required` additionally rejects notifications without one.
The token must belong to the account that owns the instance, or to an allowed account.
"""

from __future__ import annotations

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
    subject: str | None
    iam_id: str | None
    account: str


async def verify_user_token(
    token: str, jwks: Jwks, settings: UserTokenSettings, instance: InstanceCrn
) -> UserIdentity:
    tokens.check_compact(token, what=WHAT, code="invalid_user_token", error=Unauthorized)
    header = tokens.unverified_header(
        token, what=WHAT, code="invalid_user_token", error=Unauthorized
    )
    alg = tokens.pinned_algorithm(header, settings.algorithms, what=WHAT, code="invalid_user_token")
    kid = header.get("kid")
    key = await jwks.key(kid if isinstance(kid, str) else None)
    claims = tokens.verify(
        token,
        key,
        alg,
        what=WHAT,
        code_prefix="user_token",
        leeway=settings.clock_skew_seconds,
        require=("exp", "iss"),
        issuer=settings.issuer,
    )
    account = _account(claims)
    allowed = {instance.account, *settings.allowed_accounts}
    if account not in allowed:
        raise Forbidden(
            "user token belongs to an account that does not own the instance",
            code="account_mismatch",
        )
    return UserIdentity(
        subject=_text(claims.get("sub")), iam_id=_text(claims.get("iam_id")), account=account
    )


def _account(claims: dict[str, Any]) -> str:
    account = claims.get("account")
    bss = account.get("bss") if isinstance(account, dict) else None
    if not isinstance(bss, str) or not bss:
        raise Unauthorized("user token has no account.bss claim", code="invalid_user_token")
    return bss


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
