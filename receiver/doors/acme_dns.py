"""The acme-dns API (joohoi/acme-dns): `POST /register` and `POST /update`.

A client registers once, gets credentials and a random subdomain of the served zone, and
CNAMEs its `_acme-challenge` names there. Each update is authenticated by `X-Api-User` /
`X-Api-Key`, bound to the account's own subdomain and, optionally, source networks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from receiver.accounts import Account, AccountStore, InvalidNetwork, networks
from receiver.challenge import Action, Challenge, canonical_name, check_challenge_value
from receiver.config import AcmeDnsSettings
from receiver.doors.body import json_object
from receiver.errors import BadRequest, Forbidden, Unauthorized

DOOR = "acme_dns"
PATHS = frozenset({"/register", "/update"})
_SUBDOMAIN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


@dataclass(frozen=True)
class Update:
    account: Account
    challenge: Challenge  # at <subdomain>.<zone>


class AcmeDns:
    def __init__(self, settings: AcmeDnsSettings, store: AccountStore) -> None:
        self.settings = settings
        self.zone = canonical_name(settings.zone)
        self.store = store

    def full_domain(self, subdomain: str) -> str:
        return f"{subdomain}.{self.zone}"

    async def register(self, body: bytes, remote: str | None) -> dict[str, Any]:
        if not self.settings.allow_register:
            raise Forbidden("registration is disabled here", code="registration_disabled")
        message = json_object(body) if body.strip() else {}  # clients may send nothing
        allow_from = message.get("allowfrom", [])
        if not isinstance(allow_from, list):
            raise BadRequest("allowfrom must be a list of CIDR networks", code="invalid_cidr")
        try:
            nets = networks(allow_from)
        except InvalidNetwork as exc:
            raise BadRequest(str(exc), code="invalid_cidr") from None
        registration = await self.store.register(nets)
        account = registration.account
        return {
            "username": account.username,
            "password": registration.password,
            "fulldomain": self.full_domain(account.subdomain),
            "subdomain": account.subdomain,
            "allowfrom": list(account.allow_from),
        }

    async def update(self, headers: Mapping[str, str], body: bytes, remote: str | None) -> Update:
        user, key = headers.get("x-api-user", ""), headers.get("x-api-key", "")
        if not user or not key:
            raise Unauthorized("send X-Api-User and X-Api-Key", code="credentials_required")
        # The body is checked before the (deliberately slow) password hash is computed.
        message = json_object(body)
        subdomain = message.get("subdomain")
        if not isinstance(subdomain, str) or not _SUBDOMAIN.match(subdomain):
            raise BadRequest("subdomain must be the one registered", code="bad_subdomain")
        value = check_challenge_value(message.get("txt"))
        account = await self.store.authenticate(user, key)
        if account is None:
            raise Unauthorized("wrong X-Api-User or X-Api-Key", code="invalid_credentials")
        if subdomain != account.subdomain:
            raise Forbidden("that subdomain belongs to another account", code="bad_subdomain")
        if not account.allows(remote):
            raise Forbidden(f"updates from {remote} are not allowed", code="source_not_allowed")
        fqdn = self.full_domain(subdomain)
        return Update(account, Challenge(Action.ADD, fqdn, fqdn, value))
