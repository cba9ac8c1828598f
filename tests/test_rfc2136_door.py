"""The RFC 2136 door with real clients on loopback: BIND's nsupdate (add, delete one
value, RRset deletes that take only this key's values, prerequisites, every refusal),
and dnspython for what nsupdate cannot send (replays, truncated MACs, skewed clocks)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.tsig
import pytest

from providers.base import ChangeContext, ZoneRef
from receiver.doors import rfc2136
from receiver.hosts.http import RFC2136_ADDRESS

from .conftest import Service, ServiceFactory, service_events
from .rfc2136_clients import (
    KEY,
    OTHER_KEY,
    digest,
    exchange,
    new_secret,
    nsupdate,
    raw_udp,
    signed_update,
    tsig_keygen,
)

CHALLENGE = "_acme-challenge.example.com"


@dataclass
class Door:
    service: Service
    address: tuple[str, int]
    secret: str
    other_secret: str

    @property
    def key(self) -> tuple[str, str, str]:
        return ("hmac-sha256", KEY, self.secret)

    @property
    def other_key(self) -> tuple[str, str, str]:
        return ("hmac-sha256", OTHER_KEY, self.other_secret)

    async def records(self, fqdn: str = CHALLENGE) -> frozenset[str]:
        return await self.service.records(fqdn)

    async def written(self) -> list[tuple[str, str, str, str | None]]:
        journal = self.service.runtime.journal
        assert journal is not None
        return [(e.door, e.action, e.value, e.sender) for e in await journal.entries()]


def door_config(secret_env: str = "DOOR_SECRET", **key: Any) -> dict[str, Any]:
    return {
        "certificate_manager": {"enabled": False, "allowed_instances": []},
        "rfc2136_door": {
            "enabled": True,
            "listen": "127.0.0.1:0",
            "keys": [
                {"name": KEY, "secret_env": secret_env, "zones": ["example.com"], **key},
                {
                    "name": OTHER_KEY,
                    "secret_env": "OTHER_DOOR_SECRET",
                    "zones": ["example.com", "example.net"],
                },
            ],
        },
    }


@pytest.fixture
async def door(start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch) -> Door:
    secret, other = new_secret(), new_secret()
    monkeypatch.setenv("DOOR_SECRET", secret)
    monkeypatch.setenv("OTHER_DOOR_SECRET", other)
    service = await start_service(**door_config())
    return Door(service, service.client.server.app[RFC2136_ADDRESS], secret, other)


def add(value: str, name: str = CHALLENGE) -> str:
    return f'update add {name}. 60 TXT "{value}"'


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_nsupdate_adds_and_deletes_one_value(door: Door, tcp: bool) -> None:
    first, second = digest(), digest()
    longer = f'update add {CHALLENGE}. 3600 TXT "{second}"'
    run = await nsupdate(door.address, [add(first), longer], key=door.key, tcp=tcp)
    assert run.returncode == 0, run.output
    assert await door.records() == {first, second}
    assert door.service.memory()._sets[CHALLENGE].ttl == 60  # the zone's TTL, not 3600

    run = await nsupdate(
        door.address, [f'update delete {CHALLENGE}. TXT "{first}"'], key=door.key, tcp=tcp
    )
    assert run.returncode == 0, run.output
    assert await door.records() == {second}
    assert await door.written() == [
        ("rfc2136", "add", first, KEY),
        ("rfc2136", "add", second, KEY),
        ("rfc2136", "remove", first, KEY),
    ]


async def test_nsupdate_with_a_key_file_from_tsig_keygen(
    start_service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secret as tsig-keygen prints it, read from a file by the door, `-k` for nsupdate."""
    made = await tsig_keygen(tmp_path, KEY, "hmac-sha512")
    secret_file = tmp_path / "door-secret"
    secret_file.write_text(made.secret + "\n")
    monkeypatch.setenv("OTHER_DOOR_SECRET", new_secret())
    config = door_config(algorithm="hmac-sha512")
    first = config["rfc2136_door"]["keys"][0]
    del first["secret_env"]
    first["secret_file"] = str(secret_file)
    service = await start_service(**config)
    address = service.client.server.app[RFC2136_ADDRESS]
    value = digest()
    run = await nsupdate(address, [add(value)], key_file=made.path)
    assert run.returncode == 0, run.output
    assert await service.records(CHALLENGE) == {value}
    # The same key offered with another algorithm is unknown to the door: BADKEY.
    sha256 = ("hmac-sha256", KEY, made.secret)
    run = await nsupdate(address, ["zone example.com", add(digest())], key=sha256)
    assert run.returncode != 0 and "NOTAUTH(BADKEY)" in run.output, run.output
    assert await service.records(CHALLENGE) == {value}


