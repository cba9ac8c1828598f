"""The RFC 2136 door: dynamic updates signed with TSIG (RFC 8945), as nsupdate,
certbot-dns-rfc2136, lego, cert-manager, acme.sh and external-dns send them, written
through whichever provider the zone uses and journalled like every other change.

Three parts, so that the protocol stays testable without sockets or providers:

* `Rfc2136Door` is sans-I/O: wire bytes in, and out either a `Reply` (an answer ready to
  render: SOA, or a refusal with its RCODE) or an `UpdatePlan` (a verified, checked
  UPDATE: its prerequisites and operations on canonical, routed names).
* `carry_out(runtime, door, plan, summary)` is the one bridge to the core: it evaluates
  the plan against the journal and the provider, applies the net changes all or nothing
  through `receiver.core.apply`, and returns the RCODE.
* `Rfc2136Listener` is what the DNS listener calls: decide, carry out, log once, render.

What a key may do is deliberately narrow: TXT records only, at names matching its
patterns, inside its zones. An RRset delete removes only the values the journal shows
this key wrote at that name, so that a client which "clears the set" (lego before every
add, acme.sh on clean-up) never takes SPF records or other senders' challenges with it.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.rdtypes.txtbase
import dns.rrset
import dns.tsig
import dns.update
import structlog

from providers.base import ZoneRef
from providers.errors import ProviderError
from providers.local import LocalSettings
from receiver.challenge import (
    CHALLENGE_LABEL,
    Action,
    Challenge,
    canonical_name,
    check_challenge_value,
    longest_zone,
)
from receiver.config import Settings
from receiver.core import ChangeRequest, apply
from receiver.dispatch import KeyedLocks
from receiver.dnsserver import Responder, formerr, serving_door
from receiver.door import Origin
from receiver.door_settings import configured
from receiver.doors.tsig_keys import DoorKey, Keyring, ReplayGuard
from receiver.errors import DnsRefused, ReceiverError, RequestRejected
from receiver.logs import bind_request
from receiver.policy import Policy, Route
from receiver.runtime import Runtime

log = structlog.get_logger("receiver.doors.rfc2136")

DOOR = "rfc2136"
MAX_RECORDS = 100  # prerequisites + updates in one message
MAX_VALUE_LENGTH = 2048  # a TXT value at a name that is not a challenge name
EDNS_PAYLOAD = 1232
PLAIN_UDP_PAYLOAD = 512
TCP_MAX_MESSAGE = 65535
# The SOA the door answers for a zone it does not serve itself: the receiver is not the
# zone's primary, and `.invalid` (RFC 6761) says so to anything that would go there.
NOT_THE_PRIMARY = dns.name.from_text("rfc2136-door.invalid.")
SOA_TTL = 60
wall_clock = time.time  # TSIG's clock (tests skew it: libfaketime cannot run nsupdate)

_IN, _ANY, _NONE = dns.rdataclass.IN, dns.rdataclass.ANY, dns.rdataclass.NONE
_TXT, _SOA, _ANY_TYPE = dns.rdatatype.TXT, dns.rdatatype.SOA, dns.rdatatype.ANY
_QUERY, _UPDATE = dns.opcode.QUERY, dns.opcode.UPDATE
_UNSIGNED_TSIG_ERRORS = (dns.rcode.BADKEY, dns.rcode.BADSIG, dns.rcode.BADTRUNC)


# --- what a message asks for ------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A name an UPDATE touches: canonical, inside the message's zone, routed."""

    fqdn: str
    domain: str  # the challenge's domain (`_acme-challenge.` removed), else the name
    route: Route
    apex: bool

    @property
    def is_challenge(self) -> bool:
        return self.fqdn.split(".", 1)[0] == CHALLENGE_LABEL

    def challenge(self, action: Action, value: str) -> Challenge:
        return Challenge(action, self.domain, self.fqdn, value)


@dataclass(frozen=True)
class AddValue:
    target: Target
    value: str


@dataclass(frozen=True)
class DeleteValue:
    """Class NONE: delete this one value."""

    target: Target
    value: str


@dataclass(frozen=True)
class DeleteOwnValues:
    """Class ANY (an RRset, or every RRset at the name): delete what this key wrote."""

    target: Target


Operation = AddValue | DeleteValue | DeleteOwnValues


class Condition(StrEnum):
    """RFC 2136 §2.4 prerequisites, evaluated on the TXT records at the name."""

    NAME_IN_USE = "yxdomain"
    NAME_NOT_IN_USE = "nxdomain"
    RRSET_EXISTS = "yxrrset"
    RRSET_ABSENT = "nxrrset"
    RRSET_EQUALS = "rrset"  # value dependent: exactly these values


