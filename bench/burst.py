"""Burst: many distinct notifications at once, and what their propagation checks cost after.

Each notification adds its own value for its own name (required only, nothing removed,
as in a burst of orders), sent over `--connections` concurrent connections with full
verification (ES256 envelopes, user tokens) and propagation checks on, journal off. Two
cases, each its own receiver process:

  (a) a `local` zone: the built-in responder serves what the store committed;
  (b) a `memory` zone whose `nameservers` table names one loopback UDP port that never
      answers (a socket bound here and never read: no reply, no ICMP).

Measured per case, from /proc/<pid>/stat (utime + stime) and /proc/<pid>/status: the
burst's notifications/s, the CPU the process used over the `--after` seconds after the
last answer (as % of one core), how long until it stayed under 5 % of a core (every
one-second window from then on), RSS before the burst and `--settle` seconds after it,
and the most pending checks seen in /metrics (`dcr_propagation_checks_pending`, sampled
every 0.25 s).

    python bench/burst.py [--notifications 10000] [--connections 32] [--source DIR]

`--source DIR` runs the receiver from another checkout (e.g. `git archive` of the code
before this benchmark existed; it has no pending gauge, so that figure reads n/a).
Prints each case's figures, then the goals' verdicts, the last line counting those met.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    Keys,
    free_port,
    jwks_server,
    process,
    receiver,
    rss_mib,
    send_pairs,
    signed_sender,
)

IDLE_SHARE = 0.05  # below 5 % of a core over a second counts as idle
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PENDING = re.compile(rb"^dcr_propagation_checks_pending (\S+)$", re.MULTILINE)


def config(
    folder: Path, keys: Keys, jwks_url: str, port: int, zone: str, *, check: bool = True
) -> Path:
    path = folder / f"receiver-{port}.toml"
    path.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[log]
format = "json"
{signed_sender(keys, jwks_url)}[journal]
enabled = false
database = "{folder}/journal-{port}.sqlite3"
[propagation]
check = {str(check).lower()}
{zone}""")
    return path


def local_zone(folder: Path) -> str:
    return f"""[local]
database = "{folder}/local-{free_port()}.sqlite3"
dns_listen = "127.0.0.1:{free_port()}"
value_lifetime_seconds = 3600
[[zones]]
name = "example.com"
provider = "local"
"""


