"""`serve --workers N`: N processes behind one HTTP port and one DNS port (SO_REUSEPORT),
under a supervisor that restarts a dead worker and stops them all gracefully.

The process tests start the real command and drive it over real HTTP and DNS; the
supervisor's own rules (start-up failure, back-off, CPU count) are also checked in
process, with work functions that stand in for the server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.message
import pytest

from receiver import cli, config, signing, workers
from receiver.errors import ConfigError
from receiver.hosts.http import _sweep_context, create_app
from receiver.workers import Slot

from .conftest import INSTANCE, FakeIbmCloud, Sender, ServerProcess, shared_store_config
from .test_process import REQUIRED, post, write_config
from .test_shared_state import eventually

slow = pytest.mark.slow


def worker_of(server: ServerProcess, event: str) -> list[int]:
    """The worker index of each line of `event` that a worker (not the supervisor) logged."""
    return [e["worker"] for e in server.events() if e["event"] == event and "worker" in e]


def dns_address(listening: dict[str, Any]) -> tuple[str, int]:
    host, _, port = listening["dns"].rpartition(":")
    return host, int(port)


async def served(address: tuple[str, int], name: str, *, tcp: bool = False) -> set[str]:
    """The TXT values at `name`, asked from a socket of its own (a new source port, so
    the kernel may hand it to either worker)."""
    query = dns.message.make_query(name, "TXT")
    ask = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    answer = await ask(query, address[0], port=address[1], timeout=2)
    return {b"".join(r.strings).decode() for rrset in answer.answer for r in rrset}


async def publish(server: ServerProcess, sender: Sender, domain: str) -> str:
    value = signing.challenge_value()
    status, body = await post(server.url, sender.body(sender.claims(REQUIRED, domain, value)))
    assert (status, body.get("status")) == (200, "published"), body
    return value


async def stop(server: ServerProcess) -> int:
    server.proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(server.proc.wait(), 30)


@slow
async def test_two_workers_share_the_http_and_dns_ports_and_one_sqlite_store(
    tmp_path: Path, sender: Sender, public_key_file: Path, run_server: Callable[..., Any]
) -> None:
    server = await run_server(shared_store_config(tmp_path, public_key_file), "--workers", "2")
    listening = await server.wait_for("listening")
    assert listening["workers"] == 2 and len(set(listening["pids"])) == 2
    assert sorted(worker_of(server, "worker_listening")) == [0, 1]
    values = {}
    for index in range(20):  # a new connection each: the kernel picks a worker for each
        domain = f"h{index}.example.com"
        values[f"_acme-challenge.{domain}"] = await publish(server, sender, domain)
    assert set(worker_of(server, "notification")) == {0, 1}  # both served some
    address = dns_address(listening)
    for name, value in values.items():  # each from a new source port: both responders
        assert await served(address, name) == {value}
        assert await served(address, name, tcp=True) == {value}
    assert await stop(server) == 0


@slow
async def test_a_killed_worker_is_restarted_and_the_service_keeps_answering(
    tmp_path: Path, sender: Sender, public_key_file: Path, run_server: Callable[..., Any]
) -> None:
    server = await run_server(shared_store_config(tmp_path, public_key_file), "--workers", "2")
    listening = await server.wait_for("listening")
    victim = listening["pids"][1]
    os.kill(victim, signal.SIGKILL)  # what it had accepted or queued is lost, as in any crash
    exited = await server.wait_for("worker_exited")
    assert (exited["worker"], exited["pid"], exited["signal"]) == (1, victim, "SIGKILL")
    assert exited["restart_in_seconds"] == workers.RESTART_INITIAL_SECONDS
    address = dns_address(listening)
    for index in range(6):  # the service answers all along
        domain = f"during{index}.example.com"
        value = await publish(server, sender, domain)
        assert await served(address, f"_acme-challenge.{domain}") == {value}

    # The replacement listens on the same ports.
    await eventually(lambda: worker_of(server, "worker_listening").count(1) == 2, 15)
    started = [e for e in server.events() if e["event"] == "worker_started"]
    assert [e["worker"] for e in started] == [0, 1, 1]
    assert started[2]["pid"] not in listening["pids"]
    before = len(worker_of(server, "notification"))
    async with asyncio.timeout(15):  # and the replacement takes its share
        while 1 not in worker_of(server, "notification")[before:]:
            await publish(server, sender, "after.example.com")
    assert await stop(server) == 0


@slow
async def test_sigterm_stops_every_worker_after_its_notifications_in_flight(
    tmp_path: Path, ibm_cloud: FakeIbmCloud, sender: Sender, run_server: Callable[..., Any]
) -> None:
    config_file = write_config(tmp_path / "r.toml", ibm_cloud, latency_ms=1500)
    server = await run_server(config_file, "--workers", "2")
    # Eight names: the calls run at once (one name would queue them behind each other,
    # and SO_REUSEPORT may give seven of eight to one worker: 10.5 s, past the deadline).
    bodies = [sender.body(sender.claims(domain=f"inflight{i}.example.com")) for i in range(8)]
    in_flight = [asyncio.create_task(post(server.url, body)) for body in bodies]
    # Every request has reached its worker by now, even on a loaded machine (0.7 s was
    # once too little on CI), and none has finished its 1.5 s provider call.
    await asyncio.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    for status, body in await asyncio.gather(*in_flight):
        assert (status, body.get("status")) == (200, "published"), body
    assert await asyncio.wait_for(server.proc.wait(), 30) == 0
    events = server.events()
    assert len(worker_of(server, "notification")) == 8
    for index in (0, 1):  # each worker's own lines (the supervisor's name a pid)
        mine = [e["event"] for e in events if e.get("worker") == index and "pid" not in e]
        assert mine[-1] == "stopped"
        halted = mine.index("shutting_down")
        assert all(halted < at for at, name in enumerate(mine) if name == "notification")
    stopped = [e for e in events if e["event"] == "worker_stopped"]
    assert sorted((e["worker"], e["exit_code"]) for e in stopped) == [(0, 0), (1, 0)]
    assert events[-1]["event"] == "stopped" and "worker" not in events[-1]


@slow
async def test_workers_stop_when_the_supervisor_is_killed(
    tmp_path: Path, ibm_cloud: FakeIbmCloud, run_server: Callable[..., Any]
) -> None:
    server = await run_server(write_config(tmp_path / "r.toml", ibm_cloud), "--workers", "2")
    pids = (await server.wait_for("listening"))["pids"]
    server.proc.kill()  # (its wait() would also wait for the workers: they share its stdout)
    try:
        await eventually(lambda: not any(_running(pid) for pid in pids), 15)
    finally:  # orphans would hold the log pipe open and hang the fixture's teardown
        for pid in filter(_running, pids):
            os.kill(pid, signal.SIGKILL)
    # Each stopped gracefully, on the SIGTERM that the supervisor's death sent it.
    await eventually(lambda: sorted(worker_of(server, "stopped")) == [0, 1], 5)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has finished; only its parent's wait is missing


@slow
async def test_workers_auto_starts_one_per_cpu(
    tmp_path: Path, ibm_cloud: FakeIbmCloud, run_server: Callable[..., Any]
) -> None:
    server = await run_server(write_config(tmp_path / "r.toml", ibm_cloud), "--workers", "auto")
    listening = await server.wait_for("listening")
    assert listening.get("workers", 1) == workers.cpu_count()
    assert await stop(server) == 0


@slow
async def test_the_cli_flag_wins_over_the_setting(
    tmp_path: Path, ibm_cloud: FakeIbmCloud, run_server: Callable[..., Any]
) -> None:
    config_file = write_config(tmp_path / "r.toml", ibm_cloud)
    text = config_file.read_text().replace("[server]\n", "[server]\nworkers = 3\n")
    config_file.write_text(text)
    from_file = await run_server(config_file)
    assert (await from_file.wait_for("listening"))["workers"] == 3
    from_flag = await run_server(config_file, "--workers", "1")
    assert "workers" not in await from_flag.wait_for("listening")  # the plain single process
    assert await stop(from_file) == 0
    assert await stop(from_flag) == 0


@slow
async def test_two_workers_on_postgresql_serve_every_value(
    tmp_path: Path,
    sender: Sender,
    public_key_file: Path,
    run_server: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    postgres_url: str,
) -> None:
    from .test_shared_processes import write_config as shared_state_config

    monkeypatch.setenv("DCR_DATABASE_URL", postgres_url)
    server = await run_server(shared_state_config(tmp_path, public_key_file), "--workers", "2")
    address = dns_address(await server.wait_for("listening"))
    values = {}
    for index in range(16):
        domain = f"pg{index}.example.com"
        values[f"_acme-challenge.{domain}"] = await publish(server, sender, domain)
    assert set(worker_of(server, "notification")) == {0, 1}
    for name, value in values.items():  # a mirror per worker, kept current by NOTIFY
        async with asyncio.timeout(5):
            while await served(address, name) != {value}:  # noqa: ASYNC110 - it polls DNS
                await asyncio.sleep(0.02)
    assert await stop(server) == 0


@slow
async def test_a_taken_port_stops_start_up_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody may join it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "receiver", "serve", "--demo", "--demo-dir", str(tmp_path)),
            *("--listen", f"127.0.0.1:{port}", "--dns-listen", "127.0.0.1:0"),
            *("--workers", "2"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert (
        err.decode()
        == f"serve: cannot listen on 127.0.0.1:{port} (server.listen): Address already in use\n"
    )


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", str(config.MAX_WORKERS + 1)])
def test_bad_worker_counts_are_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["serve", "--workers", value])
    assert stopped.value.code == 2
    assert "argument --workers: " in capsys.readouterr().err


def settings_with(**server: Any) -> config.Settings:
    return config.from_mapping(
        {
            "server": {"listen": "127.0.0.1:0", **server},
            "certificate_manager": {"allowed_instances": [INSTANCE]},
            "user_token": {"verify": False},
            "zones": [{"name": "example.com", "provider": "memory"}],
        }
    )


def test_the_workers_setting_takes_a_count_or_auto() -> None:
    for value in (1, 4, "auto"):
        assert settings_with(workers=value).server.workers == value
    for value, message in (
        (0, 'server.workers: must be between 1 and 256, or "auto"'),
        ("x", "server.workers: must be an integer or one of 'auto', not 'x'"),
        (True, "server.workers: must be an integer or one of 'auto', not True"),
    ):
        with pytest.raises(ConfigError) as raised:
            settings_with(workers=value)
        assert message in str(raised.value)


def test_auto_is_the_cpu_quota_rounded_up_within_the_affinity(tmp_path: Path) -> None:
    usable = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert workers.cpu_count(cpu_max) == usable  # no cgroup file
    for text, expected in (
        ("max 100000\n", usable),
        ("50000 100000\n", 1),
        ("150000 100000\n", min(usable, 2)),
        ("6400000 100000\n", usable),
    ):
        cpu_max.write_text(text)
        assert workers.cpu_count(cpu_max) == expected, text


def test_restarts_back_off_and_start_over_after_a_stable_run() -> None:
    worker = workers._Worker(Slot(0, 2))
    delays = [worker.restart_delay(lived=1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert worker.restart_delay(lived=workers.STABLE_SECONDS) == 0.5


def test_only_the_first_worker_sweeps() -> None:
    settings = settings_with()
    assert _sweep_context in create_app(settings).cleanup_ctx
    assert _sweep_context in create_app(settings, Slot(0, 2)).cleanup_ctx
    assert _sweep_context not in create_app(settings, Slot(1, 2)).cleanup_ctx


def test_a_worker_that_fails_to_start_stops_the_others_with_its_status() -> None:
    """In process: the supervisor forks this test's process; the stand-in workers never
    return into pytest (the supervisor ends each child with os._exit)."""

    def work(settings: config.Settings, slot: Slot, listening: Callable[[], None]) -> int:
        if slot.index == 1:
            return 3  # as a worker that cannot open its database would
        listening()
        time.sleep(60)  # until the supervisor's SIGTERM ends it
        return 0

    settings = settings_with()
    began = time.monotonic()
    # Were it restarted instead, this alarm would stop it (and the status would be 0).
    # A timer rather than a thread: forking a threaded process may deadlock.
    previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    signal.setitimer(signal.ITIMER_REAL, 15)
    try:
        status = workers.supervise(settings, 2, work)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert status == 3
    assert time.monotonic() - began < 10  # neither restarted nor waited out


@slow
async def test_two_workers_share_the_rfc2136_doors_own_port(
    tmp_path: Path, public_key_file: Path, run_server: Callable[..., Any]
) -> None:
    """The door on a port of its own, reserved once and shared like the others: every
    nsupdate (a new source port each) lands on one worker or the other, and each value
    is served from the one `local` store."""
    from .backends.bind import free_port
    from .rfc2136_clients import KEY, digest, new_secret, nsupdate

    secret = new_secret()
    (tmp_path / "tsig.secret").write_text(secret)
    config_file = shared_store_config(tmp_path, public_key_file)
    # Port 0 for the door, which then cannot share the local responder's (fixed) port:
    # the supervisor must pick one port for both workers.
    local = config_file.read_text().replace(
        'dns_listen = "127.0.0.1:0"', f'dns_listen = "127.0.0.1:{free_port()}"'
    )
    config_file.write_text(
        local
        + f"""
[rfc2136_door]
enabled = true
listen = "127.0.0.1:0"
[[rfc2136_door.keys]]
name = "{KEY}"
secret_file = "tsig.secret"
zones = ["example.com"]
"""
    )
    server = await run_server(config_file, "--workers", "2")
    listening = await server.wait_for("listening")
    host, _, port = listening["rfc2136"].rpartition(":")
    door = (host, int(port))
    assert door != dns_address(listening)
    values = {}
    for index in range(12):
        name = f"_acme-challenge.h{index}.example.com"
        values[name] = digest()
        command = f'update add {name}. 60 TXT "{values[name]}"'
        run = await nsupdate(door, [command], key=("hmac-sha256", KEY, secret))
        assert run.returncode == 0, run.output
    assert set(worker_of(server, "rfc2136")) == {0, 1}  # both answered some
    for name, value in values.items():
        assert await served(dns_address(listening), name) == {value}
    assert await stop(server) == 0
