"""DigiCert AuthKey request tokens (DV immediate issuance).

A request token proves domain control before a DigiCert order exists: DigiCert finds it
in DNS (`dcv_method = dns-txt-token`) or at `/.well-known/pki-validation/fileauth.txt`
(`http-token`) and recomputes it from the order's CSR. It is

    timestamp + base36(int(HMAC-SHA256(key=AuthKey, msg=timestamp + CSR))).zfill(50)

with the timestamp `yyyyMMddHHmmss` in UTC opening a 30-day validity window. The CSR is
hashed byte for byte as the file holds it: a re-encoded or re-wrapped CSR gives another
token, so nothing here normalises it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from receiver.challenge import canonical_domain
from receiver.errors import BadRequest

DOOR = "digicert"  # the journal's origin of every token the receiver places

TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"
VALIDITY = timedelta(days=30)
HASH_LENGTH = 50
TOKEN_LENGTH = 14 + HASH_LENGTH
DNSAUTH_LABEL = "_dnsauth"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_TIMESTAMP = re.compile(r"\d{14}\Z")
_TOKEN = re.compile(r"\d{14}[0-9a-z]{50}\Z")


class InvalidTimestamp(BadRequest):
    default_code = "invalid_timestamp"


@dataclass(frozen=True)
class Window:
    """When DigiCert accepts a token: from its timestamp for 30 days (end exclusive)."""

    start: datetime
    end: datetime

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def format_timestamp(moment: datetime) -> str:
    """The token timestamp for `moment` (naive datetimes are taken as UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> datetime:
    if not _TIMESTAMP.match(text):
        raise InvalidTimestamp(f"timestamp {text!r} is not yyyyMMddHHmmss (14 digits, UTC)")
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidTimestamp(f"timestamp {text!r} is not a valid date and time") from None


def request_token(auth_key: str, csr: bytes, timestamp: str) -> str:
    parse_timestamp(timestamp)
    digest = hmac.new(auth_key.encode(), timestamp.encode() + csr, hashlib.sha256).digest()
    return timestamp + _base36(int.from_bytes(digest, "big")).rjust(HASH_LENGTH, "0")


def _base36(number: int) -> str:
    digits = []
    while number:
        number, remainder = divmod(number, 36)
        digits.append(_DIGITS[remainder])
    return "".join(reversed(digits)) or "0"


def is_request_token(value: str) -> bool:
    return bool(_TOKEN.match(value))


def window(token: str) -> Window:
    if not is_request_token(token):
        raise InvalidTimestamp(f"{token!r} is not a DigiCert request token")
    start = parse_timestamp(token[:14])
    return Window(start, start + VALIDITY)


def is_token_for(token: str, auth_key: str, csr: bytes) -> bool:
    """Whether `token` was computed from this AuthKey and CSR (any timestamp)."""
    if not is_request_token(token):
        return False
    try:
        expected = request_token(auth_key, csr, token[:14])
    except InvalidTimestamp:
        return False
    return hmac.compare_digest(expected, token)


def record_name(domain: str, *, dnsauth: bool) -> tuple[str, str]:
    """`(canonical domain, TXT record name)` for a token placed for `domain`.

    A wildcard is validated at its base name; `_dnsauth.<domain>` is DigiCert's
    authorisation domain name, and the only underscore name this flow writes.
    """
    base, _wildcard = canonical_domain(domain)
    return base, f"{DNSAUTH_LABEL}.{base}" if dnsauth else base


def daily_timestamp(now: datetime) -> str:
    """The start of `now`'s UTC day: a token that is valid now and stable all day."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return format_timestamp(day)


def still_needed(door: str, value: str, now: float) -> bool:
    """The sweep's exception: a token stays published while DigiCert would accept it."""
    if door != DOOR or not is_request_token(value):
        return False
    try:
        end = window(value).end
    except InvalidTimestamp:
        return False
    return now < end.timestamp()
