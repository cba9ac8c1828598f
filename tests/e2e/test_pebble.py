"""Real certificates from Pebble, through every door, for an apex and a wildcard in one
order (two values at one TXT name at the same time), with the records gone afterwards.

(a) `dns-challenge-receiver simulate` plays Certificate Manager against the receiver;
(b) Debian's `lego` client with its `httpreq` DNS provider;
(c) an acme-dns API client, the ordered domain served by a real BIND that CNAMEs the
    challenge name into the receiver's acme-dns zone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
from cryptography import x509

from receiver import simulate
from receiver.http import DNS_ADDRESS
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


class AcmeDnsClient:
    """What certbot-dns-acmedns and acme.sh's dns_acmedns do: POST /update per value.

    (Debian's lego lists `acme-dns` but was built without it: "unrecognized DNS provider".)
    acme-dns has no removal call, so `completed` sends nothing.
    """

    def __init__(self, base_url: str, account: dict[str, Any]) -> None:
        self.base_url = base_url
        self.account = account
        self.sent = 0

    def __call__(self, event_type: str, domain: str, value: str) -> dict[str, Any]:
        if event_type != simulate.REQUIRED:
            return {}
        request = urllib.request.Request(
            self.base_url + "/update",
            data=json.dumps({"subdomain": self.account["subdomain"], "txt": value}).encode(),
            headers={
                "Content-Type": "application/json",
                "X-Api-User": self.account["username"],
                "X-Api-Key": self.account["password"],
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            self.sent += 1
            answer: dict[str, Any] = json.loads(response.read())
            return answer


async def test_acme_dns_api_issues_a_certificate(
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
    response = await service.client.post("/register", json={"allowfrom": ["127.0.0.0/8"]})
    assert response.status == 201
    account = await response.json()

    # The domain owner's DNS: a real BIND, with the one-time CNAME into our zone, which it
    # resolves by forwarding to the receiver's responder (as any recursive resolver would).
    bind = Bind(
        tmp_path / "bind",
        ["example.test"],
        records={"example.test": [f"_acme-challenge IN CNAME {account['fulldomain']}."]},
        forwarders={zone: responder},
    )
    await asyncio.to_thread(bind.start)
    client = AcmeDnsClient(base_url, account)
    try:
        async with running_pebble(tmp_path / "pebble", ("127.0.0.1", bind.port)) as pebble:
            result = await asyncio.to_thread(
                lambda: simulate.order(
                    directory_url=pebble.directory_url,
                    domains=DOMAINS,
                    publisher=lambda _crn: client,
                    ca_bundle=str(pebble.ca_bundle),
                    timeline=simulate.Timeline(print_line=lambda _line: None),
                )
            )
        assert names_in(result.fullchain_pem) == sorted(DOMAINS)
        assert client.sent == 2
        seen = await txt(responder, account["fulldomain"])
        assert len(seen.answer[0]) == 2  # apex and wildcard: the two latest values
    finally:
        await asyncio.to_thread(bind.stop)

    # acme-dns has no removal call; the receiver's journal-driven sweep is what removes them.
    report = await sweep(service.runtime, max_age=0)
    assert len(report.removed) == 2
    assert (await txt(responder, account["fulldomain"])).rcode() == dns.rcode.NXDOMAIN
