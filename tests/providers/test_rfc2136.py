"""RFC 2136 against a real BIND 9, plus the answers other servers give (deps.md §5)."""

from __future__ import annotations

import asyncio
import base64
import struct

import dns.asyncquery
import dns.message
import dns.rcode
import dns.update
import pytest

from providers import errors
from providers.base import UNLIMITED, ChangeContext, Secret, ZoneRef
from providers.rfc2136 import Rfc2136Provider, Rfc2136Settings, _error_for
from receiver import config
from receiver.errors import ConfigError

from ..backends.bind import KEY_NAME, Bind
from ..conftest import INSTANCE

CTX = ChangeContext(request_id="rfc2136-test")
ZONE = "example.test"


def settings(bind: Bind, **overrides: object) -> Rfc2136Settings:
    values: dict[str, object] = {
        "server": bind.address,
        "tsig_key_name": KEY_NAME,
        "tsig_secret": Secret(bind.secret),
        **overrides,
    }
    return Rfc2136Settings(**values)  # type: ignore[arg-type]


async def values(bind: Bind, fqdn: str) -> set[str]:
    answer = await dns.asyncquery.tcp(
        dns.message.make_query(fqdn, "TXT"), "127.0.0.1", port=bind.port, timeout=3
    )
    return {b"".join(r.strings).decode() for rrset in answer.answer for r in rrset}


async def test_zone_is_found_by_the_servers_soa(bind_primary: Bind) -> None:
    provider = await Rfc2136Provider.open(settings(bind_primary), UNLIMITED)
    assert await provider.zone_handle(ZONE) == ZONE
    assert await provider.zone_handle(f"a.b.{ZONE}") == ZONE  # from the authority SOA
    with pytest.raises(errors.ZoneNotFound):
        await provider.zone_handle("example.org")  # BIND: REFUSED
    explicit = await Rfc2136Provider.open(settings(bind_primary, zone="Example.Test."), UNLIMITED)
    assert await explicit.zone_handle("anything") == ZONE


async def test_udp_transport(bind_primary: Bind) -> None:
    provider = await Rfc2136Provider.open(settings(bind_primary, transport="udp"), UNLIMITED)
    fqdn = f"_acme-challenge.udp.{ZONE}"
    await provider.add_txt(ZoneRef(ZONE, ZONE), fqdn, "u" * 43, 60, ctx=CTX)
    assert await values(bind_primary, fqdn) == {"u" * 43}
    await provider.remove_txt(ZoneRef(ZONE, ZONE), fqdn, "u" * 43, ctx=CTX)
    assert await values(bind_primary, fqdn) == set()


@pytest.mark.parametrize(
    ("overrides", "what"),
    [
        ({"tsig_key_name": "unknown-key"}, "BADKEY from BIND"),
    ],
)
async def test_bind_rejects_an_unknown_key_name(
    bind_primary: Bind, overrides: dict[str, object], what: str
) -> None:
    provider = await Rfc2136Provider.open(settings(bind_primary, **overrides), UNLIMITED)
    with pytest.raises(errors.ProviderAuthError):
        await provider.add_txt(
            ZoneRef(ZONE, ZONE), f"_acme-challenge.{ZONE}", "x" * 43, 60, ctx=CTX
        )


async def test_an_unsigned_update_is_refused_and_maps_to_auth(bind_primary: Bind) -> None:
    update = dns.update.UpdateMessage(ZONE + ".")
    update.add(f"_acme-challenge.{ZONE}.", 60, "TXT", '"unsigned"')
    response = await dns.asyncquery.tcp(update, "127.0.0.1", port=bind_primary.port, timeout=3)
    assert response.rcode() == dns.rcode.REFUSED  # what BIND (and PowerDNS) answer
    assert isinstance(_error_for(response.rcode(), "x"), errors.ProviderAuthError)
    assert isinstance(_error_for(dns.rcode.NOTAUTH, "x"), errors.ProviderAuthError)  # Knot
    assert isinstance(_error_for(dns.rcode.NOTZONE, "x"), errors.ZoneNotFound)
    assert isinstance(_error_for(dns.rcode.SERVFAIL, "x"), errors.ProviderUnavailable)
    assert isinstance(_error_for(dns.rcode.YXRRSET, "x"), errors.ProviderRejected)


async def test_an_unsigned_formerr_is_an_auth_error_as_from_powerdns() -> None:
    """PowerDNS answers a wrong key with an unsigned FORMERR."""

    async def formerr(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        wire = await reader.readexactly(length)
        ident = wire[:2]
        reply = ident + struct.pack("!HHHHH", 0xA801, 0, 0, 0, 0)  # QR, opcode UPDATE, FORMERR
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(formerr, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        provider = await Rfc2136Provider.open(
            Rfc2136Settings(
                server=f"127.0.0.1:{port}",
                tsig_key_name=KEY_NAME,
                tsig_secret=Secret(base64.b64encode(b"k" * 32).decode()),
            ),
            UNLIMITED,
        )
        with pytest.raises(errors.ProviderAuthError, match="TSIG"):
            await provider.add_txt(
                ZoneRef(ZONE, ZONE), f"_acme-challenge.{ZONE}", "f" * 43, 60, ctx=CTX
            )
    finally:
        server.close()
        await server.wait_closed()


async def test_a_dead_server_is_unavailable(unused_tcp_port: int) -> None:
    provider = await Rfc2136Provider.open(
        Rfc2136Settings(
            server=f"127.0.0.1:{unused_tcp_port}",
            tsig_key_name=KEY_NAME,
            tsig_secret=Secret(base64.b64encode(b"k" * 32).decode()),
            timeout_seconds=0.5,
        ),
        UNLIMITED,
    )
    with pytest.raises(errors.ProviderUnavailable):
        await provider.zone_handle(ZONE)


async def test_a_secret_that_is_not_base64_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSIG_SECRET", "not base64 at all!")
    with pytest.raises(ConfigError, match=r"zones\[0\].*not valid base64"):
        config.from_mapping(
            {
                "certificate_manager": {"allowed_instances": [INSTANCE]},
                "zones": [
                    {
                        "name": ZONE,
                        "provider": "rfc2136",
                        "options": {
                            "server": "127.0.0.1:53",
                            "tsig_key_name": KEY_NAME,
                            "tsig_secret_env": "TSIG_SECRET",
                        },
                    }
                ],
            }
        )
