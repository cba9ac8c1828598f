"""The README and the example config stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

from receiver import config
from receiver.dispatch import ERROR_CODES
from receiver.http import _STATUS_CODES

from .conftest import INSTANCE

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_setup_commands() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = first_block.strip().splitlines()
    assert len(commands) == 2
    assert "serve --demo" in commands[0]
    assert commands[1] == "bash scripts/test"
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_error_code_is_documented() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "receiver").rglob("*.py"))
    codes = set(re.findall(r'code="([a-z_]+)"', source))
    codes |= set(re.findall(r'default_code = "([a-z_]+)"', source))
    codes |= set(ERROR_CODES.values())
    codes |= set(_STATUS_CODES.values())  # aiohttp's own rejections, as JSON
    prefixes = set(re.findall(r'code_prefix="([a-z_]+)"', source))
    codes |= {f"{p}_{suffix}" for p in prefixes for suffix in ("expired", "not_yet_valid")}
    codes |= {f"invalid_{p}" for p in prefixes}
    codes -= {"bad_request", "unauthorized", "forbidden", "unavailable", "provider_failed"}
    undocumented = sorted(c for c in codes if f"`{c}`" not in README)
    assert not undocumented


def test_example_config_is_valid_once_filled_in() -> None:
    text = (ROOT / "deploy" / "receiver.example.toml").read_text()
    filled = re.sub(r'"crn:v1:[^"]*<account-id>[^"]*"', f'"{INSTANCE}"', text)
    path = ROOT / "deploy" / "receiver.example.toml"
    import tomllib

    settings = config.from_mapping(tomllib.loads(filled), base_dir=path.parent)
    assert settings.certificate_manager.allowed_instances == (INSTANCE,)
    assert settings.server.listen == "0.0.0.0:8080"
