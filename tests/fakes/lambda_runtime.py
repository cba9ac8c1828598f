"""A local stand-in for the AWS Lambda Runtime API (2018-06-01), for the real `awslambdaric`.

The runtime client long-polls `GET /runtime/invocation/next`, runs the handler and posts
the result to `/runtime/invocation/{id}/response` (or `/error`; `/init/error` when the
handler module fails to load). `invoke(event)` queues one event and waits for what the
handler answered. Standard library only (threads), so the cold-start benchmark can use
it without importing aiohttp into its own timings.

Pitfall (deps.md §6): `/next` must answer `Content-Type: application/json` exactly; with
`; charset=utf-8` appended the client hands the handler bytes instead of a dict.
"""

from __future__ import annotations

import itertools
import json
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:dns-challenge-receiver"


@dataclass
class Answer:
    kind: str  # "response" or "error"
    body: Any


@dataclass
class FakeLambdaRuntime:
    host: str = "127.0.0.1"
    deadline_seconds: float = 30.0
    polls: list[float] = field(default_factory=list)  # time.monotonic() of each /next
    init_errors: list[Any] = field(default_factory=list)
    _events: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    _answers: dict[str, queue.Queue[Answer]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        """The value for AWS_LAMBDA_RUNTIME_API."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> FakeLambdaRuntime:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, delayed ACKs add ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404, b'{"errorType":"NotFound"}')
                fake.polls.append(time.monotonic())
                request_id, event = fake._events.get()
                deadline_ms = int((time.time() + fake.deadline_seconds) * 1000)
                return self._reply(
                    200,
                    event,
                    {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                        "Lambda-Runtime-Trace-Id": "Root=1-00000000-000000000000000000000000",
                    },
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if parts == ["init", "error"]:
                    fake.init_errors.append(_json_or_text(body))
                    return self._reply(202, b'{"status":"OK"}')
                if len(parts) == 3 and parts[0] == "invocation" and parts[1] in fake._answers:
                    answers = fake._answers[parts[1]]
                    if parts[2] in ("response", "error"):
                        answers.put(Answer(parts[2], _json_or_text(body)))
                        return self._reply(202, b'{"status":"OK"}')
                return self._reply(404, b'{"errorType":"NotFound"}')

            def _reply(
                self, status: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")  # exactly this
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        server = _Server((self.host, 0), Handler)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def invoke(self, event: Any, *, timeout: float = 30.0) -> Answer:
        """Queue one invocation and wait for the handler's answer."""
        request_id = f"00000000-0000-4000-8000-{next(self._ids):012d}"
        answers: queue.Queue[Answer] = queue.Queue()
        self._answers[request_id] = answers
        self._events.put((request_id, json.dumps(event).encode()))
        try:
            return answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer to invocation {request_id} in {timeout}s") from None

    def wait_for_poll(self, count: int = 1, *, timeout: float = 30.0) -> float:
        """Block until the client has polled `/next` `count` times; the time of that poll."""
        deadline = time.monotonic() + timeout
        while len(self.polls) < count:
            if self.init_errors:
                raise RuntimeError(f"handler failed to initialise: {self.init_errors}")
            if time.monotonic() > deadline:
                raise TimeoutError("the runtime client never polled /next")
            time.sleep(0.002)
        return self.polls[count - 1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client is killed mid-poll at the end of every test: not worth a traceback


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
