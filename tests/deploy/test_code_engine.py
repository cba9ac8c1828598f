"""The Code Engine guide stays true to the image, its config and itself."""

from __future__ import annotations

import re
import tempfile
import tomllib
import urllib.parse
from pathlib import Path

from receiver import cli, config

from ..conftest import INSTANCE

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "deploy" / "code-engine" / "README.md"
CONFIG = ROOT / "deploy" / "code-engine" / "receiver.toml"
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"


def command(prefix: str) -> str:
    """The one command of the guide that starts with `prefix`, continuation lines joined."""
    text = GUIDE.read_text().replace("\\\n", " ")
    (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
    return " ".join(line.split())


def options(line: str, name: str) -> list[str]:
    return re.findall(rf"(?:^| )--{name} (\S+)", line)


def database_url() -> str:
    """The URL the guide puts in the secret (its port a placeholder, here a number)."""
    found = re.search(r"postgresql://\S+", GUIDE.read_text())
    assert found is not None
    return found.group(0).replace(":PORT/", ":31864/")


def settings() -> config.Settings:
    """The config as an instance loads it, the secret's `url` file holding the guide's URL."""
    filled = re.sub(r'"crn:v1:[^"]*<account-id>[^"]*"', f'"{INSTANCE}"', CONFIG.read_text())
    data = tomllib.loads(filled)
    with tempfile.TemporaryDirectory() as folder:
        url_file = Path(folder) / "url"
        url_file.write_text(database_url() + "\n")
        data["state"]["url_file"] = str(url_file)
        return config.from_mapping(data, base_dir=Path("/etc/dns-challenge-receiver"))


def test_the_config_is_valid_on_shared_state_with_an_api_provider() -> None:
    loaded = settings()
    assert {zone.provider for zone in loaded.zones if not zone.cname_to} == {"route53"}
    # Instances lose their files: the journal is in the database, not on the instance.
    assert loaded.state.shared and loaded.journal.enabled and loaded.journal.database is None


def test_the_database_secret_holds_the_url_and_ca_where_the_config_reads_them() -> None:
    url_file = Path(tomllib.loads(CONFIG.read_text())["state"]["url_file"])
    create = command("ibmcloud ce secret create --name dcr-database")
    keys = {value.split("=", 1)[0] for value in options(create, "from-file")}
    assert keys == {url_file.name, "ca.crt"}
    for line in (
        command("ibmcloud ce application create"),
        command("ibmcloud ce job create"),
    ):
        assert f"{url_file.parent.as_posix()}=dcr-database" in options(line, "mount-secret")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(database_url()).query)
    assert query["sslmode"] == ["verify-full"]
    assert query["sslrootcert"] == [(url_file.parent / "ca.crt").as_posix()]
    assert ".private." in urllib.parse.urlsplit(database_url()).netloc  # the private endpoint


def test_the_create_command_matches_the_image_and_the_config() -> None:
    app = command("ibmcloud ce application create")
    dockerfile = DOCKERFILE.read_text()
    assert f"--port {settings().server.port}" in app
    user = re.search(r"^USER (\d+):", dockerfile, re.MULTILINE)
    assert user is not None and f"--user {user.group(1)}" in app
    config_env = re.search(r"DNS_CHALLENGE_RECEIVER_CONFIG=(\S+)", dockerfile)
    assert config_env is not None
    mount = Path(config_env.group(1)).parent.as_posix()
    assert f"--mount-configmap {mount}=dcr-config" in app
    assert "--from-file receiver.toml=deploy/code-engine/receiver.toml" in GUIDE.read_text()
    for probe, path in (("ready", "/readyz"), ("live", "/healthz")):
        assert f"--probe-{probe} type=http" in app
        assert f"--probe-{probe} path={path}" in app
    assert "--min-scale 1" in app
    assert "--env-from-secret dcr-aws" in app
    assert "--build-arg EXTRAS=route53,postgres" in GUIDE.read_text()  # asyncpg for [state]


def test_the_sweep_job_runs_the_same_image_config_and_secrets_on_a_schedule() -> None:
    app, job = command("ibmcloud ce application create"), command("ibmcloud ce job create")
    for name in ("image", "registry-secret", "mount-configmap", "mount-secret", "env-from-secret"):
        assert options(job, name) == options(app, name), name
    # The image's entry point is the CLI: the job's arguments make it `... sweep`.
    arguments = options(job, "argument")
    assert arguments == ["sweep"]
    assert cli._parser().parse_args(arguments).run is cli._sweep
    cron = command("ibmcloud ce subscription cron create")
    assert options(cron, "destination-type") == ["job"]
    assert options(cron, "destination") == options(job, "name")
    schedule = re.search(r"--schedule '\*/(\d+) \* \* \* \*'", cron)
    assert schedule is not None, cron
    # Often enough that a stale value goes soon after journal.max_age_seconds.
    assert int(schedule.group(1)) * 60 < settings().journal.max_age_seconds


def test_the_guide_says_cloud_functions_is_retired() -> None:
    text = GUIDE.read_text()
    assert "IBM Cloud Functions (OpenWhisk) is retired" in text
    assert "28 December 2023" in text and "October 2024" in text