@dataclass(frozen=True)
class Prerequisite:
    condition: Condition
    target: Target
    values: frozenset[str] = frozenset()

    def unmet(self, present: frozenset[str]) -> int | None:
        """The RCODE when the prerequisite fails on `present` (the TXT values at the
        name), else None. A zone apex is always in use (it has an SOA)."""
        in_use = bool(present) or self.target.apex
        failed = {
            Condition.NAME_IN_USE: (not in_use, dns.rcode.NXDOMAIN),
            Condition.NAME_NOT_IN_USE: (in_use, dns.rcode.YXDOMAIN),
            Condition.RRSET_EXISTS: (not present, dns.rcode.NXRRSET),
            Condition.RRSET_ABSENT: (bool(present), dns.rcode.YXRRSET),
            Condition.RRSET_EQUALS: (present != self.values, dns.rcode.NXRRSET),
        }[self.condition]
        return failed[1] if failed[0] else None


@dataclass(frozen=True)
class UpdatePlan:
    """A verified UPDATE that passed every check that needs no I/O."""

    query: dns.message.Message = field(repr=False)
    key: DoorKey
    zone: str
    prerequisites: tuple[Prerequisite, ...]
    operations: tuple[Operation, ...]


@dataclass(frozen=True)
class Reply:
    """An answer ready to render: `message`, or for bytes that are barely a message the
    bare header in `header_only`."""

    message: dns.message.Message | None
    event: str  # "update", "query" or "malformed": the metrics' event label
    outcome: str
    reason: str | None = None
    key: str | None = None
    zone: str | None = None
    name: str | None = None  # a query's name
    header_only: bytes | None = None

    @property
    def rcode(self) -> str:
        if self.message is None:
            return "FORMERR"
        return dns.rcode.to_text(self.message.rcode())


@dataclass(frozen=True)
class Change:
    """One provider write of a plan, after the operations were netted out."""

    action: Action
    target: Target
    value: str
    undo: bool  # the value's state before the message is known, so it can be restored


def net_changes(
    operations: Iterable[Operation], own: Mapping[tuple[str, str], frozenset[str]]
) -> list[tuple[Action, Target, str]]:
    """The writes that leave each name as the operations, applied in order, would: the
    last word on each value wins. `own` maps (zone, record name) to the values this key
    may still have published there; an RRset delete removes those and the values added
    earlier in the same message, and nothing else."""
    final: dict[tuple[str, str, str], tuple[Action, Target, str]] = {}
    added: dict[tuple[str, str], list[str]] = {}
    for op in operations:
        where = (op.target.route.zone.name, op.target.route.fqdn)
        if isinstance(op, AddValue):
            final[(*where, op.value)] = (Action.ADD, op.target, op.value)
            added.setdefault(where, []).append(op.value)
        elif isinstance(op, DeleteValue):
            final[(*where, op.value)] = (Action.REMOVE, op.target, op.value)
        else:
            for value in [*sorted(own.get(where, ())), *added.get(where, ())]:
                final[(*where, value)] = (Action.REMOVE, op.target, value)
    return list(final.values())


# --- the protocol, sans I/O -------------------------------------------------------------


