"""DigiCert AuthKey request tokens: the token itself, placing and removing it, fileauth."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import pytest

from providers.base import ChangeContext, ZoneRef
from receiver import cli, config, digicert
from receiver import digicert_placement as digicert_door
from receiver.errors import ConfigError, Forbidden
from receiver.hosts.http import DNS_ADDRESS
from receiver.runtime import Runtime
from receiver.sweep import sweep

from .conftest import INSTANCE, Sender, ServiceFactory, SettingsFactory

AUTH_KEY = "certcentral_account_auth_key"
_CTX = ChangeContext(request_id="test")
CSR = (
    b"-----BEGIN CERTIFICATE REQUEST-----\n"
    b"MIIBfixedcsrfortestvector\n"
    b"-----END CERTIFICATE REQUEST-----\n"
)
# Computed outside Python: openssl dgst -sha256 -hmac KEY over timestamp + CSR, then the
# digest converted to base 36 with `bc` (obase=36): an independent route to the same token.
FIXED_TOKEN = "20191021133012" + "5hl78pzznl5ymss6bpchqalv2ktbea1yugq214vgpkrquy1132"
OTHER_CSR = CSR.replace(b"fixed", b"other")


def independent_token(auth_key: str, csr: bytes, timestamp: str) -> str:
    """The seed's recipe step by step: hex digest -> int(hex, 16) -> base 36 -> pad."""
    hexdigest = hmac.new(auth_key.encode(), timestamp.encode() + csr, "sha256").hexdigest()
    number = int(hexdigest, 16)
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while number > 0:
        text = alphabet[number % 36] + text
        number //= 36
    while len(text) < 50:
        text = "0" + text
    return timestamp + text


def test_the_fixed_vector() -> None:
    assert digicert.request_token(AUTH_KEY, CSR, "20191021133012") == FIXED_TOKEN
    assert independent_token(AUTH_KEY, CSR, "20191021133012") == FIXED_TOKEN


@pytest.mark.parametrize("seconds", [0, 1, 59, 86399, 10**7, 10**9])
def test_tokens_match_the_independent_recipe(seconds: int) -> None:
    timestamp = (datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)).strftime(
        "%Y%m%d%H%M%S"
    )
    token = digicert.request_token(AUTH_KEY, CSR, timestamp)
    assert token == independent_token(AUTH_KEY, CSR, timestamp)
    assert len(token) == 64 and token.startswith(timestamp)


def test_short_hashes_are_padded_with_zeros() -> None:
    """About one digest in six has fewer than 50 base-36 digits: find one and check it."""
    for second in range(1000):
        timestamp = (datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=second)).strftime(
            "%Y%m%d%H%M%S"
        )
        digest = hmac.new(AUTH_KEY.encode(), timestamp.encode() + CSR, hashlib.sha256)
        if int(digest.hexdigest(), 16) < 36**49:
            break
    else:
        raise AssertionError("no short digest in 1000 tries")
    token = digicert.request_token(AUTH_KEY, CSR, timestamp)
    assert token[14] == "0"
    assert token == independent_token(AUTH_KEY, CSR, timestamp)


def test_the_csr_is_hashed_byte_for_byte() -> None:
    crlf = CSR.replace(b"\n", b"\r\n")
    stamp = "20240101000000"
    assert digicert.request_token(AUTH_KEY, crlf, stamp) != digicert.request_token(
        AUTH_KEY, CSR, stamp
    )
    assert digicert.request_token(AUTH_KEY, crlf, stamp) == independent_token(AUTH_KEY, crlf, stamp)


@pytest.mark.parametrize(
    ("offset", "valid"),
    [
        (timedelta(seconds=-1), False),
        (timedelta(0), True),
        (timedelta(days=30) - timedelta(seconds=1), True),
        (timedelta(days=30), False),
    ],
)
def test_the_validity_window_edges(offset: timedelta, valid: bool) -> None:
    window = digicert.window(FIXED_TOKEN)
    start = datetime(2019, 10, 21, 13, 30, 12, tzinfo=UTC)
    assert window.start == start
    assert window.contains(start + offset) is valid


@pytest.mark.parametrize(
    "timestamp", ["2019102113301", "201910211330123", "2019102113301x", "20191341133012", ""]
)
def test_bad_timestamps_are_refused(timestamp: str) -> None:
    with pytest.raises(digicert.InvalidTimestamp):
        digicert.request_token(AUTH_KEY, CSR, timestamp)


def test_a_token_is_recognised_by_its_csr_and_key() -> None:
    assert digicert.is_token_for(FIXED_TOKEN, AUTH_KEY, CSR)
    assert not digicert.is_token_for(FIXED_TOKEN, AUTH_KEY, OTHER_CSR)
    assert not digicert.is_token_for(FIXED_TOKEN, "another key", CSR)
    assert not digicert.is_token_for("x" * 64, AUTH_KEY, CSR)


# --- placing and removing through the providers -----------------------------------------


@pytest.fixture
def csr_file(tmp_path: Path) -> Path:
    path = tmp_path / "www.csr"
    path.write_bytes(CSR)
    return path