async def test_wrong_secret_is_badsig_and_unknown_key_badkey(door: Door) -> None:
    wrong = ("hmac-sha256", KEY, new_secret())
    run = await nsupdate(door.address, ["zone example.com", add(digest())], key=wrong)
    assert run.returncode != 0 and "NOTAUTH(BADSIG)" in run.output, run.output
    stranger = ("hmac-sha256", "stranger", door.secret)
    run = await nsupdate(door.address, ["zone example.com", add(digest())], key=stranger)
    assert run.returncode != 0 and "NOTAUTH(BADKEY)" in run.output, run.output
    assert await door.records() == frozenset()
    assert await door.written() == []


async def test_skewed_clock_is_badtime(door: Door, monkeypatch: pytest.MonkeyPatch) -> None:
    """nsupdate cannot run under libfaketime (BIND's clock use clashes with it), so the
    skew is on the door's side: the same arithmetic, the other way round."""
    monkeypatch.setattr(rfc2136, "wall_clock", lambda: time.time() + 3600)
    run = await nsupdate(door.address, ["zone example.com", add(digest())], key=door.key)
    assert run.returncode != 0, run.output
    assert "BADTIME" in run.output or "clocks are unsynchronized" in run.output, run.output
    assert await door.records() == frozenset()


async def test_a_name_outside_the_keys_zones_is_refused(door: Door) -> None:
    # example.net is a configured zone, but not one of acme-key's.
    name = "_acme-challenge.example.net"
    run = await nsupdate(door.address, [add(digest(), name)], key=door.key)
    assert run.returncode != 0 and "update failed: REFUSED" in run.output, run.output
    # example.org is no zone at all: the door refuses even to say where its zone starts.
    run = await nsupdate(door.address, [add(digest(), "_acme-challenge.example.org")], key=door.key)
    assert run.returncode != 0 and "REFUSED" in run.output, run.output
    # A zone section naming a zone the door does not serve; a name outside the zone named.
    run = await nsupdate(door.address, ["zone example.org", add(digest())], key=door.key)
    assert run.returncode != 0 and "update failed: NOTAUTH" in run.output, run.output
    outside = ["zone example.com", add(digest(), "_acme-challenge.example.org")]
    run = await nsupdate(door.address, outside, key=door.key)
    assert run.returncode != 0 and "update failed: NOTZONE" in run.output, run.output
    # Inside the zone, but outside the key's name patterns.
    run = await nsupdate(door.address, [add("v=spf1 -all", "example.com")], key=door.key)
    assert run.returncode != 0 and "update failed: REFUSED" in run.output, run.output
    assert await door.service.all_records() == {}


async def test_a_record_that_is_not_txt_is_refused(door: Door) -> None:
    commands = ["check-names no", f"update add {CHALLENGE}. 60 A 192.0.2.1"]
    run = await nsupdate(door.address, commands, key=door.key)
    assert run.returncode != 0 and "update failed: REFUSED" in run.output, run.output
    assert await door.service.all_records() == {}


async def test_a_value_that_is_no_challenge_digest_is_refused(door: Door) -> None:
    run = await nsupdate(door.address, [add("not a digest")], key=door.key)
    assert run.returncode != 0 and "update failed: REFUSED" in run.output, run.output
    assert await door.records() == frozenset()


async def test_one_bad_update_in_a_message_applies_nothing(door: Door) -> None:
    kept = digest()
    assert (await nsupdate(door.address, [add(kept)], key=door.key)).returncode == 0
    commands = [
        add(digest()),
        f'update delete {CHALLENGE}. TXT "{kept}"',
        add(digest(), "_acme-challenge.www.example.com"),
        add("not a digest", "_acme-challenge.www.example.com"),
    ]
    run = await nsupdate(door.address, commands, key=door.key)
    assert run.returncode != 0 and "update failed: REFUSED" in run.output, run.output
    assert await door.service.all_records() == {CHALLENGE: {kept}}
    assert len(await door.written()) == 1


