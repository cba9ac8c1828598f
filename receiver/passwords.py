"""acme-dns passwords: scrypt hashes, checked on a small executor of their own.

Each check costs ~40 ms of CPU and 16 MiB of memory, and anyone who can reach
`/update` can ask for one. On the shared thread pool a flood of wrong keys would queue
ahead of the journal and the provider SDKs and grow the process by 16 MiB per thread;
here checks run one at a time, and past `max_pending` waiting the answer is an
immediate 503 instead of an ever longer queue.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from receiver.errors import Unavailable
from receiver.metrics import Metrics

# scrypt cost: 16 MiB and ~40 ms per check; parameters are stored with every hash.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
T = TypeVar("T")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT, dklen=32)
    n, r, p = _SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"]
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    candidate = hashlib.scrypt(
        password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32
    )
    return hmac.compare_digest(candidate, bytes.fromhex(digest))


@functools.cache
def decoy_hash() -> str:
    """Checked when the user is unknown, so a miss costs as long as a wrong password.

    Made on first use, not at import: one scrypt is ~40 ms of cold start for every door.
    """
    return hash_password(secrets.token_urlsafe(16))


class PasswordChecks:
    """Hashing and checking on one dedicated thread, with a bounded queue."""

    def __init__(self, max_pending: int, metrics: Metrics) -> None:
        self.max_pending = max_pending
        self._metrics = metrics
        self._pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrypt")

    async def hash(self, password: str) -> str:
        return await self._run(functools.partial(hash_password, password))

    async def matches(self, password: str, stored: str | None) -> bool:
        """Whether `password` matches; a missing hash costs a decoy check all the same."""
        if stored is None:
            await self._run(functools.partial(password_matches, password, decoy_hash()))
            return False
        return await self._run(functools.partial(password_matches, password, stored))

    async def _run(self, work: Callable[[], T]) -> T:
        if self._pending >= self.max_pending:
            self._metrics.throttled("password_checks")
            raise Unavailable(
                "too many password checks waiting; try again shortly",
                code="busy",
                retry_after=1,
            )
        self._pending += 1
        self._metrics.password_checks_pending(self._pending)
        # Counted down when the check ends or, if the caller gave up, is dropped unstarted.
        future = asyncio.get_running_loop().run_in_executor(self._executor, work)
        future.add_done_callback(self._finished)
        return await future

    def _finished(self, _future: object) -> None:
        self._pending -= 1
        self._metrics.password_checks_pending(self._pending)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
