"""Real BIND 9 servers (`named` from the Debian package `bind9`) on loopback.

Each server gets a fresh directory: BIND journals (.jnl) replay old updates into a reused
one (deps.md §5). The update key may change TXT records in its zones and nothing else.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

KEY_NAME = "acme-key"


def free_port() -> int:
    """A port free for both UDP and TCP."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@dataclass
class Bind:
    """One named process: a primary (accepting signed updates) or a secondary."""

    folder: Path
    zones: Sequence[str]
    secret: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode())
    port: int = field(default_factory=free_port)
    primary: tuple[str, int] | None = None  # set: this server is a secondary of that one
    notify: Sequence[tuple[str, int]] = ()  # secondaries the primary tells about changes
    records: Mapping[str, Sequence[str]] = field(default_factory=dict)  # zone -> extra lines
    # zone -> server: a recursive resolver for loopback clients, forwarding those zones
    forwarders: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        work = self.folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        zones = []
        for zone in self.zones:
            if self.primary is None:
                (work / f"{zone}.db").write_text(
                    f"$TTL 60\n@ IN SOA ns1.{zone}. hostmaster.{zone}. (1 60 60 3600 5)\n"
                    f"  IN NS ns1.{zone}.\nns1 IN A 127.0.0.1\n"
                    + "".join(f"{line}\n" for line in self.records.get(zone, ()))
                )
                also = "".join(f"127.0.0.1 port {p}; " for _, p in self.notify)
                notify = f"notify explicit; also-notify {{ {also}}};" if self.notify else ""
                zones.append(
                    f'zone "{zone}" {{ type primary; file "{zone}.db"; {notify}\n'
                    f"  update-policy {{ grant {KEY_NAME} zonesub TXT; }}; }};"
                )
            else:
                host, port = self.primary
                zones.append(
                    f'zone "{zone}" {{ type secondary; file "{zone}.sec.db";\n'
                    f"  primaries {{ {host} port {port}; }}; }};"
                )
        for zone, (host, port) in self.forwarders.items():
            zones.append(
                f'zone "{zone}" {{ type forward; forward only;'
                f" forwarders {{ {host} port {port}; }}; }};"
            )
        recursion = (
            "recursion yes; allow-recursion { 127.0.0.1; }; allow-query-cache { 127.0.0.1; };"
            if self.forwarders
            else "recursion no;"
        )
        config = self.folder / "named.conf"
        config.write_text(f"""
key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{self.secret}"; }};
options {{
    directory "{work}";
    pid-file "{work}/named.pid";
    session-keyfile "{work}/session.key";
    managed-keys-directory "{work}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    {recursion} dnssec-validation no;
    notify {"explicit" if self.notify else "no"};
    notify-delay 0;  // the default (5 s) would make every test wait
    allow-transfer {{ 127.0.0.1; }};
    transfer-source 127.0.0.1;
    notify-source 127.0.0.1;
}};
controls {{ }};
{chr(10).join(zones)}
""")
        return config

    def start(self) -> None:
        binary = shutil.which("named") or "/usr/sbin/named"
        if not os.path.exists(binary):
            raise RuntimeError(
                "named is not installed (Debian package bind9; scripts/test installs it)"
            )
        config = self._write_config()
        with (self.folder / "named.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [binary, "-g", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        query = dns.message.make_query(self.zones[0], "SOA")
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"named exited: {(self.folder / 'named.log').read_text()}")
            try:
                answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
                if answer.rcode() == dns.rcode.NOERROR and answer.answer:
                    return
            except (dns.exception.Timeout, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"named did not serve {self.zones[0]} in time")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def bind_primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    server = Bind(tmp_path_factory.mktemp("bind"), ["conformance.test", "example.test"])
    server.start()
    yield server
    server.stop()
