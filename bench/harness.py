"""Shared pieces of the HTTP benchmarks: keys, a JWKS server, signed notifications,
receiver and baseline processes, RSS readings. Loopback only."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key

from receiver import signing

HERE = Path(__file__).resolve().parent
CRN = signing.DEMO_CRN
KID = "bench-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def json_server(document: object) -> Iterator[str]:
    """A loopback HTTP server answering every GET with `document` as JSON; yields its base
    URL (no trailing slash)."""
    body = json.dumps(document).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@contextmanager
def jwks_server(public_pem: bytes) -> Iterator[str]:
    with json_server(signing.jwks_document({KID: public_pem})) as base:
        yield f"{base}/keys"


class Keys:
    def __init__(self, folder: Path, algorithm: str = "RS256") -> None:
        self.algorithm = algorithm
        self.sender_public = signing.write_key_pair(folder / "sender.pem", algorithm)
        user_private = signing.generate_private_key()
        self.user_public = signing.public_pem(user_private)
        self._sender = load_pem_private_key((folder / "sender.pem").read_bytes(), None)
        self._user = load_pem_private_key(user_private, None)

    def bodies(
        self,
        pairs: int,
        start: int = 0,
        events: tuple[str, ...] = (
            "cert_domain_validation_required",
            "cert_domain_validation_completed",
        ),
    ) -> list[bytes]:
        """For each of `pairs` names, one notification per event (default: required, then
        completed), each with a user token.

        `events=("cert_domain_validation_required",)`: one new value per name, nothing
        removed (what a burst of orders looks like before any of them completes)."""
        import jwt

        account = CRN.split(":")[6].removeprefix("a/")
        token = jwt.encode(
            signing.user_token_claims(account=account, lifetime=24 * 3600),
            self._user,
            algorithm="RS256",
            headers={"kid": KID},
        )
        found = []
        for index in range(start, start + pairs):
            value = signing.challenge_value()
            for event in events:
                claims = signing.notification_claims(
                    instance_crn=CRN,
                    event_type=event,
                    domain=f"h{index}.example.com",
                    value=value,
                    user_token=token,
                    lifetime=24 * 3600,
                )
                envelope = jwt.encode(claims, self._sender, self.algorithm)
                found.append(signing.envelope(envelope))
        return found


def signed_sender(keys: Keys, jwks_url: str) -> str:
    """The TOML every receiver benchmark trusts its senders with: the bench's Certificate
    Manager instance and key, and user tokens required and checked against `jwks_url`."""
    return f"""[certificate_manager]
allowed_instances = ["{CRN}"]
public_key_file = "{keys.sender_public}"
algorithms = ["{keys.algorithm}"]
[user_token]
required = true
jwks_url = "{jwks_url}"
"""


def receiver_config(
    folder: Path, keys: Keys, jwks_url: str, port: int, *, journal: bool, propagation: bool = False
) -> Path:
    config = folder / f"receiver-{port}.toml"
    config.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[log]
format = "json"
{signed_sender(keys, jwks_url)}[journal]
enabled = {str(journal).lower()}
database = "{folder}/journal-{port}.sqlite3"
[propagation]
check = {str(propagation).lower()}
[[zones]]
name = "example.com"
provider = "memory"
""")
    return config


@contextmanager
def process(
    argv: list[str], url: str, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`cwd`: where `python -m receiver` finds its package first (another checkout)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=1)
            except urllib.error.HTTPError:
                break  # answering (a 4xx for this empty body is fine)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv} did not start") from None
                time.sleep(0.05)
                continue
            break
        yield proc
    finally:
        proc.terminate()
        proc.wait()


@contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """A moto_server process on a free loopback port, answering; yields its URL."""
    port = free_port()
    binary = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)  # loopback only
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("moto_server did not start (pip install 'moto[server]')")
        yield url
    finally:
        proc.terminate()
        proc.wait()


def receiver(config: Path) -> list[str]:
    return [sys.executable, "-m", "receiver", "serve", "--config", str(config)]


def bare(port: int) -> list[str]:
    return [sys.executable, str(HERE / "bare_app.py"), str(port)]


def floor(port: int, sender_public: Path, commits: Path | None = None) -> list[str]:
    extra = [str(commits)] if commits is not None else []
    return [sys.executable, str(HERE / "floor_app.py"), str(port), str(sender_public), *extra]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def machine_busy() -> float:
    """CPU seconds that all CPUs have spent busy since boot (/proc/stat: all but idle and
    iowait): what else ran during a measurement, once its own processes are taken off."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and every process below it: a
    `serve --workers` supervisor and its workers, say. Read from /proc (Linux)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        parents[int(entry.name)] = int(fields[1])
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, total = {pid}, 0.0
    while True:
        grown = tree | {child for child, parent in parents.items() if parent in tree}
        if grown == tree:
            break
        tree = grown
    for member in tree:
        total += used.get(member, 0.0)
    return total


def send_pairs(url: str, bodies: list[bytes], connections: int) -> tuple[int, list[float]]:
    """Send required/completed pairs in order within a pair, `connections` pairs at once.

    Returns (non-200 answers, per-request seconds). Calls `on_progress(sent)` hooks via
    `progress` on the module so callers can sample memory while it runs.
    """
    import asyncio

    import aiohttp

    async def run() -> tuple[int, list[float]]:
        errors = 0
        latencies: list[float] = []
        pairs = iter(range(0, len(bodies), 2))
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections)
        ) as session:

            async def worker() -> None:
                nonlocal errors
                for first in pairs:
                    for body in bodies[first : first + 2]:
                        started = time.perf_counter()
                        async with session.post(
                            url, data=body, headers={"Content-Type": "application/json"}
                        ) as resp:
                            await resp.read()
                            errors += resp.status != 200
                        latencies.append(time.perf_counter() - started)

            await asyncio.gather(*(worker() for _ in range(connections)))
        return errors, latencies

    return asyncio.run(run())
