"""Where verification keys come from: sender public keys and the user-token JWKS.

Fetching is the only I/O on the verification path, so it is bounded: a key is fetched
once and cached; after a signature failure it is refetched at most once per
`refetch_interval` (rotation works, forged traffic cannot make us hammer the endpoint);
a failed fetch is not retried for a few seconds. Only allow-listed instances ever reach
a sender-key fetch, so the caches are bounded by the allow-list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from receiver.crn import InstanceCrn
from receiver.errors import Unauthorized, Unavailable
from receiver.fetch import HttpGet
from receiver.untrusted import json_loads

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
Clock = Callable[[], float]

FAILED_FETCH_BACKOFF_SECONDS = 5.0
ACCEPT_JSON = {"Accept": "application/json"}


class KeyMaterialError(ValueError):
    """A key document that cannot be used (bad PEM, symmetric key, empty JWKS)."""


def load_public_key_pem(data: bytes, source: str) -> PublicKey:
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise KeyMaterialError(f"{source}: not a PEM public key ({exc})") from None
    if not isinstance(key, PublicKey):
        raise KeyMaterialError(f"{source}: unsupported key type {type(key).__name__}")
    return key


def public_key_url(template: str, instance: InstanceCrn) -> str:
    return template.format(
        region=quote(instance.region, safe=""), instance_crn=quote(instance.text, safe="")
    )


class SenderKeys(Protocol):
    async def current(self, instance: InstanceCrn) -> PublicKey:
        """The key to verify with; raise `Unavailable` when none can be had."""
        ...

    async def refreshed(self, instance: InstanceCrn) -> PublicKey | None:
        """After a signature failure: a different key if one is available now, else None."""
        ...

    async def check(self, instance: InstanceCrn) -> None:
        """Readiness: raise `Unavailable` unless a key for `instance` is obtainable."""
        ...


class FileSenderKeys:
    """One PEM file for every allowed instance; re-read when the file changes (rotation)."""

    def __init__(self, path: Path, *, refetch_interval: float, clock: Clock = time.monotonic):
        self._path = path
        self._interval = refetch_interval
        self._clock = clock
        self._stamp = self._file_stamp()
        self._key = load_public_key_pem(path.read_bytes(), str(path))
        self._checked = clock()

    def _file_stamp(self) -> tuple[int, int]:
        stat = self._path.stat()
        return (stat.st_mtime_ns, stat.st_size)

    async def current(self, instance: InstanceCrn) -> PublicKey:
        return self._key

    async def refreshed(self, instance: InstanceCrn) -> PublicKey | None:
        now = self._clock()
        if now - self._checked < self._interval:
            return None
        self._checked = now
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return None
            key = load_public_key_pem(self._path.read_bytes(), str(self._path))
        except (OSError, KeyMaterialError):
            return None  # keep the key we have; the next interval tries again
        self._stamp, self._key = stamp, key
        return key

    async def check(self, instance: InstanceCrn) -> None:
        return None


@dataclass(eq=False)
class _Fetched:
    """One instance's key as last fetched, and when: failures are retried, not hammered."""

    key: PublicKey | None = None
    attempted_at: float = float("-inf")
    failed: bool = False


