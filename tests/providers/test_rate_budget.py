"""The request budget every adapter draws from before each API call."""

from __future__ import annotations

import pytest

from providers.rate_budget import RateBudget


def test_rate_budget_paces_calls() -> None:
    now = [0.0]
    budget = RateBudget(5, burst=5, clock=lambda: now[0])
    delays = [budget.reserve() for _ in range(10)]
    assert delays[:5] == [0.0] * 5  # the burst
    assert delays[5:] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    now[0] = 10.0  # idle long enough: the burst is back
    assert [budget.reserve() for _ in range(5)] == [0.0] * 5
    assert RateBudget(None).reserve() == 0.0