class Rfc2136Door:
    """Parses, authenticates and checks; never writes. `local_soa` gives the SOA of a zone
    that the built-in responder serves itself (its serial and nameservers), if any."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        *,
        local_soa: Callable[[dns.name.Name], dns.rrset.RRset | None] | None = None,
    ) -> None:
        door = configured(settings.rfc2136_door, "rfc2136_door")
        self.keys = Keyring(DoorKey.from_settings(key) for key in door.keys)
        self._tsig_keys = {key.name: key.tsig for key in self.keys.all()}
        self._configured = frozenset(zone.name for zone in settings.zones)
        self._ttl = {zone.name: zone.ttl for zone in settings.zones}
        self.zones = self.keys.zones  # the zones the door serves
        self._zone_labels = {tuple(zone.encode().split(b".")) for zone in self.zones}
        self._fudge = door.fudge_seconds
        self._policy = policy
        self._local_soa = local_soa
        self.replays = ReplayGuard()
        self.locks = KeyedLocks()

    def claims(self, wire: bytes) -> bool:
        """Whether a message on a socket shared with the `local` responder is the door's:
        an UPDATE, or a query for the SOA of a name in a zone the door serves. A peek at
        the header and question, cheap enough for every query the responder gets."""
        if len(wire) < 12:
            return False
        opcode = (wire[2] >> 3) & 0x0F
        if opcode == _UPDATE:
            return True
        if opcode != _QUERY or wire[4:6] != b"\x00\x01":
            return False
        labels: list[bytes] = []
        at = 12
        while at < len(wire) and wire[at] != 0:
            length = wire[at]
            if length & 0xC0:  # a compression pointer in the question: not for the door
                return False
            labels.append(wire[at + 1 : at + 1 + length].lower())
            at += 1 + length
        if at + 3 > len(wire) or wire[at + 1 : at + 3] != struct.pack("!H", _SOA):
            return False
        return any(tuple(labels[i:]) in self._zone_labels for i in range(len(labels)))

    def receive(self, wire: bytes, now: float) -> Reply | UpdatePlan | None:
        """The decision for one message; None: drop it (not a query, or no header).

        The usual message (unsigned, or signed by a configured key with a valid MAC) is
        parsed and verified in one pass; anything else takes `_receive_refused`, which
        parses without verifying to say what is wrong with it."""
        try:
            message = dns.message.from_wire(wire, keyring=self._tsig_keys)
        except dns.message.ShortHeader:
            return None
        except Exception:  # unparsable, or a TSIG that does not verify: find out which
            return self._receive_refused(wire, now)
        if message.flags & dns.flags.QR:
            return None  # a response: never answer one (no reflection loops)
        key: DoorKey | None = None
        try:
            if message.had_tsig:
                assert message.keyname is not None
                key = self.keys.get(message.keyname)
                assert key is not None  # dnspython found it in `_tsig_keys`
                self._check_fresh(message, key, now)
            return self._decide(message, key)
        except DnsRefused as refusal:
            return self._refusal(message, message, key, refusal, now)

    def _receive_refused(self, wire: bytes, now: float) -> Reply | None:
        try:
            query = dns.message.from_wire(wire, keyring=False)  # verified below
        except dns.message.ShortHeader:
            return None
        except Exception as exc:  # any parse failure of untrusted bytes
            header = formerr(wire)
            if header is None:
                return None
            return Reply(None, "malformed", "rejected", f"unparsable: {exc!r}", header_only=header)
        if query.flags & dns.flags.QR:
            return None  # a response: never answer one (no reflection loops)
        key: DoorKey | None = None
        verified = query
        try:
            if query.had_tsig:
                assert query.keyname is not None
                key = self.keys.get(query.keyname)
                verified = self._authenticate(query, wire, key, now)
            # It verifies: the first parse failed on something else, which is malformed.
            raise DnsRefused(dns.rcode.FORMERR, "a message dnspython cannot read")
        except DnsRefused as refusal:
            return self._refusal(query, verified, key, refusal, now)

    def reply(self, plan: UpdatePlan, rcode: int, reason: str | None) -> Reply:
        """The signed answer to a plan that was carried out (or refused while it was)."""
        response = dns.message.make_response(plan.query, fudge=self._fudge)
        response.set_rcode(dns.rcode.Rcode.make(rcode))
        outcome = "applied" if rcode == dns.rcode.NOERROR else "rejected"
        if rcode == dns.rcode.SERVFAIL:
            outcome = "failed"
        return Reply(response, "update", outcome, reason, plan.key.label, plan.zone)

    # --- TSIG -----------------------------------------------------------------------

    def _authenticate(
        self, query: dns.message.Message, wire: bytes, key: DoorKey | None, now: float
    ) -> dns.message.Message:
        """The message verified with its key (RFC 8945 §5.2): key, MAC, then time."""
        if key is None:
            raise DnsRefused(
                dns.rcode.NOTAUTH, f"unknown key {query.keyname}", tsig_error=dns.rcode.BADKEY
            )
        if query.keyalgorithm != key.algorithm:
            raise DnsRefused(
                dns.rcode.NOTAUTH,
                f"key {key.label} signs with {key.algorithm}, not {query.keyalgorithm}",
                tsig_error=dns.rcode.BADKEY,
            )
        tsig = cast(dns.rdtypes.ANY.TSIG.TSIG, query.tsig[0])  # type: ignore[index]
        full = dns.tsig.mac_sizes[key.algorithm]
        if not max(10, full // 2) <= len(tsig.mac) <= full:
            raise DnsRefused(dns.rcode.FORMERR, f"MAC of {len(tsig.mac)} octets")
        if len(tsig.mac) < full:
            raise DnsRefused(
                dns.rcode.NOTAUTH,
                f"truncated MAC ({len(tsig.mac)} of {full} octets)",
                tsig_error=dns.rcode.BADTRUNC,
            )
        try:
            verified = dns.message.from_wire(wire, keyring={key.name: key.tsig})
        except dns.tsig.BadTime:
            query.keyring = key.tsig  # the MAC verified: the error answer is signed
            raise DnsRefused(
                dns.rcode.NOTAUTH, "time signed outside the fudge", tsig_error=dns.rcode.BADTIME
            ) from None
        except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm):
            raise DnsRefused(
                dns.rcode.NOTAUTH, f"bad signature for key {key.label}", tsig_error=dns.rcode.BADSIG
            ) from None
        except dns.tsig.PeerError:
            raise DnsRefused(dns.rcode.FORMERR, "a request carrying a TSIG error") from None
        self._check_fresh(query, key, now)
        return verified

    def _check_fresh(self, message: dns.message.Message, key: DoorKey, now: float) -> None:
        """Within this door's fudge (dnspython checked the message's own), and not seen
        before; a message refused here verified, so its key signs the answer."""
        tsig = cast(dns.rdtypes.ANY.TSIG.TSIG, message.tsig[0])  # type: ignore[index]
        fudge = min(tsig.fudge, self._fudge)
        message.keyring = key.tsig
        if abs(tsig.time_signed - now) > fudge:
            raise DnsRefused(
                dns.rcode.NOTAUTH,
                f"time signed {tsig.time_signed - now:+.0f} s from now (fudge {fudge} s)",
                tsig_error=dns.rcode.BADTIME,
            )
        if not self.replays.first_time(key, tsig.mac, tsig.time_signed + fudge, now):
            raise DnsRefused(dns.rcode.NOTAUTH, "replayed", tsig_error=dns.rcode.BADTIME)

    def _refusal(
        self,
        query: dns.message.Message,
        verified: dns.message.Message,
        key: DoorKey | None,
        refusal: DnsRefused,
        now: float,
    ) -> Reply:
        """RFC 8945 §5.3.2: key and MAC errors unsigned; time errors, and anything refused
        after the MAC verified, signed."""
        if refusal.tsig_error in _UNSIGNED_TSIG_ERRORS:
            response = dns.message.make_response(query)  # parsed unverified: no keyring
            original = cast(dns.rdtypes.ANY.TSIG.TSIG, query.tsig[0])  # type: ignore[index]
            error = dns.rdtypes.ANY.TSIG.TSIG(  # type: ignore[no-untyped-call]
                _ANY,
                dns.rdatatype.TSIG,
                original.algorithm,
                original.time_signed,
                original.fudge,
                b"",
                query.id,
                refusal.tsig_error,
                b"",
            )
            assert query.keyname is not None
            response.tsig = dns.rrset.from_rdata(query.keyname, 0, error)
        elif refusal.tsig_error == dns.rcode.BADTIME:
            assert key is not None
            response = dns.message.make_response(query, fudge=self._fudge)
            response.use_tsig(
                key.tsig,
                key.name,
                fudge=self._fudge,
                tsig_error=dns.rcode.BADTIME,
                other_data=_time48(now),
                algorithm=key.algorithm,
            )
        else:
            response = dns.message.make_response(verified, fudge=self._fudge)
        response.set_rcode(dns.rcode.Rcode.make(refusal.rcode))
        asked = _text(query.question[0].name) if query.question else None
        key_name = key.label if key else None
        if query.opcode() == _UPDATE:
            return Reply(response, "update", "rejected", refusal.detail, key_name, zone=asked)
        return Reply(response, "query", "rejected", refusal.detail, key_name, name=asked)

    # --- what is asked --------------------------------------------------------------

    def _decide(self, message: dns.message.Message, key: DoorKey | None) -> Reply | UpdatePlan:
        if message.edns > 0:
            raise DnsRefused(dns.rcode.BADVERS, f"EDNS version {message.edns}")
        opcode = message.opcode()
        if opcode == _UPDATE:
            if key is None:
                raise DnsRefused(dns.rcode.REFUSED, "unsigned update")
            return self._plan(cast(dns.update.UpdateMessage, message), key)
        if opcode == _QUERY:
            return self._soa(message, key)
        raise DnsRefused(dns.rcode.NOTIMP, f"opcode {dns.opcode.to_text(opcode)}")

    def _soa(self, query: dns.message.Message, key: DoorKey | None) -> Reply:
        """The SOA as an authoritative server answers it: at the apex in the answer,
        below it NODATA with the SOA in the authority section."""
        if len(query.question) != 1:
            raise DnsRefused(dns.rcode.FORMERR, f"{len(query.question)} questions")
        question = query.question[0]
        if question.rdclass != _IN or question.rdtype != _SOA:
            raise DnsRefused(
                dns.rcode.REFUSED,
                f"the door answers SOA queries only, not {dns.rdatatype.to_text(question.rdtype)}",
            )
        name = _text(question.name)
        zone = longest_zone(name, self._configured)
        if zone is None or zone not in self.zones:
            raise DnsRefused(dns.rcode.REFUSED, f"{name} is in no zone the door serves")
        response = dns.message.make_response(query, fudge=self._fudge)
        response.flags |= dns.flags.AA
        soa = self._soa_rrset(zone)
        (response.answer if name == zone else response.authority).append(soa)
        key_name = key.label if key else None
        return Reply(response, "query", "answered", None, key_name, zone=zone, name=name)

    def _soa_rrset(self, zone: str) -> dns.rrset.RRset:
        origin = dns.name.from_text(zone)
        if self._local_soa is not None:
            local = self._local_soa(origin)
            if local is not None:
                return local
        rdata = dns.rdata.from_text(
            _IN,
            _SOA,
            f"{NOT_THE_PRIMARY} hostmaster.{origin} 1 3600 600 86400 {self._ttl[zone]}",
        )
        return dns.rrset.from_rdata_list(origin, SOA_TTL, [rdata])

    def _plan(self, update: dns.update.UpdateMessage, key: DoorKey) -> UpdatePlan:
        """RFC 2136 §3.1-3.4's checks that need no I/O, in its order: zone (NOTAUTH),
        prerequisites and updates (NOTZONE, FORMERR), then this door's policy (REFUSED)."""
        if len(update.zone) != 1:
            raise DnsRefused(dns.rcode.FORMERR, f"{len(update.zone)} records in the zone section")
        zone_record = update.zone[0]
        zone = _text(zone_record.name)
        if zone_record.rdclass != _IN or zone not in self.zones:
            raise DnsRefused(dns.rcode.NOTAUTH, f"the door does not serve the zone {zone}")
        if zone not in key.zones:
            raise DnsRefused(dns.rcode.REFUSED, f"key {key.label} may not change {zone}")
        if len(update.prerequisite) + len(update.update) > MAX_RECORDS:
            raise DnsRefused(dns.rcode.REFUSED, f"more than {MAX_RECORDS} records")
        origin = zone_record.name
        prerequisites = _merged(self._prerequisite(rr, origin, zone) for rr in update.prerequisite)
        operations = tuple(self._operation(rr, origin, zone, key) for rr in update.update)
        return UpdatePlan(update, key, zone, prerequisites, operations)

    def _target(self, name: dns.name.Name, origin: dns.name.Name, zone: str) -> Target:
        if not name.is_subdomain(origin):
            raise DnsRefused(dns.rcode.NOTZONE, f"{name} is outside the zone {zone}")
        try:
            fqdn = canonical_name(name.to_text(omit_final_dot=True), allow_underscore=True)
        except ReceiverError as exc:
            raise DnsRefused(dns.rcode.REFUSED, exc.detail) from None
        if longest_zone(fqdn, self._configured) != zone:
            raise DnsRefused(dns.rcode.NOTZONE, f"{fqdn} is in a zone of its own")
        is_challenge = fqdn.split(".", 1)[0] == CHALLENGE_LABEL
        domain = fqdn.split(".", 1)[1] if is_challenge and "." in fqdn else fqdn
        try:
            route = (
                self._policy.route(Challenge(Action.ADD, domain, fqdn, ""))
                if is_challenge
                else self._policy.route_name(fqdn)
            )
        except RequestRejected as exc:
            raise DnsRefused(dns.rcode.REFUSED, exc.detail) from None
        return Target(fqdn, domain, route, apex=fqdn == zone)

    def _prerequisite(
        self, record: dns.rrset.RRset, origin: dns.name.Name, zone: str
    ) -> Prerequisite:
        target = self._target(record.name, origin, zone)
        if record.ttl != 0:
            raise DnsRefused(dns.rcode.FORMERR, f"prerequisite with TTL {record.ttl}")
        rdtype, deleting = record.rdtype, record.deleting
        if deleting is None and rdtype == _ANY_TYPE:
            raise DnsRefused(dns.rcode.FORMERR, "value-dependent prerequisite of type ANY")
        _check_type(rdtype, "prerequisite")
        if deleting == _ANY:
            condition = Condition.NAME_IN_USE if rdtype == _ANY_TYPE else Condition.RRSET_EXISTS
            return Prerequisite(condition, target)
        if deleting == _NONE:
            absent = Condition.NAME_NOT_IN_USE if rdtype == _ANY_TYPE else Condition.RRSET_ABSENT
            return Prerequisite(absent, target)
        values = frozenset(_joined(r).decode("ascii", "replace") for r in record)
        return Prerequisite(Condition.RRSET_EQUALS, target, values)

    def _operation(
        self, record: dns.rrset.RRset, origin: dns.name.Name, zone: str, key: DoorKey
    ) -> Operation:
        target = self._target(record.name, origin, zone)
        rdtype, deleting = record.rdtype, record.deleting
        if deleting is not None and record.ttl != 0:
            raise DnsRefused(dns.rcode.FORMERR, f"delete with TTL {record.ttl}")
        if deleting != _ANY and rdtype == _ANY_TYPE:
            raise DnsRefused(dns.rcode.FORMERR, "an add or value delete of type ANY")
        _check_type(rdtype, "update")
        if not key.may_change(target.fqdn):
            raise DnsRefused(
                dns.rcode.REFUSED, f"key {key.label} may not change {target.fqdn} (names)"
            )
        if deleting == _ANY:
            return DeleteOwnValues(target)
        value = _value(record[0], target)
        return AddValue(target, value) if deleting is None else DeleteValue(target, value)


