"""IBM Cloud Secrets Manager: the challenges of public certificates ordered with
`dns = manual`, published, validated once, and removed afterwards.

Nobody calls this door: it polls. Each pass, for each configured instance:

1. list the `public_cert` secrets (every page) and keep the manual-DNS ones in
   pre-activation; read each one's metadata for its challenges;
2. take the secret's lease (another replica or a cron job skips it meanwhile);
3. publish every challenge through the shared path (policy, journal, providers) and
   wait until every authoritative nameserver serves each value;
4. ask Secrets Manager to validate, once per order (the lease store and the secret's
   `dns_challenge_validation_time` both remember that it was asked);
5. follow what it published: once the secret is active, deactivated (validation
   failed), gone, or its challenges expired, remove the values the journal shows.

A secret with any challenge outside the configured zones, or with malformed data, is
skipped whole (never half an order validated), logged once and counted.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import random
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from providers.rate_budget import RateBudget
from receiver.challenge import Action, Challenge, challenge_record_name, check_challenge_value
from receiver.core import ChangeRequest, apply
from receiver.door import InboundRequest, Origin, Outcome, Route
from receiver.door_settings import SecretsManagerInstanceSettings, SecretsManagerSettings
from receiver.errors import BadRequest, NotFound, PropagationTimeout, ReceiverError
from receiver.fetch import USER_AGENT
from receiver.ibm_iam import IamTokens
from receiver.journal import Entry
from receiver.runtime import Runtime
from receiver.secrets_manager_api import SecretGone, SecretsManagerApi
from receiver.sm_leases import Leases, LeaseStore, PostgresLeases

log = structlog.get_logger("receiver.secrets_manager")

DOOR = "secrets_manager"
PRE_ACTIVATION, ACTIVE, SUSPENDED, DEACTIVATED, DESTROYED = 0, 1, 2, 3, 5
KNOWN_STATES = frozenset({PRE_ACTIVATION, ACTIVE, SUSPENDED, DEACTIVATED, DESTROYED})
# The event labels of this door's metrics (`count_request(door, event, outcome, seconds)`).
EVENTS = frozenset({"order", "cleanup", "pass"})
JITTER = 0.1


class BadSecret(Exception):
    """The API's data for one secret is unusable: that secret is skipped."""


@dataclass(frozen=True)
class PendingChallenge:
    challenge: Challenge
    expiration: float | None
    status: str | None = None  # "pending" until the CA validated it


@dataclass(frozen=True)
class Order:
    secret_id: str
    crn: str
    name: str
    state: int
    challenges: tuple[PendingChallenge, ...]
    validation_asked: bool
    error_code: str | None = None
    error_message: str | None = None

    @property
    def key(self) -> str:
        """One order's identity: its challenges (a renewal brings new ones)."""
        pairs = sorted(f"{c.challenge.fqdn} {c.challenge.value}" for c in self.challenges)
        return hashlib.sha256("\n".join(pairs).encode()).hexdigest()


