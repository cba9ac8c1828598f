"""IBM Cloud resource names (CRNs) of Certificate Manager instances.

`crn:v1:<cname>:<ctype>:cloudcerts:<region>:a/<account>:<instance>::`. The region picks
the public-key endpoint and the account binds the user token, so both are parsed strictly:
a CRN that is not exactly this shape is never used to build a URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_REGION = re.compile(r"[a-z][a-z0-9-]{1,31}\Z")
_ACCOUNT = re.compile(r"a/([A-Za-z0-9]{1,64})\Z")


class InvalidCrn(ValueError):
    pass


@dataclass(frozen=True)
class InstanceCrn:
    """A Certificate Manager instance, by CRN: its text is what allow lists and the
    journal compare; region and account pick its key endpoint and check user tokens."""

    text: str
    region: str
    account: str

    @classmethod
    def parse(cls, text: object) -> InstanceCrn:
        if not isinstance(text, str) or len(text) > 512:
            raise InvalidCrn("instance CRN must be a string")
        parts = text.split(":")
        if len(parts) != 10 or parts[0] != "crn" or parts[4] != "cloudcerts":
            raise InvalidCrn(f"{text!r} is not a Certificate Manager instance CRN")
        version, cname, ctype, _, region, scope, instance, rtype, resource = parts[1:]
        if not all(_SEGMENT.match(p) for p in (version, cname, ctype, instance)):
            raise InvalidCrn(f"{text!r} has a malformed segment")
        if not _REGION.match(region):
            raise InvalidCrn(f"{text!r} has a malformed region {region!r}")
        account = _ACCOUNT.match(scope)
        if account is None:
            raise InvalidCrn(f"{text!r} has no account scope 'a/<id>'")
        if rtype or resource:
            raise InvalidCrn(f"{text!r} names a resource, not an instance")
        return cls(text=text, region=region, account=account.group(1))
