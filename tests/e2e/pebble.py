"""Pebble, the ACME test CA (Debian package `pebble`), run on loopback for one test.

Its TLS certificate is made fresh for each run; its validation authority resolves every
name through `-dnsserver`, which the tests point at the receiver's built-in responder.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pebble:
    directory_url: str
    ca_bundle: Path  # trust anchor for Pebble's own HTTPS listener


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tls_material(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a leaf for 127.0.0.1/localhost, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble test root")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@asynccontextmanager
async def running_pebble(folder: Path, dns_server: tuple[str, int]) -> AsyncIterator[Pebble]:
    binary = shutil.which("pebble")
    if binary is None:
        raise RuntimeError(
            "pebble is not installed (Debian package `pebble`; scripts/test installs it)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    ca, cert, key = _tls_material(folder)
    port = free_port()
    config = folder / "pebble.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{port}",
                    "managementListenAddress": f"127.0.0.1:{free_port()}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": free_port(),
                    "tlsPort": free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    env = {
        **os.environ,
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": "0",
    }
    log = (folder / "pebble.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-config",
        str(config),
        "-dnsserver",
        f"{dns_server[0]}:{dns_server[1]}",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        await _wait_for_tls(port, ca, proc)
        yield Pebble(f"https://127.0.0.1:{port}/dir", ca)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        log.close()


async def _wait_for_tls(port: int, ca: Path, proc: asyncio.subprocess.Process) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    async with asyncio.timeout(20):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"pebble exited with {proc.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return
