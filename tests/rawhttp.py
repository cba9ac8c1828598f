"""HTTP/1.1 written by hand to a socket: for the bytes aiohttp's client refuses to send
(non-ASCII or invalid UTF-8 in headers, lying Content-Lengths, half-sent requests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    keep_alive: bool = False,
) -> bytes:
    """A request exactly as given: header values are bytes and are not checked."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if not keep_alive:
        lines.append(b"Connection: close")
    lines += [name + b": " + value for name, value in headers]
    names = {name.lower() for name, _ in headers}
    if body and b"content-length" not in names:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One response, framed by Content-Length (as aiohttp frames its answers)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawResponse(int(status_line.split()[1]), headers, body)


async def exchange(host: str, port: int, request: bytes, *, within: float = 10) -> RawResponse:
    """Write `request` as is on a fresh connection and read one response."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
