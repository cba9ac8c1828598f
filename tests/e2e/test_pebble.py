"""A real certificate: Pebble validates DNS-01 challenges that reached the receiver as signed
Certificate Manager notifications, for an apex and a wildcard name in one order (two
values at one TXT name at the same time)."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import josepy
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver.http import DNS_ADDRESS

from ..conftest import Sender, ServiceFactory
from .pebble import Pebble, running_pebble

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
DOMAINS = ["example.test", "*.example.test"]


class AcmeOrder:
    """The ACME side of Certificate Manager: blocking `acme` calls, run in a thread."""

    def __init__(self, pebble: Pebble) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.account_key = josepy.JWKRSA(key=key)
        net = client.ClientNetwork(
            self.account_key, user_agent="dcr-e2e", verify_ssl=str(pebble.ca_bundle)
        )
        directory = client.ClientV2.get_directory(pebble.directory_url, net)
        self.acme = client.ClientV2(directory, net=net)
        self.acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
        self.cert_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def order(self, names: list[str]) -> messages.OrderResource:
        key_pem = self.cert_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self.acme.new_order(crypto_util.make_csr(key_pem, names))

    def dns01(self, order: messages.OrderResource) -> list[tuple[str, Any, str]]:
        """(domain as ordered, challenge, TXT value) for each authorization."""
        found = []
        for authz in order.authorizations:
            domain = authz.body.identifier.value
            if authz.body.wildcard:
                domain = f"*.{domain}"
            challb = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01))
            found.append((domain, challb, challb.chall.validation(self.account_key)))
        return found

    def finish(self, order: messages.OrderResource, challbs: list[Any]) -> str:
        for challb in challbs:
            self.acme.answer_challenge(challb, challb.chall.response(self.account_key))
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
        return str(self.acme.poll_and_finalize(order, deadline=deadline).fullchain_pem)


async def test_pebble_issues_a_certificate_for_apex_and_wildcard(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    service = await start_service(
        local={"database": str(tmp_path / "store.sqlite3"), "dns_listen": "127.0.0.1:0"},
        zones=[{"name": "example.test", "provider": "local", "ttl": 30}],
    )
    dns_address = service.client.server.app[DNS_ADDRESS]
    async with running_pebble(tmp_path / "pebble", dns_address) as pebble:
        acme = await asyncio.to_thread(AcmeOrder, pebble)
        order = await asyncio.to_thread(acme.order, DOMAINS)
        pending = await asyncio.to_thread(acme.dns01, order)
        assert sorted(d for d, _, _ in pending) == sorted(DOMAINS)

        for domain, _, value in pending:  # Certificate Manager's callbacks
            resp = await service.post(sender.body(sender.claims(REQUIRED, domain, value)))
            assert resp.status == 200, await resp.text()

        query = dns.message.make_query("_acme-challenge.example.test", "TXT")
        answer = await dns.asyncquery.udp(query, dns_address[0], port=dns_address[1], timeout=3)
        published = {b"".join(r.strings).decode() for r in answer.answer[0]}
        assert published == {value for _, _, value in pending}

        fullchain = await asyncio.to_thread(acme.finish, order, [c for _, c, _ in pending])

        for domain, _, value in pending:
            resp = await service.post(sender.body(sender.claims(COMPLETED, domain, value)))
            assert resp.status == 200

    leaf = x509.load_pem_x509_certificates(fullchain.encode())[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == sorted(DOMAINS)
    answer = await dns.asyncquery.udp(query, dns_address[0], port=dns_address[1], timeout=3)
    assert answer.rcode() == dns.rcode.NXDOMAIN
