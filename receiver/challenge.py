"""The Challenge value and the DNS-name rules every door shares.

Names are canonical once they leave this module: absolute, lower case, A-labels
(punycode) for internationalised labels, no trailing dot. Every adapter and every log
line sees only that form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from receiver.errors import BadRequest, InvalidName

CHALLENGE_LABEL = "_acme-challenge"
MAX_NAME_LENGTH = 253

_PLAIN_NAME = re.compile(r"[a-z0-9_.-]+\Z")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_UNDERSCORE_LABEL = re.compile(r"_[a-z0-9](?:[a-z0-9_-]{0,61})\Z")
# A DNS-01 value is base64url(SHA-256(key authorisation)) without padding: 43 characters.
_CHALLENGE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}\Z")


class Action(StrEnum):
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True)
class Challenge:
    """One TXT value to publish or withdraw, already validated and canonical."""

    action: Action
    domain: str  # the name being validated, canonical, "*." kept for wildcards
    fqdn: str  # the record name, canonical
    value: str


def canonical_name(text: object, *, allow_underscore: bool = False) -> str:
    """Canonical form of a DNS name; raise `InvalidName` with a reason otherwise.

    `allow_underscore` admits service labels such as `_acme-challenge`, which IDNA forbids.
    """
    if not isinstance(text, str) or not text:
        raise InvalidName("a name must be a non-empty string")
    if len(text) > MAX_NAME_LENGTH + 1:
        raise InvalidName("name is longer than 253 characters")
    # Lower-case LDH ASCII (the usual case) has nothing for UTS 46 to map.
    mapped = text if _PLAIN_NAME.match(text) else _uts46(text)
    if mapped.endswith("."):
        mapped = mapped[:-1]
    labels = [_canonical_label(label, text, allow_underscore) for label in mapped.split(".")]
    name = ".".join(labels)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"name {text!r} is longer than 253 characters")
    return name


def _uts46(text: str) -> str:
    import idna  # only names outside lower-case LDH ASCII: kept off the cold start

    try:
        mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise InvalidName(f"name {text!r} is not a valid domain name: {exc}") from None
    return mapped


def _canonical_label(label: str, name: str, allow_underscore: bool) -> str:
    if not label:
        raise InvalidName(f"name {name!r} has an empty label")
    if not label.isascii():
        import idna

        try:
            return idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise InvalidName(f"name {name!r} has an invalid label: {exc}") from None
    label = label.lower()
    if allow_underscore and _UNDERSCORE_LABEL.match(label):
        return label
    if not _LDH_LABEL.match(label):
        raise InvalidName(f"name {name!r} has an invalid label {label!r}")
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            raise InvalidName(f"name {name!r} has a reserved label {label!r}")
        import idna

        try:
            if idna.alabel(idna.ulabel(label)).decode("ascii") != label:
                raise InvalidName(f"name {name!r} has a non-canonical A-label {label!r}")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise InvalidName(f"name {name!r} has an invalid A-label: {exc}") from None
    return label


def canonical_domain(text: object) -> tuple[str, bool]:
    """The canonical base name of a certificate domain and whether it was a wildcard."""
    if isinstance(text, str) and text.startswith("*."):
        return canonical_name(text[2:]), True
    return canonical_name(text), False


def challenge_name(base: str) -> str:
    """`_acme-challenge.<base>` for a canonical base name; `InvalidName` when the label
    pushes it past 253 octets (255 on the wire), which a base of up to 253 can do."""
    name = f"{CHALLENGE_LABEL}.{base}"
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(
            f"the challenge name for {base!r} would be {len(name)} characters; at most"
            f" {MAX_NAME_LENGTH} fit in DNS"
        )
    return name


def challenge_record_name(domain: object, txt_record_name: object) -> tuple[str, str]:
    """`(canonical domain, record fqdn)` for a DNS-01 challenge.

    The record name may be relative (`_acme-challenge`, as Certificate Manager sends it)
    or absolute; either way it must be exactly the challenge name for `domain`, which for
    `*.example.com` is `_acme-challenge.example.com`.
    """
    base, wildcard = canonical_domain(domain)
    expected = challenge_name(base)
    if not isinstance(txt_record_name, str):
        raise InvalidName("the record name must be a string")
    record = canonical_name(txt_record_name, allow_underscore=True)
    is_absolute = txt_record_name.endswith(".") or record == expected
    if (is_absolute and record != expected) or (not is_absolute and record != CHALLENGE_LABEL):
        raise BadRequest(
            f"record name {txt_record_name!r} is not the challenge name {expected!r} "
            f"for domain {domain!r}",
            code="invalid_record_name",
        )
    return ("*." + base if wildcard else base), expected


def check_challenge_value(value: object) -> str:
    if not isinstance(value, str) or not _CHALLENGE_VALUE.match(value):
        raise BadRequest(
            "challenge value must be a 43-character base64url digest", code="invalid_value"
        )
    return value


def longest_zone(fqdn: str, zones: Iterable[str]) -> str | None:
    """The longest of `zones` that contains `fqdn` (label-wise), or None."""
    candidates = set(zones)
    labels = fqdn.split(".")
    for start in range(len(labels)):
        suffix = ".".join(labels[start:])
        if suffix in candidates:
            return suffix
    return None