async def test_place_and_remove_touch_only_this_token(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    token = digicert.request_token(AUTH_KEY, CSR, "20240101000000")
    older = digicert.request_token(AUTH_KEY, CSR, "20231201000000")
    foreign = digicert.request_token(AUTH_KEY, OTHER_CSR, "20240101000000")
    async with Runtime.open(settings) as runtime:
        placed = await digicert_door.place(
            runtime, token, ["www.example.com", "*.example.net"], dnsauth=False
        )
        assert [(p.fqdn, p.zone) for p in placed] == [
            ("www.example.com", "example.com"),
            ("example.net", "example.net"),
        ]
        memory = runtime.dispatcher.provider_for(settings.zones[0])
        ref = ZoneRef("example.com", "example.com")
        for value in (older, foreign, "v=spf1 -all"):
            await memory.add_txt(ref, "www.example.com", value, 60, ctx=_CTX)
        assert await memory.list_txt(ref, "www.example.com") == {
            token,
            older,
            foreign,
            "v=spf1 -all",
        }

        removed = await digicert_door.remove(
            runtime, AUTH_KEY, CSR, ["www.example.com"], dnsauth=False, timestamp="20240101000000"
        )
        assert [p.token for p in removed] == [token]
        assert await memory.list_txt(ref, "www.example.com") == {older, foreign, "v=spf1 -all"}

        removed = await digicert_door.remove(
            runtime, AUTH_KEY, CSR, ["www.example.com", "example.net"], dnsauth=False
        )
        assert sorted(p.token for p in removed) == sorted([older, token])
        assert await memory.list_txt(ref, "www.example.com") == {foreign, "v=spf1 -all"}
        assert await memory.list_txt(ref, "example.net") == frozenset()


async def test_dnsauth_names_and_the_zone_policy(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    token = digicert.request_token(AUTH_KEY, CSR, "20240101000000")
    async with Runtime.open(settings) as runtime:
        placed = await digicert_door.place(runtime, token, ["shop.example.com"], dnsauth=True)
        assert placed[0].fqdn == "_dnsauth.shop.example.com"
        memory = runtime.dispatcher.provider_for(settings.zones[0])
        ref = ZoneRef("example.com", "example.com")
        assert await memory.list_txt(ref, "_dnsauth.shop.example.com") == {token}
        # Outside every zone: refused before anything is written, even for listed ones.
        with pytest.raises(Forbidden):
            await digicert_door.place(
                runtime, token, ["www.example.com", "example.org"], dnsauth=False
            )
        assert await memory.list_txt(ref, "www.example.com") == frozenset()


async def test_delegated_zones_are_refused(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        zones=[
            {"name": "acme.example.net", "provider": "memory"},
            {"name": "example.com", "cname_to": "acme.example.net"},
        ]
    )
    async with Runtime.open(settings) as runtime:
        with pytest.raises(Forbidden, match="delegates only"):
            await digicert_door.place(runtime, FIXED_TOKEN, ["example.com"], dnsauth=True)


async def test_the_challenge_door_refuses_dnsauth_names(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service()
    response = await service.post(
        sender.body(
            sender.claims(
                domain="example.com",
                challenge={"txt_record_name": "_dnsauth.example.com.", "txt_record_val": "A" * 43},
            )
        )
    )
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_record_name"
    assert await service.all_records() == {}


async def test_the_sweep_keeps_tokens_until_their_window_closes(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(journal={"max_age_seconds": 60})
    now = datetime.now(UTC)
    current = digicert.request_token(AUTH_KEY, CSR, digicert.format_timestamp(now))
    expired = digicert.request_token(
        AUTH_KEY, CSR, digicert.format_timestamp(now - timedelta(days=31))
    )
    async with Runtime.open(settings) as runtime:
        await digicert_door.place(runtime, current, ["a.example.com"], dnsauth=False)
        await digicert_door.place(runtime, expired, ["b.example.com"], dnsauth=False)
        report = await sweep(runtime, max_age=0)
        assert [e.value for e in report.removed] == [expired]
        memory = runtime.dispatcher.provider_for(settings.zones[0])
        ref = ZoneRef("example.com", "example.com")
        assert await memory.list_txt(ref, "a.example.com") == {current}
        assert await memory.list_txt(ref, "b.example.com") == frozenset()


# --- the CLI, against the local provider and its DNS responder --------------------------


def write_config(tmp_path: Path, ibm_public_key: str) -> Path:
    path = tmp_path / "receiver.toml"
    path.write_text(
        f"""
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{ibm_public_key}"

[user_token]
verify = false

[propagation]
check = false

[local]
database = "{tmp_path / "store.sqlite3"}"
dns_listen = "127.0.0.1:0"

[[zones]]
name = "example.com"
provider = "local"
"""
    )
    return path


async def txt(address: tuple[str, int], name: str) -> list[str]:
    query = dns.message.make_query(name, "TXT")
    response = await dns.asyncquery.udp(query, address[0], port=address[1], timeout=3)
    return sorted(b"".join(r.strings).decode() for rrset in response.answer for r in rrset)


async def test_cli_place_and_remove_on_the_local_responder(
    tmp_path: Path,
    csr_file: Path,
    public_key_file: Path,
    start_service: ServiceFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_file = write_config(tmp_path, str(public_key_file))
    service = await start_service(config.load_file(config_file))
    address = service.client.app[DNS_ADDRESS]
    monkeypatch.setenv("DIGICERT_AUTH_KEY", AUTH_KEY)

    def run(*args: str) -> int:
        return cli.main(["digicert", *args, "--csr", str(csr_file), "--config", str(config_file)])

    stamp = "20240101000000"
    token = independent_token(AUTH_KEY, CSR, stamp)
    assert (
        await asyncio.to_thread(
            run, "place", "--domain", "www.example.com", "--dnsauth", "--timestamp", stamp
        )
        == 0
    )
    assert await txt(address, "_dnsauth.www.example.com") == [token]
    out = capsys.readouterr().out
    assert f"placed _dnsauth.www.example.com TXT {token} (local)" in out
    assert "valid 2024-01-01T00:00:00Z to 2024-01-31T00:00:00Z" in out

    assert await asyncio.to_thread(run, "remove", "--domain", "www.example.com", "--dnsauth") == 0
    assert await txt(address, "_dnsauth.www.example.com") == []
    assert f"removed _dnsauth.www.example.com TXT {token}" in capsys.readouterr().out

    assert await asyncio.to_thread(run, "place", "--domain", "example.org") == 2
    assert "in no zone" in capsys.readouterr().err


def test_cli_token(
    csr_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.delenv("DIGICERT_AUTH_KEY", raising=False)
    args = ["digicert", "token", "--csr", str(csr_file), "--timestamp", "20191021133012"]
    assert cli.main(args) == 2
    assert "DIGICERT_AUTH_KEY" in capsys.readouterr().err

    key_file = tmp_path / "authkey"
    key_file.write_text(AUTH_KEY + "\n")
    assert cli.main([*args, "--auth-key-file", str(key_file)]) == 0
    assert capsys.readouterr().out.strip() == FIXED_TOKEN

    monkeypatch.setenv("DIGICERT_AUTH_KEY", AUTH_KEY)
    assert cli.main(args) == 0
    assert capsys.readouterr().out.strip() == FIXED_TOKEN

    assert cli.main([*args[:-1], "2019-10-21"]) == 2
    assert "yyyyMMddHHmmss" in capsys.readouterr().err

    before = time.gmtime()
    assert cli.main(args[:-2]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed[:8] == time.strftime("%Y%m%d", before) or printed[:8] == time.strftime(
        "%Y%m%d", time.gmtime()
    )
    assert digicert.is_token_for(printed, AUTH_KEY, CSR)


def test_an_auth_key_is_never_an_argument(csr_file: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["digicert", "token", "--csr", str(csr_file), "--auth-key", AUTH_KEY])


# --- fileauth ----------------------------------------------------------------------------


async def test_fileauth_serves_the_current_token(
    start_service: ServiceFactory,
    csr_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIGICERT_AUTH_KEY", AUTH_KEY)
    service = await start_service(
        digicert={
            "auth_key_env": "DIGICERT_AUTH_KEY",
            "fileauth": True,
            "fileauth_csr_files": {"www.example.com": str(csr_file)},
        }
    )
    path = "/.well-known/pki-validation/fileauth.txt"
    response = await service.client.get(path, headers={"Host": "WWW.example.com:8080"})
    assert response.status == 200
    body = await response.text()
    today = datetime.now(UTC).strftime("%Y%m%d") + "000000"
    assert body == independent_token(AUTH_KEY, CSR, today)
    assert response.headers["Cache-Control"] == "no-store"

    response = await service.client.get(path, headers={"Host": "other.example.com"})
    assert response.status == 404
    assert (await response.json())["error"] == "unknown_host"

    csr_file.write_bytes(OTHER_CSR)  # a rotated CSR is served without a restart
    response = await service.client.get(path, headers={"Host": "www.example.com"})
    assert await response.text() == independent_token(AUTH_KEY, OTHER_CSR, today)


async def test_fileauth_is_off_by_default(start_service: ServiceFactory) -> None:
    service = await start_service()
    response = await service.client.get(
        "/.well-known/pki-validation/fileauth.txt", headers={"Host": "www.example.com"}
    )
    assert response.status == 404


def test_fileauth_config_is_checked(
    make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIGICERT_AUTH_KEY", AUTH_KEY)
    with pytest.raises(ConfigError) as caught:
        make_settings(
            digicert={
                "fileauth": True,
                "fileauth_csr_files": {
                    "www.example.org": str(tmp_path / "missing.csr"),
                    "WWW.example.com": str(tmp_path / "missing.csr"),
                },
            }
        )
    problems = "\n".join(caught.value.problems)
    assert "digicert.auth_key: required with fileauth" in problems
    assert "www.example.org is in no configured zone" in problems
    assert "write the host as 'www.example.com'" in problems
    assert "missing.csr is not a readable file" in problems
