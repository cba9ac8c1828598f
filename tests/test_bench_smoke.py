"""The benchmarks still run (their figures are read by people, not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: float = 120) -> list[str]:
    """Run `bench/<script>` with `args`; its output lines (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def last_ratio(lines: list[str], label: str) -> float:
    """The figure on the last line, which must start with `label`."""
    assert lines[-1].startswith(label), lines[-1]
    return float(lines[-1].rsplit(" ", 1)[1])


def test_dns_benchmark_runs_and_prints_its_ratio() -> None:
    lines = run_bench(
        "dns_responder.py", "--seconds", "0.5", "--rounds", "1", "--generator", "python"
    )
    assert last_ratio(lines, "ratio receiver/challtestsrv: ") > 0


def test_route53_benchmark_runs_and_prints_its_ratio() -> None:
    lines = run_bench("route53_batching.py", "--names", "10", "--rate", "1000")
    assert last_ratio(lines, "write call ratio naive/coalesced: ") > 1


def test_throughput_benchmark_runs_every_app_and_prints_its_ratios() -> None:
    lines = run_bench(
        "throughput.py",
        *("--seconds", "0.5", "--connections", "4", "--pairs", "20", "--generator", "python"),
        timeout=180,
    )
    assert any(line.startswith("floor/bare (parse, one RS256") for line in lines)
    assert any(line.startswith("throughput ratio default/bookkeeping-off: ") for line in lines)
    assert last_ratio(lines, "throughput ratio default/floor-with-journal: ") > 0


def test_ab_benchmark_compares_checkouts() -> None:
    lines = run_bench(
        "ab.py",
        *(f"off={ROOT}:off", f"default={ROOT}:default"),
        *("--rounds", "1", "--seconds", "0.5", "--pairs", "20", "--generator", "python"),
        timeout=180,
    )
    medians = [line for line in lines if "CPU per request median" in line]
    assert [line.split()[0] for line in medians] == ["off", "default"], lines


def test_state_backends_benchmark_runs_and_prints_its_ratios() -> None:
    lines = run_bench(
        "state_backends.py",
        *("--seconds", "0.5", "--connections", "4", "--pairs", "20", "--samples", "3"),
        *("--generator", "python"),
        timeout=240,
    )
    assert any(line.startswith("write in process A -> served by process B") for line in lines)
    assert any(line.startswith("responder ratio postgres/sqlite: ") for line in lines)
    assert last_ratio(lines, "throughput ratio postgres/sqlite: ") > 0


def test_burst_benchmark_runs_both_cases_and_prints_its_verdicts() -> None:
    lines = run_bench(
        "burst.py",
        *("--notifications", "200", "--warm-up", "10", "--after", "1", "--settle", "2"),
    )
    assert any(line.startswith("(a) local zone: 200 notifications") for line in lines)
    silent = next(line for line in lines if line.startswith("(b) memory zone"))
    assert "max pending checks n/a" not in silent  # read from /metrics
    assert lines[-1].startswith("goals met: ")


def test_workers_benchmark_runs_one_and_two_workers_and_prints_its_ratio() -> None:
    lines = run_bench(
        "workers.py",
        *("--seconds", "0.5", "--connections", "4", "--pairs", "20", "--generator", "python"),
        timeout=180,
    )
    assert [line.split()[:2] for line in lines if line.startswith("  --workers")] == [
        ["--workers", "1"],
        ["--workers", "2"],
    ]
    assert last_ratio(lines, "throughput ratio workers 2/1: ") > 0


def test_rfc2136_door_benchmark_runs_all_three_and_prints_its_ratios() -> None:
    lines = run_bench("rfc2136_door.py", "--seconds", "0.5", "--rounds", "1", "--clients", "4")
    measured = [line.split()[0] for line in lines if line.startswith("  ")]
    assert measured == ["rfc2136", "httpreq", "BIND"]
    assert all(" errors 0 " in line for line in lines if line.startswith("  "))
    assert any(line.startswith("ratio door/httpreq: ") for line in lines)
    assert last_ratio(lines, "ratio door/bind: ") > 0


def test_journal_growth_benchmark_runs_its_rounds_and_prints_its_verdict() -> None:
    lines = run_bench(
        "journal_growth.py",
        *("--rounds", "2", "--seconds", "0.5", "--connections", "4", "--pairs", "20"),
        *("--generator", "python"),
        timeout=180,
    )
    assert [line.split()[:2] for line in lines if "round" in line.split()[:1]] == [
        ["round", "1"],
        ["round", "2"],
    ], lines
    assert lines[-1].startswith("largest WAL: ") and lines[-1].endswith("within"), lines