def _check_type(rdtype: dns.rdatatype.RdataType, what: str) -> None:
    if rdtype in (_TXT, _ANY_TYPE):
        return
    if dns.rdatatype.is_metatype(rdtype):
        raise DnsRefused(dns.rcode.FORMERR, f"{what} of meta type {rdtype}")
    raise DnsRefused(
        dns.rcode.REFUSED, f"{what} of type {dns.rdatatype.to_text(rdtype)}: only TXT is allowed"
    )


def _value(rdata: dns.rdata.Rdata, target: Target) -> str:
    try:
        value = _joined(rdata).decode("ascii")
    except UnicodeDecodeError:
        raise DnsRefused(dns.rcode.REFUSED, "a TXT value that is not ASCII") from None
    if not value.isprintable():
        raise DnsRefused(dns.rcode.REFUSED, "a TXT value with control characters")
    if target.is_challenge:
        try:
            return check_challenge_value(value)
        except ReceiverError:
            raise DnsRefused(
                dns.rcode.REFUSED, f"the value at {target.fqdn} is not a challenge digest"
            ) from None
    if len(value) > MAX_VALUE_LENGTH:
        raise DnsRefused(dns.rcode.REFUSED, f"a TXT value over {MAX_VALUE_LENGTH} characters")
    return value


