"""`serve --demo` as a user starts it, on free loopback ports, for the docs' snippets and
the observability checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK_PORTS = ("--listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0")


@dataclass
class Demo:
    directory: Path  # the working directory: `.demo/` is in it
    http: str  # host:port
    dns: str  # host:port
    lines: list[str] = field(default_factory=list)


@contextmanager
def demo_server(directory: Path, timeout: float = 30) -> Iterator[Demo]:
    """The demo in `directory`, until the block ends; then SIGTERM, and it must stop."""
    process = subprocess.Popen(
        [*(sys.executable, "-m", "receiver", "serve", "--demo"), *LOOPBACK_PORTS],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        events = _wait_for(lines, process, {"listening", "dns_listening"}, timeout)
        http = events["listening"]["url"].removeprefix("http://").split("/", 1)[0]
        yield Demo(directory, http, events["dns_listening"]["address"], lines)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
            reader.join(timeout=5)
            if process.stdout is not None:
                process.stdout.close()


def _wait_for(
    lines: list[str], process: subprocess.Popen[str], wanted: set[str], timeout: float
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") in wanted:
                found[event["event"]] = event
        if set(found) == wanted:
            return found
        if process.poll() is not None:
            raise AssertionError("the demo exited:\n" + "".join(lines))
        time.sleep(0.05)
    raise AssertionError(f"the demo did not log {wanted - set(found)}:\n" + "".join(lines))
