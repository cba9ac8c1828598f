"""Which names a request may touch, and where the value is actually written.

Only names inside a configured zone may be touched. A zone configured with `cname_to`
is one whose owner CNAMEd its challenge names into a zone we write to (acme-dns style
delegation): `_acme-challenge.<d>` -> `<d>.<cname_to>`; the value goes to the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from receiver.challenge import CHALLENGE_LABEL, MAX_NAME_LENGTH, Challenge, longest_zone
from receiver.config import ZoneSettings
from receiver.errors import Forbidden, InvalidName


@dataclass(frozen=True)
class Route:
    """Where a challenge is written: its zone, and the name after any CNAME delegation."""

    zone: ZoneSettings  # the zone written to: always one with a provider
    fqdn: str  # the record name written
    delegated_from: str | None = None  # the challenge name, when it is a CNAME to `fqdn`


def delegation_target(challenge_fqdn: str, cname_to: str) -> str:
    """Where `_acme-challenge.<d>` points when its zone delegates to `cname_to`."""
    base = challenge_fqdn.removeprefix(CHALLENGE_LABEL + ".")
    return f"{base}.{cname_to}"


class Policy:
    def __init__(self, zones: Sequence[ZoneSettings]) -> None:
        self._zones = {zone.name: zone for zone in zones}

    def route(self, challenge: Challenge) -> Route:
        """The longest configured zone containing the record decides; 403 when none does."""
        zone = self._zone(challenge.fqdn)
        if zone.cname_to is None:
            return Route(zone, challenge.fqdn)
        target = delegation_target(challenge.fqdn, zone.cname_to)
        if len(target) > MAX_NAME_LENGTH:
            raise InvalidName(f"delegated name for {challenge.fqdn} exceeds 253 characters")
        written = self._zone(target)
        if written.cname_to is not None:  # config forbids this; refuse rather than chase
            raise Forbidden(f"{target} is delegated again", code="zone_not_allowed")
        return Route(written, target, delegated_from=challenge.fqdn)

    def route_name(self, fqdn: str) -> Route:
        """Where a record that is not a challenge goes (DigiCert tokens): written only in
        a zone with a provider; a `cname_to` zone delegated its challenge names alone."""
        zone = self._zone(fqdn)
        if zone.cname_to is not None:
            raise Forbidden(
                f"{fqdn} is in {zone.name}, which delegates only its _acme-challenge names",
                code="zone_not_allowed",
            )
        return Route(zone, fqdn)

    def _zone(self, fqdn: str) -> ZoneSettings:
        name = longest_zone(fqdn, self._zones)
        if name is None:
            raise Forbidden(f"{fqdn} is in no zone this receiver serves", code="zone_not_allowed")
        return self._zones[name]