def silent_zone(silent_port: int) -> str:
    return f"""[[zones]]
name = "example.com"
provider = "memory"
nameservers = {{ "ns1.example.com" = "127.0.0.1:{silent_port}" }}
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def pending_checks(base: str) -> float | None:
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=2) as resp:
            found = PENDING.search(resp.read())
    except OSError:
        return None
    return float(found.group(1)) if found else None


@dataclass
class Sampler:
    """CPU every 0.1 s and the pending gauge every 0.25 s, on a thread of its own."""

    pid: int
    base: str
    cpu: list[tuple[float, float]] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            self.cpu.append((time.monotonic(), cpu_seconds(self.pid)))
            self.rss.append(rss_mib(self.pid))
            if tick % 5 == 0 and (count := pending_checks(self.base)) is not None:
                self.pending.append(count)
            tick += 1
            self.stop.wait(0.05)

    def cpu_between(self, start: float, end: float) -> float:
        """Share of one core used from `start` to `end` (the nearest samples)."""
        first = min(self.cpu, key=lambda s: abs(s[0] - start))
        last = min(self.cpu, key=lambda s: abs(s[0] - end))
        return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)

    def idle_after(self, start: float, end: float) -> float | None:
        """Seconds from `start` until the process stayed idle: every one-second window
        from then to `end` under IDLE_SHARE of a core (None: busy in the last second)."""
        settled = None
        for moment, _ in reversed(self.cpu):
            if not start <= moment <= end - 1:
                continue
            if self.cpu_between(moment, moment + 1) >= IDLE_SHARE:
                break
            settled = moment
        return None if settled is None else settled - start


@dataclass(frozen=True)
class Figures:
    case: str
    sent: int
    errors: int
    seconds: float
    cpu_after: float  # share of one core over the `after` seconds after the last answer
    idle_after: float | None
    rss_before: float
    rss_settled: float
    max_pending: float | None

    @property
    def rate(self) -> float:
        return self.sent / self.seconds

    @property
    def rss_growth(self) -> float:
        return self.rss_settled / self.rss_before - 1


def run_case(
    case: str, path: Path, port: int, bodies: list[bytes], args: argparse.Namespace
) -> Figures:
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/callback"
    with process(receiver(path), url, cwd=args.source) as proc:
        warm, burst = bodies[: args.warm_up], bodies[args.warm_up :]
        send_pairs(url, warm, args.connections)  # imports, pools, first checks
        time.sleep(1)
        rss_before = rss_mib(proc.pid)
        sampler = Sampler(proc.pid, base)
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        started = time.monotonic()
        errors, _ = send_pairs(url, burst, args.connections)
        answered = time.monotonic()
        time.sleep(args.settle)
        rss_settled = rss_mib(proc.pid)
        sampler.stop.set()
        thread.join()
    return Figures(
        case=case,
        sent=len(burst),
        errors=errors,
        seconds=answered - started,
        cpu_after=sampler.cpu_between(answered, answered + args.after),
        idle_after=sampler.idle_after(answered, answered + args.settle),
        rss_before=rss_before,
        rss_settled=rss_settled,
        max_pending=max(sampler.pending) if sampler.pending else None,
    )


def report(figures: Figures, after: float, settle: float) -> None:
    idle = "never" if figures.idle_after is None else f"{figures.idle_after:.1f} s"
    pending = "n/a" if figures.max_pending is None else f"{figures.max_pending:.0f}"
    print(
        f"{figures.case}: {figures.sent} notifications in {figures.seconds:.1f} s "
        f"({figures.rate:.0f}/s), {figures.errors} errors; CPU over {after:g} s after: "
        f"{figures.cpu_after:.0%} of a core, idle after {idle}; RSS "
        f"{figures.rss_before:.1f} -> {figures.rss_settled:.1f} MiB "
        f"({figures.rss_growth:+.0%}) {settle:g} s after; max pending checks {pending}"
    )


def verdicts(local: Figures, silent: Figures, cap: int) -> list[tuple[str, bool]]:
    """The issue's goals, in its words, each met or not."""
    pending_ok = silent.max_pending is not None and silent.max_pending <= cap
    return [
        ("(a) local: burst within a minute", local.seconds <= 60),
        (
            "(a) local: CPU back to idle within 5 s",
            local.idle_after is not None and local.idle_after <= 5,
        ),
        ("(a) local: RSS within 10 %", abs(local.rss_growth) <= 0.10),
        ("(b) silent nameserver: burst within a minute", silent.seconds <= 60),
        (f"(b) silent nameserver: pending checks under the cap ({cap})", pending_ok),
        ("(b) silent nameserver: CPU over the 10 s after <= 25 %", silent.cpu_after <= 0.25),
        ("(b) silent nameserver: RSS within 10 %", abs(silent.rss_growth) <= 0.10),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notifications", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warm-up", type=int, default=100, help="notifications before")
    parser.add_argument("--after", type=float, default=10, help="CPU window, seconds")
    parser.add_argument("--settle", type=float, default=20, help="RSS read after, seconds")
    parser.add_argument("--cap", type=int, default=1000, help="[propagation] max_pending")
    parser.add_argument("--source", type=Path, help="run the receiver from this checkout")
    parser.add_argument(
        "--no-checks",
        action="store_true",
        help="propagation checks off: what the burst costs without them (a floor)",
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent,
    ):
        silent.bind(("127.0.0.1", 0))  # bound and never read: queries go unanswered
        folder = Path(tmp)
        keys = Keys(folder, "ES256")
        count = args.warm_up + args.notifications
        required = ("cert_domain_validation_required",)
        figures = []
        with jwks_server(keys.user_public) as jwks_url:
            for case, zone in [
                ("(a) local zone", local_zone(folder)),
                ("(b) memory zone, silent nameserver", silent_zone(silent.getsockname()[1])),
            ]:
                bodies = keys.bodies(count, events=required)
                port = free_port()
                path = config(folder, keys, jwks_url, port, zone, check=not args.no_checks)
                figures.append(run_case(case, path, port, bodies, args))
    print(
        f"{args.notifications} distinct notifications (ES256, user tokens), "
        f"{args.connections} connections, propagation checks "
        f"{'off' if args.no_checks else 'on'}, journal off"
        + (f", receiver from {args.source}" if args.source else "")
    )
    for found in figures:
        report(found, args.after, args.settle)
    results = verdicts(*figures, cap=args.cap)
    for goal, met in results:
        print(f"  {'met    ' if met else 'NOT met'}  {goal}")
    print(f"goals met: {sum(met for _, met in results)} of {len(results)}")


if __name__ == "__main__":
    main()