def _joined(rdata: dns.rdata.Rdata) -> bytes:
    return b"".join(cast(dns.rdtypes.txtbase.TXTBase, rdata).strings)


def _merged(prerequisites: Iterable[Prerequisite]) -> tuple[Prerequisite, ...]:
    """Value-dependent prerequisites of one name form one RRset (RFC 2136 §3.2.5)."""
    merged: list[Prerequisite] = []
    sets: dict[str, int] = {}
    for prerequisite in prerequisites:
        if prerequisite.condition is not Condition.RRSET_EQUALS:
            merged.append(prerequisite)
            continue
        index = sets.get(prerequisite.target.fqdn)
        if index is None:
            sets[prerequisite.target.fqdn] = len(merged)
            merged.append(prerequisite)
        else:
            earlier = merged[index]
            merged[index] = Prerequisite(
                earlier.condition, earlier.target, earlier.values | prerequisite.values
            )
    return tuple(merged)


def _text(name: dns.name.Name) -> str:
    return name.canonicalize().to_text(omit_final_dot=True)


def _time48(now: float) -> bytes:
    """The server's time as TSIG's 48-bit Other Data of a BADTIME answer."""
    seconds = int(now)
    return struct.pack("!HI", (seconds >> 32) & 0xFFFF, seconds & 0xFFFFFFFF)


