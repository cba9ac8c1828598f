"""One suite for the journal and the acme-dns account store, run against every backend
(SQLite files, and a real PostgreSQL server): they must behave the same, because the
sweep, the failed-order clean-up and the acme-dns door cannot tell them apart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import structlog

from receiver import config
from receiver import journal as journal_module
from receiver.accounts import Account
from receiver.journal import Entry, GroupCommit, RemovalCheck
from receiver.state import State

BACKENDS = ["sqlite", "postgres"]
StateFactory = Callable[[], AbstractAsyncContextManager[State]]


def settings_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> config.Settings:
    data: dict[str, Any] = {
        "certificate_manager": {"enabled": False},
        "acme_dns": {"enabled": True, "zone": "auth.example.net"},
        "zones": [{"name": "auth.example.net", "provider": "memory"}],
    }
    environ: dict[str, str] = {}
    if backend == "postgres":
        environ["DCR_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        data["state"] = {"url_env": "DCR_DATABASE_URL"}
    else:
        data["journal"] = {"database": str(tmp_path / "state.sqlite3")}
    return config.from_mapping(data, base_dir=tmp_path, environ=environ)


@pytest.fixture(params=BACKENDS)
def open_state(request: pytest.FixtureRequest, tmp_path: Path) -> StateFactory:
    """Opens a State on one backend; call it twice for two processes' worth of state."""
    settings = settings_for(request.param, request, tmp_path)
    return lambda: State.open(settings)


@pytest.fixture
async def state(open_state: StateFactory) -> AsyncIterator[State]:
    async with open_state() as opened:
        yield opened


def entry(value: str, action: str = "add", **fields: Any) -> Entry:
    base: dict[str, Any] = {
        "action": action,
        "outcome": "pending",
        "fqdn": "_acme-challenge.www.example.com",
        "value": value,
        "provider": "memory",
        "zone": "example.com",
        "door": "certificate_manager",
        "created": time.time(),
        "sender": "crn:a",
        "domain": "www.example.com",
    }
    return Entry(**{**base, **fields})


def recorded_batches(
    journal: GroupCommit, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, int]]:
    """(entries, settlements) of each batch the journal writes from now on."""
    batches: list[tuple[int, int]] = []
    write_batch = journal.backend.write_batch

    async def counted(entries: Any, checks: Any, settlements: Any) -> Any:
        batches.append((len(entries), len(settlements)))
        return await write_batch(entries, checks, settlements)

    monkeypatch.setattr(journal.backend, "write_batch", counted)
    return batches


