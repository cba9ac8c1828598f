"""RFC 2136 dynamic update, signed with TSIG: BIND, Knot, PowerDNS, Windows DNS and most
self-hosted DNS, through one adapter (dnspython, natively async).

Updates are prerequisite-free and value-addressed: "add this TXT record" and "delete this
TXT record". The server keeps every other value at the name, ignores a duplicate add and
a delete of an absent record, and drops the record set with its last record. So the
adapter holds no state, and an add needs no read; a removal reads the name first, to
delete the value however another tool split it into strings.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import ClassVar, Literal, Self

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
from dns.rdtypes.txtbase import TXTBase

from providers.base import Capabilities, ChangeContext, ZoneRef, setting
from providers.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    ZoneNotFound,
)
from providers.rate_budget import RateBudget
from providers.secret import Secret
from providers.txt import quote

NAME = "rfc2136"


@dataclass(frozen=True)
class Rfc2136Settings:
    server: str = setting(help="host:port of the primary that accepts updates.")
    tsig_key_name: str = setting(help="Name of the TSIG key, as the server knows it.")
    tsig_secret: Secret = setting(help="The TSIG key's base64 secret.", secret=True)
    tsig_algorithm: str = setting(default="hmac-sha256", help="TSIG algorithm.")
    transport: Literal["tcp", "udp"] = setting(default="tcp", help="tcp or udp.")
    timeout_seconds: float = setting(default=5.0, help="Per-message timeout.")
    zone: str | None = setting(
        default=None, help="The zone apex to update (default: found by an SOA query)."
    )

    def problems(self) -> list[tuple[str, str]]:
        """(option, why) for options that can never work: reported when the config is read."""
        found = []
        host, _, port = self.server.rpartition(":")
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) <= 65535:
            found.append(("server", f"{self.server!r} is not host:port"))
        try:
            base64.b64decode(self.tsig_secret.reveal(), validate=True)
        except (binascii.Error, ValueError):
            found.append(("tsig_secret", "tsig_secret is not valid base64"))
        return found


class Rfc2136Provider:
    name: ClassVar[str] = NAME
    Settings: ClassVar[type[Rfc2136Settings]] = Rfc2136Settings
    capabilities: ClassVar[Capabilities] = Capabilities()
    wants_user_token: ClassVar[bool] = False
    default_rate_per_second: ClassVar[float | None] = None  # your own server

    def __init__(self, settings: Rfc2136Settings, budget: RateBudget) -> None:
        self.settings = settings
        self._budget = budget
        host, _, port = settings.server.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        try:
            secret = base64.b64decode(settings.tsig_secret.reveal(), validate=True)
        except (binascii.Error, ValueError):
            raise ProviderAuthError(NAME, "tsig_secret is not valid base64") from None
        self._key = dns.tsig.Key(settings.tsig_key_name, secret, settings.tsig_algorithm)

    @classmethod
    async def open(cls, settings: Rfc2136Settings, budget: RateBudget) -> Self:
        for option, problem in settings.problems():
            raise (ProviderAuthError if option == "tsig_secret" else ProviderRejected)(
                NAME, problem
            )
        return cls(settings, budget)

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        """The apex of the zone holding `zone_name`, from the server's own SOA answer."""
        if self.settings.zone:
            return self.settings.zone.rstrip(".").lower()
        response = await self._send(dns.message.make_query(zone_name, "SOA"))
        # NXDOMAIN inside a served zone still carries the zone's SOA: only these mean "no".
        if response.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTAUTH):
            raise ZoneNotFound(
                NAME,
                f"{self._host}:{self._port} serves no zone for {zone_name}"
                f" ({dns.rcode.to_text(response.rcode())})",
            )
        # A server that failed to answer (SERVFAIL) is not a server without the zone.
        self._check(response, f"SOA query for {zone_name}", allow=(dns.rcode.NXDOMAIN,))
        for section in (response.answer, response.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return rrset.name.to_text(omit_final_dot=True).lower()
        raise ZoneNotFound(NAME, f"no SOA for {zone_name} from {self._host}:{self._port}")

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        return frozenset(_text(r) for r in await self._records(fqdn))

    async def _records(self, fqdn: str) -> list[TXTBase]:
        response = await self._send(dns.message.make_query(fqdn, "TXT"))
        self._check(response, f"query {fqdn}", allow=(dns.rcode.NXDOMAIN,))
        return [r for rrset in response.answer for r in rrset if isinstance(r, TXTBase)]

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None:
        update = self._update(zone)
        update.add(fqdn + ".", ttl, dns.rdatatype.TXT, quote(value))
        self._check(await self._send(update), f"add at {fqdn}")

    async def remove_txt(self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext) -> None:
        # A delete names the exact record, and another tool may have split the value into
        # several strings: delete every record whose text is the value, as read, and the
        # one string we write (in case it appeared since the read).
        update = self._update(zone)
        update.delete(fqdn + ".", dns.rdatatype.TXT, quote(value))
        for record in await self._records(fqdn):
            if _text(record) == value and len(record.strings) > 1:
                update.delete(fqdn + ".", record)
        self._check(await self._send(update), f"delete at {fqdn}")

    async def aclose(self) -> None:
        return None

    def _update(self, zone: ZoneRef) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(
            zone.handle + ".",
            keyring=self._key,
            keyname=self._key.name,
            keyalgorithm=self._key.algorithm,
        )

    async def _send(self, message: dns.message.Message) -> dns.message.Message:
        await self._budget.take()
        query = dns.asyncquery.tcp if self.settings.transport == "tcp" else dns.asyncquery.udp
        try:
            return await query(
                message, self._host, port=self._port, timeout=self.settings.timeout_seconds
            )
        except (
            dns.tsig.PeerBadKey,
            dns.tsig.PeerBadSignature,
            dns.tsig.PeerBadTime,
            dns.tsig.PeerBadTruncation,
            dns.tsig.BadSignature,
        ) as exc:
            # BIND and Knot reject a wrong key with a TSIG error.
            raise ProviderAuthError(NAME, f"TSIG rejected: {type(exc).__name__}") from None
        except dns.message.UnknownTSIGKey as exc:
            raise ProviderAuthError(NAME, f"TSIG key unknown: {exc}") from None
        except dns.exception.FormError as exc:
            # PowerDNS answers a wrong key with an unsigned FORMERR, which dnspython
            # reports as "response requires a TSIG but does not have one".
            if "TSIG" in str(exc):
                raise ProviderAuthError(NAME, f"TSIG rejected: {exc}") from None
            raise ProviderUnavailable(NAME, f"malformed answer: {exc}") from None
        except (dns.exception.Timeout, TimeoutError) as exc:
            raise ProviderUnavailable(NAME, f"{self._host}:{self._port} timed out") from exc
        except (OSError, EOFError, dns.exception.DNSException) as exc:
            raise ProviderUnavailable(NAME, f"{self._host}:{self._port}: {exc}") from None

    def _check(self, response: dns.message.Message, what: str, allow: tuple[int, ...] = ()) -> None:
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR or rcode in allow:
            return
        text = f"{what}: {dns.rcode.to_text(rcode)} from {self._host}:{self._port}"
        raise _error_for(rcode, text)


def _text(record: TXTBase) -> str:
    """A TXT record's value: its character strings, joined."""
    return b"".join(record.strings).decode(errors="replace")


def _error_for(rcode: int, text: str) -> ProviderError:
    # An unsigned or unauthorised update is REFUSED by BIND and PowerDNS, NOTAUTH by Knot.
    if rcode in (dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.BADSIG, dns.rcode.BADKEY):
        return ProviderAuthError(NAME, text)
    if rcode == dns.rcode.NOTZONE:
        return ZoneNotFound(NAME, text)
    if rcode == dns.rcode.SERVFAIL:
        return ProviderUnavailable(NAME, text)
    return ProviderRejected(NAME, text)
