"""A DNS-over-TCP proxy in front of a real server (BIND) that fails as a server can.

Each message is forwarded to the server and its answer relayed, unless a fault fires:
`servfail` answers SERVFAIL without forwarding; `lost_answer` forwards an UPDATE (so it
takes effect) and answers SERVFAIL instead of the server's answer; `hang` never answers
(the client's timeout fires). Fault answers are TSIG-signed with the key the client
uses, as the server would sign them: an unsigned answer would be an authentication
failure to the client, which is another fault. Every message is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import dns.exception
import dns.message
import dns.opcode
import dns.rcode

FaultKind = Literal["servfail", "lost_answer", "hang"]


@dataclass
class DnsFault:
    kind: FaultKind
    remaining: int
    updates_only: bool = False  # only UPDATE messages (writes)
    fired: int = 0


@dataclass
class DnsProxy:
    upstream_port: int
    keyring: dict[Any, Any]
    messages: int = 0
    faults: list[DnsFault] = field(default_factory=list)
    rate: float = 0.0
    injected: int = 0
    port: int = 0
    _random: random.Random = field(default_factory=lambda: random.Random(0))

    def inject(self, kind: FaultKind, *, times: int = 1, updates_only: bool = False) -> DnsFault:
        fault = DnsFault(kind, times, updates_only)
        self.faults.append(fault)
        return fault

    def fail_at_rate(self, rate: float, seed: int) -> None:
        """SERVFAIL on `rate` of all messages; half of the failing UPDATEs take effect."""
        self.rate, self._random = rate, random.Random(seed)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[DnsProxy]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    return
                answer = await self._answer(wire, reader)
                if answer is None:
                    return
                writer.write(struct.pack("!H", len(answer)) + answer)
                await writer.drain()
        finally:
            writer.close()

    async def _answer(self, wire: bytes, reader: asyncio.StreamReader) -> bytes | None:
        self.messages += 1
        if not self.faults and not self.rate:
            return await self._forward(wire)
        try:
            query = dns.message.from_wire(wire, keyring=self.keyring)
        except dns.exception.DNSException:  # signed with another key: the server says so
            return await self._forward(wire)
        is_update = query.opcode() == dns.opcode.UPDATE
        kind = self._fault(is_update)
        if kind == "hang":
            await reader.read()  # until the client gives up and closes
            return None
        if kind == "servfail":
            return _servfail(query)
        answer = await self._forward(wire)
        return _servfail(query) if kind == "lost_answer" else answer

    def _fault(self, is_update: bool) -> FaultKind | None:
        for fault in self.faults:
            if fault.remaining > 0 and (is_update or not fault.updates_only):
                fault.remaining -= 1
                fault.fired += 1
                return fault.kind
        if self.rate and self._random.random() < self.rate:
            self.injected += 1
            lost = is_update and self._random.random() < 0.5
            return "lost_answer" if lost else "servfail"
        return None

    async def _forward(self, wire: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            writer.write(struct.pack("!H", len(wire)) + wire)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(length)
        finally:
            writer.close()
            await writer.wait_closed()


def _servfail(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)  # signed like the query, if it was
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire()
