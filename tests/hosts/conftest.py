"""A TOML config on disk (the serverless doors read DNS_CHALLENGE_RECEIVER_CONFIG) and a
fresh Lambda container per test."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from receiver.config import CONFIG_ENV
from receiver.hosts import aws_lambda

from ..conftest import INSTANCE, OTHER_INSTANCE, FakeIbmCloud

MEMORY_ZONES: list[dict[str, Any]] = [
    {"name": "example.com", "provider": "memory"},
    {"name": "example.net", "provider": "memory", "ttl": 120},
]


def _toml(value: Any) -> str:
    if isinstance(value, str | bool | int | float):
        return json.dumps(value)  # JSON strings, numbers and booleans are valid TOML
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(type(value))


def config_text(ibm_cloud: FakeIbmCloud, zones: list[dict[str, Any]], **tables: Any) -> str:
    sections: dict[str, dict[str, Any]] = {
        "certificate_manager": {
            "allowed_instances": [INSTANCE, OTHER_INSTANCE],
            "public_key_url": ibm_cloud.public_key_url,
        },
        "user_token": {"jwks_url": ibm_cloud.jwks_url},
        "propagation": {"check": False},
        "log": {"format": "json"},
        **tables,
    }
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    for zone in zones:
        lines.append("[[zones]]")
        options = zone.get("options", {})
        lines += [f"{key} = {_toml(value)}" for key, value in zone.items() if key != "options"]
        if options:
            lines.append("[zones.options]")
            lines += [f"{key} = {_toml(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(
    tmp_path: Path, ibm_cloud: FakeIbmCloud, monkeypatch: pytest.MonkeyPatch
) -> WriteConfig:
    """Write the config and point DNS_CHALLENGE_RECEIVER_CONFIG at it."""

    def write(zones: list[dict[str, Any]] = MEMORY_ZONES, **tables: Any) -> Path:
        path = tmp_path / "receiver.toml"
        path.write_text(config_text(ibm_cloud, zones, **tables))
        monkeypatch.setenv(CONFIG_ENV, str(path))
        return path

    return write


@pytest.fixture
def lambda_container(monkeypatch: pytest.MonkeyPatch) -> Iterator[aws_lambda._Container]:
    """A cold container for this test, torn down afterwards (Runtime closed, loop closed)."""
    container = aws_lambda._Container()
    monkeypatch.setattr(aws_lambda, "_container", container)
    yield container
    container.close()


def stored_values(database: Path, fqdn: str) -> set[str]:
    """The `local` store read directly with sqlite3: an observer independent of the receiver."""
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT value FROM txt_values WHERE fqdn = ?", (fqdn,)).fetchall()
    return {value for (value,) in rows}
