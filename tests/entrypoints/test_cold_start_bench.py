"""bench/cold_start.py still runs (its figures are read by people, not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cold_start_benchmark_runs_and_prints_its_ratio() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "cold_start.py"),
            "--runs",
            "1",
            "--providers",
            "memory",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("cold start ratio receiver/floor: memory ")
    assert float(last.rsplit(" ", 1)[1]) > 0