def render(reply: Reply, max_size: int | None) -> bytes:
    """Wire bytes within the transport's limit (`max_size` None: TCP); too big for UDP,
    a TC answer, and the client retries over TCP."""
    if reply.message is None:
        assert reply.header_only is not None
        return reply.header_only
    message = reply.message
    limit = TCP_MAX_MESSAGE if max_size is None else _udp_limit(message)
    try:
        return message.to_wire(max_size=limit)
    except dns.exception.TooBig:
        message.answer.clear()
        message.authority.clear()
        message.flags |= dns.flags.TC
        return message.to_wire(max_size=limit)


def _udp_limit(response: dns.message.Message) -> int:
    if response.edns < 0:
        return PLAIN_UDP_PAYLOAD
    return max(PLAIN_UDP_PAYLOAD, min(response.payload, EDNS_PAYLOAD))


# --- the bridge to the core -------------------------------------------------------------


async def carry_out(
    runtime: Runtime, door: Rfc2136Door, plan: UpdatePlan, summary: dict[str, Any], request_id: str
) -> tuple[int, str | None]:
    """Apply a verified UPDATE all or nothing: the one place the door meets the core.

    Everything is checked before the first write: prerequisites (on the provider's TXT
    records), the values this key wrote (the journal), another sender's values, the key's
    change budget. The net changes then go through `receiver.core.apply` (policy, journal,
    dispatcher, propagation); if one fails, those already made are undone and the answer
    is SERVFAIL. Returns (RCODE, reason)."""
    key = plan.key
    targets = [op.target for op in plan.operations] + [p.target for p in plan.prerequisites]
    async with AsyncExitStack() as held:  # one message at a time per name, in a fixed order
        for name in sorted({(t.route.zone.name, t.route.fqdn) for t in targets}):
            await held.enter_async_context(door.locks.hold((DOOR, *name)))
        try:
            changes = await _changes(runtime, plan)
            wait = key.budget.take(max(1, len(changes) + len(plan.prerequisites)), time.monotonic())
            if wait:
                runtime.metrics.throttled(DOOR)
                return (
                    dns.rcode.REFUSED,
                    f"key {key.label} is over its change budget ({wait:.0f} s)",
                )
            for prerequisite in plan.prerequisites:
                unmet = prerequisite.unmet(await _read(runtime, prerequisite.target.route))
                if unmet is not None:
                    where = prerequisite.target.fqdn
                    return unmet, f"prerequisite {prerequisite.condition} at {where} not met"
        except DnsRefused as refusal:
            return refusal.rcode, refusal.detail
        except (ReceiverError, ProviderError) as exc:
            return dns.rcode.SERVFAIL, f"cannot check the update: {exc}"
        done: list[Change] = []
        for change in changes:
            challenge = change.target.challenge(change.action, change.value)
            origin = Origin(DOOR, sender=key.label, domain=change.target.domain)
            try:
                await apply(runtime, ChangeRequest(challenge, origin, request_id), {})
            except ReceiverError as exc:
                undone = await _undo(runtime, done, key, request_id)
                refused = isinstance(exc, RequestRejected)
                why = exc.internal or exc.detail
                reason = (
                    f"{change.action} {change.target.fqdn} failed ({exc.code}: {why});"
                    f" undid {undone} of {len(done)} changes made"
                )
                return (dns.rcode.REFUSED if refused else dns.rcode.SERVFAIL), reason
            done.append(change)
        summary["changes"] = [f"{c.action} {c.target.fqdn} {c.value}" for c in done]
    return dns.rcode.NOERROR, None


