"""The one path every provider write takes: journal the intent, write, settle.

Notifications, propagation rewrites, sweeps and failed-order clean-ups all come here, so
the journal holds every value the receiver ever touched. If the intent cannot be
recorded, nothing is written (503): an unrecorded value could never be swept.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from providers.secret import Secret
from receiver.challenge import Challenge
from receiver.config import ZoneSettings
from receiver.door import Origin
from receiver.errors import Forbidden, ReceiverError, Unavailable
from receiver.runtime import Runtime

if TYPE_CHECKING:
    from receiver.journal import Outcome

log = structlog.get_logger("receiver.changes")


async def apply_change(
    runtime: Runtime,
    challenge: Challenge,
    zone: ZoneSettings,
    origin: Origin,
    *,
    request_id: str,
    user_token: Secret | None = None,
) -> None:
    journal = runtime.journal
    entry_id = None
    if journal is not None:
        from receiver.journal import Entry  # loaded once there is a journal: not on cold paths

        try:
            entry_id = await journal.begin(
                Entry(
                    action=challenge.action.value,
                    outcome="pending",
                    fqdn=challenge.fqdn,
                    value=challenge.value,
                    provider=zone.provider,
                    zone=zone.name,
                    door=origin.door,
                    sender=origin.sender,
                    user=origin.user,
                    certificate=origin.certificate,
                    domain=origin.domain or challenge.domain,
                    request_id=request_id,
                    created=time.time(),
                )
            )
        except Exception as exc:  # any backend failure: refuse rather than write unrecorded
            raise Unavailable(
                "cannot record the change in the journal; nothing was written",
                code="journal_unavailable",
                internal=str(exc),
            ) from exc
    try:
        await runtime.dispatcher.apply(
            challenge, zone, request_id=request_id, user_token=user_token
        )
    except ReceiverError as exc:
        if entry_id is not None:
            await _settle(runtime, entry_id, "failed", exc.code)
        raise
    if entry_id is not None:
        await _settle(runtime, entry_id, "done")


async def published_by(
    runtime: Runtime, challenge: Challenge, zone: ZoneSettings, sender: str
) -> bool:
    """Before a removal on `sender`'s behalf: True when the journal shows that `sender`
    published the value, False when it cannot tell (no journal, or no entry: the value
    was never written by us, or is gone). A value another sender published is refused
    (403 `not_publisher`): instances sharing a receiver must not withdraw each other's
    challenges, as failed-order clean-up never does.

    The journal as committed is enough: a value's add commits before it is written, so
    no publisher is missed; only an outcome still queued (at most SETTLE_SOON_SECONDS
    old) is not seen, and a removal it would have shown done is then simply made again.
    Waiting for the queue instead cost every removal a commit of its own."""
    journal = runtime.journal
    if journal is None:
        return False
    try:
        entry = await journal.committed_publisher(
            zone=zone.name, fqdn=challenge.fqdn, value=challenge.value
        )
    except Exception as exc:  # any backend failure: refuse rather than remove unchecked
        raise Unavailable(
            "cannot read the journal; nothing was removed",
            code="journal_unavailable",
            internal=str(exc),
        ) from exc
    if entry is None:
        return False
    if entry.sender != sender:
        raise Forbidden(
            "another sender published this value; only it may remove it",
            code="not_publisher",
            internal=f"published by {entry.sender} (journal entry {entry.id})",
        )
    return True


async def _settle(
    runtime: Runtime, entry_id: int, outcome: Outcome, error: str | None = None
) -> None:
    """The long-running server answers without waiting for it; a settle lost in a crash
    leaves the entry pending, and the sweep settles it from the provider's actual state.
    A serverless invocation waits: its platform freezes it once it has answered."""
    journal = runtime.journal
    assert journal is not None
    if runtime.long_running:
        journal.settle_soon(entry_id, outcome, error)
        return
    try:
        await asyncio.shield(journal.settle(entry_id, outcome, error))
    except Exception as exc:
        log.warning("journal_settle_failed", entry=entry_id, error=str(exc))
