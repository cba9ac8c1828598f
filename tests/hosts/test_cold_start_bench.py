"""bench/cold_start.py still runs (its figures are read by people, not asserted here)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..test_bench_smoke import ROOT, last_ratio, run_bench


@pytest.mark.slow
def test_cold_start_benchmark_runs_and_prints_its_ratio() -> None:
    lines = run_bench("cold_start.py", "--runs", "1", "--providers", "memory", timeout=300)
    assert any(line.startswith("receiver/library floor: memory ") for line in lines)
    assert any(line.startswith("model floor/library floor (the same ") for line in lines)
    assert any(line.startswith("receiver/paused library floor (the collector ") for line in lines)
    assert not list(ROOT.glob("bench/_cold_start_data_model_*"))  # removed after the run
    # The last line holds one "provider ratio" pair per provider: "memory 3.89".
    assert last_ratio(lines, "cold start ratio receiver/floor: memory ") > 0


def test_the_model_floor_defines_the_dataclasses_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated module's classes have the recorded options, fields and defaults."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from cold_start import data_model_source

    shapes = [
        {
            "options": {"frozen": True},
            "doc": True,
            "fields": [
                ["name", "str", "none"],
                ["ttl", "int | None", "value"],
                ["names", "tuple[str, ...]", "factory"],
            ],
        },
        {"options": {"frozen": True, "slots": True, "eq": False}, "doc": False, "fields": []},
    ]
    path = tmp_path / "model.py"
    path.write_text(data_model_source(shapes))
    spec = importlib.util.spec_from_file_location("model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "model", module)
    spec.loader.exec_module(module)

    first, second = module.Record0, module.Record1
    assert [f.name for f in dataclasses.fields(first)] == ["name", "ttl", "names"]
    assert first.__dataclass_params__.frozen and first.__doc__ == "A record."
    assert first("x") == first("x", None, ())
    assert [f.type for f in dataclasses.fields(first)] == ["str", "int | None", "tuple[str, ...]"]
    assert second.__dataclass_params__.frozen and not second.__dataclass_params__.eq
    assert second.__slots__ == ()


@pytest.mark.parametrize("paused", [True, False])
def test_the_paused_floor_pauses_its_collector_as_the_receiver_does(paused: bool) -> None:
    probe = (
        "import gc, json, cold_start_floor as floor\n"
        "imported = gc.isenabled()\n"
        "floor.handler({}, None)\n"
        "print(json.dumps([imported, gc.isenabled(), gc.get_freeze_count()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOOR_")}
    if paused:
        env["FLOOR_PAUSE_COLLECTOR"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT / "bench",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    imported, answered, frozen = json.loads(result.stdout)
    assert (imported, answered) == (not paused, True)
    assert (frozen > 1_000) is paused  # what its imports built, frozen at its first answer
