"""CNAME delegation: the challenge name lives in the user's zone, the value in ours."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import pytest

from receiver import cli, config, signing
from receiver.challenge import Action, Challenge
from receiver.errors import ConfigError, Forbidden
from receiver.hosts.http import DNS_ADDRESS
from receiver.policy import Policy

from .conftest import INSTANCE, Sender, ServiceFactory

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"


def zones(tmp_path: Path) -> dict[str, Any]:
    return {
        "local": {"database": str(tmp_path / "s.sqlite3"), "dns_listen": "127.0.0.1:0"},
        "zones": [
            {"name": "acme.example.net", "provider": "local"},
            {"name": "example.com", "cname_to": "acme.example.net"},
            {"name": "shop.example.com", "provider": "memory"},  # longest match wins
        ],
    }


def test_routes(tmp_path: Path) -> None:
    settings = config.from_mapping(
        {"certificate_manager": {"allowed_instances": [INSTANCE]}, **zones(tmp_path)}
    )
    policy = Policy(settings.zones)

    def route(fqdn: str) -> tuple[str, str, str | None]:
        r = policy.route(Challenge(Action.ADD, "d", fqdn, "v"))
        return r.zone.name, r.fqdn, r.delegated_from

    assert route("_acme-challenge.www.example.com") == (
        "acme.example.net",
        "www.example.com.acme.example.net",
        "_acme-challenge.www.example.com",
    )
    assert route("_acme-challenge.example.com") == (
        "acme.example.net",
        "example.com.acme.example.net",
        "_acme-challenge.example.com",
    )
    assert route("_acme-challenge.a.shop.example.com") == (
        "shop.example.com",
        "_acme-challenge.a.shop.example.com",
        None,
    )
    with pytest.raises(Forbidden):
        route("_acme-challenge.example.org")


@pytest.mark.parametrize(
    ("zone", "key"),
    [
        ({"name": "example.com", "cname_to": "nowhere.example.org"}, "zones[1].cname_to"),
        (
            {"name": "example.com", "cname_to": "acme.example.net", "provider": "memory"},
            "zones[1].provider",
        ),
        ({"name": "example.com", "cname_to": "bad..name"}, "zones[1].cname_to"),
    ],
)
def test_bad_delegations(zone: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(
            {
                "certificate_manager": {"allowed_instances": [INSTANCE]},
                "zones": [{"name": "acme.example.net", "provider": "memory"}, zone],
            }
        )
    assert any(p.startswith(f"{key}:") for p in caught.value.problems), caught.value.problems


async def test_delegated_value_is_served_at_the_target(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    service = await start_service(**zones(tmp_path))
    port = service.client.server.app[DNS_ADDRESS][1]
    value = signing.challenge_value()
    resp = await service.post(sender.body(sender.claims(REQUIRED, "*.www.example.com", value)))
    assert resp.status == 200
    assert await resp.json() == {
        "status": "published",
        "fqdn": "_acme-challenge.www.example.com",
        "record": "www.example.com.acme.example.net",
    }
    query = dns.message.make_query("www.example.com.acme.example.net", "TXT")
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=3)
    assert [b"".join(r.strings).decode() for r in answer.answer[0]] == [value]

    resp = await service.post(sender.body(sender.claims(COMPLETED, "*.www.example.com", value)))
    assert (await resp.json())["status"] == "removed"
    answer = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=3)
    assert not answer.answer


def test_delegation_command(
    tmp_path: Path, public_key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "r.toml"
    path.write_text(f"""
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{public_key_file}"
[local]
database = "s.sqlite3"
[[zones]]
name = "acme.example.net"
provider = "local"
[[zones]]
name = "example.com"
cname_to = "acme.example.net"
""")
    code = cli.main(
        [
            "delegation",
            "--config",
            str(path),
            "*.www.example.com",
            "example.com",
            "acme.example.net",
            "example.org",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert "_acme-challenge.www.example.com. 300 IN CNAME www.example.com.acme.example.net." in out
    assert "_acme-challenge.example.com. 300 IN CNAME example.com.acme.example.net." in out
    assert "no delegation needed" in out
    assert "example.org" in err
