"""The whole-set TXT helpers shared by the Route 53 and Cloud DNS adapters."""

from __future__ import annotations

from providers.base import TxtChange, ZoneRef
from providers.txtsets import Hints, RecordSet, apply_changes

ZONE = ZoneRef("Z1", "example.com")
NAME = "_acme-challenge.example.com"


def test_a_decoded_set_maps_values_to_rrdatas_and_compares_by_rrdatas() -> None:
    held = RecordSet.decoded(300, ['"one"', '"t" "wo"'], base=10)
    assert dict(held.values) == {"one": '"one"', "two": '"t" "wo"'}
    assert held == RecordSet(300, ('"one"', '"t" "wo"'), {})
    assert held != RecordSet(60, ('"one"', '"t" "wo"'), {})


def test_apply_changes_keeps_foreign_values_verbatim() -> None:
    current = {NAME: RecordSet.decoded(600, ['"foreign" ""', '"ours"'], base=10), "n2": None}
    wanted = apply_changes(
        current,
        [
            TxtChange("remove", NAME, "ours", 0),
            TxtChange("add", NAME, "new", 60),
            TxtChange("add", "n2", "v", 60),
            TxtChange("remove", "n2", "v", 0),
        ],
    )
    assert wanted[NAME] == RecordSet(600, ('"foreign" ""', '"new"'), {})  # TTL kept
    assert wanted["n2"] is None  # the last value gone: no set at all


class Provider:
    """Reads from a dict, counting them, and reports each read back as the adapters do."""

    def __init__(self, hints: Hints, sets: dict[str, RecordSet | None]) -> None:
        self.hints, self.sets = hints, sets
        self.reads: list[str] = []

    async def read(self, fqdn: str) -> RecordSet | None:
        self.reads.append(fqdn)
        found = self.sets.get(fqdn)
        self.hints.saw(ZONE, fqdn, found)
        return found


async def test_plan_guesses_adds_reads_removals_and_rereads_after_a_conflict() -> None:
    hints = Hints()
    theirs = RecordSet.decoded(300, ['"theirs"'], base=10)
    provider = Provider(hints, {NAME: theirs})
    add = [TxtChange("add", NAME, "ours", 60)]

    plan = await hints.plan(ZONE, add, provider.read)
    assert provider.reads == []  # never seen: assumed absent, no read
    assert plan.current[NAME] is None and plan.changed() == [NAME]

    hints.forget(ZONE, [NAME])  # the write failed: the guess was wrong
    plan = await hints.plan(ZONE, add, provider.read)
    assert provider.reads == [NAME]
    assert plan.wanted[NAME] == RecordSet(300, ('"theirs"', '"ours"'), {})

    hints.wrote(ZONE, NAME, plan.wanted[NAME])
    remove = [TxtChange("remove", NAME, "ours", 0)]
    plan = await hints.plan(ZONE, remove, provider.read)
    assert provider.reads == [NAME]  # the hint is used as it is
    assert plan.wanted[NAME] == theirs


async def test_nothing_to_do_is_decided_only_on_a_fresh_read() -> None:
    hints = Hints()
    provider = Provider(hints, {NAME: None})
    hints.wrote(ZONE, NAME, RecordSet.decoded(60, ['"ours"'], base=10))  # a stale hint
    add = [TxtChange("add", NAME, "ours", 60)]

    plan = await hints.plan(ZONE, add, provider.read)
    assert provider.reads == [NAME]  # the hint said "already there": checked
    assert plan.changed() == [NAME]  # and it was not


class FailingReads(Provider):
    """Every `every`-th read fails, as a flaky API's would."""

    def __init__(self, hints: Hints, sets: dict[str, RecordSet | None], every: int) -> None:
        super().__init__(hints, sets)
        self.every, self.failed = every, 0

    async def read(self, fqdn: str) -> RecordSet | None:
        if (len(self.reads) + self.failed + 1) % self.every == 0:
            self.failed += 1
            raise TimeoutError(fqdn)
        return await super().read(fqdn)


async def test_a_retry_counts_the_reads_of_failed_attempts_until_the_write() -> None:
    """After a lost answer every name must be read again, but a read made by an attempt
    that failed later counts for the retry: each name is read once, not once per try."""
    now = [0.0]
    hints = Hints(fresh_for=60, clock=lambda: now[0])
    names = [f"_acme-challenge.h{i}.example.com" for i in range(10)]
    ours = RecordSet.decoded(60, ['"ours"'], base=10)
    provider = FailingReads(hints, dict.fromkeys(names, ours), every=4)  # already applied
    changes = [TxtChange("add", name, "ours", 60) for name in names]
    hints.forget(ZONE, names)  # the write's answer was lost: its outcome is unknown
    for _ in range(10):  # the core's retries
        try:
            plan = await hints.plan(ZONE, changes, provider.read)
            break
        except TimeoutError:
            continue
    assert plan.changed() == []  # found applied
    assert sorted(provider.reads) == sorted(names)  # each name read once
    assert provider.failed == 3

    hints.settled(ZONE, names)  # written: the next changes start afresh
    again = Provider(hints, dict.fromkeys(names, ours))
    await hints.plan(ZONE, changes[:1], again.read)
    assert again.reads == names[:1]  # "nothing to do" needs a read of its own again


async def test_a_read_counts_only_for_a_while_and_never_across_a_failed_write() -> None:
    now = [0.0]
    hints = Hints(fresh_for=60, clock=lambda: now[0])
    ours = RecordSet.decoded(60, ['"ours"'], base=10)
    add = [TxtChange("add", NAME, "ours", 60)]
    hints.forget(ZONE, [NAME])
    provider = Provider(hints, {NAME: ours})
    await hints.plan(ZONE, add, provider.read)
    await hints.plan(ZONE, add, provider.read)
    assert provider.reads == [NAME]  # the retry counts the read
    now[0] = 61.0
    await hints.plan(ZONE, add, provider.read)
    assert provider.reads == [NAME, NAME]  # too old to decide "nothing to do" on
    hints.forget(ZONE, [NAME])  # a write for it failed: its outcome is unknown
    await hints.plan(ZONE, add, provider.read)
    assert provider.reads == [NAME, NAME, NAME]
