"""Shared fixtures: key material, a Certificate Manager stand-in that signs notifications,
a fake IBM Cloud (public-key endpoint + IAM JWKS) on loopback, and an in-process service."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import os
import resource
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from providers.base import ZoneRef
from providers.memory import MemoryProvider
from receiver import config, logs, signing
from receiver.config import LogSettings
from receiver.hosts.http import RUNTIME, create_app
from receiver.runtime import Runtime

from .backends.bind import bind_primary  # noqa: F401 - shared fixtures
from .backends.moto import aws_credentials, moto_server  # noqa: F401 - shared fixtures
from .backends.postgres import own_postgres, postgres_server, postgres_url  # noqa: F401

ACCOUNT = "0123456789abcdef0123456789abcdef"
OTHER_ACCOUNT = "fedcba9876543210fedcba9876543210"
CRN = "crn:v1:bluemix:public:cloudcerts:{region}:a/{account}:{guid}-2222-3333-4444-555555555555::"
INSTANCE = CRN.format(region="us-south", account=ACCOUNT, guid="11111111")
OTHER_INSTANCE = CRN.format(region="eu-de", account=ACCOUNT, guid="99999999")
STRANGER = CRN.format(region="us-south", account=OTHER_ACCOUNT, guid="66666666")
USER_KID = "20261101"


def long_domain(length: int, zone: str = "example.com") -> str:
    """A host name of exactly `length` octets inside `zone`, in labels of at most 63."""
    room = length - len(zone) - 1
    labels = []
    while room > 0:
        label = min(63, room - 1 if room > 63 else room)  # never leave a lone dot
        labels.append("a" * label)
        room -= label + 1
    name = ".".join([*labels, zone])
    assert len(name) == length, (len(name), length)
    return name


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach beyond loopback: refuse any other destination at the socket."""
    real_connect, real_sendto = socket.socket.connect, socket.socket.sendto

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise OSError(f"test tried to reach {host}: only loopback is allowed")

    def connect(sock: socket.socket, address: Any) -> Any:
        check(sock, address)
        return real_connect(sock, address)

    def sendto(sock: socket.socket, data: Any, *args: Any) -> Any:
        check(sock, args[-1])  # UDP: the destination is the last argument
        return real_sendto(sock, data, *args)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "sendto", sendto)


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    """A CLI command configures logging onto the test's captured stderr; undo it after."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def captured() -> io.StringIO:
    """Every log line, structlog's and the stdlib's, as JSON from debug up (the autouse
    `_restore_logging` undoes the configuration afterwards)."""
    stream = io.StringIO()
    logs.configure(LogSettings(format="json", level="debug"), stream)
    return stream


def service_events(stream: io.StringIO) -> list[dict[str, Any]]:
    """The captured events of the service itself: without the access log lines that the
    test server adds (`serve` runs with no access log)."""
    found = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [e for e in found if e.get("logger") != "aiohttp.access"]


@dataclass(frozen=True)
class KeyPair:
    private_pem: bytes = field(repr=False)
    public_pem: bytes


def _pair(algorithm: str = "RS256") -> KeyPair:
    private = signing.generate_private_key(algorithm)
    return KeyPair(private, signing.public_pem(private))


@pytest.fixture
def scripted_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register `tests.scripted_provider` (fails on cue) as the provider "scripted"."""
    from importlib.metadata import EntryPoint

    from providers import registry

    real = registry._entry_points

    def with_scripted() -> dict[str, EntryPoint]:
        return {
            **real(),
            "scripted": EntryPoint(
                "scripted", "tests.scripted_provider:ScriptedProvider", registry.ENTRY_POINT_GROUP
            ),
        }

    monkeypatch.setattr(registry, "_entry_points", with_scripted)


@pytest.fixture(scope="session")
def keys() -> dict[str, KeyPair]:
    """Generated once per session: RSA generation is slow."""
    return {
        "sender": _pair(),
        "sender_rotated": _pair(),
        "other_instance": _pair(),
        "attacker": _pair(),
        "attacker_ec": _pair("ES256"),
        "sender_ec": _pair("ES256"),
        "user": _pair(),
        "user_rotated": _pair(),
    }


