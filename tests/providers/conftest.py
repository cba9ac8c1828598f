"""Markers of the conformance suite (see `test_conformance.pytest_generate_tests`)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults(kinds): run for each of these a harness declares")
    config.addinivalue_line("markers", "api: run only for adapters that make API calls")
    config.addinivalue_line("markers", "spellings: run only where TXT data can be spelled")
