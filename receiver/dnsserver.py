"""The built-in authoritative DNS responder for zones on the `local` provider.

It answers what a CA's resolver asks while validating DNS-01: TXT at the challenge name,
SOA and NS at the apex, and correct negative answers (NXDOMAIN for names that do not
exist, NODATA for names that do, both with the SOA for negative caching). It reads the
same SQLite store the `local` adapter writes, so several receiver processes can share
one file and every responder sees every value.

Untrusted bytes arrive here: anything that does not parse is answered FORMERR (when a
header can be read) or dropped, and nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import sqlite3
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import structlog

from providers.errors import ProviderError
from providers.local import ChallengeStore, LocalSettings, RecordStore, SqliteRecords, StoredValue

log = structlog.get_logger("receiver.dnsserver")

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation
PLAIN_UDP_PAYLOAD = 512
TCP_MAX_MESSAGE = 65535  # the two-byte length prefix
TCP_IDLE_SECONDS = 10.0
CACHE_ENTRIES = 4096
INFRASTRUCTURE_TTL = 3600  # NS and nameserver addresses: they do not change
_IN = dns.rdataclass.IN
_TXT, _SOA, _NS, _ANY = (dns.rdatatype.TXT, dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.ANY)
_ADDRESS_TYPES = {4: dns.rdatatype.A, 6: dns.rdatatype.AAAA}


class RecordView(Protocol):
    """What answers are read from, synchronously: a SQLite reader connection
    (`ChallengeStore`), or the in-memory mirror of records held in PostgreSQL."""

    def values(self, fqdn: str) -> list[StoredValue]: ...

    def has_descendants(self, fqdn: str) -> bool: ...

    def serial(self) -> int: ...

    def data_version(self) -> int:
        """Changes whenever the records may have changed: the answer cache's key."""
        ...


class DoorHandler(Protocol):
    """A door served on this listener (the RFC 2136 door): the messages it `claims`
    go to it instead of the `local` answers; it answers them asynchronously."""

    def claims(self, wire: bytes) -> bool: ...

    async def respond(
        self, wire: bytes, *, remote: str | None, max_size: int | None
    ) -> bytes | None: ...


MAX_DOOR_TASKS = 256  # UDP messages a door works on at once; beyond, dropped (clients retry)


@dataclass(frozen=True)
class ServedZone:
    origin: dns.name.Name
    nameservers: tuple[dns.name.Name, ...]
    hostmaster: dns.name.Name


