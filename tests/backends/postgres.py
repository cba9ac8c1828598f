"""A real PostgreSQL server (Debian's `postgresql` package) for one test session.

`initdb` and `pg_ctl` run as an unprivileged user (PostgreSQL refuses root: as root the
tests use the package's `postgres` account) in a fresh directory, listening on
127.0.0.1 only. Every test gets a database of its own; tests that stop and start the
server (outages) get a server of their own.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUPERUSER = "postgres"
ROLE = "receiver"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql; scripts/test)")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Postgres:
    folder: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    _databases: int = 0

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(_bin_dir() / argv[0]), *argv[1:]]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60)

    def init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        password_file = self.folder / "pw"
        password_file.write_text(self.password)
        if os.geteuid() == 0:
            account = pwd.getpwnam(SUPERUSER)
            for path in (self.folder, password_file):
                os.chown(path, account.pw_uid, account.pw_gid)
        self.folder.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={password_file}",
            "--no-sync",
        )

    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-c unix_socket_directories={self.folder}",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        log = self.folder / "server.log"
        result = self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start",
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{result.stderr}\n{_tail(log)}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql", "-h", str(self.folder), "-p", str(self.port), "-U", SUPERUSER,
            "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        )  # fmt: skip
        return result.stdout.strip()

    def url(self, database: str, *, user: str = ROLE, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh database owned by the receiver's role (no superuser powers)."""
        self._databases += 1
        name = f"test{self._databases}"
        self.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.url(name)

    def create_role(self) -> None:
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")


def _tail(path: Path) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-20:])
    except OSError:
        return ""


def started(prefix: str) -> Postgres:
    """Outside pytest's tmp dirs: those are private to root, the server's user is not."""
    server = Postgres(Path(tempfile.mkdtemp(prefix=prefix)))
    server.init()
    server.start()
    server.create_role()
    return server


def discard(server: Postgres) -> None:
    server.stop("immediate")
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    server = started("dcr-pg-")
    yield server
    discard(server)


@pytest.fixture
def postgres_url(postgres_server: Postgres) -> str:
    """A fresh, empty database on the session's server, as a `postgresql://` URL."""
    return postgres_server.new_database()


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A server of the test's own, for tests that stop and start it."""
    server = started("dcr-pg-own-")
    yield server
    discard(server)