class FetchedSenderKeys:
    """Keys from each instance's public-key endpoint, built only from the allow-listed CRN."""

    def __init__(
        self,
        http: HttpGet,
        url_template: str,
        *,
        timeout: float,
        refetch_interval: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._http = http
        self._template = url_template
        self._timeout = timeout
        self._interval = refetch_interval
        self._clock = clock
        self._entries: dict[str, _Fetched] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def current(self, instance: InstanceCrn) -> PublicKey:
        entry = self._entries.get(instance.text)
        if entry is not None and entry.key is not None:
            return entry.key
        async with self._lock(instance):
            entry = self._entries.setdefault(instance.text, _Fetched())
            if entry.key is None:
                if entry.failed and self._clock() - entry.attempted_at < min(
                    self._interval, FAILED_FETCH_BACKOFF_SECONDS
                ):
                    raise Unavailable(
                        "the sender's public key could not be fetched recently; try again later",
                        code="sender_key_unavailable",
                    )
                entry.key = await self._fetch(instance, entry)
            return entry.key

    async def refreshed(self, instance: InstanceCrn) -> PublicKey | None:
        async with self._lock(instance):
            entry = self._entries.setdefault(instance.text, _Fetched())
            if self._clock() - entry.attempted_at < self._interval:
                return None
            old = entry.key
            try:
                key = await self._fetch(instance, entry)
            except Unavailable:
                return None
            entry.key = key
            return None if old is not None and _same_key(old, key) else key

    async def check(self, instance: InstanceCrn) -> None:
        await self.current(instance)

    def _lock(self, instance: InstanceCrn) -> asyncio.Lock:
        return self._locks.setdefault(instance.text, asyncio.Lock())

    async def _fetch(self, instance: InstanceCrn, entry: _Fetched) -> PublicKey:
        entry.attempted_at = self._clock()
        url = public_key_url(self._template, instance)
        try:
            body = await self._http(url, seconds=self._timeout, headers=ACCEPT_JSON)
            key = load_public_key_pem(_pem_from_document(body), "sender public key")
        except (KeyMaterialError, Unavailable) as exc:
            entry.failed = True
            detail = exc.detail if isinstance(exc, Unavailable) else str(exc)
            raise Unavailable(
                f"cannot obtain the sender's public key: {detail}", code="sender_key_unavailable"
            ) from None
        entry.failed = False
        return key


def _pem_from_document(body: bytes) -> bytes:
    """The endpoint answers `{"publicKey": "<PEM>"}`; a bare PEM body is accepted too."""
    if body.lstrip().startswith(b"-----BEGIN"):
        return body
    try:
        document = json_loads(body)
    except ValueError:
        raise KeyMaterialError("key endpoint answered neither JSON nor PEM") from None
    pem = document.get("publicKey") if isinstance(document, dict) else None
    if not isinstance(pem, str):
        raise KeyMaterialError("key endpoint answer has no 'publicKey' string")
    return pem.encode()


def _same_key(a: PublicKey, b: PublicKey) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    fmt = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


class Jwks:
    """The user-token signing keys (IAM's JWKS by default), cached and refetched on a new kid.

    IAM's keys carry no `use` member; keys are accepted when `use` is absent or `sig`.
    Symmetric (`oct`) keys are never accepted, whatever the set says.

    One rule bounds every fetch, whoever asks (a notification or a readiness probe): with
    keys in hand, at most one attempt per `refetch_interval`; with none, one per few
    seconds. A failed attempt keeps the keys we have and remembers why it failed.
    """

    def __init__(
        self,
        http: HttpGet,
        url: str,
        *,
        timeout: float,
        cache_seconds: float,
        refetch_interval: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self._http = http
        self._url = url
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._interval = refetch_interval
        self._clock = clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._failure: str | None = None  # why the last attempt failed; None once one works
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None) -> jwt.PyJWK:
        if self._stale() or kid not in self._keys:
            async with self._lock:
                if (self._stale() or kid not in self._keys) and self._may_fetch():
                    await self._fetch()
        if not self._keys:
            raise self._unavailable()
        found = self._keys.get(kid)
        if found is None and kid is None and len(self._keys) == 1:
            found = next(iter(self._keys.values()))
        if found is None:
            raise Unauthorized(
                "user token is signed by a key the issuer does not publish",
                code="invalid_user_token",
            )
        return found

    async def check(self) -> None:
        """Readiness: raise `Unavailable` unless the keys are fresh, or stale with no
        failed attempt since. It fetches only when a notification would: a probe every
        second must not become a fetch every second while the endpoint is down."""
        if not self._stale():
            return
        async with self._lock:
            if self._stale() and self._may_fetch():
                await self._fetch()
        if self._stale() and self._failure is not None:
            raise self._unavailable()

    def _stale(self) -> bool:
        return not self._keys or self._clock() - self._fetched_at > self._cache_seconds

    def _may_fetch(self) -> bool:
        wait = self._interval if self._keys else min(self._interval, FAILED_FETCH_BACKOFF_SECONDS)
        return self._clock() - self._attempted_at >= wait

    def _unavailable(self) -> Unavailable:
        return Unavailable(
            f"cannot obtain user-token keys: {self._failure or 'not fetched yet'}",
            code="jwks_unavailable",
        )

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        try:
            body = await self._http(self._url, seconds=self._timeout, headers=ACCEPT_JSON)
            keys = parse_jwks(body)
        except (Unavailable, KeyMaterialError) as exc:
            self._failure = exc.detail if isinstance(exc, Unavailable) else str(exc)
            return  # keep serving the keys we have
        self._keys, self._fetched_at, self._failure = keys, self._clock(), None


def parse_jwks(body: bytes) -> dict[str | None, jwt.PyJWK]:
    try:
        document: Any = json_loads(body)
    except ValueError:
        raise KeyMaterialError("JWKS is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeyMaterialError("JWKS has no 'keys' array")
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") == "oct":
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        kid = entry.get("kid")
        keys[kid if isinstance(kid, str) else None] = key
    if not keys:
        raise KeyMaterialError("JWKS holds no usable signing key")
    return keys
