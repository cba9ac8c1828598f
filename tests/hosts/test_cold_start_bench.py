"""bench/cold_start.py still runs (its figures are read by people, not asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..test_bench_smoke import last_ratio, run_bench


@pytest.mark.slow
def test_cold_start_benchmark_runs_and_prints_its_ratio() -> None:
    lines = run_bench("cold_start.py", "--runs", "1", "--providers", "memory", timeout=300)
    assert any(line.startswith("receiver/library floor: memory ") for line in lines)
    # The floor with the receiver's data model ran: its dataclasses were recorded and rebuilt.
    model = [line for line in lines if line.startswith("model floor/library floor")]
    assert model and float(model[0].rsplit(" ", 1)[1]) > 1, lines
    assert not list(Path(__file__).parents[2].glob("bench/_cold_start_data_model_*"))
    # The last line holds one "provider ratio" pair per provider: "memory 3.89".
    assert last_ratio(lines, "cold start ratio receiver/floor: memory ") > 0