@dataclass
class Sender:
    """Builds and signs notifications the way Certificate Manager does."""

    keys: dict[str, KeyPair] = field(repr=False)  # never print private keys in a report
    instance_crn: str = INSTANCE
    key_name: str = "sender"

    def claims(
        self,
        event: str = "cert_domain_validation_required",
        domain: str = "www.example.com",
        value: str | None = None,
        *,
        user_token: str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        claims = signing.notification_claims(
            instance_crn=self.instance_crn,
            event_type=event,
            domain=domain,
            value=value or signing.challenge_value(),
            user_token=user_token,
        )
        return _override(claims, overrides)

    def token(
        self,
        claims: dict[str, Any],
        *,
        alg: str = "RS256",
        key: bytes | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        import jwt

        key = key if key is not None else self.keys[self.key_name].private_pem
        return jwt.encode(claims, _loaded(key, alg), algorithm=alg, headers=headers)

    def body(self, claims: dict[str, Any] | None = None, **kwargs: Any) -> bytes:
        return signing.envelope(self.token(claims or self.claims(), **kwargs))

    def user_token(
        self, *, key: str = "user", kid: str = USER_KID, alg: str = "RS256", **overrides: Any
    ) -> str:
        import jwt

        claims = _override(signing.user_token_claims(account=ACCOUNT), overrides)
        return jwt.encode(
            claims, _loaded(self.keys[key].private_pem, alg), algorithm=alg, headers={"kid": kid}
        )


@functools.cache
def _loaded(key: bytes, algorithm: str) -> Any:
    """Parse a PEM private key once: PyJWT would re-parse (and re-validate) it per token,
    which costs ~50 ms for RSA. HMAC keys (forged-token cases) stay bytes."""
    if algorithm.startswith("HS") or not key.startswith(b"-----BEGIN"):
        return key
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(key, password=None)


def _override(claims: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply overrides; an override of None removes the claim."""
    for key, value in overrides.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


@pytest.fixture
def sender(keys: dict[str, KeyPair]) -> Sender:
    return Sender(keys)


@dataclass
class FakeIbmCloud:
    """Certificate Manager's public-key endpoint and IAM's JWKS, counting every fetch."""

    keys: dict[str, KeyPair]
    instance_keys: dict[str, str] = field(default_factory=dict)  # crn -> key name
    jwks_keys: dict[str, str] = field(default_factory=lambda: {USER_KID: "user"})
    key_fetches: list[str] = field(default_factory=list)
    jwks_fetches: int = 0
    failing: bool = False
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/instances/{crn}/notifications/publicKey", self._public_key)
        app.router.add_get("/identity/keys", self._jwks)
        return app

    async def _public_key(self, request: web.Request) -> web.Response:
        crn = request.match_info["crn"]
        self.key_fetches.append(crn)
        if self.failing:
            return web.Response(status=503)
        if request.query.get("keyFormat") != "pem" or crn not in self.instance_keys:
            return web.json_response({"message": "not found"}, status=404)
        pem = self.keys[self.instance_keys[crn]].public_pem.decode()
        return web.json_response({"publicKey": pem})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.failing:
            return web.Response(status=503)
        pems = {kid: self.keys[name].public_pem for kid, name in self.jwks_keys.items()}
        return web.json_response(signing.jwks_document(pems))

    @property
    def public_key_url(self) -> str:
        return f"{self.url}/api/v1/instances/{{instance_crn}}/notifications/publicKey?keyFormat=pem"

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/identity/keys"


@pytest.fixture
async def ibm_cloud(keys: dict[str, KeyPair]) -> AsyncIterator[FakeIbmCloud]:
    fake = FakeIbmCloud(keys, instance_keys={INSTANCE: "sender", OTHER_INSTANCE: "other_instance"})
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    await server.close()


@pytest.fixture
def public_key_file(tmp_path: Path, keys: dict[str, KeyPair]) -> Path:
    path = tmp_path / "sender.pub.pem"
    path.write_bytes(keys["sender"].public_pem)
    return path


SettingsFactory = Callable[..., config.Settings]


def shared_store_config(tmp_path: Path, public_key_file: Path) -> Path:
    """A `serve` config on one `local` store file (`shared.sqlite3`) that several server
    processes can share; every listener on a free loopback port."""
    config = tmp_path / "r.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:0"
[log]
format = "json"
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{public_key_file}"
[local]
database = "shared.sqlite3"
dns_listen = "127.0.0.1:0"
[propagation]
check = false
[[zones]]
name = "example.com"
provider = "local"
""")
    return config


@pytest.fixture
def make_settings(ibm_cloud: FakeIbmCloud, tmp_path: Path) -> SettingsFactory:
    """Settings from a dict, defaulting to keys fetched from the fake IBM Cloud."""

    def build(**sections: Any) -> config.Settings:
        data: dict[str, Any] = {
            "certificate_manager": {
                "allowed_instances": [INSTANCE, OTHER_INSTANCE],
                "public_key_url": ibm_cloud.public_key_url,
            },
            "user_token": {"jwks_url": ibm_cloud.jwks_url},
            # Background checks would look up NS records: tests that want them say so.
            "propagation": {"check": False},
            "dispatch": {
                "deadline_seconds": 2,
                "retry_initial_seconds": 0.01,
                "retry_max_seconds": 0.05,
            },
            "zones": [
                {"name": "example.com", "provider": "memory"},
                {"name": "example.net", "provider": "memory", "ttl": 120},
            ],
        }
        for name, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return config.from_mapping(data, base_dir=tmp_path)  # relative files land in tmp

    return build


@dataclass
class Service:
    client: TestClient[web.Request, web.Application]
    runtime: Runtime

    async def post(
        self,
        body: bytes,
        *,
        content_type: str = "application/json",
        path: str = "/callback",
        headers: dict[str, str] | None = None,
    ) -> Any:
        return await self.client.post(
            path, data=body, headers={"Content-Type": content_type, **(headers or {})}
        )

    def memory(self) -> MemoryProvider:
        """The memory adapter (zones with equal options share one instance)."""
        (provider,) = {id(p): p for p in self.runtime.providers.values()}.values()
        assert isinstance(provider, MemoryProvider)
        return provider

    async def records(self, fqdn: str) -> frozenset[str]:
        return await self.memory().list_txt(ZoneRef("", ""), fqdn)

    async def all_records(self) -> dict[str, frozenset[str]]:
        found: dict[str, frozenset[str]] = {}
        for provider in self.runtime.providers.values():
            assert isinstance(provider, MemoryProvider)
            for fqdn in list(provider._sets):  # observer access to the store
                found[fqdn] = await provider.list_txt(ZoneRef("", ""), fqdn)
        return found


ServiceFactory = Callable[..., Any]


@pytest.fixture
def start_service(
    aiohttp_client: Callable[..., Any], make_settings: SettingsFactory
) -> ServiceFactory:
    async def start(settings: config.Settings | None = None, **sections: Any) -> Service:
        app = create_app(settings or make_settings(**sections))
        client = await aiohttp_client(app)
        return Service(client, app[RUNTIME])

    return start


@dataclass
class ServerProcess:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    url: str = ""
    reader: asyncio.Task[None] | None = None

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    async def wait_for(self, event: str, within: float = 15) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for item in self.events():
                    if item.get("event") == event:
                        return item
                if self.proc.returncode is not None:
                    raise AssertionError("server exited:\n" + "\n".join(self.lines))
                await asyncio.sleep(0.02)


@pytest.fixture
async def run_server() -> AsyncIterator[Callable[..., Any]]:
    started: list[ServerProcess] = []

    async def start(config: Path, *args: str, nofile: int | None = None) -> ServerProcess:
        """`nofile`: the process's descriptor limit (soft and hard), as a tight ulimit."""

        def limit_descriptors() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "serve",
            "--config",
            str(config),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit_descriptors if nofile is not None else None,
        )
        server = ServerProcess(proc)
        server.reader = asyncio.create_task(server._read())
        started.append(server)
        server.url = (await server.wait_for("listening"))["url"]
        return server

    yield start
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
        await server.proc.wait()
        if server.reader is not None:
            await server.reader
