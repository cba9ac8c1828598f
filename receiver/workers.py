"""`serve --workers N`: N server processes on the same ports, and the supervisor that
keeps them running.

Python answers one request at a time per process: past one core, throughput comes from
more processes. Each worker is the single-process `serve` (its own event loop, Runtime,
connection pool and DNS responder) with its sockets bound with SO_REUSEPORT, so the
kernel spreads new connections and datagrams over the workers, with no process in
between to copy bytes. The supervisor only supervises: it opens no Runtime, database or
responder, and runs no event loop. It

* binds the ports first (`reserve`), so that port 0 gives every worker the same port, and
  keeps the TCP ports bound (never listening: it gets no connections), so that they stay
  ours while a worker restarts;
* forks the workers, with the settings already loaded and the modules already imported,
  and restarts one that dies, after a delay that doubles with each quick death;
* passes SIGTERM or SIGINT on to every worker as SIGTERM, waits for each to finish its
  in-flight requests, and exits.

Workers die with the supervisor: PR_SET_PDEATHSIG sends them SIGTERM, so even an
orphaned worker stops gracefully. Linux only (SO_REUSEPORT spreads load only there).
What stays per worker is listed in the README ("Workers").
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Literal, NoReturn

import structlog

from receiver import __version__
from receiver.config import (
    MAX_WORKERS,
    Settings,
    join_host_port,
    split_host_port,
    with_dns_listen,
    with_listen,
)
from receiver.errors import ConfigError

log = structlog.get_logger("receiver.workers")

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
RESTART_INITIAL_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0
STABLE_SECONDS = 30.0  # a worker that ran this long starts over at the initial delay
# Beyond shutdown_timeout_seconds: a worker also closes its Runtime and responder.
STOP_MARGIN_SECONDS = 10.0
PORT_ATTEMPTS = 10


@dataclass(frozen=True)
class Slot:
    """Where a server process stands: alone (`ALONE`, the plain `serve`), or worker
    `index` of `count`, sharing its ports with the others. A restarted worker takes the
    slot of the one it replaces."""

    index: int = 0
    count: int = 1

    @property
    def alone(self) -> bool:
        return self.count == 1

    @property
    def sweeps(self) -> bool:
        """This process runs the periodic sweep and purge. The workers share one store,
        so one of them does it for all: the others' runs would only repeat its work."""
        return self.index == 0


ALONE = Slot()


