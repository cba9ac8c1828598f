"""Which names a request may touch: only names inside a configured zone."""

from __future__ import annotations

from collections.abc import Sequence

from receiver.challenge import Challenge, longest_zone
from receiver.config import ZoneSettings
from receiver.errors import Forbidden


class Policy:
    def __init__(self, zones: Sequence[ZoneSettings]) -> None:
        self._zones = {zone.name: zone for zone in zones}

    def zone_for(self, challenge: Challenge) -> ZoneSettings:
        """The longest configured zone containing the record; 403 when there is none."""
        name = longest_zone(challenge.fqdn, self._zones)
        if name is None:
            raise Forbidden(
                f"{challenge.fqdn} is in no zone this receiver serves", code="zone_not_allowed"
            )
        return self._zones[name]