async def test_an_rrset_delete_takes_only_what_this_key_wrote(door: Door) -> None:
    """SPF written behind the receiver's back and another key's challenge both stay."""
    memory = door.service.memory()
    ctx = ChangeContext(request_id="behind-the-back")
    await memory.add_txt(
        ZoneRef("example.com", "example.com"), CHALLENGE, "v=spf1 -all", 60, ctx=ctx
    )
    others = digest()
    run = await nsupdate(door.address, [add(others)], key=door.other_key)
    assert run.returncode == 0, run.output
    mine = [digest(), digest()]
    run = await nsupdate(door.address, [add(v) for v in mine], key=door.key)
    assert run.returncode == 0, run.output
    assert await door.records() == {"v=spf1 -all", others, *mine}

    run = await nsupdate(door.address, [f"update delete {CHALLENGE}. TXT"], key=door.key)
    assert run.returncode == 0, run.output
    assert await door.records() == {"v=spf1 -all", others}
    # `delete <name>` (every RRset at the name) means the same through this door.
    again = digest()
    assert (await nsupdate(door.address, [add(again)], key=door.key)).returncode == 0
    run = await nsupdate(door.address, [f"update delete {CHALLENGE}."], key=door.key)
    assert run.returncode == 0, run.output
    assert await door.records() == {"v=spf1 -all", others}


async def test_lego_style_delete_and_add_in_one_message(door: Door) -> None:
    """lego's rfc2136 provider clears the RRset and adds in one message, every time."""
    others = digest()
    assert (await nsupdate(door.address, [add(others)], key=door.other_key)).returncode == 0
    old, new = digest(), digest()
    assert (await nsupdate(door.address, [add(old)], key=door.key)).returncode == 0
    commands = [f"update delete {CHALLENGE}. TXT", add(new)]
    run = await nsupdate(door.address, commands, key=door.key)
    assert run.returncode == 0, run.output
    assert await door.records() == {others, new}
    # The same message again: the value this key wrote is replaced by itself, not lost.
    run = await nsupdate(door.address, commands, key=door.key)
    assert run.returncode == 0, run.output
    assert await door.records() == {others, new}


async def test_a_key_cannot_delete_another_keys_value(door: Door) -> None:
    others = digest()
    assert (await nsupdate(door.address, [add(others)], key=door.other_key)).returncode == 0
    run = await nsupdate(door.address, [f'update delete {CHALLENGE}. TXT "{others}"'], key=door.key)
    assert run.returncode != 0 and "update failed: REFUSED" in run.output, run.output
    assert await door.records() == {others}


async def test_prerequisites_as_nsupdate_sends_them(door: Door) -> None:
    first, second = digest(), digest()
    absent = [f"prereq nxrrset {CHALLENGE}. TXT", add(first)]
    assert (await nsupdate(door.address, absent, key=door.key)).returncode == 0
    run = await nsupdate(
        door.address, [f"prereq nxrrset {CHALLENGE}. TXT", add(second)], key=door.key
    )
    assert run.returncode != 0 and "update failed: YXRRSET" in run.output, run.output
    run = await nsupdate(door.address, [f"prereq nxdomain {CHALLENGE}.", add(second)], key=door.key)
    assert run.returncode != 0 and "update failed: YXDOMAIN" in run.output, run.output
    name = "_acme-challenge.www.example.com"
    run = await nsupdate(
        door.address, [f"prereq yxdomain {name}.", add(second, name)], key=door.key
    )
    assert run.returncode != 0 and "update failed: NXDOMAIN" in run.output, run.output
    exact = [f'prereq yxrrset {CHALLENGE}. TXT "{second}"', add(second)]
    run = await nsupdate(door.address, exact, key=door.key)
    assert run.returncode != 0 and "update failed: NXRRSET" in run.output, run.output
    exact = [f'prereq yxrrset {CHALLENGE}. TXT "{first}"', add(second)]
    assert (await nsupdate(door.address, exact, key=door.key)).returncode == 0
    exists = [f"prereq yxrrset {CHALLENGE}. TXT", f'update delete {CHALLENGE}. TXT "{first}"']
    assert (await nsupdate(door.address, exists, key=door.key)).returncode == 0
    assert await door.records() == {second}


