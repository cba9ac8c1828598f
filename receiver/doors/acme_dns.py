"""The acme-dns API (joohoi/acme-dns): `POST /register` and `POST /update`.

A client registers once, gets credentials and a random subdomain of the served zone, and
CNAMEs its `_acme-challenge` names there. Each update is authenticated by `X-Api-User` /
`X-Api-Key`, bound to the account's own subdomain and, optionally, source networks.

Bodies are read the way the reference server reads them (Go's `encoding/json` into a
struct): keys match case-insensitively and the last of repeated keys wins, unknown keys
and `null` values are ignored, and the Content-Type is not looked at. Real clients rely
on each of these: lego's goacmedns sends `SubDomain`/`Txt`/`AllowFrom`, acme.sh posts
JSON as a form, pyacmedns registers with no Content-Type at all. Error codes are the
reference server's, so its users' scripts and runbooks keep working.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from receiver.accounts import Account, AccountStore, InvalidNetwork, networks
from receiver.challenge import Action, Challenge, canonical_name
from receiver.changes import apply_change
from receiver.core import ChangeRequest, apply
from receiver.door import InboundRequest, Origin, Outcome, Route
from receiver.door_settings import AcmeDnsSettings
from receiver.doors.body import json_value
from receiver.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    ReceiverError,
    TooManyRequests,
    Unauthorized,
)
from receiver.metrics import Metrics
from receiver.passwords import PasswordChecks
from receiver.ratelimit import RateLimit
from receiver.runtime import Runtime

DOOR = "acme_dns"
PATHS = frozenset({"/register", "/update"})
MALFORMED = "malformed_json_payload"
# The reference server's checks: a DNS label, and exactly 40 / 43 base64url characters.
_SUBDOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_KEY = re.compile(r"[A-Za-z0-9_-]{40}\Z")
_TXT = re.compile(r"[A-Za-z0-9_-]{43}\Z")


@dataclass(frozen=True)
class Update:
    account: Account
    challenge: Challenge  # at <subdomain>.<zone>


class _JsonObject:
    """A decoded JSON object as its key/value pairs in order (duplicates kept)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.pairs)


def request_fields(body: bytes, *, empty_is_nothing: bool = False) -> dict[str, Any]:
    """The body's top-level fields by case-folded key, as Go decodes them into a struct.

    Later keys overwrite earlier ones whatever their case, and `null` leaves a field
    unset. Nested objects stay `_JsonObject`s, so they never pass for a list or string.
    """
    if empty_is_nothing and not body.strip():
        return {}  # clients register with no body at all
    message = json_value(body, code=MALFORMED, object_pairs_hook=_JsonObject)
    if message is None and empty_is_nothing:
        return {}
    if not isinstance(message, _JsonObject):
        raise BadRequest("the body must be a JSON object", code=MALFORMED)
    return {key.casefold(): value for key, value in message if value is not None}


