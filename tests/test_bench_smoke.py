"""The benchmarks still run (their figures are read by people, not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_dns_benchmark_runs_and_prints_its_ratio() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "dns_responder.py"),
            "--seconds",
            "0.5",
            "--rounds",
            "1",
            "--generator",
            "python",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("ratio receiver/challtestsrv: ")
    assert float(last.rsplit(" ", 1)[1]) > 0


def test_route53_benchmark_runs_and_prints_its_ratio() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "route53_batching.py"),
            "--names",
            "10",
            "--rate",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("write call ratio naive/coalesced: ")
    assert float(last.rsplit(" ", 1)[1]) > 1


def test_throughput_benchmark_runs_all_three_apps_and_prints_its_ratio() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "throughput.py"),
            "--seconds",
            "0.5",
            "--connections",
            "4",
            "--pairs",
            "20",
            "--generator",
            "python",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("floor/bare (parse, one RS256") for line in lines)
    assert lines[-1].startswith("throughput ratio receiver/bare: ")
    assert float(lines[-1].rsplit(" ", 1)[1]) > 0
