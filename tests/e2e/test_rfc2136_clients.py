"""Real certificates from Pebble through the RFC 2136 door, for an apex and a wildcard in
one order: lego (`--dns rfc2136`, Debian) and certbot with certbot-dns-rfc2136 (PyPI),
each once into a `local` zone and once into Route 53 (moto_server), nothing left after.

The clients find the zone by asking the door for SOA records (lego unsigned, certbot
signed), then send signed UPDATEs: lego clears the RRset and adds in one message, certbot
adds and deletes single values.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from receiver.hosts.http import DNS_ADDRESS, RFC2136_ADDRESS

from ..backends.moto import MotoServer
from ..conftest import ServiceFactory
from ..rfc2136_clients import KEY, new_secret
from .pebble import running_pebble
from .route53_dns import route53_nameserver
from .test_pebble import CHALLENGE, DOMAINS, certbot, lego, names_in, private_file, run, txt

ZONE = "example.test"


@dataclass
class Setup:
    door: tuple[str, int]  # where the clients send SOA queries and UPDATEs
    validation: tuple[str, int]  # where Pebble's validation authority asks for TXT
    secret: str
    service: Any
    remaining: Any  # async () -> the TXT values left at the challenge name


def door_sections(secret_env: str) -> dict[str, Any]:
    return {
        "certificate_manager": {"enabled": False, "allowed_instances": []},
        "rfc2136_door": {
            "enabled": True,
            "keys": [{"name": KEY, "secret_env": secret_env, "zones": [ZONE]}],
        },
    }


@contextlib.asynccontextmanager
async def into_local(
    start_service: ServiceFactory, tmp_path: Path, secret: str
) -> AsyncIterator[Setup]:
    """The door shares the built-in responder's socket; Pebble asks that responder."""
    service = await start_service(
        **door_sections("E2E_TSIG_SECRET"),
        local={"database": str(tmp_path / "local.sqlite3"), "dns_listen": "127.0.0.1:0"},
        zones=[{"name": ZONE, "provider": "local", "ttl": 30}],
    )
    app = service.client.server.app
    assert app[RFC2136_ADDRESS] == app[DNS_ADDRESS]

    async def remaining() -> list[str]:
        answer = await txt(app[DNS_ADDRESS], CHALLENGE)
        assert answer.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
        return [s.decode() for rrset in answer.answer for r in rrset for s in r.strings]

    yield Setup(app[RFC2136_ADDRESS], app[DNS_ADDRESS], secret, service, remaining)


@contextlib.asynccontextmanager
async def into_route53(
    start_service: ServiceFactory, moto: MotoServer, secret: str
) -> AsyncIterator[Setup]:
    """The door on a socket of its own; Pebble asks a responder that reads Route 53."""
    await asyncio.to_thread(moto.reset)
    await asyncio.to_thread(moto.create_zone, ZONE)
    sections = door_sections("E2E_TSIG_SECRET")
    sections["rfc2136_door"]["listen"] = "127.0.0.1:0"
    service = await start_service(
        **sections,
        zones=[{"name": ZONE, "provider": "route53", "options": {"endpoint": moto.url}}],
    )
    app = service.client.server.app
    async with route53_nameserver(moto, ZONE) as nameserver:

        async def remaining() -> list[str]:
            answer = await txt(nameserver, CHALLENGE)
            return [s.decode() for rrset in answer.answer for r in rrset for s in r.strings]

        yield Setup(app[RFC2136_ADDRESS], nameserver, secret, service, remaining)


@contextlib.asynccontextmanager
async def backend(
    which: str, start_service: ServiceFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Setup]:
    secret = new_secret()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2E_TSIG_SECRET", secret)
        if which == "local":
            async with into_local(start_service, tmp_path, secret) as setup:
                yield setup
        else:
            request.getfixturevalue("aws_credentials")
            moto = request.getfixturevalue("moto_server")
            async with into_route53(start_service, moto, secret) as setup:
                yield setup


async def journal_of(setup: Setup) -> list[tuple[str, str, str]]:
    entries = await setup.service.runtime.journal.entries()
    return [(e.door, e.action, e.outcome) for e in entries]


@pytest.mark.parametrize("which", ["local", "route53"])
async def test_lego_rfc2136_issues_a_certificate_through_the_door(
    which: str, start_service: ServiceFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with backend(which, start_service, tmp_path, request) as setup:
        folder = tmp_path / "lego"
        async with running_pebble(tmp_path / "pebble", setup.validation) as pebble:
            await run(
                *lego(pebble, folder, "rfc2136", setup.validation),
                env={
                    "LEGO_CA_CERTIFICATES": str(pebble.ca_bundle),
                    "RFC2136_NAMESERVER": f"{setup.door[0]}:{setup.door[1]}",
                    "RFC2136_TSIG_KEY": KEY,
                    "RFC2136_TSIG_SECRET": setup.secret,
                    "RFC2136_TSIG_ALGORITHM": "hmac-sha256.",
                    "RFC2136_SEQUENCE_INTERVAL": "1",
                },
            )
        issued = folder / "certificates" / f"{ZONE}.crt"
        assert names_in(issued.read_text()) == sorted(DOMAINS)
        assert await setup.remaining() == []
        entries = await journal_of(setup)
        assert set(entries) == {("rfc2136", "add", "done"), ("rfc2136", "remove", "done")}
        assert entries.count(("rfc2136", "add", "done")) == 2


@pytest.mark.parametrize("which", ["local", "route53"])
async def test_certbot_rfc2136_issues_a_certificate_through_the_door(
    which: str, start_service: ServiceFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with backend(which, start_service, tmp_path, request) as setup:
        credentials = private_file(
            tmp_path / "rfc2136.ini",
            f"dns_rfc2136_server = {setup.door[0]}\n"
            f"dns_rfc2136_port = {setup.door[1]}\n"
            f"dns_rfc2136_name = {KEY}\n"
            f"dns_rfc2136_secret = {setup.secret}\n"
            "dns_rfc2136_algorithm = HMAC-SHA256\n"
            "dns_rfc2136_sign_query = true\n",
        )
        async with running_pebble(tmp_path / "pebble", setup.validation) as pebble:
            await run(
                *certbot(pebble, tmp_path / "certbot", "dns-rfc2136", credentials),
                env={"REQUESTS_CA_BUNDLE": str(pebble.ca_bundle)},
            )
        issued = tmp_path / "certbot" / "config" / "live" / "e2e" / "fullchain.pem"
        assert names_in(issued.read_text()) == sorted(DOMAINS)
        assert await setup.remaining() == []
        entries = await journal_of(setup)
        assert (
            sorted(entries)
            == [("rfc2136", "add", "done")] * 2 + [("rfc2136", "remove", "done")] * 2
        )
