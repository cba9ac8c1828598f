"""The Code Engine guide stays true to the image and its config."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from receiver import config

from ..conftest import INSTANCE

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "deploy" / "code-engine" / "README.md"
CONFIG = ROOT / "deploy" / "code-engine" / "receiver.toml"
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"


def create_command() -> str:
    text = GUIDE.read_text().replace("\\\n", " ")
    (line,) = [x for x in text.splitlines() if x.startswith("ibmcloud ce application create")]
    return " ".join(line.split())


def settings() -> config.Settings:
    filled = re.sub(r'"crn:v1:[^"]*<account-id>[^"]*"', f'"{INSTANCE}"', CONFIG.read_text())
    return config.from_mapping(tomllib.loads(filled), base_dir=Path("/etc/dns-challenge-receiver"))


def test_the_config_is_valid_and_uses_an_api_provider() -> None:
    loaded = settings()
    assert {zone.provider for zone in loaded.zones if not zone.cname_to} == {"route53"}
    assert loaded.journal.database == Path("/var/lib/dns-challenge-receiver/journal.sqlite3")


def test_the_create_command_matches_the_image_and_the_config() -> None:
    command = create_command()
    dockerfile = DOCKERFILE.read_text()
    assert f"--port {settings().server.port}" in command
    user = re.search(r"^USER (\d+):", dockerfile, re.MULTILINE)
    assert user is not None and f"--user {user.group(1)}" in command
    config_env = re.search(r"DNS_CHALLENGE_RECEIVER_CONFIG=(\S+)", dockerfile)
    assert config_env is not None
    mount = Path(config_env.group(1)).parent.as_posix()
    assert f"--mount-configmap {mount}=dcr-config" in command
    assert "--from-file receiver.toml=deploy/code-engine/receiver.toml" in GUIDE.read_text()
    for probe, path in (("ready", "/readyz"), ("live", "/healthz")):
        assert f"--probe-{probe} type=http" in command
        assert f"--probe-{probe} path={path}" in command
    assert "--min-scale 1" in command
    assert "--env-from-secret dcr-aws" in command
    assert "--build-arg EXTRAS=route53" in GUIDE.read_text()


def test_the_guide_says_cloud_functions_is_retired() -> None:
    text = GUIDE.read_text()
    assert "IBM Cloud Functions (OpenWhisk) is retired" in text
    assert "28 December 2023" in text and "October 2024" in text
