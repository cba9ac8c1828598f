"""Send exact request bytes over a socket: what a client library or an attacker writes,
without a test client that would normalise headers or refuse odd bytes."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(host: str, port: int, request: bytes, *, within: float = 10) -> RawResponse:
    """Write `request` as is and read one response (Content-Length framed, as aiohttp's)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(within):
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in filter(None, lines):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            return RawResponse(int(status_line.split()[1]), headers, body)
    finally:
        writer.close()
        await writer.wait_closed()
