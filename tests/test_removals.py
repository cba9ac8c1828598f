"""Who may remove a value: the instance that published it, when the journal knows
(issue 21 #10), and which removals need the user token (#12)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from providers.base import ZoneRef
from providers.local import ChallengeStore
from receiver import signing
from receiver.journal import Entry, GroupCommit
from receiver.sqlite.journal import SqliteJournal

from .conftest import INSTANCE, OTHER_INSTANCE, Sender, ServiceFactory

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"
NAME = "_acme-challenge.www.example.com"


def local_sections(tmp_path: Path, **journal: Any) -> dict[str, Any]:
    return {
        "local": {"database": str(tmp_path / "shared.sqlite3"), "dns_listen": "127.0.0.1:0"},
        "zones": [{"name": "example.com", "provider": "local"}],
        "journal": journal,
    }


def store_values(tmp_path: Path) -> set[str]:
    store = ChallengeStore(tmp_path / "shared.sqlite3", lifetime=3600)
    try:
        return {v.value for v in store.values(NAME)}
    finally:
        store.close()


def other_instance(sender: Sender) -> Sender:
    return Sender(sender.keys, instance_crn=OTHER_INSTANCE, key_name="other_instance")


async def notify(service: Any, sender: Sender, event: str, value: str, **claims: Any) -> Any:
    resp = await service.post(sender.body(sender.claims(event, "www.example.com", value, **claims)))
    return resp.status, await resp.json()


async def test_an_instance_cannot_remove_what_another_published(
    start_service: ServiceFactory,
    sender: Sender,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = await start_service(**local_sections(tmp_path))
    forgotten: list[str] = []
    monkeypatch.setattr(service.runtime, "forget_check", lambda c: forgotten.append(c.value))
    value = signing.challenge_value()
    assert (await notify(service, sender, REQUIRED, value))[0] == 200
    entries = len(await service.runtime.journal.entries())

    status, body = await notify(service, other_instance(sender), COMPLETED, value)
    assert (status, body["error"]) == (403, "not_publisher"), body
    assert store_values(tmp_path) == {value}
    assert len(await service.runtime.journal.entries()) == entries  # nothing written
    assert forgotten == []  # the publisher's propagation check goes on

    status, body = await notify(service, sender, COMPLETED, value)  # the publisher may
    assert (status, body["status"]) == (200, "removed")
    assert store_values(tmp_path) == set()
    assert forgotten == [value]


async def test_a_removal_the_journal_cannot_attribute_proceeds(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    """No entry for the value (written by something else): removed as before."""
    service = await start_service(**local_sections(tmp_path))
    value = signing.challenge_value()
    (provider,) = service.runtime.providers.values()
    await provider.add_txt(ZoneRef("example.com", "example.com"), NAME, value, 60, ctx=None)
    status, body = await notify(service, other_instance(sender), COMPLETED, value)
    assert (status, body["status"]) == (200, "removed")
    assert store_values(tmp_path) == set()


async def test_without_a_journal_any_allowed_instance_removes(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service(journal={"enabled": False})
    value = signing.challenge_value()
    assert (await notify(service, sender, REQUIRED, value))[0] == 200
    status, body = await notify(service, other_instance(sender), COMPLETED, value)
    assert (status, body["status"]) == (200, "removed")
    assert await service.records(NAME) == frozenset()


async def test_the_publisher_is_the_latest_add_of_a_value_still_published(
    tmp_path: Path,
) -> None:
    journal = GroupCommit(SqliteJournal(tmp_path / "j.sqlite3"))

    async def write(action: str, value: str, sender: str, outcome: str = "done") -> None:
        entry = Entry(
            action=action,  # type: ignore[arg-type]
            outcome="pending",
            fqdn=NAME,
            value=value,
            provider="local",
            zone="example.com",
            door="certificate_manager",
            sender=sender,
            created=time.time(),
        )
        await journal.settle(await journal.begin(entry), outcome)  # type: ignore[arg-type]

    async def publisher(value: str) -> str | None:
        found = await journal.publisher(zone="example.com", fqdn=NAME, value=value)
        return None if found is None else found.sender

    await write("add", "a", INSTANCE)
    assert await publisher("a") == INSTANCE
    await write("add", "a", "propagation-rewrite-keeps-the-sender", outcome="done")
    assert await publisher("a") == "propagation-rewrite-keeps-the-sender"
    await write("remove", "a", INSTANCE)
    assert await publisher("a") is None  # removed: nobody's any more

    await write("add", "b", INSTANCE, outcome="failed")  # may have landed all the same
    assert await publisher("b") == INSTANCE
    await write("remove", "b", INSTANCE, outcome="failed")  # still there
    assert await publisher("b") == INSTANCE
    assert await journal.publisher(zone="other.com", fqdn=NAME, value="b") is None
    assert await publisher("never") is None
    await journal.aclose()


# --- #12: `user_token.required` governs what publishes ---------------------------------

CERT = INSTANCE.rstrip(":") + ":certificate:aaaa"
REQUIRE_TOKEN = {"user_token": {"required": True}}


async def publish_with_token(service: Any, sender: Sender, value: str) -> None:
    status, body = await notify(
        service, sender, REQUIRED, value, certificateCRN=CERT, user_token=sender.user_token()
    )
    assert status == 200, body


@pytest.mark.parametrize("event", ["cert_order_failed", "cert_renew_failed"])
async def test_a_failed_order_in_the_documented_shape_is_cleaned_up_without_a_token(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path, event: str
) -> None:
    """Certificate Manager sends no userToken with these: the clean-up must still run."""
    service = await start_service(**local_sections(tmp_path), **REQUIRE_TOKEN)
    value = signing.challenge_value()
    await publish_with_token(service, sender, value)
    failed = {
        "instance_crn": INSTANCE,
        "event_type": event,
        "certificates": [{"cert_crn": CERT, "name": "www", "domains": "www.example.com"}],
    }
    resp = await service.post(sender.body(failed))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "status": "cleaned",
        "event_type": event,
        "removed": 1,
        "failed": 0,
    }
    assert store_values(tmp_path) == set()


async def test_a_removal_without_a_token_takes_only_a_value_this_instance_published(
    start_service: ServiceFactory, sender: Sender, tmp_path: Path
) -> None:
    service = await start_service(**local_sections(tmp_path), **REQUIRE_TOKEN)
    own, unknown = signing.challenge_value(), signing.challenge_value()
    await publish_with_token(service, sender, own)
    (provider,) = service.runtime.providers.values()
    await provider.add_txt(ZoneRef("example.com", "example.com"), NAME, unknown, 60, ctx=None)

    status, body = await notify(service, sender, COMPLETED, unknown)  # the journal cannot vouch
    assert (status, body["error"]) == (401, "user_token_required"), body
    status, body = await notify(service, other_instance(sender), COMPLETED, own)
    assert (status, body["error"]) == (403, "not_publisher"), body
    assert store_values(tmp_path) == {own, unknown}

    status, body = await notify(service, sender, COMPLETED, own)
    assert (status, body["status"]) == (200, "removed"), body
    status, body = await notify(service, sender, COMPLETED, unknown, user_token=sender.user_token())
    assert (status, body["status"]) == (200, "removed"), body  # with the token: as before
    assert store_values(tmp_path) == set()


async def test_without_a_journal_a_required_token_is_required_for_removals(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service(journal={"enabled": False}, **REQUIRE_TOKEN)
    value = signing.challenge_value()
    await publish_with_token(service, sender, value)
    status, body = await notify(service, sender, COMPLETED, value)
    assert (status, body["error"]) == (401, "user_token_required"), body
    assert await service.records(NAME) == {value}


async def test_publishing_still_requires_the_token_and_notices_that_write_nothing_do_not(
    start_service: ServiceFactory, sender: Sender
) -> None:
    service = await start_service(**REQUIRE_TOKEN)
    status, body = await notify(service, sender, REQUIRED, signing.challenge_value())
    assert (status, body["error"]) == (401, "user_token_required"), body
    resp = await service.post(sender.body(sender.claims("test_notification_channel")))
    assert resp.status == 200
    assert (await resp.json())["status"] == "acknowledged"
    assert await service.all_records() == {}
