"""Real certificates from Pebble, through every door, for an apex and a wildcard in one
order (two values at one TXT name at the same time), with the records gone afterwards.

(a) `dns-challenge-receiver simulate` plays Certificate Manager against the receiver;
(b) Debian's `lego` client with its `httpreq` DNS provider;
(c) certbot with the PyPI plugin certbot-dns-acmedns (the acme-dns door), the ordered
    domain served by a real BIND that CNAMEs the challenge name into the receiver's
    acme-dns zone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import pyacmedns
from cryptography import x509

from receiver.hosts.http import DNS_ADDRESS
from receiver.sweep import sweep

from ..backends.bind import Bind
from ..conftest import INSTANCE, ServiceFactory
from .pebble import running_pebble

DOMAINS = ["example.test", "*.example.test"]
CHALLENGE = "_acme-challenge.example.test"
PASSWORD = "lego-password"


async def txt(server: tuple[str, int], name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "TXT")
    return await dns.asyncquery.udp(query, server[0], port=server[1], timeout=3)


def names_in(chain_pem: str) -> list[str]:
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(names.get_values_for_type(x509.DNSName))


async def run(*argv: str, env: dict[str, str] | None = None, within: float = 180) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    async with asyncio.timeout(within):
        output, _ = await proc.communicate()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, f"{argv[0]} {argv[1]} failed:\n{text}"
    return text


def local_zone(tmp_path: Path, zone: str) -> dict[str, Any]:
    return {
        "local": {"database": str(tmp_path / "store.sqlite3"), "dns_listen": "127.0.0.1:0"},
        "zones": [{"name": zone, "provider": "local", "ttl": 30}],
    }


def lego(pebble: Any, folder: Path, provider: str, resolver: tuple[str, int]) -> list[str]:
    binary = shutil.which("lego")
    assert binary is not None, "lego is not installed (Debian package lego; scripts/test)"
    return [
        binary,
        "--server",
        pebble.directory_url,
        "--email",
        "e2e@example.test",
        "--accept-tos",
        "--path",
        str(folder),
        "--dns",
        provider,
        "--dns.disable-cp",
        "--dns.resolvers",
        f"{resolver[0]}:{resolver[1]}",
        *[arg for domain in DOMAINS for arg in ("--domains", domain)],
        "run",
    ]


async def test_simulate_issues_a_certificate_through_the_receiver(
    start_service: ServiceFactory, keys: Any, tmp_path: Path
) -> None:
    service = await start_service(**local_zone(tmp_path, "example.test"))
    dns_address = service.client.server.app[DNS_ADDRESS]
    key = tmp_path / "sender.pem"
    key.write_bytes(keys["sender"].private_pem)
    chain = tmp_path / "chain.pem"
    async with running_pebble(tmp_path / "pebble", dns_address) as pebble:
        output = await run(
            sys.executable,
            "-m",
            "receiver",
            "simulate",
            "--acme-directory",
            pebble.directory_url,
            "--callback",
            str(service.client.make_url("/callback")),
            *[arg for domain in DOMAINS for arg in ("--domain", domain)],
            "--key",
            str(key),
            "--instance-crn",
            INSTANCE,
            "--ca-bundle",
            str(pebble.ca_bundle),
            "--output",
            str(chain),
        )
    assert names_in(chain.read_text()) == sorted(DOMAINS)
    assert output.count("notify required") == 2 and output.count("-> 200 published") == 2
    assert output.count("-> 200 removed") == 2
    assert (await txt(dns_address, CHALLENGE)).rcode() == dns.rcode.NXDOMAIN


async def test_lego_httpreq_issues_a_certificate(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("E2E_HTTPREQ_PASSWORD", PASSWORD)
    service = await start_service(
        certificate_manager={"enabled": False, "allowed_instances": []},
        httpreq={"enabled": True, "username": "lego", "password_env": "E2E_HTTPREQ_PASSWORD"},
        **local_zone(tmp_path, "example.test"),
    )
    dns_address = service.client.server.app[DNS_ADDRESS]
    folder = tmp_path / "lego"
    async with running_pebble(tmp_path / "pebble", dns_address) as pebble:
        await run(
            *lego(pebble, folder, "httpreq", dns_address),
            env={
                "LEGO_CA_CERTIFICATES": str(pebble.ca_bundle),
                "HTTPREQ_ENDPOINT": str(service.client.make_url("")).rstrip("/"),
                "HTTPREQ_USERNAME": "lego",
                "HTTPREQ_PASSWORD": PASSWORD,
            },
        )
    assert names_in((folder / "certificates" / "example.test.crt").read_text()) == sorted(DOMAINS)
    assert (await txt(dns_address, CHALLENGE)).rcode() == dns.rcode.NXDOMAIN
    entries = await service.runtime.journal.entries()  # type: ignore[union-attr]
    assert {(e.door, e.action, e.outcome) for e in entries} == {
        ("httpreq", "add", "done"),
        ("httpreq", "remove", "done"),
    }


def certbot(pebble: Any, folder: Path, plugin: str, credentials: Path) -> list[str]:
    """certbot with a DNS plugin from PyPI (`dns-acmedns`, `dns-rfc2136`), as their
    documentation runs it: credentials file, no propagation wait, apex + wildcard."""
    binary = Path(sys.executable).with_name("certbot")
    return [
        str(binary),
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--register-unsafely-without-email",
        *("--server", pebble.directory_url),
        *("--config-dir", str(folder / "config")),
        *("--work-dir", str(folder / "work")),
        *("--logs-dir", str(folder / "logs")),
        *("--authenticator", plugin),
        *(f"--{plugin}-credentials", str(credentials)),
        *(f"--{plugin}-propagation-seconds", "0"),
        *("--cert-name", "e2e"),
        *[arg for domain in DOMAINS for arg in ("-d", domain)],
    ]


def private_file(path: Path, text: str) -> Path:
    """certbot refuses credentials that others can read."""
    path.write_text(text)
    path.chmod(0o600)
    return path


async def test_certbot_acme_dns_plugin_issues_a_certificate(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    zone = "auth.acme.test"
    service = await start_service(
        certificate_manager={"enabled": False, "allowed_instances": []},
        acme_dns={"enabled": True, "zone": zone, "allow_register": True},
        **local_zone(tmp_path, zone),
    )
    responder = service.client.server.app[DNS_ADDRESS]
    base_url = str(service.client.make_url("")).rstrip("/")
    # Registered by the plugin's own library, restricted to the network certbot runs in.
    client = pyacmedns.Client(base_url)
    account = await asyncio.to_thread(client.register_account, ["127.0.0.0/8"])
    assert account["allowfrom"] == ["127.0.0.0/8"]
    registrations = private_file(tmp_path / "acmedns.json", json.dumps({"example.test": account}))
    credentials = private_file(
        tmp_path / "acmedns.ini",
        f"dns_acmedns_api_url = {base_url}\ndns_acmedns_registration_file = {registrations}\n",
    )

    # The domain owner's DNS: a real BIND, with the one-time CNAME into our zone, which it
    # resolves by forwarding to the receiver's responder (as any recursive resolver would).
    bind = Bind(
        tmp_path / "bind",
        ["example.test"],
        records={"example.test": [f"_acme-challenge IN CNAME {account['fulldomain']}."]},
        forwarders={zone: responder},
    )
    await asyncio.to_thread(bind.start)
    try:
        async with running_pebble(tmp_path / "pebble", ("127.0.0.1", bind.port)) as pebble:
            await run(
                *certbot(pebble, tmp_path / "certbot", "dns-acmedns", credentials),
                env={"REQUESTS_CA_BUNDLE": str(pebble.ca_bundle)},
            )
        issued = tmp_path / "certbot" / "config" / "live" / "e2e" / "fullchain.pem"
        assert names_in(issued.read_text()) == sorted(DOMAINS)
        seen = await txt(responder, account["fulldomain"])
        assert len(seen.answer[0]) == 2  # apex and wildcard: the two latest values
    finally:
        await asyncio.to_thread(bind.stop)
    entries = await service.runtime.journal.entries()  # type: ignore[union-attr]
    assert [(e.door, e.action, e.outcome) for e in entries] == [("acme_dns", "add", "done")] * 2

    # acme-dns has no removal call; the receiver's journal-driven sweep is what removes them.
    report = await sweep(service.runtime, max_age=0)
    assert len(report.removed) == 2
    assert (await txt(responder, account["fulldomain"])).rcode() == dns.rcode.NXDOMAIN
