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
from receiver.challenge import Action, Challenge
from receiver.config import ZoneSettings
from receiver.door import Origin
from receiver.errors import Forbidden, ReceiverError, Unauthorized, Unavailable
from receiver.runtime import Runtime

if TYPE_CHECKING:
    from receiver.journal import Entry, Outcome

log = structlog.get_logger("receiver.changes")


async def apply_change(
    runtime: Runtime,
    challenge: Challenge,
    zone: ZoneSettings,
    origin: Origin,
    *,
    request_id: str,
    user_token: Secret | None = None,
    remover: str | None = None,
    own_only: bool = False,
) -> bool:
    """Journal, write, settle. A removal for `remover` is refused (403 `not_publisher`)
    when the journal shows another sender published the value: instances sharing a
    receiver must not withdraw each other's challenges, as failed-order clean-up never
    does. With `own_only` (a removal without the required user token) the journal must
    show that `remover` published it (else 401). Both are judged in the transaction that
    records the removal, so no add can come between the check and the record. Returns
    whether the journal showed `remover` as the publisher."""
    journal = runtime.journal
    entry_id = None
    own = False
    if journal is not None:
        from receiver.journal import Entry, RemovalCheck  # not on cold paths without one

        entry = Entry(
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
        publisher = None
        try:
            if remover is None:
                entry_id = await journal.begin(entry)
            else:
                check = RemovalCheck(remover, own_only)
                entry_id, publisher = await journal.begin_removal(entry, check)
        except Exception as exc:  # any backend failure: refuse rather than write unrecorded
            raise Unavailable(
                "cannot record the change in the journal; nothing was written",
                code="journal_unavailable",
                internal=str(exc),
            ) from exc
        if entry_id is None:
            raise _refused(publisher)
        own = publisher is not None
    elif remover is not None and own_only:
        raise _refused(None)  # without a journal nothing shows who published it
    if challenge.action is Action.REMOVE:
        runtime.forget_check(challenge)  # before the removal: never rewrite it later
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
    return own


def _refused(publisher: Entry | None) -> ReceiverError:
    if publisher is not None:
        return Forbidden(
            "another sender published this value; only it may remove it",
            code="not_publisher",
            internal=f"published by {publisher.sender} (journal entry {publisher.id})",
        )
    return Unauthorized(
        "notification carries no userToken, and the journal does not show that"
        " this instance published the value",
        code="user_token_required",
    )


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