async def test_the_change_budget_refuses_whole_messages(
    start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = new_secret()
    monkeypatch.setenv("DOOR_SECRET", secret)
    monkeypatch.setenv("OTHER_DOOR_SECRET", new_secret())
    service = await start_service(**door_config(burst=3, changes_per_minute=0.1))
    address = service.client.server.app[RFC2136_ADDRESS]
    key = ("hmac-sha256", KEY, secret)
    values = [digest() for _ in range(3)]
    assert (await nsupdate(address, [add(v) for v in values[:2]], key=key)).returncode == 0
    run = await nsupdate(address, [add(digest()), add(digest())], key=key)
    assert run.returncode != 0 and "update failed: REFUSED" in run.output, run.output
    assert (await nsupdate(address, [add(values[2])], key=key)).returncode == 0
    assert await service.records(CHALLENGE) == set(values)


# --- SOA: what clients ask to find the zone ---------------------------------------------


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
async def test_soa_answers_as_an_authoritative_server(door: Door, signed: bool) -> None:
    def query(name: str) -> dns.message.Message:
        message = dns.message.make_query(name, "SOA")
        if signed:
            message.use_tsig(dns.tsig.Key(KEY, door.secret))
        return message

    apex = await exchange(door.address, query("example.com."))
    assert apex.rcode() == dns.rcode.NOERROR and apex.flags & dns.flags.AA
    assert apex.answer[0].rdtype == dns.rdatatype.SOA
    assert apex.answer[0].name.to_text() == "example.com."
    assert apex.had_tsig is signed
    below = await exchange(door.address, query(f"{CHALLENGE}."))
    assert below.rcode() == dns.rcode.NOERROR and not below.answer
    assert below.authority[0].name.to_text() == "example.com."
    outside = await exchange(door.address, query("_acme-challenge.example.org."))
    assert outside.rcode() == dns.rcode.REFUSED


# --- what nsupdate cannot send ----------------------------------------------------------


async def test_a_replayed_update_is_refused(door: Door) -> None:
    update = signed_update("example.com", door.secret)
    update.add(f"{CHALLENGE}.", 60, "TXT", digest())
    wire = update.to_wire()  # signed once; sent twice, byte for byte
    first = dns.message.from_wire(
        await raw_udp(door.address, wire), keyring=update.keyring, request_mac=update.mac
    )
    assert first.rcode() == dns.rcode.NOERROR
    again = dns.message.from_wire(await raw_udp(door.address, wire), keyring=False)
    assert again.rcode() == dns.rcode.NOTAUTH
    assert again.tsig_error == dns.rcode.BADTIME
    assert again.mac  # signed: the MAC of the replayed message did verify
    assert len(await door.written()) == 1


async def test_unsigned_updates_are_refused(door: Door) -> None:
    update = dns.update.UpdateMessage("example.com")
    update.add(f"{CHALLENGE}.", 60, "TXT", digest())
    answer = await exchange(door.address, update)
    assert answer.rcode() == dns.rcode.REFUSED
    assert await door.written() == []


async def test_a_truncated_mac_is_refused(door: Door) -> None:
    update = signed_update("example.com", door.secret)
    update.add(f"{CHALLENGE}.", 60, "TXT", digest())
    update.to_wire()  # signs it
    assert update.tsig is not None
    full = update.tsig[0]
    truncated = full.replace(mac=full.mac[:16])
    update.tsig.clear()
    update.tsig.add(truncated)
    update.want_tsig_sign = False
    answer = dns.message.from_wire(await raw_udp(door.address, update.to_wire()), keyring=False)
    assert answer.rcode() == dns.rcode.NOTAUTH
    assert answer.tsig_error == dns.rcode.BADTRUNC
    assert await door.written() == []


async def test_every_refusal_is_logged_once_with_its_reason_and_no_secret(
    door: Door, captured: Any
) -> None:
    wrong = ("hmac-sha256", KEY, new_secret())
    await nsupdate(door.address, ["zone example.com", add(digest())], key=wrong)
    await nsupdate(door.address, ["zone example.com", add("not a digest")], key=door.key)
    events = [e for e in service_events(captured) if e.get("event") == "rfc2136"]
    rejected = [e for e in events if e["outcome"] == "rejected"]
    assert [(e["rcode"], e["event_type"]) for e in rejected] == [
        ("NOTAUTH", "update"),
        ("REFUSED", "update"),
    ]
    assert all(e["reason"] and e["key_name"] == KEY for e in rejected)
    assert door.secret not in captured.getvalue()
    assert json.dumps(events)  # plain JSON fields


# --- all or nothing, and the listener shared with `local` --------------------------------

FAILING = "F" * 43  # the scripted provider refuses every write of this value


async def test_a_failed_write_undoes_the_changes_already_made(
    start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch, scripted_registered: None
) -> None:
    secret = new_secret()
    monkeypatch.setenv("DOOR_SECRET", secret)
    monkeypatch.setenv("OTHER_DOOR_SECRET", new_secret())
    options = {"fail_value": FAILING, "error": "rejected"}
    config = door_config()
    config["rfc2136_door"]["keys"][1]["zones"] = ["example.com"]
    service = await start_service(
        **config, zones=[{"name": "example.com", "provider": "scripted", "options": options}]
    )
    address = service.client.server.app[RFC2136_ADDRESS]
    key = ("hmac-sha256", KEY, secret)
    (provider,) = service.runtime.providers.values()
    old, new = digest(), digest()
    assert (await nsupdate(address, [add(old)], key=key)).returncode == 0
    commands = [f"update delete {CHALLENGE}. TXT", add(new), add(FAILING)]
    run = await nsupdate(address, commands, key=key)
    assert run.returncode != 0 and "update failed: SERVFAIL" in run.output, run.output
    assert await provider.list_txt(ZoneRef("example.com", "example.com"), CHALLENGE) == {old}
    journal = service.runtime.journal
    assert journal is not None
    assert [(e.action, e.value, e.outcome) for e in await journal.entries()] == [
        ("add", old, "done"),
        ("remove", old, "done"),
        ("add", new, "done"),
        ("add", FAILING, "failed"),
        ("remove", new, "done"),  # the undo, newest first
        ("add", old, "done"),
    ]


async def test_the_door_shares_the_local_responders_socket(
    start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = new_secret()
    monkeypatch.setenv("DOOR_SECRET", secret)
    monkeypatch.setenv("OTHER_DOOR_SECRET", new_secret())
    config = door_config(zones=["example.test"])
    config["rfc2136_door"]["keys"][1]["zones"] = ["example.test"]
    del config["rfc2136_door"]["listen"]  # default: local.dns_listen
    service = await start_service(
        **config,
        local={"database": str(tmp_path / "local.sqlite3"), "dns_listen": "127.0.0.1:0"},
        zones=[{"name": "example.test", "provider": "local", "ttl": 30}],
    )
    app = service.client.server.app
    from receiver.hosts.http import DNS_ADDRESS

    assert app[RFC2136_ADDRESS] == app[DNS_ADDRESS]
    value = digest()
    name = "_acme-challenge.example.test"
    run = await nsupdate(app[DNS_ADDRESS], [add(value, name)], key=("hmac-sha256", KEY, secret))
    assert run.returncode == 0, run.output
    answer = await exchange(app[DNS_ADDRESS], dns.message.make_query(name, "TXT"))
    assert answer.flags & dns.flags.AA
    assert [r.strings for rrset in answer.answer for r in rrset] == [(value.encode(),)]
    soa = await exchange(app[DNS_ADDRESS], dns.message.make_query("example.test", "SOA"))
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    assert str(soa.answer[0][0].mname) == "ns.example.test."  # the local zone's own SOA


def test_configuration_problems_name_their_keys() -> None:
    from receiver import config
    from receiver.errors import ConfigError

    data = {
        "certificate_manager": {"enabled": False},
        "journal": {"enabled": False},
        "rfc2136_door": {
            "enabled": True,
            "listen": "nowhere",
            "keys": [
                {
                    "name": "acme key",
                    "secret_env": "SHORT",
                    "zones": ["example.org"],
                    "names": ["_ACME-CHALLENGE.*"],
                    "burst": 0,
                },
            ],
        },
        "zones": [{"name": "example.com", "provider": "memory"}],
    }
    with pytest.raises(ConfigError) as raised:
        config.from_mapping(data, environ={"SHORT": "c2hvcnQ="})
    assert sorted(p.split(":")[0] for p in raised.value.problems) == [
        "rfc2136_door.enabled",  # needs the journal
        "rfc2136_door.keys[0].burst",
        "rfc2136_door.keys[0].name",
        "rfc2136_door.keys[0].names[0]",
        "rfc2136_door.keys[0].secret",
        "rfc2136_door.keys[0].zones[0]",
        "rfc2136_door.listen",
    ]
    assert "c2hvcnQ=" not in str(raised.value)


async def test_a_delegated_zone_writes_to_its_target_and_scopes_deletes_there(
    start_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """example.org CNAMEs its challenge names into example.com: the key changes
    example.org's names, the values land at the target, the RRset delete finds them."""
    secret = new_secret()
    monkeypatch.setenv("DOOR_SECRET", secret)
    monkeypatch.setenv("OTHER_DOOR_SECRET", new_secret())
    config = door_config(zones=["example.org"])
    config["rfc2136_door"]["keys"][1]["zones"] = ["example.com"]
    service = await start_service(
        **config,
        zones=[
            {"name": "example.com", "provider": "memory"},
            {"name": "example.org", "cname_to": "example.com"},
        ],
    )
    address = service.client.server.app[RFC2136_ADDRESS]
    key = ("hmac-sha256", KEY, secret)
    value = digest()
    run = await nsupdate(address, [add(value, "_acme-challenge.example.org")], key=key)
    assert run.returncode == 0, run.output
    assert await service.all_records() == {"example.org.example.com": {value}}
    run = await nsupdate(address, ["update delete _acme-challenge.example.org. TXT"], key=key)
    assert run.returncode == 0, run.output
    assert await service.all_records() == {}
    # The target zone itself is not this key's.
    run = await nsupdate(address, [add(digest(), "_acme-challenge.example.com")], key=key)
    assert run.returncode != 0 and "REFUSED" in run.output, run.output


# --- the pieces, without sockets --------------------------------------------------------


def test_net_changes_let_the_last_word_on_each_value_win() -> None:
    from receiver.challenge import Action
    from receiver.config import ZoneSettings
    from receiver.doors.rfc2136 import (
        AddValue,
        DeleteOwnValues,
        DeleteValue,
        Target,
        net_changes,
    )
    from receiver.policy import Route

    zone = ZoneSettings(name="example.com", provider="memory")
    target = Target(CHALLENGE, "example.com", Route(zone, CHALLENGE), apex=False)
    own = {("example.com", CHALLENGE): frozenset({"old", "kept-by-delete"})}
    operations = [DeleteOwnValues(target), AddValue(target, "new"), AddValue(target, "old")]
    assert net_changes(operations, own) == [
        (Action.REMOVE, target, "kept-by-delete"),
        (Action.ADD, target, "old"),  # deleted, then added again: added
        (Action.ADD, target, "new"),
    ]
    later = [AddValue(target, "x"), DeleteOwnValues(target), DeleteValue(target, "y")]
    assert net_changes(later, {}) == [(Action.REMOVE, target, "x"), (Action.REMOVE, target, "y")]


def test_the_change_budget_is_a_gcra_over_changes() -> None:
    from receiver.doors.tsig_keys import ChangeBudget

    budget = ChangeBudget(per_minute=60, burst=3)  # one a second after a burst of three
    assert budget.take(2, now=100.0) == 0
    assert budget.take(2, now=100.0) == pytest.approx(1.0)  # refused, and not counted
    assert budget.take(1, now=100.0) == 0
    assert budget.take(1, now=100.5) == pytest.approx(0.5)
    assert budget.take(1, now=101.0) == 0
    assert budget.take(4, now=1000.0) > 0  # more than the burst never fits


def test_the_replay_guard_forgets_only_what_has_expired() -> None:
    import dns.name
    import dns.tsig

    from receiver.doors.tsig_keys import ChangeBudget, DoorKey, ReplayGuard

    def key(name: str) -> DoorKey:
        tsig = dns.tsig.Key(name, b"k" * 32)
        return DoorKey(
            dns.name.from_text(name),
            name,
            tsig.algorithm,
            tsig,
            frozenset(),
            (),
            ChangeBudget(1, 1),
        )

    guard, one, two = ReplayGuard(capacity=3), key("one"), key("two")
    assert guard.first_time(one, b"mac", valid_until=10, now=0)
    assert not guard.first_time(one, b"mac", valid_until=10, now=5)
    assert guard.first_time(two, b"mac", valid_until=15, now=5)  # another key's MAC
    assert guard.first_time(one, b"mac", valid_until=20, now=11)  # its window closed
    assert len(guard) == 2


def test_the_listener_peeks_only_at_what_is_the_doors(door: Door) -> None:
    import dns.update

    listener = rfc2136.Rfc2136Door(door.service.runtime.settings, door.service.runtime.policy)
    assert listener.claims(dns.update.UpdateMessage("anything.test").to_wire())
    assert listener.claims(dns.message.make_query("_acme-challenge.EXAMPLE.com", "SOA").to_wire())
    assert listener.claims(dns.message.make_query("example.net", "SOA").to_wire())
    assert not listener.claims(dns.message.make_query("example.org", "SOA").to_wire())
    assert not listener.claims(dns.message.make_query(CHALLENGE, "TXT").to_wire())
    assert not listener.claims(b"\x00\x01")
