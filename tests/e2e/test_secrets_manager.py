"""A real certificate from Pebble through the Secrets Manager door: the fake Secrets
Manager orders from Pebble with certbot's `acme` library for an apex and its wildcard
(two values at one TXT name), `dns-challenge-receiver secrets-manager sync` (a cron job's
run, its own process) publishes them through `local`, asks for validation, Pebble
validates against the receiver's built-in responder, the secret becomes active with
Pebble's certificate, and the next sync removes the values."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.rcode

from receiver.hosts.http import DNS_ADDRESS

from ..conftest import ServiceFactory
from ..fakes.secrets_manager import FakeSecretsManager, PebbleCa
from .pebble import running_pebble
from .test_pebble import CHALLENGE, local_zone, names_in, run, txt

API_KEY = "e2e-secrets-manager-key"


def cli_config(path: Path, fake: FakeSecretsManager, store: Path) -> Path:
    path.write_text(
        f"""
[certificate_manager]
enabled = false

[local]
database = "{store}"
dns_listen = "127.0.0.1:0"

[[zones]]
name = "example.test"
provider = "local"
ttl = 30

[secrets_manager]
enabled = true

[[secrets_manager.instances]]
instance_id = "{fake.instance_id}"
region = "{fake.region}"
endpoint = "{fake.url}"
iam_url = "{fake.url}/identity/token"
api_key_env = "SM_API_KEY"
labels = ["dns-bridge"]
"""
    )
    return path


async def test_sync_publishes_pebble_validates_and_the_values_go(
    start_service: ServiceFactory, tmp_path: Path, aiohttp_server: Callable[..., Any]
) -> None:
    service = await start_service(**local_zone(tmp_path, "example.test"))
    dns_address = service.client.server.app[DNS_ADDRESS]
    async with running_pebble(tmp_path / "pebble", dns_address) as pebble:
        fake = FakeSecretsManager(
            PebbleCa(pebble.directory_url, str(pebble.ca_bundle)), api_key=API_KEY
        )
        server = await aiohttp_server(fake.app())
        fake.url = str(server.make_url("")).rstrip("/")
        secret = await fake.create_secret("example.test", ["*.example.test"], labels=["dns-bridge"])
        names = {c["txt_record_name"] for c in secret.challenges}
        assert names == {CHALLENGE + "."}  # Pebble's, absolute, shared by both
        config = cli_config(tmp_path / "sm.toml", fake, tmp_path / "store.sqlite3")
        env = {"SM_API_KEY": API_KEY}
        argv = (sys.executable, "-m", "receiver", "secrets-manager", "sync", "--config")
        output = await run(*argv, str(config), env=env)
        assert f"published and asked to validate {secret.crn}" in output
        served = await txt(dns_address, CHALLENGE)
        values = {b"".join(r.strings).decode() for a in served.answer for r in a}
        assert values == {c["txt_record_value"] for c in secret.challenges}
        assert await fake.settled(secret) == 1, secret.error_message
        assert secret.certificate is not None
        assert names_in(secret.certificate) == ["*.example.test", "example.test"]
        output = await run(*argv, str(config), env=env)
        assert "removed 2" in output
    assert (await txt(dns_address, CHALLENGE)).rcode() == dns.rcode.NXDOMAIN
    assert secret.validations == 1


async def test_pebble_refuses_and_the_secret_is_deactivated(
    start_service: ServiceFactory, tmp_path: Path, aiohttp_server: Callable[..., Any]
) -> None:
    """The sync writes to a store no nameserver serves (a misconfigured deployment):
    Pebble finds no TXT record, the secret is deactivated with Pebble's error, and the
    next sync logs it and removes the values."""
    service = await start_service(**local_zone(tmp_path, "example.test"))
    dns_address = service.client.server.app[DNS_ADDRESS]
    async with running_pebble(tmp_path / "pebble", dns_address) as pebble:
        fake = FakeSecretsManager(
            PebbleCa(pebble.directory_url, str(pebble.ca_bundle)), api_key=API_KEY
        )
        server = await aiohttp_server(fake.app())
        fake.url = str(server.make_url("")).rstrip("/")
        secret = await fake.create_secret("example.test", labels=["dns-bridge"])
        config = cli_config(tmp_path / "sm.toml", fake, tmp_path / "unserved.sqlite3")
        env = {"SM_API_KEY": API_KEY}
        argv = (sys.executable, "-m", "receiver", "secrets-manager", "sync", "--config")
        await run(*argv, str(config), env=env)
        assert await fake.settled(secret) == 3
        assert secret.error_message is not None  # Pebble's own words: rcode 3 (NXDOMAIN)
        assert "dns-01 failed" in secret.error_message and CHALLENGE in secret.error_message
        output = await run(*argv, str(config), env=env)
    assert "secrets_manager_validation_failed" in output and "removed 1" in output
