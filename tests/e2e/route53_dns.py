"""Route 53's nameservers, for Pebble's validation authority: a UDP responder on loopback
that answers TXT queries from what moto_server holds for the hosted zone, read fresh for
every query (as Route 53 serves its record sets), so a value is served only once the
receiver's Route 53 adapter has really written it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from ..backends.moto import MotoServer


class _Route53Answers(asyncio.DatagramProtocol):
    def __init__(self, moto: MotoServer, zone: str) -> None:
        self._client = moto.client()
        self._zone = dns.name.from_text(zone)
        self._zone_id = self._client.list_hosted_zones_by_name(DNSName=zone)["HostedZones"][0]["Id"]
        self._transport: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _txt(self, name: str) -> list[str]:
        found = self._client.list_resource_record_sets(
            HostedZoneId=self._zone_id, StartRecordName=name, StartRecordType="TXT", MaxItems="1"
        )["ResourceRecordSets"]
        if found and found[0]["Name"].rstrip(".") == name.rstrip(".") and found[0]["Type"] == "TXT":
            return [r["Value"] for r in found[0]["ResourceRecords"]]
        return []

    async def _answer(self, data: bytes, addr: Any) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        if not question.name.is_subdomain(self._zone):
            response.set_rcode(dns.rcode.REFUSED)
        else:
            response.flags |= dns.flags.AA
            if question.rdtype == dns.rdatatype.TXT:
                values = await asyncio.to_thread(self._txt, question.name.to_text())
                if values:
                    response.answer.append(
                        dns.rrset.from_text_list(question.name, 0, "IN", "TXT", values)
                    )
        self._transport.sendto(response.to_wire(), addr)


@asynccontextmanager
async def route53_nameserver(moto: MotoServer, zone: str) -> AsyncIterator[tuple[str, int]]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Route53Answers(moto, zone), local_addr=("127.0.0.1", 0)
    )
    try:
        yield transport.get_extra_info("sockname")[:2]
    finally:
        transport.close()