def allow_from(value: object) -> tuple[str, ...]:
    """The networks asked for; never silently fewer (an account would then take any source)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest("allowfrom must be a list of CIDR strings", code=MALFORMED)
    try:
        return networks(value)
    except InvalidNetwork as exc:
        raise BadRequest(str(exc), code="invalid_allowfrom_cidr") from None


def _username(value: str) -> str | None:
    """The canonical form of a UUID user name (any spelling Go's uuid.Parse takes)."""
    if not value.isascii():
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _forbidden(reason: str) -> Unauthorized:
    """One answer for every failed authentication, as the reference gives: 401 forbidden.

    Which check failed is logged, never sent: telling a caller that its credentials were
    right but its address was not would confirm stolen credentials.
    """
    return Unauthorized(
        "not allowed: check X-Api-User, X-Api-Key, the subdomain and the account's allowfrom",
        code="forbidden",
        internal=reason,
    )


class AcmeDns:
    """The door, with the limits on what unauthenticated callers can make it do."""

    def __init__(self, settings: AcmeDnsSettings, store: AccountStore, metrics: Metrics) -> None:
        self.settings = settings
        self.zone = canonical_name(settings.zone)
        self.store = store
        self.metrics = metrics
        self.passwords = PasswordChecks(settings.max_pending_password_checks, metrics)
        self.registrations = RateLimit(settings.register_per_hour, settings.register_burst)

    def full_domain(self, subdomain: str) -> str:
        return f"{subdomain}.{self.zone}"

    async def register(self, body: bytes, remote: str | None) -> dict[str, Any]:
        if not self.settings.allow_register:  # the reference server has no route then
            raise NotFound("registration is disabled here", internal="allow_register is off")
        wait = self.registrations.wait_for(remote)
        if wait:
            self.metrics.throttled("acme_dns_register_rate")
            raise TooManyRequests("too many registrations from this address", retry_after=wait)
        nets = allow_from(request_fields(body, empty_is_nothing=True).get("allowfrom"))
        if await self.store.count() >= self.settings.max_accounts:
            self.metrics.throttled("acme_dns_accounts")
            raise Forbidden("no more accounts can be registered here", code="account_limit_reached")
        account = Account(str(uuid.uuid4()), str(uuid.uuid4()), nets)
        password = secrets.token_urlsafe(30)  # 40 characters, as acme-dns issues
        await self.store.add(account, await self.passwords.hash(password))
        return {
            "username": account.username,
            "password": password,
            "fulldomain": self.full_domain(account.subdomain),
            "subdomain": account.subdomain,
            "allowfrom": list(account.allow_from),
        }

    async def update(self, headers: Mapping[str, str], body: bytes, remote: str | None) -> Update:
        username = _username(headers.get("x-api-user", ""))
        if username is None or not _KEY.match(headers.get("x-api-key", "")):
            raise _forbidden("X-Api-User is not a UUID or X-Api-Key not 40 base64url characters")
        # Everything cheap is checked before the (deliberately slow) password hash.
        fields = request_fields(body)
        subdomain, value = fields.get("subdomain"), fields.get("txt")
        if not isinstance(subdomain, str) or not _SUBDOMAIN.match(subdomain):
            raise BadRequest("subdomain must be the account's subdomain", code="bad_subdomain")
        if not isinstance(value, str) or not _TXT.match(value):
            raise BadRequest("txt must be 43 base64url characters", code="bad_txt")
        stored = await self.store.find(username)
        # An unknown user costs a (decoy) check too: timing must not tell them apart.
        hashed = stored.password_hash if stored else None
        matches = await self.passwords.matches(headers["x-api-key"], hashed)
        if stored is None or not matches:
            raise _forbidden("wrong X-Api-User or X-Api-Key")
        account = stored.account
        if not account.allows(remote):
            raise _forbidden(f"updates from {remote} are outside the account's allowfrom")
        if subdomain != account.subdomain:
            raise _forbidden("the subdomain belongs to another account")
        fqdn = self.full_domain(subdomain)
        return Update(account, Challenge(Action.ADD, fqdn, fqdn, value))

    def close(self) -> None:
        self.passwords.close()


class AcmeDnsDoor(AcmeDns):
    """The acme-dns API as a door: registration, and updates that keep, like acme-dns,
    a subdomain's two most recent values."""

    name = DOOR
    # acme-dns reads JSON whatever the Content-Type says, and its clients rely on that
    # (acme.sh posts a form type, pyacmedns none).
    routes = tuple(Route("POST", path, any_content_type=True) for path in sorted(PATHS))
    events = frozenset(path.lstrip("/") for path in PATHS)

    def __init__(self, runtime: Runtime, settings: AcmeDnsSettings, store: AccountStore) -> None:
        super().__init__(settings, store, runtime.metrics)
        self.runtime = runtime

    async def handle(self, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
        summary["event_type"] = request.path.lstrip("/")
        if request.path == "/register":
            registration = await self.register(request.body, request.remote)
            summary.update(
                outcome="registered", user=registration["username"], fqdn=registration["fulldomain"]
            )
            return Outcome(201, registration)
        update = await self.update(request.headers, request.body, request.remote)
        challenge = update.challenge
        summary.update(user=update.account.username, fqdn=challenge.fqdn, domain=challenge.domain)
        origin = Origin(DOOR, sender=update.account.username, domain=challenge.domain)
        await apply(self.runtime, ChangeRequest(challenge, origin, request.request_id), summary)
        # Like acme-dns, a subdomain keeps its two most recent values: the older ones go now.
        evicted = await self.store.keep_latest(update.account.subdomain, challenge.value)
        route = self.runtime.policy.route(challenge)
        for value in evicted:
            stale = dataclasses.replace(challenge, action=Action.REMOVE, value=value)
            try:
                await apply_change(
                    self.runtime, stale, route.zone, origin, request_id=request.request_id
                )
            except ReceiverError as exc:  # journalled: the sweep removes it later
                summary["eviction_failed"] = exc.code
        summary["evicted"] = len(evicted)
        return Outcome(200, {"txt": challenge.value})

    async def readiness(self) -> dict[str, str]:
        return {}
