"""Real acme-dns clients against the door: what each one sends, replayed byte for byte,
gets the answer the reference server gives (201 and an account; 200 and `{"txt": ...}`),
and an allow-list sent in any client's spelling is kept and enforced.

Where the client itself can run here, it runs: pyacmedns (certbot-dns-acmedns's library)
is called, and acme.sh's curl command line and its sed parsing of the answer are run.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pyacmedns
import pytest

from receiver import signing

from .acme_dns_clients import ACME_SH_USER_AGENT, CLIENTS, Client, Credentials
from .conftest import ServiceFactory
from .rawhttp import RawResponse, exchange

ACME_DNS = {"enabled": True, "zone": "example.net", "allow_register": True}
REGISTERS = [c for c in CLIENTS if c.register is not None]
ALLOW_LISTS = [c for c in CLIENTS if c.sends_allow_list]


class Door:
    def __init__(self, service: Any) -> None:
        self.service = service
        server = service.client.server
        self.host, self.port = server.host, server.port
        self.authority = f"{self.host}:{self.port}"
        self.url = f"http://{self.authority}"

    async def send(self, request: bytes) -> RawResponse:
        return await exchange(self.host, self.port, request)

    async def register(self, client: Client, allow_from: list[str]) -> dict[str, Any]:
        assert client.register is not None
        response = await self.send(client.register(self.authority, allow_from))
        assert response.status == 201, response.body
        assert response.headers["content-type"].startswith("application/json")
        account: dict[str, Any] = response.json()
        return account


def credentials(account: dict[str, Any]) -> Credentials:
    return Credentials(account["username"], account["password"], account["subdomain"])


@pytest.fixture
async def door(start_service: ServiceFactory) -> Door:
    return Door(await start_service(acme_dns=ACME_DNS))


@pytest.mark.parametrize("client", REGISTERS, ids=lambda c: c.name)
async def test_each_client_registers_like_the_reference(door: Door, client: Client) -> None:
    account = await door.register(client, [])
    assert set(account) == {"username", "password", "fulldomain", "subdomain", "allowfrom"}
    assert account["fulldomain"] == f"{account['subdomain']}.example.net"
    assert len(account["password"]) == 40
    assert account["allowfrom"] == []


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.name)
async def test_each_client_updates_like_the_reference(door: Door, client: Client) -> None:
    # cert-manager cannot register: its accounts come from anyone's /register.
    registrar = client if client.register is not None else REGISTERS[0]
    account = await door.register(registrar, [])
    values = [signing.challenge_value() for _ in range(2)]  # an apex and a wildcard
    for value in values:
        response = await door.send(client.update(door.authority, credentials(account), value))
        assert response.status == 200, response.body
        assert response.json() == {"txt": value}
    assert await door.service.records(account["fulldomain"]) == set(values)


@pytest.mark.parametrize("client", ALLOW_LISTS, ids=lambda c: c.name)
async def test_an_allow_list_in_each_spelling_is_kept_and_enforced(
    door: Door, client: Client
) -> None:
    inside = await door.register(client, ["127.0.0.0/8"])
    outside = await door.register(client, ["10.0.0.0/8", "[2001:db8::]/32"])
    assert inside["allowfrom"] == ["127.0.0.0/8"]
    assert outside["allowfrom"] == ["10.0.0.0/8", "2001:db8::/32"]

    value = signing.challenge_value()
    response = await door.send(client.update(door.authority, credentials(outside), value))
    assert response.status == 401
    assert response.json()["error"] == "forbidden"
    assert await door.service.records(outside["fulldomain"]) == frozenset()

    response = await door.send(client.update(door.authority, credentials(inside), value))
    assert response.status == 200, response.body
    assert await door.service.records(inside["fulldomain"]) == {value}


async def test_pyacmedns_itself_registers_with_an_allow_list_and_updates(door: Door) -> None:
    """The library certbot-dns-acmedns uses, called as the plugin calls it."""
    client = pyacmedns.Client(door.url)
    account = await asyncio.to_thread(client.register_account, ["127.0.0.0/8"])
    assert account["allowfrom"] == ["127.0.0.0/8"]
    value = signing.challenge_value()
    await asyncio.to_thread(client.update_txt_record, account, value)
    assert await door.service.records(account["fulldomain"]) == {value}

    elsewhere = await asyncio.to_thread(client.register_account, ["192.0.2.0/24"])
    with pytest.raises(pyacmedns.exceptions.AcmeDnsClientException, match="401"):
        await asyncio.to_thread(client.update_txt_record, elsewhere, value)


def acme_sh_post(door: Door, tmp_path: Path, path: str, body: str, *headers: str) -> str:
    """acme.sh's `_post` with curl: `curl -L --silent --dump-header F --user-agent UA
    -X POST -H "$_H1" ... -H "$_H5" [--data "$body"] URL` (empty `$_Hn` included)."""
    padded = [*headers, *[""] * (5 - len(headers))]
    argv = ["curl", "-L", "--silent", "--dump-header", str(tmp_path / "headers")]
    argv += ["--user-agent", ACME_SH_USER_AGENT, "-X", "POST"]
    for header in padded:
        argv += ["-H", header]
    if body:
        argv += ["--data", body]
    argv.append(door.url + path)
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def acme_sh_field(response: str, name: str) -> str:
    """dns_acmedns.sh's own sed expression, run by sed."""
    script = f's/^{{.*\\"{name}\\":[ ]*\\"\\([^\\"]*\\)\\".*}}/\\1/p'
    return subprocess.run(
        ["sed", "-n", script], input=response, capture_output=True, text=True, check=True
    ).stdout.strip()


async def test_acme_sh_curl_calls_and_answer_parsing(door: Door, tmp_path: Path) -> None:
    registered = await asyncio.to_thread(acme_sh_post, door, tmp_path, "/register", "")
    username, password, subdomain = (
        acme_sh_field(registered, name) for name in ("username", "password", "subdomain")
    )
    assert len(password) == 40 and subdomain and username
    value = signing.challenge_value()
    data = f'{{"subdomain":"{subdomain}", "txt": "{value}"}}'  # dns_acmedns.sh's `data`
    answer = await asyncio.to_thread(
        acme_sh_post,
        door,
        tmp_path,
        "/update",
        data,
        f"X-Api-User: {username}",
        f"X-Api-Key: {password}",
    )
    assert f'"{value}"' in answer  # its success test: grep "\"$txtvalue\""
    assert await door.service.records(f"{subdomain}.example.net") == {value}
