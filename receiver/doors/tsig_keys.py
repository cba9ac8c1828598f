"""The RFC 2136 door's keys: who may sign, what each key may touch, how often, and which
signed messages were already seen.

dnspython does the TSIG arithmetic (`dns.tsig`); this module only holds the keys built
from `[[rfc2136_door.keys]]`, a per-key change budget (GCRA, like the providers' rate
budgets) and a replay guard. A `dns.tsig.Key` prints its secret in its repr, so keys
are kept in fields that are never shown (`repr=False`) and never logged.
"""

from __future__ import annotations

import base64
import fnmatch
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dns.name
import dns.tsig

from receiver.door_settings import Rfc2136KeySettings

ALGORITHMS: Mapping[str, dns.name.Name] = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-md5": dns.tsig.HMAC_MD5,
}


class ChangeBudget:
    """GCRA over record changes: `burst` at once, then `per_minute`. A request that would
    exceed it is refused whole and costs nothing (a door answers at once; it does not
    queue a client the way a provider budget queues the receiver's own calls)."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self._interval = 60.0 / per_minute
        self._tolerance = self._interval * (burst - 1)
        self._theoretical_arrival = -math.inf

    def take(self, cost: int, now: float) -> float:
        """0 when `cost` changes may go ahead now (and are counted); else the seconds
        until they could."""
        arrival = max(self._theoretical_arrival, now) + cost * self._interval
        allowed_at = arrival - self._tolerance - self._interval
        if allowed_at > now:
            return allowed_at - now
        self._theoretical_arrival = arrival
        return 0.0


@dataclass
class DoorKey:
    """One configured key. `label` is its canonical name: the journal's sender."""

    name: dns.name.Name
    label: str
    algorithm: dns.name.Name
    tsig: dns.tsig.Key = field(repr=False)
    zones: frozenset[str]
    patterns: tuple[str, ...]
    budget: ChangeBudget = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Rfc2136KeySettings) -> DoorKey:
        """From settings that `receiver.config` has already checked."""
        name = dns.name.from_text(settings.name).canonicalize()
        algorithm = ALGORITHMS[settings.algorithm]
        secret = base64.b64decode(settings.secret.reveal(), validate=True)
        return cls(
            name=name,
            label=name.to_text(omit_final_dot=True),
            algorithm=algorithm,
            tsig=dns.tsig.Key(name, secret, algorithm),
            zones=frozenset(z.rstrip(".").lower() for z in settings.zones),
            patterns=settings.names,
            budget=ChangeBudget(settings.changes_per_minute, settings.burst),
        )

    def may_change(self, fqdn: str) -> bool:
        """`fqdn` (canonical) matches one of the key's name patterns."""
        return any(fnmatch.fnmatchcase(fqdn, pattern) for pattern in self.patterns)


class Keyring:
    """The door's keys by name (DNS names compare case-insensitively)."""

    def __init__(self, keys: Iterable[DoorKey]) -> None:
        self._keys = {key.name: key for key in keys}

    def get(self, name: dns.name.Name) -> DoorKey | None:
        return self._keys.get(name)

    def all(self) -> list[DoorKey]:
        return list(self._keys.values())

    @property
    def zones(self) -> frozenset[str]:
        """Every zone some key may change: the zones the door serves."""
        return frozenset(zone for key in self._keys.values() for zone in key.zones)


class ReplayGuard:
    """Signed messages already seen, by key and MAC, until their validity window closes.

    Outside its window a message is refused for its time (BADTIME) anyway, so keeping
    each MAC for `time signed + fudge` catches every replay. Bounded: only holders of a
    key can add entries, and the oldest go first."""

    def __init__(self, capacity: int = 65_536) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def first_time(self, key: DoorKey, mac: bytes, valid_until: float, now: float) -> bool:
        """True (and remembered) the first time this MAC of this key arrives."""
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[oldest]
        token = key.label.encode() + b"\0" + mac
        if self._seen.get(token, -math.inf) > now:
            return False
        self._seen[token] = valid_until
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)
