"""Coalescing: changes for one zone collected for a short window and applied as batches,
for adapters that can apply many at once (`providers.base.BatchingProvider`).

Its own module so that a path whose adapters do not batch never loads it
(`receiver.dispatch` imports it for the first batching zone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from providers.base import TxtChange
from providers.secret import Secret


class Coalescer:
    """Collects changes for one zone during `window` seconds and runs them as batches.

    One round per zone is in flight at a time; changes arriving meanwhile form the next.
    A round runs one batch per user token (a batch acts as one identity: changes of
    different users never share one), in arrival order. Every submitter learns the
    outcome of the batch its change went out in.
    """

    def __init__(
        self,
        run: Callable[[list[TxtChange], list[str], Secret | None], Awaitable[None]],
        window: float,
    ) -> None:
        self._run = run
        self._window = window
        self._pending: list[_Submitted] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(
        self, change: TxtChange, request_id: str, user_token: Secret | None = None
    ) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Submitted(change, request_id, user_token, future))
        if self._worker is None:
            self._worker = asyncio.create_task(self._drain())
        # Shielded: a caller that gives up (deadline) must not cancel everyone's batch.
        await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(self._window)
                round_, self._pending = self._pending, []
                by_token: dict[Secret | None, list[_Submitted]] = {}
                for submitted in round_:
                    by_token.setdefault(submitted.user_token, []).append(submitted)
                for token, batch in by_token.items():
                    await self._one_batch(token, batch, round_)
        finally:
            self._worker = None

    async def _one_batch(
        self, token: Secret | None, batch: list[_Submitted], round_: list[_Submitted]
    ) -> None:
        try:
            await self._run([s.change for s in batch], [s.request_id for s in batch], token)
        except asyncio.CancelledError:  # shutting down: nobody may wait forever
            for submitted in round_ + self._pending:
                submitted.future.cancel()
            raise
        except Exception as exc:  # every waiter of this batch gets it; go on
            for submitted in batch:
                if not submitted.future.done():
                    submitted.future.set_exception(exc)
        else:
            for submitted in batch:
                if not submitted.future.done():
                    submitted.future.set_result(None)

    def __len__(self) -> int:
        return len(self._pending)


@dataclass(frozen=True, eq=False)  # each waits on its own future
class _Submitted:
    """A change waiting for its batch, and the future its request waits on."""

    change: TxtChange
    request_id: str
    user_token: Secret | None
    future: asyncio.Future[None]