async def _changes(runtime: Runtime, plan: UpdatePlan) -> list[Change]:
    """The net writes, each with whether its undo is known (from the journal), after
    refusing any that would take or move another sender's value."""
    journal = runtime.journal
    assert journal is not None  # the door requires it (receiver.config)
    own: dict[tuple[str, str], frozenset[str]] = {}
    if any(isinstance(op, DeleteOwnValues) for op in plan.operations):
        wanted = {(op.target.route.zone.name, op.target.route.fqdn) for op in plan.operations}
        found: dict[tuple[str, str], set[str]] = {}
        for entry in await _journal(journal.candidates(sender=plan.key.label)):
            if (entry.zone, entry.fqdn) in wanted:
                found.setdefault((entry.zone, entry.fqdn), set()).add(entry.value)
        own = {where: frozenset(values) for where, values in found.items()}
    changes = []
    for action, target, value in net_changes(plan.operations, own):
        route = target.route
        # Committed entries suffice: a value can be copied only once it is public, and
        # this door's own writes at the name are committed (the name lock is held).
        published_by = journal.committed_publisher(
            zone=route.zone.name, fqdn=route.fqdn, value=value
        )
        entry = await _journal(published_by)
        if entry is not None and entry.sender != plan.key.label:
            raise DnsRefused(
                dns.rcode.REFUSED,
                f"{value} at {route.fqdn} was published by another sender",
            )
        published = entry is not None
        undo = not published if action is Action.ADD else published
        changes.append(Change(action, target, value, undo))
    return changes


async def _journal(read: Any) -> Any:
    try:
        return await read
    except Exception as exc:  # any backend failure: refuse rather than guess
        raise DnsRefused(dns.rcode.SERVFAIL, f"cannot read the journal: {exc}") from exc


async def _read(runtime: Runtime, route: Route) -> frozenset[str]:
    provider = runtime.dispatcher.provider_for(route.zone)
    ref = ZoneRef(route.zone.name, await provider.zone_handle(route.zone.name))
    return frozenset(await provider.list_txt(ref, route.fqdn))


