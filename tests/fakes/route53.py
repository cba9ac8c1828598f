"""A stub in front of moto that answers as Route 53 does where moto is forgiving.

moto (deps.md §2) accepts a CREATE over an existing set and a stale DELETE, returns one
hard-coded change id and is always INSYNC. This aiohttp app forwards every request to a
real moto_server, but first checks change batches against moto's current state with
Route 53's rules (answering `InvalidChangeBatch` exactly as Route 53 words it), gives
every change its own id that stays PENDING for `pending_polls` GetChange calls, and can
inject Route 53's throttling and server errors (once, N times, after the change took
effect, or at a seeded rate). It counts every call by operation.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from aiohttp import web

NS = "https://route53.amazonaws.com/doc/2013-04-01/"
_Q = {"r": NS}
# moto_server picks the emulated service from the SigV4 credential scope (not verified).
MOTO_ROUTE53_AUTH = (
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/route53/"
    "aws4_request, SignedHeaders=host, Signature=0"
)


@dataclass
class Fault:
    status: int
    code: str
    message: str
    operation: str  # "write", "read", "zones", "change" or "any"
    remaining: int
    after_applying: bool = False  # the change takes effect, its answer is lost
    hang_seconds: float = 0.0  # answer only this late (a client's timeout fires first)
    fired: int = 0


@dataclass
class FlakyRate:
    rate: float
    rng: random.Random
    operations: tuple[str, ...]
    injected: int = 0
    lost_answers: int = 0


@dataclass
class Route53Stub:
    moto_url: str
    pending_polls: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    flaky: FlakyRate | None = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _polls: dict[str, int] = field(default_factory=dict)
    _write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    url: str = ""

    def inject(
        self,
        code: str,
        *,
        times: int = 1,
        operation: str = "any",
        status: int = 400,
        message: str | None = None,
        after_applying: bool = False,
        hang_seconds: float = 0.0,
    ) -> Fault:
        text = message or f"{code} (injected)"
        fault = Fault(status, code, text, operation, times, after_applying, hang_seconds)
        self.faults.append(fault)
        return fault

    def fail_at_rate(self, rate: float, seed: int, operations: tuple[str, ...] = ("read",)) -> None:
        """Throttling or a 500 on `rate` of the calls for `operations`, seeded; a failing
        write takes effect first half of the time (its answer is lost)."""
        self.flaky = FlakyRate(rate, random.Random(seed), operations)

    def _flaky_now(self, operation: str) -> bool:
        flaky = self.flaky
        if flaky is None or operation not in flaky.operations:
            return False
        if flaky.rng.random() >= flaky.rate:
            return False
        flaky.injected += 1
        return True

    def app(self) -> web.Application:
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = _operation(request)
        self.calls[operation] += 1
        fault = next(
            (f for f in self.faults if f.remaining > 0 and f.operation in (operation, "any")), None
        )
        lost_answer = False
        if fault is not None:
            fault.remaining -= 1
            fault.fired += 1
            if fault.hang_seconds:
                await asyncio.sleep(fault.hang_seconds)
            lost_answer = fault.after_applying and operation == "write"
            if not lost_answer:
                return _error(fault.status, fault.code, fault.message)
        elif self._flaky_now(operation):
            assert self.flaky is not None
            code, status = self.flaky.rng.choice([("Throttling", 400), ("InternalError", 500)])
            fault = Fault(status, code, f"{code} (injected at random)", operation, 0)
            lost_answer = operation == "write" and self.flaky.rng.random() < 0.5
            self.flaky.lost_answers += lost_answer
            if not lost_answer:
                return _error(status, code, fault.message)
        body = await request.read()
        if operation == "change":
            return self._get_change(request.match_info["tail"].rsplit("/", 1)[-1])
        if operation == "write":
            async with self._write_lock:  # Route 53 applies each batch atomically
                problems, net_effect = await self._check_batch(request.path, body)
                if problems:
                    return _error(400, "InvalidChangeBatch", "[" + ", ".join(problems) + "]")
                status, headers, payload = await self._forward(request, net_effect)
            if status == 200:
                payload = self._new_change(payload)
            if fault is not None and lost_answer:  # applied; the answer is lost
                return _error(fault.status, fault.code, fault.message)
            return web.Response(status=status, body=payload, headers=headers)
        status, headers, payload = await self._forward(request, body)
        return web.Response(status=status, body=payload, headers=headers)

    async def _forward(
        self, request: web.Request, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.moto_url + request.path_qs, data=body, headers=headers
            ) as resp,
        ):
            kept = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() in ("content-type", "x-amzn-requestid")
            }
            return resp.status, kept, await resp.read()

    async def _current(self, zone_path: str, name: str, rtype: str) -> tuple[int, set[str]] | None:
        url = f"{self.moto_url}{zone_path}?name={name}&type={rtype}&maxitems=1"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Authorization": MOTO_ROUTE53_AUTH}) as resp,
        ):
            root = ET.fromstring(await resp.read())
        for rrset in root.iterfind(".//r:ResourceRecordSet", _Q):
            if (
                _norm(rrset.findtext("r:Name", "", _Q)) == name
                and rrset.findtext("r:Type", "", _Q) == rtype
            ):
                values = {v.text or "" for v in rrset.iterfind(".//r:Value", _Q)}
                return int(rrset.findtext("r:TTL", "0", _Q)), values
        return None

    async def _check_batch(self, path: str, body: bytes) -> tuple[list[str], bytes]:
        """Route 53's rules: changes apply in order, each checked against the state the
        batch has produced so far; any problem rejects the whole batch. Returns the
        problems and, when there are none, the batch's net effect for moto to store
        (moto checks a CREATE against the state before the batch, so DELETE+CREATE of one
        set, Route 53's documented way to change it, would fail there)."""
        zone_path = path.rstrip("/")
        state: dict[tuple[str, str], tuple[int, set[str]] | None] = {}
        before: dict[tuple[str, str], tuple[int, set[str]] | None] = {}
        problems = []
        for change in ET.fromstring(body).iterfind(".//r:Change", _Q):
            action = change.findtext("r:Action", "", _Q)
            rrset = change.find("r:ResourceRecordSet", _Q)
            assert rrset is not None
            name = _norm(rrset.findtext("r:Name", "", _Q))
            rtype = rrset.findtext("r:Type", "", _Q)
            ttl = int(rrset.findtext("r:TTL", "0", _Q))
            values = {v.text or "" for v in rrset.iterfind(".//r:Value", _Q)}
            key = (name, rtype)
            if key not in state:
                state[key] = before[key] = await self._current(zone_path, name, rtype)
            where = f"resource record set [name='{name}', type='{rtype}']"
            if action == "CREATE":
                if state[key] is not None:
                    problems.append(f"Tried to create {where} but it already exists")
                state[key] = (ttl, values)
            elif action == "DELETE":
                if state[key] is None:
                    problems.append(f"Tried to delete {where} but it was not found")
                elif state[key] != (ttl, values):
                    problems.append(
                        f"Tried to delete {where} but the values provided do not"
                        " match the current values"
                    )
                state[key] = None
            else:
                state[key] = (ttl, values)
        return problems, _net_effect(before, state)

    def _new_change(self, payload: bytes) -> bytes:
        change_id = f"C{next(self._ids):012d}"
        self._polls[change_id] = 0
        return _change_info(
            "ChangeResourceRecordSetsResponse",
            change_id,
            "PENDING" if self.pending_polls else "INSYNC",
        )

    def _get_change(self, change_id: str) -> web.Response:
        if change_id not in self._polls:
            return _error(
                404,
                "NoSuchChange",
                f"A change with the specified change ID does not exist: {change_id}",
            )
        self._polls[change_id] += 1
        status = "INSYNC" if self._polls[change_id] > self.pending_polls else "PENDING"
        return web.Response(
            body=_change_info("GetChangeResponse", change_id, status), content_type="text/xml"
        )


def _net_effect(
    before: dict[tuple[str, str], tuple[int, set[str]] | None],
    after: dict[tuple[str, str], tuple[int, set[str]] | None],
) -> bytes:
    root = ET.Element("ChangeResourceRecordSetsRequest", xmlns=NS)
    changes = ET.SubElement(ET.SubElement(root, "ChangeBatch"), "Changes")
    for (name, rtype), final in after.items():
        if final == before[(name, rtype)]:
            continue
        action, rrset = (
            ("UPSERT", final) if final is not None else ("DELETE", before[(name, rtype)])
        )
        assert rrset is not None
        change = ET.SubElement(changes, "Change")
        ET.SubElement(change, "Action").text = action
        record_set = ET.SubElement(change, "ResourceRecordSet")
        ET.SubElement(record_set, "Name").text = name
        ET.SubElement(record_set, "Type").text = rtype
        ET.SubElement(record_set, "TTL").text = str(rrset[0])
        records = ET.SubElement(record_set, "ResourceRecords")
        for value in sorted(rrset[1]):
            ET.SubElement(ET.SubElement(records, "ResourceRecord"), "Value").text = value
    return ET.tostring(root, xml_declaration=True, encoding="utf-8")


def _operation(request: web.Request) -> str:
    path = request.path
    if "/rrset" in path:
        return "write" if request.method == "POST" else "read"
    if "/change/" in path:
        return "change"
    if "hostedzonesbyname" in path:
        return "zones"
    return "other"


def _norm(name: str) -> str:
    return name.lower().rstrip(".") + "."


def _error(status: int, code: str, message: str) -> web.Response:
    kind = "Receiver" if status >= 500 else "Sender"
    body = (
        f'<?xml version="1.0"?>\n<ErrorResponse xmlns="{NS}"><Error><Type>{kind}</Type>'
        f"<Code>{code}</Code><Message>{_escape(message)}</Message></Error>"
        f"<RequestId>stub-request</RequestId></ErrorResponse>"
    )
    return web.Response(status=status, body=body.encode(), content_type="text/xml")


def _change_info(root: str, change_id: str, status: str) -> bytes:
    submitted = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NS}"><ChangeInfo>'
        f"<Id>/change/{change_id}</Id><Status>{status}</Status>"
        f"<SubmittedAt>{submitted}</SubmittedAt></ChangeInfo></{root}>"
    ).encode()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