def cpu_count(cpu_max: Path = CPU_MAX) -> int:
    """The CPUs this process may use: its affinity mask, lowered to a cgroup v2 CPU quota
    rounded up (a container limited to 1.5 CPUs gets 2, one limited to 0.5 gets 1)."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return count
    if quota == "max":
        return count
    return max(1, min(count, math.ceil(int(quota) / int(period))))


def worker_count(text: str) -> int:
    """`--workers`: `auto` (`cpu_count()`) or a whole number from 1 to MAX_WORKERS;
    ValueError saying which, for anything else."""
    if text.strip().lower() == "auto":
        return cpu_count()
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of workers or 'auto'") from None
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"{count} workers: must be between 1 and {MAX_WORKERS}, or 'auto'")
    return count


def resolve(configured: int | Literal["auto"]) -> int:
    """`server.workers` as a count."""
    return cpu_count() if configured == "auto" else configured


@dataclass
class Reservation:
    """A port bound on every address of a host with SO_REUSEPORT, never listening: the
    workers bind beside these sockets, and nobody else can take the port meanwhile.

    A bound TCP socket that does not listen receives no connections. A bound UDP socket
    does receive datagrams, so it is `release_datagrams()`-d as soon as the workers have
    bound theirs."""

    host: str  # as configured; the workers resolve it as the supervisor did
    port: int
    streams: list[socket.socket]
    datagrams: socket.socket | None = None

    @property
    def listen(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def address(self) -> tuple[str, int]:
        """The first address bound, as a listening socket there would report it."""
        host, port = self.streams[0].getsockname()[:2]
        return str(host), int(port)

    def release_datagrams(self) -> None:
        if self.datagrams is not None:
            self.datagrams.close()
            self.datagrams = None

    def close(self) -> None:
        self.release_datagrams()
        for sock in self.streams:
            sock.close()


def reserve(host: str, port: int, *, datagrams: bool = False) -> Reservation:
    """Bind `port` on every address of `host` (TCP, and UDP too with `datagrams`), as
    the workers will. Port 0: one port that is free on all of them, tried a few times."""
    for _ in range(PORT_ATTEMPTS):
        streams: list[socket.socket] = []
        udp: socket.socket | None = None
        try:
            chosen = port
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                streams.append(sock)
                _share(sock)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], chosen, *address[2:]))
                chosen = int(sock.getsockname()[1])
            if datagrams:  # as the responder binds it (receiver.dnsserver._udp_socket)
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                udp = socket.socket(family, socket.SOCK_DGRAM)
                _share(udp)
                udp.bind((host, chosen))
            return Reservation(host, chosen, streams, udp)
        except OSError:
            for sock in streams:
                sock.close()
            if udp is not None:
                udp.close()
            if port:
                raise
    raise OSError(f"no port free for all addresses of {host}")


def _share(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


Work = Callable[[Settings, Slot, Callable[[], None]], int]
"""Runs one worker to its end and returns its exit status. It gets the settings (with
the reserved ports), its slot, and what to call once it listens."""


class CannotListen(Exception):
    """A configured port cannot be bound (taken by a process that does not share it)."""


def supervise(settings: Settings, count: int, work: Work) -> int:
    """Run `count` workers on shared ports until SIGTERM/SIGINT; the exit status.

    CannotListen when a port cannot be bound; ConfigError off Linux."""
    if not sys.platform.startswith("linux"):
        raise ConfigError(["server.workers: more than one worker needs Linux (SO_REUSEPORT)"])
    reservations: list[Reservation] = []
    try:
        http = _reserve(reservations, "server.listen", settings.server.listen)
        shared = with_listen(settings, http.listen)
        local = [zone for zone in settings.zones if zone.capabilities.serves_dns]
        dns = None
        if local:
            dns_listen = local[0].options.dns_listen
            dns = _reserve(reservations, "local.dns_listen", dns_listen, datagrams=True)
            if dns.listen != dns_listen:  # port 0 became one (a fixed port is unchanged)
                shared = with_dns_listen(shared, dns.listen)
        door = settings.rfc2136_door  # the RFC 2136 door on a port of its own, if it has one
        door_dns = None
        if (
            door is not None
            and door.enabled
            and door.listen is not None
            and not (local and door.listen == local[0].options.dns_listen)
        ):
            door_dns = _reserve(reservations, "rfc2136_door.listen", door.listen, datagrams=True)
            moved = dataclasses.replace(door, listen=door_dns.listen)
            shared = dataclasses.replace(shared, rfc2136_door=moved)
        return Supervisor(
            shared, count, work, reservations, http=http, dns=dns, door_dns=door_dns
        ).run()
    finally:
        for reservation in reservations:
            reservation.close()


def _reserve(
    into: list[Reservation], key: str, listen: str, *, datagrams: bool = False
) -> Reservation:
    try:
        reservation = reserve(*split_host_port(listen), datagrams=datagrams)
    except OSError as exc:
        raise CannotListen(f"{listen} ({key}): {exc.strerror or exc}") from None
    into.append(reservation)
    return reservation


@dataclass
class _Worker:
    slot: Slot
    pid: int | None = None
    started: float = 0.0
    ready: bool = False
    restart_at: float | None = None
    quick_deaths: int = 0  # deaths in a row, each within STABLE_SECONDS of its start

    def restart_delay(self, lived: float) -> float:
        """0.5 s, doubling with each death in a row up to 30 s; a worker that lived
        STABLE_SECONDS starts over. Never a tight loop, whatever the cause."""
        if lived >= STABLE_SECONDS:
            self.quick_deaths = 0
        delay = min(RESTART_MAX_SECONDS, RESTART_INITIAL_SECONDS * 2.0**self.quick_deaths)
        self.quick_deaths = min(self.quick_deaths + 1, 32)  # 2.0 ** n stays finite
        return delay


@dataclass
class _Pipes:
    """The supervisor's descriptors: the signal wake-up pipe, and the pipe on which each
    worker reports `<index> <pid>` once it listens."""

    wake_r: int
    wake_w: int
    ready_r: int
    ready_w: int

    @classmethod
    def open(cls) -> _Pipes:
        wake_r, wake_w = os.pipe()
        ready_r, ready_w = os.pipe()
        for fd in (wake_r, wake_w, ready_r):
            os.set_blocking(fd, False)
        return cls(wake_r, wake_w, ready_r, ready_w)

    def close(self, *, keep: int | None = None) -> None:
        for fd in (self.wake_r, self.wake_w, self.ready_r, self.ready_w):
            if fd != keep:
                os.close(fd)


@dataclass
class Supervisor:
    """Starts the workers, restarts those that die, stops them all on SIGTERM/SIGINT.

    Synchronous: one `select()` on the signal wake-up pipe and the ready pipe, with a
    timeout to the next restart or stop deadline. Signals only write their number to
    the wake-up pipe (`signal.set_wakeup_fd`); everything happens in `run`'s loop.
    """

    settings: Settings
    count: int
    work: Work
    reservations: Sequence[Reservation]
    http: Reservation
    dns: Reservation | None = None
    door_dns: Reservation | None = None  # the RFC 2136 door's own port
    clock: Callable[[], float] = time.monotonic
    _workers: list[_Worker] = field(init=False)
    _listening: bool = field(init=False, default=False)
    _stop_deadline: float | None = field(init=False, default=None)
    _killed: bool = field(init=False, default=False)
    _status: int = field(init=False, default=0)
    _ready_bytes: bytes = field(init=False, default=b"")
    _pid: int = field(init=False, default_factory=os.getpid)

    def __post_init__(self) -> None:
        self._workers = [_Worker(Slot(index, self.count)) for index in range(self.count)]

    def run(self) -> int:
        pipes = _Pipes.open()
        with _signals_to(pipes.wake_w):
            try:
                for worker in self._workers:
                    self._start(worker, pipes)
                while self._stop_deadline is None or self._alive():
                    self._step(pipes)
            finally:
                pipes.close()
        log.info("stopped", exit_code=self._status)
        return self._status

    def _step(self, pipes: _Pipes) -> None:
        readable, _, _ = select.select([pipes.wake_r, pipes.ready_r], [], [], self._timeout())
        if pipes.wake_r in readable:
            for number in _drain(pipes.wake_r):
                if number in (signal.SIGTERM, signal.SIGINT):
                    self._stop(signal=signal.Signals(number).name)
        self._reap()
        if pipes.ready_r in readable:
            self._read_ready(pipes.ready_r)
        now = self.clock()
        if self._stop_deadline is not None:
            if now >= self._stop_deadline and not self._killed:
                self._kill_the_rest()
            return
        for worker in self._workers:
            if worker.pid is None and worker.restart_at is not None and worker.restart_at <= now:
                self._start(worker, pipes)
        if not self._listening and all(worker.ready for worker in self._workers):
            self._announce()

    def _timeout(self) -> float | None:
        moments = [w.restart_at for w in self._workers if w.restart_at is not None]
        if self._stop_deadline is not None and not self._killed:
            moments.append(self._stop_deadline)
        if not moments:
            return None
        return max(0.0, min(moments) - self.clock())

    def _alive(self) -> bool:
        return any(worker.pid is not None for worker in self._workers)

    def _start(self, worker: _Worker, pipes: _Pipes) -> None:
        sys.stdout.flush()  # or the child would write the supervisor's buffered lines again
        sys.stderr.flush()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # until the child resets
        pid = os.fork()
        if pid == 0:
            self._child(worker.slot, pipes, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker.pid, worker.started, worker.ready, worker.restart_at = pid, self.clock(), False, None
        log.info("worker_started", worker=worker.slot.index, pid=pid)

    def _child(self, slot: Slot, pipes: _Pipes, mask: set[int | signal.Signals]) -> NoReturn:
        """The worker process: undo what is the supervisor's, then `work`. Never returns."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for number in SIGNALS:
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            pipes.close(keep=pipes.ready_w)
            for reservation in self.reservations:
                reservation.close()
            if _die_with(self._pid):
                status = self.work(self.settings, slot, _reporter(pipes.ready_w, slot.index))
            else:
                status = 0  # the supervisor is already gone
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for worker in self._workers:
                if worker.pid == pid:
                    self._exited(worker, os.waitstatus_to_exitcode(status))

    def _exited(self, worker: _Worker, code: int) -> None:
        pid, worker.pid, worker.ready = worker.pid, None, False
        how = _how(code)
        if self._stop_deadline is not None:
            log.info("worker_stopped", worker=worker.slot.index, pid=pid, **how)
            if code not in (0, -signal.SIGTERM):
                self._status = 1
            return
        if not self._listening:  # it never came up: a start-up failure, not a crash
            log.error("worker_failed_to_start", worker=worker.slot.index, pid=pid, **how)
            self._status = code if code > 0 else 1
            self._stop(reason="a worker failed to start")
            return
        delay = worker.restart_delay(self.clock() - worker.started)
        worker.restart_at = self.clock() + delay
        log.warning(
            "worker_exited", worker=worker.slot.index, pid=pid, restart_in_seconds=delay, **how
        )

    def _read_ready(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._ready_bytes += os.read(fd, 4096)
        *lines, self._ready_bytes = self._ready_bytes.split(b"\n")
        for line in lines:
            index, pid = (int(part) for part in line.split())
            worker = self._workers[index]
            if worker.pid == pid:
                worker.ready = True

    def _announce(self) -> None:
        """Every worker listens: the datagram port is theirs now, and the service is up."""
        self._listening = True
        fields = {}
        if self.dns is not None:
            self.dns.release_datagrams()
            fields["dns"] = join_host_port(*self.dns.address)
        if self.door_dns is not None:
            self.door_dns.release_datagrams()
            fields["rfc2136"] = join_host_port(*self.door_dns.address)
        host, port = self.http.address
        log.info(
            "listening",
            url=f"http://{host}:{port}{self.settings.server.callback_path}",
            version=__version__,
            zones=[z.name for z in self.settings.zones],
            workers=self.count,
            pids=[worker.pid for worker in self._workers],
            **fields,
        )

    def _stop(self, **why: str) -> None:
        if self._stop_deadline is not None:
            return
        grace = self.settings.server.shutdown_timeout_seconds
        self._stop_deadline = self.clock() + grace + STOP_MARGIN_SECONDS
        log.info("shutting_down", grace_seconds=grace, **why)
        for worker in self._workers:
            worker.restart_at = None
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    def _kill_the_rest(self) -> None:
        self._killed = True
        self._status = 1
        for worker in self._workers:
            if worker.pid is not None:
                log.warning("worker_killed", worker=worker.slot.index, pid=worker.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)


def _how(code: int) -> dict[str, int | str]:
    """`os.waitstatus_to_exitcode`'s code as a log field: an exit status or a signal."""
    if code < 0:
        return {"signal": signal.Signals(-code).name}
    return {"exit_code": code}


def _drain(fd: int) -> bytes:
    found = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 512):
            found += chunk
    return found


def _ignore(number: int, frame: FrameType | None) -> None:
    """Python-level handler: the number is on the wake-up pipe already."""


@contextlib.contextmanager
def _signals_to(wake_w: int) -> Iterator[None]:
    previous = {number: signal.signal(number, _ignore) for number in SIGNALS}
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for number, handler in previous.items():
            signal.signal(number, handler)


def _reporter(fd: int, index: int) -> Callable[[], None]:
    """What a worker calls once it listens: one line on the ready pipe (atomic: it is
    far below PIPE_BUF), then the pipe is closed."""

    def report() -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone: SIGTERM is on its way
            os.write(fd, f"{index} {os.getpid()}\n".encode())
        os.close(fd)

    return report


def _die_with(parent: int) -> bool:
    """Have the kernel send this process SIGTERM when the supervisor dies; False if it
    already has (then the worker must not start)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    return os.getppid() == parent