class Answerer:
    """Turns one query (wire bytes) into one response (wire bytes, or None to drop).

    Responses are cached by the query bytes (minus the id) and reused while the store's
    data version is unchanged and no value in them has expired.
    """

    def __init__(
        self,
        store: RecordView,
        zones: Sequence[str],
        settings: LocalSettings,
        glue_addresses: Sequence[str],
    ) -> None:
        self._store = store
        self._negative_ttl = settings.negative_ttl
        self._zones: dict[dns.name.Name, ServedZone] = {}
        for zone in zones:
            origin = dns.name.from_text(zone)
            nameservers = tuple(dns.name.from_text(ns) for ns in settings.nameservers) or (
                dns.name.from_text("ns", origin),
            )
            self._zones[origin] = ServedZone(
                origin, nameservers, dns.name.from_text("hostmaster", origin)
            )
        self._glue: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        for served in self._zones.values():
            for ns in served.nameservers:
                if ns.is_subdomain(served.origin):
                    self._glue[ns] = [_address(a) for a in glue_addresses]
        self._cache: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._cache_version = -1

    def refresh(self) -> None:
        """Drop cached answers if any process changed the store since the last call.

        Called before every TCP query and before every batch of UDP queries (one cheap
        SQLite call per batch rather than per query)."""
        version = self._store.data_version()
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version

    def answer(self, wire: bytes, *, max_size: int | None, refresh: bool = True) -> bytes | None:
        """`max_size` None means TCP (no limit); otherwise the UDP limit applies."""
        if refresh:
            self.refresh()
        key = wire[2:] + (b"T" if max_size is None else b"U")
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.time():
            self._cache.move_to_end(key)
            return wire[:2] + cached[0]
        response, valid_until = self._respond(wire, max_size)
        if response is not None and valid_until > time.time():
            self._cache[key] = (response[2:], valid_until)
            if len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return response

    def _respond(self, wire: bytes, max_size: int | None) -> tuple[bytes | None, float]:
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            return None, 0
        except Exception:  # any parse failure of untrusted bytes
            return formerr(wire), 0
        if query.flags & dns.flags.QR:
            return None, 0  # a response, not a query: never answer (no reflection loops)
        response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        valid_until = float("inf")
        if query.edns > 0:
            response.use_edns(0, 0, EDNS_PAYLOAD)
            response.set_rcode(dns.rcode.BADVERS)
        elif query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            valid_until = self._resolve(query.question[0], response)
        limit = TCP_MAX_MESSAGE if max_size is None else _udp_limit(query)
        return _to_wire(response, limit), valid_until

    def _resolve(self, question: dns.rrset.RRset, response: dns.message.Message) -> float:
        qname, qtype = question.name, question.rdtype
        if question.rdclass != _IN:
            response.set_rcode(dns.rcode.REFUSED)
            return float("inf")
        zone = self._zone_of(qname)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return float("inf")
        response.flags |= dns.flags.AA
        key = qname.to_text(omit_final_dot=True).lower()
        values = self._store.values(key)
        valid_until = min((v.expires for v in values), default=float("inf"))
        answers: list[dns.rrset.RRset] = []
        at_apex = qname == zone.origin
        if qtype in (_TXT, _ANY) and values:
            rdatas = [dns.rdtypes.ANY.TXT.TXT(_IN, _TXT, _strings(v.value)) for v in values]
            answers.append(_rrset(qname, min(v.ttl for v in values), rdatas))
        if at_apex and qtype in (_SOA, _ANY):
            answers.append(self._soa(zone, qname))
        if at_apex and qtype in (_NS, _ANY):
            ns = [dns.rdata.from_text(_IN, _NS, n.to_text()) for n in zone.nameservers]
            answers.append(_rrset(qname, INFRASTRUCTURE_TTL, ns))
        glue = self._glue.get(qname, [])
        address = [r for r in glue if r.rdtype == qtype or qtype == _ANY]
        if address:
            answers.append(_rrset(qname, INFRASTRUCTURE_TTL, address))
        if answers:
            response.answer.extend(answers)
            return valid_until
        exists = at_apex or bool(values) or bool(glue) or self._store.has_descendants(key)
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._soa(zone, zone.origin))
        return valid_until

    def soa_for(self, origin: dns.name.Name) -> dns.rrset.RRset | None:
        """The SOA of a zone served here (for a door answering SOA queries), or None."""
        zone = self._zones.get(origin)
        return None if zone is None else self._soa(zone, origin)

    def _zone_of(self, qname: dns.name.Name) -> ServedZone | None:
        name = qname
        while True:
            served = self._zones.get(name)
            if served is not None or name == dns.name.root or len(name) == 0:
                return served
            name = name.parent()

    def _soa(self, zone: ServedZone, owner: dns.name.Name) -> dns.rrset.RRset:
        fields = (
            f"{zone.nameservers[0]} {zone.hostmaster} {self._store.serial()}"
            f" 3600 600 86400 {self._negative_ttl}"
        )
        return _rrset(owner, self._negative_ttl, [dns.rdata.from_text(_IN, _SOA, fields)])


def _udp_limit(query: dns.message.Message) -> int:
    """The largest UDP answer the client can take: its EDNS payload size, capped at ours
    and never below 512 (RFC 6891 §6.2.5). Without the floor, a payload of 0 would lift
    the cap altogether: dnspython reads `max_size=0` as 65,535."""
    if query.edns < 0:
        return PLAIN_UDP_PAYLOAD
    return max(PLAIN_UDP_PAYLOAD, min(query.payload, EDNS_PAYLOAD))


def _rrset(owner: dns.name.Name, ttl: int, rdatas: Sequence[dns.rdata.Rdata]) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(owner, ttl, list(rdatas))


