"""The long-running server's listening sockets, and how long a connection may wait.

aiohttp closes a connection that waits too long for its next request
(`keepalive_timeout`), but nothing bounds the time a request head may take once its
bytes trickle in, nor the number of open connections. And asyncio's own accept loop
(Python 3.11), once the process is out of descriptors, logs every failed `accept()` with
a traceback and keeps retrying: in the review, 300 half-sent requests against a limit of
256 descriptors made ~18,000 such lines while `/healthz` went unanswered. So `serve`
accepts connections itself (`GuardedSite`):

* At most `max_connections` are open. A connection beyond that is closed as soon as it
  is accepted, before aiohttp sees it: one `accept()` and one `close()`.
* A failed `accept()` (EMFILE, ENFILE, ENOBUFS, ENOMEM: out of descriptors or memory)
  is retried after ACCEPT_RETRY_SECONDS. Failures, refusals and timeouts are counted and
  logged once per LOG_INTERVAL_SECONDS each (`Tally`), never once per attempt.
* A request head must be complete within `header_timeout_seconds` of its first byte, or
  of the connection's opening (`Connection`).

Parsing, keep-alive, handlers and the graceful shutdown stay aiohttp's.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import socket
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("receiver.listener")

LOG_INTERVAL_SECONDS = 10.0
ACCEPT_RETRY_SECONDS = 0.5  # out of descriptors: they come back as connections close
# Descriptors kept for everything but inbound connections: the journal's SQLite files,
# provider and key-endpoint connections (aiohttp pools up to 100), the DNS responder,
# propagation queries, stdio and the event loop itself.
RESERVED_DESCRIPTORS = 128
BACKLOG = 128
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ASYNCIO_ACCEPT_FAILED = "socket.accept() out of system resource"

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]


class Tally:
    """Counts a recurring event and logs it at most once per interval, with how many
    happened since the last line: a flood makes one line per interval, not one per event.

    The first occurrence is logged at once, so the first sign of trouble is not delayed.
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = LOG_INTERVAL_SECONDS if interval is None else interval
        self._counts: dict[str, int] = {}
        self._fields: dict[str, dict[str, Any]] = {}
        self._windows: dict[str, asyncio.TimerHandle] = {}

    def note(self, event: str, **fields: Any) -> None:
        if event in self._windows:
            self._counts[event] = self._counts.get(event, 0) + 1
            self._fields[event] = fields  # the latest details stand for all of them
            return
        self._log(event, 1, fields)
        self._open(event)

    def close(self) -> None:
        """Log what is still counted, and stop."""
        for event, window in list(self._windows.items()):
            window.cancel()
            del self._windows[event]
            self._flush(event)

    def _open(self, event: str) -> None:
        loop = asyncio.get_running_loop()
        self._windows[event] = loop.call_later(self.interval, self._window_ended, event)

    def _window_ended(self, event: str) -> None:
        del self._windows[event]
        if self._flush(event):
            self._open(event)

    def _flush(self, event: str) -> bool:
        count = self._counts.pop(event, 0)
        if count:
            self._log(event, count, self._fields.pop(event, {}))
        return bool(count)

    def _log(self, event: str, count: int, fields: dict[str, Any]) -> None:
        log.warning(event, count=count, interval_seconds=self.interval, **fields)


class Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, wrapped to count the connection and to
    close it when a request head takes longer than `header_timeout` seconds.

    The head's clock starts when the connection opens, and again at the first byte after
    an answer; the `head_received` middleware (receiver/hosts/http.py) stops it. Bytes that
    arrive while a request is being handled (its body, a pipelined request) never start
    it: pipelined heads are bounded by aiohttp's keep-alive timeout instead.
    """

    def __init__(self, inner: asyncio.Protocol, site: GuardedSite) -> None:
        self._inner = inner
        self._site = site
        self._transport: asyncio.BaseTransport | None = None
        self._head_deadline: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._site.opened(self)
        self._await_head()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._head_deadline is None:
            self._await_head()  # the first byte of the next request
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        self._site.closed(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        """The head is complete and a handler runs: the clock stops."""
        self._in_request = True
        self._stop_clock()

    def request_finished(self) -> None:
        self._in_request = False

    def _await_head(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_deadline = loop.call_later(self._site.header_timeout, self._head_timed_out)

    def _stop_clock(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._transport is not None and not self._transport.is_closing():
            self._site.tally.note("header_timeout", seconds=self._site.header_timeout)
            self._transport.close()


def connection_of(request: web.BaseRequest) -> Connection | None:
    """The `Connection` a request came on; None outside `serve` (test servers)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, Connection) else None


class GuardedSite(web.BaseSite):
    """Like aiohttp's TCPSite, with its own accept loop: at most `max_connections` open,
    no burst of retries or tracebacks when `accept()` fails, a header timeout."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        header_timeout: float,
        tally: Tally,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self.host, self.port = host, port
        self.reuse_port = reuse_port
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.tally = tally
        self._open: set[Connection] = set()
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []

    @property
    def name(self) -> str:
        host, port = self.addresses[0] if self._sockets else (self.host, self.port)
        return f"http://{host}:{port}"

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self._sockets]

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def start(self) -> None:
        await super().start()
        self._sockets = await _listening_sockets(
            self.host, self.port, BACKLOG, reuse_port=self.reuse_port
        )
        self._accepting = [asyncio.create_task(self._accept(s)) for s in self._sockets]

    async def stop(self) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        for sock in self._sockets:
            sock.close()
        await super().stop()

    def opened(self, connection: Connection) -> None:
        self._open.add(connection)

    def closed(self, connection: Connection) -> None:
        self._open.discard(connection)

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listening)
            except OSError as exc:
                await self._accept_failed(exc)
                continue
            if len(self._open) >= self.max_connections:
                sock.close()
                self.tally.note("connections_refused", max_connections=self.max_connections)
                await asyncio.sleep(0)  # a flood of refusals must not starve the others
                continue
            try:
                await loop.connect_accepted_socket(self._protocol, sock)
            except OSError:  # reset before it could be set up: nothing to serve
                sock.close()

    async def _accept_failed(self, exc: OSError) -> None:
        if exc.errno == errno.ECONNABORTED:
            return  # the client gave up while queued
        code = errno.errorcode.get(exc.errno or 0, "unknown")
        self.tally.note("accept_failed", error=code, open_connections=len(self._open))
        await asyncio.sleep(ACCEPT_RETRY_SECONDS if exc.errno in _OUT_OF_RESOURCES else 0)

    def _protocol(self) -> Connection:
        server = self._runner.server
        assert server is not None  # set up before any site starts
        return Connection(server(), self)


async def _listening_sockets(
    host: str, port: int, backlog: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """One non-blocking listening socket per address of `host`, as asyncio binds them.

    `reuse_port`: SO_REUSEPORT, for workers that share the port (`receiver.workers`);
    the kernel then spreads new connections over their sockets."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def connection_budget(wanted: int) -> int:
    """`wanted`, or as many as the descriptor limit (RLIMIT_NOFILE) leaves beside
    RESERVED_DESCRIPTORS: past it, every `accept()` fails and nothing else can open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_DESCRIPTORS))


def quiet_accept_errors(tally: Tally) -> ExceptionHandler:
    """An event-loop exception handler that counts asyncio's own `accept()` failures
    (the DNS responder's TCP listener uses asyncio's accept loop) instead of logging
    each with a traceback; anything else goes to the default handler."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ASYNCIO_ACCEPT_FAILED:
            loop.default_exception_handler(context)
            return
        exc = context.get("exception")
        number = exc.errno if isinstance(exc, OSError) and exc.errno else 0
        tally.note("accept_failed", error=errno.errorcode.get(number, "unknown"))

    return handle
