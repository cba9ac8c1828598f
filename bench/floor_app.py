"""The verifying floor: the bare app plus what no receiver that checks the sender's
signature can skip. It parses `{"data": JWS}`, verifies one RS256 signature with
cryptography, reads the claims, writes one structlog JSON line and answers JSON.

No user token, name checks, policy, provider write or metrics: whatever the receiver
does beyond this floor is its own cost; the floor's distance from the bare app is not.
With a third argument it also commits one row per request to that SQLite file (WAL,
synchronous=NORMAL, in a worker thread, as the receiver's journal does): the floor for a
receiver that keeps a durable journal.

    python bench/floor_app.py PORT SENDER_PUBLIC_KEY_PEM [SQLITE_FILE]
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import sys
import threading

import structlog
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Commits:
    """One row per request, committed before the answer."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (event TEXT, at REAL)")
        self._lock = threading.Lock()

    def _commit(self, event: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO seen VALUES (?, julianday('now'))", (event,))

    async def commit(self, event: str) -> None:
        await asyncio.to_thread(self._commit, event)


def make_app(public_key: RSAPublicKey, commits: Commits | None = None) -> web.Application:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
    )
    log = structlog.get_logger()

    async def callback(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            header, payload, signature = json.loads(body)["data"].split(".")
        except (ValueError, KeyError, TypeError, AttributeError):
            return web.json_response({"error": "bad_request"}, status=400)
        public_key.verify(
            _b64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        claims = json.loads(_b64(payload))
        if commits is not None:
            await commits.commit(str(claims.get("event_type")))
        log.info("notification", event_type=claims.get("event_type"), status=200)
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/callback", callback)
    return app


def main() -> None:
    with open(sys.argv[2], "rb") as fh:
        public_key = load_pem_public_key(fh.read())
    assert isinstance(public_key, RSAPublicKey)
    app = make_app(public_key, Commits(sys.argv[3]) if len(sys.argv) > 3 else None)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