def _strings(value: str) -> list[bytes]:
    data = value.encode()
    return [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]


def _address(text: str) -> dns.rdata.Rdata:
    rdtype = _ADDRESS_TYPES[ipaddress.ip_address(text).version]
    return dns.rdata.from_text(_IN, rdtype, text)


def _to_wire(response: dns.message.Message, limit: int) -> bytes:
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # Too big for UDP: say so with TC and no records; the client retries over TCP.
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        # Still too big: the echoed question section is (a query of many questions, which
        # is answered FORMERR anyway). Send the header alone rather than nothing.
        response.question.clear()
        return response.to_wire(max_size=limit)


def formerr(wire: bytes) -> bytes | None:
    """A bare FORMERR echoing the id and opcode, when even the header is all we trust."""
    if len(wire) < 12:
        return None
    ident, flags = struct.unpack("!HH", wire[:4])
    if flags & 0x8000:
        return None  # was a response
    opcode_bits = flags & 0x7800
    return struct.pack("!HHHHHH", ident, 0x8000 | opcode_bits | dns.rcode.FORMERR, 0, 0, 0, 0)


UDP_BATCH = 64  # datagrams read per wakeup: amortises the event loop's per-wakeup cost


class _UdpServer:
    """A non-blocking UDP socket drained in batches from the event loop's reader callback.

    asyncio's datagram transport delivers one datagram per loop iteration; draining the
    socket per wakeup roughly doubles throughput under load. Replies that would block
    are dropped, as a busy DNS server drops them; the client retries.
    """

    def __init__(
        self, answerer: Answerer | None, sock: socket.socket, door: DoorHandler | None = None
    ) -> None:
        self._answerer = answerer
        self.door = door
        self._door_tasks: set[asyncio.Task[None]] = set()
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._drain)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def _drain(self) -> None:
        if self._answerer is not None:
            self._answerer.refresh()
        for _ in range(UDP_BATCH):
            try:
                data, addr = self._sock.recvfrom(PLAIN_UDP_PAYLOAD * 128)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP errors surface here on some systems: keep serving
                continue
            if self.door is not None and (self._answerer is None or self.door.claims(data)):
                self._to_door(self.door, data, addr)
                continue
            assert self._answerer is not None
            try:
                response = self._answerer.answer(data, max_size=PLAIN_UDP_PAYLOAD, refresh=False)
            except Exception:  # one bad packet must not stop the server
                log.exception("dns_query_failed", transport="udp")
                continue
            if response is not None:
                with contextlib.suppress(OSError):
                    self._sock.sendto(response, addr)

    def _to_door(self, door: DoorHandler, data: bytes, addr: tuple[str, int]) -> None:
        if len(self._door_tasks) >= MAX_DOOR_TASKS:
            return  # busy: dropped, as a busy server drops; the client retries
        task = self._loop.create_task(self._door_reply(door, data, addr))
        self._door_tasks.add(task)
        task.add_done_callback(self._door_tasks.discard)

    async def _door_reply(self, door: DoorHandler, data: bytes, addr: tuple[str, int]) -> None:
        try:
            response = await door.respond(data, remote=addr[0], max_size=PLAIN_UDP_PAYLOAD)
        except Exception:  # one bad packet must not stop the server
            log.exception("dns_query_failed", transport="udp")
            return
        if response is not None:
            with contextlib.suppress(OSError):
                self._sock.sendto(response, addr)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in self._door_tasks:
            task.cancel()