@dataclass
class PassReport:
    published: list[str] = field(default_factory=list)  # secret CRNs, validation asked
    waiting: list[str] = field(default_factory=list)  # validation asked earlier
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (secret, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (instance or secret, why)

    def as_dict(self) -> dict[str, Any]:
        return {
            "validated": len(self.published),
            "waiting": len(self.waiting),
            "removed": self.removed,
            "skipped": len(self.skipped),
            "failed": len(self.failed),
        }


def parse_order(meta: Any) -> Order:
    """A secret's metadata -> an `Order`; `BadSecret` for anything unusable."""
    if not isinstance(meta, dict):
        raise BadSecret("metadata is not an object")
    secret_id, crn = meta.get("id"), meta.get("crn")
    if not isinstance(secret_id, str) or not secret_id:
        raise BadSecret("no id")
    if not isinstance(crn, str) or ":secret:" not in crn:
        raise BadSecret("no crn")
    info = meta.get("issuance_info")
    if not isinstance(info, dict):
        info = {}
    state = order_state(meta)
    raw = info.get("challenges", [])
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise BadSecret("issuance_info.challenges is not a list")
    challenges = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadSecret(f"challenges[{index}] is not an object")
        try:
            domain, fqdn = challenge_record_name(item.get("domain"), item.get("txt_record_name"))
            value = check_challenge_value(item.get("txt_record_value"))
        except BadRequest as exc:
            raise BadSecret(f"challenges[{index}]: {exc.detail}") from None
        expiration = item.get("expiration")
        challenges.append(
            PendingChallenge(
                Challenge(Action.ADD, domain, fqdn, value),
                _timestamp(expiration, f"challenges[{index}].expiration")
                if expiration is not None
                else None,
                str(item["status"])[:50] if item.get("status") is not None else None,
            )
        )
    error_code, error_message = info.get("error_code"), info.get("error_message")
    return Order(
        secret_id=secret_id,
        crn=crn,
        name=str(meta.get("name", ""))[:200],
        state=state,
        challenges=tuple(challenges),
        validation_asked=_validation_asked(info),
        error_code=str(error_code)[:200] if error_code is not None else None,
        error_message=str(error_message)[:500] if error_message is not None else None,
    )


def _validation_asked(info: dict[str, Any]) -> bool:
    """Secrets Manager says validation was asked for this order: its
    `dns_challenge_validation_time` is set, and not older than the order (a renewal's
    new order may still show the previous order's time)."""
    asked = info.get("dns_challenge_validation_time")
    if not isinstance(asked, str):
        return False
    try:
        asked_at = _timestamp(asked, "dns_challenge_validation_time")
        ordered = info.get("ordered_on")
        return ordered is None or asked_at >= _timestamp(ordered, "ordered_on")
    except BadSecret:
        return True  # unreadable: assume asked (never validate twice)


def is_manual(meta: dict[str, Any]) -> bool:
    """`dns` is top-level in v2; older documentation examples show it in issuance_info."""
    info = meta.get("issuance_info")
    dns = meta.get("dns")
    if dns is None and isinstance(info, dict):
        dns = info.get("dns")
    return dns == "manual"


def order_state(meta: dict[str, Any]) -> int:
    """The order's state: `issuance_info.state` (a rotation keeps the top-level `state`
    active while its new order is pending), else `state`; an integer the API documents."""
    info = meta.get("issuance_info")
    state = info.get("state") if isinstance(info, dict) else None
    if state is None:
        state = meta.get("state")
    if isinstance(state, bool) or not isinstance(state, int) or state not in KNOWN_STATES:
        raise BadSecret(f"unknown state {state!r}")
    return state


def instance_crn(secret_crn: str) -> str:
    """`crn:v1:...:a/ACCOUNT:INSTANCE:secret:ID` -> the instance's CRN (`...:INSTANCE::`)."""
    parts = secret_crn.split(":")
    return ":".join(parts[:8]) + "::"


def _timestamp(text: Any, what: str) -> float:
    if not isinstance(text, str):
        raise BadSecret(f"{what} is not a string")
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadSecret(f"{what} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise BadSecret(f"{what} has no time zone")
    return when.timestamp()


class InstanceClient:
    """One instance's API client and credential."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: SecretsManagerInstanceSettings,
        rate_per_second: float,
    ) -> None:
        self.settings = settings
        tokens = IamTokens(
            session,
            settings.iam_url,
            api_key=settings.api_key,
            cr_token_file=settings.cr_token_file if settings.api_key is None else None,
            profile_id=settings.trusted_profile_id,
        )
        self.api = SecretsManagerApi(session, settings, tokens, RateBudget(rate_per_second))


class SecretsManagerDoor:
    """A poll-loop door: no routes; `sync_once` is one pass, `run` the server's loop."""

    name = DOOR
    routes: tuple[Route, ...] = ()
    events = EVENTS

    def __init__(self, runtime: Runtime, settings: SecretsManagerSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._skipped_logged: set[tuple[str, str]] = set()
        self._clients: dict[int, InstanceClient] = {}  # tokens are cached across passes

    async def handle(self, request: InboundRequest, summary: dict[str, Any]) -> Outcome:
        raise NotFound(f"no endpoint at {request.path}")  # never routed: it has no routes

    async def readiness(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass

    async def run(self) -> None:
        """The server's loop: a pass, then a jittered pause; a failed pass is logged and
        the next one comes at the usual time (never a tight loop). The first pass comes
        soon after the start, jittered too: replicas started together do not align."""
        interval = self.settings.interval_seconds
        await asyncio.sleep(interval * random.uniform(0, JITTER))  # noqa: S311
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("secrets_manager_pass_failed")
            await asyncio.sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))  # noqa: S311

    async def sync_once(self, session: aiohttp.ClientSession | None = None) -> PassReport:
        """One pass over every instance; what went wrong with one instance or secret is
        logged and reported, and the pass goes on."""
        started = time.perf_counter()
        report = PassReport()
        leases = self._leases()
        own_session = session is None
        if session is None:
            session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        try:
            for index, instance in enumerate(self.settings.instances):
                client = self._client(index, session)
                try:
                    await self._instance(client, leases, report)
                except ReceiverError as exc:
                    log.error(
                        "secrets_manager_instance_failed",
                        instance_id=instance.instance_id,
                        region=instance.region,
                        error=exc.code,
                        reason=exc.internal or exc.detail,
                    )
                    report.failed.append((instance.instance_id, exc.code))
        finally:
            await leases.aclose()
            if own_session:
                await session.close()
        elapsed = time.perf_counter() - started
        self.runtime.metrics.count_request(
            DOOR, "pass", "failed" if report.failed else "done", elapsed
        )
        log.info("secrets_manager_pass", duration_ms=round(elapsed * 1000, 2), **report.as_dict())
        return report

    def _leases(self) -> LeaseStore:
        """Where the journal is: the shared database of `[state]`, or the SQLite file."""
        database = self.runtime.state.database
        if database is not None:
            return PostgresLeases(database)
        journal_db = self.runtime.settings.journal.database
        assert journal_db is not None  # config: the door needs the journal
        return Leases(journal_db)

    def _client(self, index: int, session: aiohttp.ClientSession) -> InstanceClient:
        client = self._clients.get(index)
        if client is None:
            instance = self.settings.instances[index]
            client = InstanceClient(session, instance, self.settings.rate_per_second)
            self._clients[index] = client
        client.api.session = client.api.tokens.session = session
        return client

    async def _instance(
        self, client: InstanceClient, leases: LeaseStore, report: PassReport
    ) -> None:
        settings = client.settings
        now = time.time()
        pending: dict[str, dict[str, Any]] = {}
        async for item in client.api.pending_candidates(settings.secret_groups, settings.labels):
            if not is_manual(item) or not isinstance(item.get("id"), str):
                continue
            try:
                state = order_state(item)
            except BadSecret:
                state = PRE_ACTIVATION  # the metadata read decides
            if state == PRE_ACTIVATION and isinstance(item.get("crn"), str):
                pending[item["crn"]] = item
        for crn, item in pending.items():
            try:
                order = parse_order(await client.api.metadata(item["id"]))
            except BadSecret as exc:
                self._skip(report, crn, f"unusable data from the API: {exc}")
                continue
            except ReceiverError as exc:
                report.failed.append((crn, exc.code))
                log.warning("secrets_manager_read_failed", secret_crn=crn, error=exc.code)
                continue
            await self._guarded(client, order, leases, report, now)
        await self._follow(client, leases, report, skip=set(pending))

    async def _guarded(
        self,
        client: InstanceClient,
        order: Order,
        leases: LeaseStore,
        report: PassReport,
        now: float,
    ) -> None:
        """One secret; whatever goes wrong with it, the pass goes on with the others."""
        try:
            await self._order(client, order, leases, report, now)
        except ReceiverError as exc:
            report.failed.append((order.crn, exc.code))
            log.warning("secrets_manager_secret_failed", secret_crn=order.crn, error=exc.code)
        except Exception:
            report.failed.append((order.crn, "internal_error"))
            log.exception("secrets_manager_secret_failed", secret_crn=order.crn)

    async def _order(
        self,
        client: InstanceClient,
        order: Order,
        leases: LeaseStore,
        report: PassReport,
        now: float,
    ) -> None:
        if order.state != PRE_ACTIVATION:
            await self._finished(client, order, leases, report)
            return
        if not order.challenges:
            self._skip(report, order.crn, "pre-activation without challenges")
            return
        unexpired = [c for c in order.challenges if c.expiration is None or c.expiration > now]
        # Only the challenges not validated yet are published (the CA keeps the others).
        live = [c for c in unexpired if c.status in (None, "pending")]
        if not unexpired:  # past their expiration: the order is over, whatever its state says
            await self._remove_values(order.crn, leases, report, why="challenges expired")
            return
        try:
            routes = [self.runtime.policy.route(c.challenge) for c in live]
        except ReceiverError as exc:
            self._skip(report, order.crn, f"outside the configured zones: {exc.detail}")
            self.runtime.metrics.count_request(DOOR, "order", "outside_zones", 0.0)
            return
        del routes
        if order.validation_asked or await leases.validated(order.crn, order.key):
            report.waiting.append(order.crn)
            return
        if not await leases.acquire(order.crn, self.holder, self.settings.lease_seconds):
            log.info("secrets_manager_leased", secret_crn=order.crn, reason="another pass holds it")
            return
        started = time.perf_counter()
        try:
            # Once more under the lease: another pass may have asked since our read.
            if await leases.validated(order.crn, order.key):
                report.waiting.append(order.crn)
                return
            sender = instance_crn(order.crn)
            for pending in live:
                summary: dict[str, Any] = {}
                challenge = pending.challenge
                change = ChangeRequest(
                    challenge,
                    Origin(
                        door=DOOR, sender=sender, certificate=order.crn, domain=challenge.domain
                    ),
                    f"sm-{uuid.uuid4().hex[:16]}",
                    wait_for_propagation=True,
                )
                await apply(self.runtime, change, summary)
                log.info(
                    "secrets_manager_published",
                    secret_crn=order.crn,
                    domain=challenge.domain,
                    fqdn=challenge.fqdn,
                    propagation_s=summary.get("propagation_s"),
                )
            # The waits may have outlasted the lease: ask only while it is still ours.
            renewed = await leases.acquire(order.crn, self.holder, self.settings.lease_seconds)
            if not renewed or await leases.validated(order.crn, order.key):
                log.info("secrets_manager_leased", secret_crn=order.crn, reason="lease lost")
                return
            await client.api.validate(order.secret_id)
            await leases.mark_validated(order.crn, order.key)
            report.published.append(order.crn)
            log.info("secrets_manager_validation_asked", secret_crn=order.crn, name=order.name)
            self.runtime.metrics.count_request(
                DOOR, "order", "validated", time.perf_counter() - started
            )
        except PropagationTimeout as exc:
            report.failed.append((order.crn, exc.code))
            log.warning("secrets_manager_not_propagated", secret_crn=order.crn, missing=exc.detail)
            self.runtime.metrics.count_request(
                DOOR, "order", "not_propagated", time.perf_counter() - started
            )
        except ReceiverError as exc:
            report.failed.append((order.crn, exc.code))
            log.warning(
                "secrets_manager_order_failed",
                secret_crn=order.crn,
                error=exc.code,
                reason=exc.internal or exc.detail,
            )
            self.runtime.metrics.count_request(
                DOOR, "order", "failed", time.perf_counter() - started
            )
        finally:
            await leases.release(order.crn, self.holder)

    async def _finished(
        self, client: InstanceClient, order: Order, leases: LeaseStore, report: PassReport
    ) -> None:
        if order.state == DEACTIVATED:
            log.warning(
                "secrets_manager_validation_failed",
                secret_crn=order.crn,
                error_code=order.error_code,
                error_message=order.error_message,
            )
        await self._remove_values(order.crn, leases, report, why=_state_name(order.state))

    async def _follow(
        self, client: InstanceClient, leases: LeaseStore, report: PassReport, skip: set[str]
    ) -> None:
        """Values still published for secrets no longer pending: read each one's state."""
        journal = self.runtime.journal
        if journal is None:
            return
        mine = _by_certificate(await journal.candidates(), client.settings.instance_id)
        now = time.time()
        for crn in sorted(set(mine) - skip):
            secret_id = crn.rsplit(":", 1)[-1]
            try:
                meta = await client.api.metadata(secret_id)
            except SecretGone:
                await self._remove_values(crn, leases, report, why="secret deleted")
                continue
            except ReceiverError as exc:
                report.failed.append((crn, exc.code))
                continue
            try:
                order = parse_order(meta)
            except BadSecret as exc:
                self._skip(report, crn, f"unusable data from the API: {exc}")
                continue
            await self._guarded(client, order, leases, report, now)

    async def _remove_values(
        self, crn: str, leases: LeaseStore, report: PassReport, why: str
    ) -> None:
        journal = self.runtime.journal
        assert journal is not None
        entries = await journal.candidates(certificates=[crn])
        if not entries:
            return
        if not await leases.acquire(crn, self.holder, self.settings.lease_seconds):
            return  # the holder removes them, or the next pass does
        started = time.perf_counter()
        try:
            for entry in entries:
                challenge = Challenge(
                    Action.REMOVE, entry.domain or entry.fqdn, entry.fqdn, entry.value
                )
                change = ChangeRequest(
                    challenge,
                    Origin(door=DOOR, sender=entry.sender, certificate=crn, domain=entry.domain),
                    f"sm-{uuid.uuid4().hex[:16]}",
                    remover=entry.sender,
                )
                try:
                    await apply(self.runtime, change, {})
                except ReceiverError as exc:
                    report.failed.append((crn, exc.code))
                    log.warning(
                        "secrets_manager_remove_failed",
                        secret_crn=crn,
                        fqdn=entry.fqdn,
                        error=exc.code,
                    )
                    continue
                report.removed += 1
            log.info("secrets_manager_removed", secret_crn=crn, why=why, values=len(entries))
            self.runtime.metrics.count_request(
                DOOR, "cleanup", "removed", time.perf_counter() - started
            )
        finally:
            await leases.release(crn, self.holder)

    def _skip(self, report: PassReport, crn: str, why: str) -> None:
        report.skipped.append((crn, why))
        if (crn, why) not in self._skipped_logged:  # once per secret and reason
            self._skipped_logged.add((crn, why))
            log.warning("secrets_manager_secret_skipped", secret_crn=crn, reason=why)
        self.runtime.metrics.count_request(DOOR, "order", "skipped", 0.0)


def _by_certificate(entries: Iterable[Entry], instance_id: str) -> dict[str, list[Entry]]:
    """The values this door published for one instance's secrets, by secret CRN."""
    found: dict[str, list[Entry]] = {}
    for entry in entries:
        if entry.door != DOOR or entry.certificate is None:
            continue
        parts = entry.certificate.split(":")
        if len(parts) >= 10 and parts[7] == instance_id:
            found.setdefault(entry.certificate, []).append(entry)
    return found


def _state_name(state: int) -> str:
    return {ACTIVE: "active", SUSPENDED: "suspended", DEACTIVATED: "deactivated"}.get(
        state, "destroyed"
    )