def fail_next_batch(journal: GroupCommit, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal's next batch fails with "disk full"; the ones after it commit."""
    write_batch = journal.backend.write_batch
    failures = iter([RuntimeError("disk full")])

    async def flaky(entries: Any, checks: Any, settlements: Any) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await write_batch(entries, checks, settlements)

    monkeypatch.setattr(journal.backend, "write_batch", flaky)


# --- journal -------------------------------------------------------------------------------


async def test_entries_round_trip_with_every_field(state: State) -> None:
    journal = state.journal
    assert journal is not None
    written = entry("v1", user="IBMid-1", certificate="crn:cert", request_id="r1")
    first = await journal.begin(written)
    second = await journal.begin(entry("v2"))
    assert second > first
    await journal.settle(first, "failed", "provider_rejected")
    found = await journal.entries()
    assert [e.value for e in found] == ["v1", "v2"]
    assert found[0].id == first
    assert (found[0].outcome, found[0].error, found[0].user) == (
        "failed",
        "provider_rejected",
        "IBMid-1",
    )
    assert found[0].settled is not None and found[1].settled is None
    assert (found[0].certificate, found[0].request_id) == ("crn:cert", "r1")


async def test_entries_filter_by_time_domain_and_limit(state: State) -> None:
    journal = state.journal
    assert journal is not None
    old = time.time() - 3600
    await journal.begin(entry("old", created=old))
    await journal.begin(entry("apex", fqdn="_acme-challenge.example.com", domain="example.com"))
    await journal.begin(entry("shop", fqdn="_acme-challenge.shop.example.com", domain=None))
    await journal.begin(
        entry("other", fqdn="_acme-challenge.badexample.com", domain="badexample.com")
    )
    await journal.begin(entry("pattern", fqdn="_acme-challenge.x_y.com", domain="x_y.com"))

    assert [e.value for e in await journal.entries(since=old + 1)] == [
        "apex",
        "shop",
        "other",
        "pattern",
    ]
    below = await journal.entries(domain="example.com")
    assert [e.value for e in below] == ["old", "apex", "shop"]  # never badexample.com
    assert await journal.entries(domain="%") == []  # literal, not a pattern
    assert [e.value for e in await journal.entries(domain="x_y.com")] == ["pattern"]
    assert await journal.entries(domain="xay.com") == []
    assert [e.value for e in await journal.entries(limit=2)] == ["other", "pattern"]


async def test_candidates_are_values_we_may_still_have_published(state: State) -> None:
    journal = state.journal
    assert journal is not None
    hour_ago = time.time() - 3600
    done = await journal.begin(entry("kept", created=hour_ago, certificate="crn:c1"))
    await journal.settle(done, "done")
    removed = await journal.begin(entry("gone", created=hour_ago))
    await journal.settle(removed, "done")
    removal = await journal.begin(entry("gone", action="remove"))
    await journal.settle(removal, "done")
    failed_removal = await journal.begin(entry("stuck", created=hour_ago, sender="crn:b"))
    await journal.settle(failed_removal, "done")
    again = await journal.begin(entry("stuck", action="remove", sender="sweep"))
    await journal.settle(again, "failed", "provider_unavailable")
    await journal.begin(entry("crashed", created=hour_ago))  # left pending
    await journal.begin(entry("fresh", certificate="crn:c1"))

    everything = await journal.candidates()
    assert {e.value for e in everything} == {"kept", "stuck", "crashed", "fresh"}
    stuck = next(e for e in everything if e.value == "stuck")
    assert (stuck.action, stuck.outcome) == ("remove", "failed")  # the latest entry
    old = await journal.candidates(added_before=time.time() - 60)
    assert {e.value for e in old} == {"kept", "stuck", "crashed"}
    by_certificate = await journal.candidates(certificates=["crn:c1", "crn:none"])
    assert {e.value for e in by_certificate} == {"kept", "fresh"}
    # The sender filter looks at who added it, not at who last touched it.
    assert {e.value for e in await journal.candidates(sender="crn:b")} == {"stuck"}
    assert await journal.candidates(certificates=["crn:c1"], sender="crn:b") == []


async def test_prune_keeps_what_the_sweep_still_needs(state: State) -> None:
    journal = state.journal
    assert journal is not None
    long_ago = time.time() - 86400 * 200
    for value, outcome in [("published", "done"), ("crashed", "pending")]:
        entry_id = await journal.begin(entry(value, created=long_ago))
        if outcome != "pending":
            await journal.settle(entry_id, outcome)
    add = await journal.begin(entry("removed", created=long_ago))
    await journal.settle(add, "done")
    removal = await journal.begin(entry("removed", action="remove", created=long_ago))
    await journal.settle(removal, "done")

    assert await journal.prune(time.time() - 86400) == 2  # both entries of "removed"
    assert {e.value for e in await journal.entries()} == {"published", "crashed"}


async def test_two_processes_share_the_journal(open_state: StateFactory) -> None:
    async with open_state() as first, open_state() as second:
        assert first.journal is not None and second.journal is not None
        entry_id = await first.journal.begin(entry("shared"))
        await second.journal.settle(entry_id, "done")
        (seen,) = await first.journal.entries()
        assert (seen.value, seen.outcome) == ("shared", "done")


# --- acme-dns accounts ---------------------------------------------------------------------


async def test_accounts_round_trip(state: State) -> None:
    accounts = state.accounts
    assert accounts is not None
    account = Account("5a1e0000-0000-4000-8000-000000000001", "sub-1", ("10.0.0.0/8",))
    assert await accounts.find(account.username) is None
    assert await accounts.count() == 0
    await accounts.add(account, "scrypt$hash")
    stored = await accounts.find(account.username)
    assert stored is not None
    assert (stored.account, stored.password_hash) == (account, "scrypt$hash")
    assert await accounts.count() == 1
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await accounts.add(Account("another", "sub-1", ()), "h")  # subdomains are unique


async def test_a_subdomain_keeps_its_two_latest_values(state: State) -> None:
    accounts = state.accounts
    assert accounts is not None
    assert await accounts.keep_latest("sub", "a") == []
    assert await accounts.keep_latest("sub", "b") == []
    assert await accounts.keep_latest("sub", "c") == ["a"]
    assert await accounts.keep_latest("sub", "b") == []  # refreshed: now the newest
    assert await accounts.keep_latest("sub", "d") == ["c"]
    assert await accounts.keep_latest("other", "x") == []


async def test_concurrent_updates_through_two_processes_evict_exactly_once(
    open_state: StateFactory,
) -> None:
    async with open_state() as first, open_state() as second:
        assert first.accounts is not None and second.accounts is not None
        stores = [first.accounts, second.accounts]
        values = [f"v{i:02d}" for i in range(20)]
        evicted = await asyncio.gather(
            *(stores[i % 2].keep_latest("sub", value) for i, value in enumerate(values))
        )
        gone = [value for batch in evicted for value in batch]
        assert len(gone) == len(set(gone)) == len(values) - 2
        survivors = set(values) - set(gone)
        assert len(survivors) == 2


async def test_the_publisher_of_a_value_still_published(state: State) -> None:
    journal = state.journal
    assert journal is not None
    where = {"zone": "example.com", "fqdn": "_acme-challenge.www.example.com"}
    assert await journal.publisher(**where, value="v") is None
    first = await journal.begin(entry("v", sender="crn:a"))
    await journal.settle(first, "done")
    second = await journal.begin(entry("v", sender="crn:b"))  # written again, by b
    await journal.settle(second, "done")
    found = await journal.publisher(**where, value="v")
    assert found is not None and (found.id, found.sender) == (second, "crn:b")
    failed = await journal.begin(entry("v", action="remove", sender="crn:b"))
    await journal.settle(failed, "failed", "provider_unavailable")
    found = await journal.publisher(**where, value="v")
    assert found is not None and found.id == second  # a failed removal leaves it ours
    removed = await journal.begin(entry("v", action="remove"))
    await journal.settle(removed, "done")
    assert await journal.publisher(**where, value="v") is None
    assert await journal.publisher(**{**where, "zone": "other.com"}, value="v") is None


async def test_a_checked_removal_is_judged_where_it_is_recorded(state: State) -> None:
    """A removal for a sender is recorded only if the journal shows no other sender
    published the value (and, `own_only`, that this one did); refused, nothing is
    recorded, and the publisher found says why."""
    journal = state.journal
    assert journal is not None
    theirs = await journal.begin(entry("theirs", sender="crn:b"))
    mine = await journal.begin(entry("mine", sender="crn:a"))
    a, a_own_only = RemovalCheck("crn:a"), RemovalCheck("crn:a", own_only=True)

    refused = await journal.begin_removal(entry("theirs", "remove"), a)
    assert refused.entry_id is None and refused.publisher is not None
    assert (refused.publisher.id, refused.publisher.sender) == (theirs, "crn:b")
    assert await journal.begin_removal(entry("unknown", "remove"), a_own_only) == (None, None)

    unknown = await journal.begin_removal(entry("unknown", "remove"), a)
    assert unknown.entry_id is not None and unknown.publisher is None
    own = await journal.begin_removal(entry("mine", "remove"), a_own_only)
    assert own.entry_id is not None and own.publisher is not None
    assert own.publisher.id == mine
    recorded = [(e.value, e.action) for e in await journal.entries()]
    assert recorded == [("theirs", "add"), ("mine", "add"), ("unknown", "remove"),
                        ("mine", "remove")]  # fmt: skip


async def test_a_checked_removal_sees_the_adds_committed_with_it(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An add and a removal of the same value in one transaction: the check sees the add
    queued before it, as if each had committed alone."""
    journal = state.journal
    assert isinstance(journal, GroupCommit)
    batches = recorded_batches(journal, monkeypatch)
    added, refused, removed = await asyncio.gather(
        journal.begin(entry("v", sender="crn:b")),
        journal.begin_removal(entry("v", "remove", sender="crn:a"), RemovalCheck("crn:a")),
        journal.begin_removal(entry("v", "remove", sender="crn:b"), RemovalCheck("crn:b")),
    )
    assert batches == [(3, 0)]  # one transaction
    assert refused.entry_id is None and refused.publisher is not None
    assert (refused.publisher.id, refused.publisher.sender) == (added, "crn:b")
    assert removed.entry_id is not None and removed.publisher is not None
    assert removed.publisher.id == added
    assert [(e.id, e.action) for e in await journal.entries()] == [
        (added, "add"),
        (removed.entry_id, "remove"),
    ]


# --- group commit --------------------------------------------------------------------------


async def test_concurrent_writes_share_transactions_and_each_waits_for_its_own(
    open_state: StateFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_state() as first, open_state() as second:
        journal = first.journal
        assert isinstance(journal, GroupCommit)
        batches = recorded_batches(journal, monkeypatch)

        async def one(i: int) -> int:
            entry_id = await journal.begin(entry(f"v{i}"))
            # Committed before begin returns: another process's journal sees it now.
            assert second.journal is not None
            seen = await second.journal.entries(domain="www.example.com", limit=10_000)
            assert entry_id in {e.id for e in seen}
            await journal.settle(entry_id, "done")
            return entry_id

        ids = await asyncio.gather(*(one(i) for i in range(40)))
        assert len(set(ids)) == 40
        assert sum(n for n, _ in batches) == 40 and sum(m for _, m in batches) == 40
        # The 40 intents, queued together, share transactions; the settles come one by
        # one (each after its own cross-process read), so they may not.
        assert sum(1 for entries, _ in batches if entries) < 40
        stored = {e.value: e for e in await second.journal.entries(limit=10_000)}
        assert all(stored[f"v{i}"].id == ids[i] for i in range(40))
        assert {e.outcome for e in stored.values()} == {"done"}


async def test_a_read_waits_for_earlier_writes_not_for_the_journal_to_fall_idle(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under steady writes the journal is never idle: a read that waited for that (as
    one did) starved while other requests went on; at 32 connections, p99 went to 1 s."""
    journal = state.journal
    assert isinstance(journal, GroupCommit)
    write_batch = journal.backend.write_batch
    batches = 0

    async def counted(entries: Any, checks: Any, settlements: Any) -> Any:
        nonlocal batches
        batches += 1
        await asyncio.sleep(0.002)
        return await write_batch(entries, checks, settlements)

    monkeypatch.setattr(journal.backend, "write_batch", counted)
    writing = True

    async def writer(n: int) -> None:
        i = 0
        while writing:
            await journal.begin(entry(f"w{n}-{i}"))
            i += 1

    writers = [asyncio.create_task(writer(n)) for n in range(4)]
    await asyncio.sleep(0.02)  # the journal is busy: a batch is always in flight
    mine = await journal.begin(entry("mine"))
    before = batches
    async with asyncio.timeout(5):
        seen = await journal.entries(domain="www.example.com", limit=100_000)
    waited = batches - before
    writing = False
    await asyncio.gather(*writers)
    assert mine in {e.id for e in seen}  # its own write is visible
    assert waited <= 2, waited  # the batch in flight and the one queued before the read


async def test_an_outcome_nobody_waits_for_rides_with_the_next_change_or_commits_soon(
    open_state: StateFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`settle_soon` starts no transaction of its own while another is coming: under load
    that halves the commits per change. Alone, it is committed within SETTLE_SOON_SECONDS;
    a read of this process waits for it; closing commits what is left."""
    async with open_state() as first, open_state() as second:
        journal, other = first.journal, second.journal
        assert isinstance(journal, GroupCommit) and other is not None
        batches = recorded_batches(journal, monkeypatch)
        monkeypatch.setattr(journal_module, "SETTLE_SOON_SECONDS", 0.5)  # a loaded CI machine

        async def outcome(entry_id: int) -> str:
            (found,) = [e for e in await other.entries(limit=100) if e.id == entry_id]
            return found.outcome

        one = await journal.begin(entry("one"))
        journal.settle_soon(one, "done")
        two = await journal.begin(entry("two"))  # the first outcome rides along
        assert batches == [(1, 0), (1, 1)]
        assert await outcome(one) == "done"

        journal.settle_soon(two, "done")
        await asyncio.sleep(0)
        assert await outcome(two) == "pending"  # not yet: nothing else came
        started = time.monotonic()
        for _ in range(100):  # up to 5 s
            if await outcome(two) != "pending":
                break
            await asyncio.sleep(0.05)
        assert batches[-1] == (0, 1) and await outcome(two) == "done"
        assert time.monotonic() - started >= 0.3  # deferred, not committed at once

        three = await journal.begin(entry("three"))
        journal.settle_soon(three, "failed")
        assert {e.id: e.outcome for e in await journal.entries()}[three] == "failed"  # own read

        four = await journal.begin(entry("four"))
        journal.settle_soon(four, "done")
        await journal.aclose()
        assert await outcome(four) == "done"


async def test_a_failed_batch_fails_each_of_its_writers_and_not_the_next(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = state.journal
    assert isinstance(journal, GroupCommit)
    fail_next_batch(journal, monkeypatch)
    results = await asyncio.gather(
        *(journal.begin(entry(f"v{i}")) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)  # one batch, all told
    assert isinstance(await journal.begin(entry("after")), int)  # the next batch commits
    assert {e.value for e in await journal.entries()} == {"after"}


async def test_a_cancelled_writer_still_commits_and_reads_do_not_wait_for_it(
    state: State,
) -> None:
    """A request cancelled while its intent commits (a client gone) cancels only its own
    wait: the entry commits (the sweep settles it) and a read after it sees it."""
    journal = state.journal
    assert isinstance(journal, GroupCommit)
    writer = asyncio.create_task(journal.begin(entry("gone")))
    await asyncio.sleep(0)  # queued, its batch not yet committed
    writer.cancel()
    async with asyncio.timeout(5):
        seen = await journal.entries()
    assert writer.cancelled()
    assert [(e.value, e.outcome) for e in seen] == [("gone", "pending")]


async def test_a_failed_batch_of_unwaited_outcomes_is_logged_once(
    state: State, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes nobody waits for (`settle_soon`) that fail to commit are logged, once per
    batch; their entries stay pending for the sweep."""
    journal = state.journal
    assert isinstance(journal, GroupCommit)
    ids = [await journal.begin(entry(f"v{i}")) for i in range(3)]
    fail_next_batch(journal, monkeypatch)
    with structlog.testing.capture_logs() as logs:
        for entry_id in ids:
            journal.settle_soon(entry_id, "done")
        seen = await journal.entries()  # flushes them now: the batch fails
    failed = [line for line in logs if line["event"] == "journal_write_failed"]
    assert [line["error"] for line in failed] == ["disk full"]
    assert {e.outcome for e in seen} == {"pending"}