def _udp_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class Responder:
    """UDP and TCP on one port. `address` is known once started (port 0 picks one).

    `reuse_port`: SO_REUSEPORT on both, for workers that share the port
    (`receiver.workers`): the kernel spreads datagrams and connections over them."""

    def __init__(
        self,
        answerer: Answerer | None,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        door: DoorHandler | None = None,
    ) -> None:
        assert answerer is not None or door is not None
        self._answerer = answerer
        self._door = door
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._udp: _UdpServer | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = (host, port)

    @property
    def answerer(self) -> Answerer | None:
        return self._answerer

    def attach(self, door: DoorHandler | None) -> None:
        """Hand `door` the messages it claims from now on (None: take it away again)."""
        self._door = door
        if self._udp is not None:
            self._udp.door = door

    async def start(self) -> None:
        # With port 0, the TCP listener picks first: the kernel avoids every TCP port in
        # use (client connections included), and UDP is then rarely taken on that port.
        for _ in range(10):
            tcp = await asyncio.start_server(
                self._serve_tcp, self._host, self._port, reuse_port=self._reuse_port
            )
            port = int(tcp.sockets[0].getsockname()[1])
            try:
                udp = _UdpServer(
                    self._answerer,
                    _udp_socket(self._host, port, reuse_port=self._reuse_port),
                    self._door,
                )
            except OSError:
                tcp.close()
                await tcp.wait_closed()
                if self._port:
                    raise
                continue
            self._tcp, self._udp = tcp, udp
            self.address = (self._host, port)
            return
        raise OSError(f"no port free for UDP and TCP on {self._host}")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._connections):
                task.cancel()
            await self._tcp.wait_closed()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_SECONDS):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(length)
                if self._door is not None and (self._answerer is None or self._door.claims(wire)):
                    remote = writer.get_extra_info("peername")
                    response = await self._door.respond(
                        wire, remote=remote[0] if remote else None, max_size=None
                    )
                else:
                    assert self._answerer is not None
                    response = self._answerer.answer(wire, max_size=None)
                if response is None:
                    break
                writer.write(struct.pack("!H", len(response)) + response)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:  # one bad connection must not stop the server
            log.exception("dns_query_failed", transport="tcp")
        finally:
            self._connections.discard(task)
            writer.close()


def glue_addresses(settings: LocalSettings, host: str) -> list[str]:
    """Configured nameserver addresses, else the listen address when it is a real one."""
    if settings.nameserver_addresses:
        return list(settings.nameserver_addresses)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    return [] if address.is_unspecified else [str(address)]


PURGE_INTERVAL_SECONDS = 300.0


@asynccontextmanager
async def running(
    zones: Sequence[str],
    settings: LocalSettings,
    *,
    view: RecordView | None = None,
    records: RecordStore | None = None,
    reuse_port: bool = False,
    purge: bool = True,
) -> AsyncIterator[Responder]:
    """Serve `zones` until the block exits, purging expired values meanwhile.

    `view` is what answers are read from and `records` what is purged; by default both
    are the zones' own SQLite file (`settings.database`). Workers sharing the port pass
    `reuse_port`, and all but one pass `purge=False`: one purge clears the shared store."""
    host, port = _host_port(settings.dns_listen)
    with contextlib.ExitStack() as closing:
        if view is None:
            reader = ChallengeStore(settings.database, lifetime=settings.value_lifetime_seconds)
            closing.callback(reader.close)
            view = reader
        owned = None
        if records is None:
            owned = records = SqliteRecords(settings)
        responder = Responder(
            Answerer(view, zones, settings, glue_addresses(settings, host)),
            host,
            port,
            reuse_port=reuse_port,
        )
        purging = asyncio.create_task(_purge_periodically(records)) if purge else None
        try:
            await responder.start()
            yield responder
        finally:
            if purging is not None:
                purging.cancel()
            await responder.close()
            if purging is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await purging
            if owned is not None:
                await owned.aclose()


@asynccontextmanager
async def serving_door(
    door: DoorHandler, listen: str, *, reuse_port: bool = False
) -> AsyncIterator[Responder]:
    """A listener of its own for a door (no `local` zone shares it): it answers all."""
    host, port = _host_port(listen)
    responder = Responder(None, host, port, reuse_port=reuse_port, door=door)
    try:
        await responder.start()
        yield responder
    finally:
        await responder.close()


async def _purge_periodically(records: RecordStore) -> None:
    while True:
        try:
            purged = await records.purge_expired()
        except (ProviderError, sqlite3.Error) as exc:
            log.warning("purge_failed", error=str(exc))
        else:
            if purged:
                log.info("expired_values_purged", count=purged)
        await asyncio.sleep(PURGE_INTERVAL_SECONDS)


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)