async def _undo(runtime: Runtime, done: Sequence[Change], key: DoorKey, request_id: str) -> int:
    """The inverse of each change made, newest first, where the journal knew the state
    before it; journalled like any write. Returns how many were undone."""
    undone = 0
    for change in reversed(done):
        if not change.undo:
            continue
        inverse = Action.REMOVE if change.action is Action.ADD else Action.ADD
        origin = Origin(DOOR, sender=key.label, domain=change.target.domain)
        challenge = change.target.challenge(inverse, change.value)
        try:
            await apply(runtime, ChangeRequest(challenge, origin, request_id), {})
        except ReceiverError as exc:  # journalled: the sweep removes what is left
            log.error("rfc2136_undo_failed", fqdn=change.target.fqdn, error=exc.code)
            continue
        undone += 1
    return undone


# --- the listener's side ----------------------------------------------------------------


class Rfc2136Listener:
    """What the built-in DNS listener hands the door's messages to (`claims` says which):
    decide, carry out, one log event per message, metrics, the answer's bytes."""

    def __init__(self, runtime: Runtime, door: Rfc2136Door) -> None:
        self.runtime = runtime
        self.door = door

    def claims(self, wire: bytes) -> bool:
        return self.door.claims(wire)

    async def respond(
        self, wire: bytes, *, remote: str | None, max_size: int | None
    ) -> bytes | None:
        """The answer to one message (`max_size` None: TCP), or None to send nothing."""
        request_id = uuid.uuid4().hex
        bind_request(request_id)
        started = time.perf_counter()
        summary: dict[str, Any] = {
            "door": DOOR,
            "remote": remote,
            "transport": "tcp" if max_size is None else "udp",
        }
        decision = self.door.receive(wire, wall_clock())
        if decision is None:  # no header to answer, or a response: silence, as BIND does
            log.debug("rfc2136_dropped", remote=remote, size=len(wire))
            return None
        if isinstance(decision, UpdatePlan):
            try:
                rcode, reason = await carry_out(
                    self.runtime, self.door, decision, summary, request_id
                )
            except Exception:  # a bug: the client gets SERVFAIL, the log the traceback
                log.exception("rfc2136_failed", request_id=request_id)
                rcode, reason = dns.rcode.SERVFAIL, "unexpected error; see the traceback"
            reply = self.door.reply(decision, rcode, reason)
        else:
            reply = decision
        elapsed = time.perf_counter() - started
        summary.update(
            event_type=reply.event,
            key_name=reply.key,  # `key` alone would be redacted as a secret-sounding field
            zone=reply.zone,
            name=reply.name,
            rcode=reply.rcode,
            outcome=reply.outcome,
            duration_ms=round(elapsed * 1000, 2),
        )
        if reply.reason is not None:
            summary["reason"] = reply.reason
        self.runtime.metrics.count_request(DOOR, reply.event, reply.outcome, elapsed)
        fields = {name: value for name, value in summary.items() if value is not None}
        (log.debug if reply.outcome == "answered" else log.info)("rfc2136", **fields)
        return render(reply, max_size)


@asynccontextmanager
async def serving(
    runtime: Runtime, local: Responder | None, *, reuse_port: bool = False
) -> AsyncIterator[tuple[str, int]]:
    """The door on the built-in DNS listener until the block exits: on the `local`
    responder's socket when `listen` is the same address (or unset), else on its own.
    Yields the address it answers on."""
    settings = runtime.settings
    local_zones = [zone for zone in settings.zones if zone.capabilities.serves_dns]
    local_listen = local_zones[0].options.dns_listen if local_zones else LocalSettings().dns_listen
    listen = configured(settings.rfc2136_door, "rfc2136_door").listen or local_listen
    answerer = local.answerer if local is not None else None
    local_soa = answerer.soa_for if answerer is not None else None
    door = Rfc2136Door(settings, runtime.policy, local_soa=local_soa)
    handler = Rfc2136Listener(runtime, door)
    if local is not None and listen == local_listen:
        local.attach(handler)
        try:
            _listening(local.address, door, shared=True)
            yield local.address
        finally:
            local.attach(None)
        return
    async with serving_door(handler, listen, reuse_port=reuse_port) as responder:
        _listening(responder.address, door, shared=False)
        yield responder.address


def _listening(address: tuple[str, int], door: Rfc2136Door, *, shared: bool) -> None:
    host, port = address
    log.info(
        "rfc2136_listening",
        address=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        zones=sorted(door.zones),
        keys=[key.label for key in door.keys.all()],
        shared_with_local=shared,
    )
