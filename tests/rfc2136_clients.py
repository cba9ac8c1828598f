"""Real RFC 2136 clients for the door's tests: BIND's `nsupdate` (Debian bind9-dnsutils),
keys made by BIND's `tsig-keygen`, and a receiver with the door on loopback."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.tsigkeyring
import dns.update

KEY = "acme-key"
OTHER_KEY = "other-key"
DIGEST = re.compile(r"[A-Za-z0-9_-]{43}")


def new_secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def digest() -> str:
    """A fresh value shaped like a DNS-01 challenge digest."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass(frozen=True)
class KeyFile:
    """What `tsig-keygen NAME` prints: nsupdate's `-k` file and the door's secret."""

    path: Path
    name: str
    secret: str = field(repr=False)


async def tsig_keygen(folder: Path, name: str, algorithm: str = "hmac-sha256") -> KeyFile:
    binary = shutil.which("tsig-keygen") or "/usr/sbin/tsig-keygen"
    proc = await asyncio.create_subprocess_exec(
        binary, "-a", algorithm, name, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0
    text = output.decode()
    match = re.search(r'secret "([^"]+)"', text)
    assert match is not None, "tsig-keygen printed no secret"
    path = folder / f"{name}.key"
    path.write_text(text)
    return KeyFile(path, name, match.group(1))


@dataclass(frozen=True)
class Run:
    returncode: int
    output: str


async def nsupdate(
    server: tuple[str, int],
    commands: Sequence[str],
    *,
    key: tuple[str, str, str] | None = None,
    key_file: Path | None = None,
    tcp: bool = False,
    send: bool = True,
) -> Run:
    """nsupdate with `-y alg:name:secret` or `-k file`, `commands` on its stdin after
    `server`; one `send` at the end unless the commands send themselves."""
    binary = shutil.which("nsupdate")
    assert binary is not None, "nsupdate is not installed (bind9-dnsutils; scripts/test)"
    args = [binary, "-t", "3", "-u", "1", "-r", "1"]
    if key is not None:
        args += ["-y", ":".join(key)]
    if key_file is not None:
        args += ["-k", str(key_file)]
    if tcp:
        args.append("-v")
    script = "\n".join([f"server {server[0]} {server[1]}", *commands, *(["send"] if send else [])])
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        output, _ = await proc.communicate(script.encode() + b"\n")
    assert proc.returncode is not None
    return Run(proc.returncode, output.decode(errors="replace"))


def signed_update(zone: str, secret: str, key_name: str = KEY) -> dns.update.UpdateMessage:
    keyring = dns.tsigkeyring.from_text({key_name: secret})
    return dns.update.UpdateMessage(zone, keyring=keyring, keyname=key_name)


async def exchange(
    server: tuple[str, int], message: dns.message.Message, *, tcp: bool = False, **kwargs: Any
) -> dns.message.Message:
    """dnspython as a client (it verifies a signed answer's TSIG)."""
    send = dns.query.tcp if tcp else dns.query.udp
    return await asyncio.to_thread(send, message, server[0], port=server[1], timeout=3, **kwargs)


async def raw_udp(server: tuple[str, int], wire: bytes, wait: float = 3) -> bytes:
    """Exactly these bytes, and the answer's bytes: a replay, or a message no client makes."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, payload: bytes, addr: Any) -> None:
            if not got.done():
                got.set_result(payload)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=server)
    try:
        transport.sendto(wire)
        return await asyncio.wait_for(got, wait)
    finally:
        transport.close()
