"""Configuration: every problem reported at once, each naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from providers.base import Secret, setting
from receiver import config
from receiver.errors import ConfigError

from .conftest import INSTANCE

MINIMAL: dict[str, Any] = {
    "certificate_manager": {"allowed_instances": [INSTANCE]},
    "zones": [{"name": "example.com", "provider": "memory"}],
}


def problems(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.from_mapping(data, **kwargs)
    return caught.value.problems


def test_minimal_config_has_safe_defaults() -> None:
    settings = config.from_mapping(MINIMAL)
    assert settings.server.host == "127.0.0.1" and settings.server.port == 8080
    assert settings.server.callback_path == "/callback"
    assert settings.server.max_body_bytes == 65536
    assert settings.server.header_timeout_seconds == 10
    assert settings.server.body_timeout_seconds == 30
    assert settings.server.keepalive_timeout_seconds == 15
    assert settings.server.max_connections == 512
    assert settings.certificate_manager.algorithms == ("RS256",)
    assert settings.user_token.verify and not settings.user_token.required
    assert settings.user_token.jwks_url == "https://iam.cloud.ibm.com/identity/keys"
    assert settings.zones[0].name == "example.com" and settings.zones[0].ttl == 60


def test_zone_names_are_canonical() -> None:
    data = {**MINIMAL, "zones": [{"name": "Bücher.Example.", "provider": "memory"}]}
    assert config.from_mapping(data).zones[0].name == "xn--bcher-kva.example"


def test_all_problems_reported_together_with_their_keys() -> None:
    found = problems(
        {
            "server": {"listen": "nonsense", "callback_path": "/healthz", "max_body_bytes": "big"},
            "certificate_manager": {
                "allowed_instances": ["crn:v1:bad"],
                "algorithms": ["HS256", "none"],
            },
            "user_token": {"required": True, "verify": False},
            "zones": [
                {"name": "a..b", "provider": "memory"},
                {"name": "example.com", "provider": "no-such-provider"},
                {"name": "example.org", "provider": "memory", "ttl": 0, "colour": "blue"},
            ],
            "mystery": {},
        }
    )
    text = "\n".join(found)
    for key in [
        "server.listen",
        "server.callback_path",
        "server.max_body_bytes",
        "certificate_manager.allowed_instances[0]",
        "certificate_manager.algorithms",
        "user_token.required",
        "zones[0].name",
        "zones[1].provider",
        "zones[2].ttl",
        "zones[2].colour",
        "mystery",
    ]:
        assert key in text, f"{key} missing from:\n{text}"
    assert "'HS256' is not allowed" in text and "'none' is not allowed" in text
    assert "no provider named 'no-such-provider'" in text


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"zones": MINIMAL["zones"]}, "certificate_manager.allowed_instances"),
        ({"certificate_manager": MINIMAL["certificate_manager"]}, "zones"),
        ({**MINIMAL, "zones": MINIMAL["zones"] * 2}, "zones[1].name"),
        ({**MINIMAL, "server": {"callback_path": "callback"}}, "server.callback_path"),
        ({**MINIMAL, "server": {"max_body_bytes": 10}}, "server.max_body_bytes"),
        ({**MINIMAL, "server": {"listen": "127.0.0.1:99999"}}, "server.listen"),
        ({**MINIMAL, "server": {"header_timeout_seconds": 0}}, "server.header_timeout_seconds"),
        ({**MINIMAL, "server": {"header_timeout_seconds": "10"}}, "server.header_timeout_seconds"),
        ({**MINIMAL, "server": {"body_timeout_seconds": -1}}, "server.body_timeout_seconds"),
        ({**MINIMAL, "server": {"body_timeout_seconds": 301}}, "server.body_timeout_seconds"),
        (
            {**MINIMAL, "server": {"keepalive_timeout_seconds": 0}},
            "server.keepalive_timeout_seconds",
        ),
        (
            {**MINIMAL, "server": {"keepalive_timeout_seconds": 3601}},
            "server.keepalive_timeout_seconds",
        ),
        ({**MINIMAL, "server": {"max_connections": 0}}, "server.max_connections"),
        ({**MINIMAL, "server": {"max_connections": 1.5}}, "server.max_connections"),
        ({**MINIMAL, "log": {"format": "xml"}}, "log.format"),
        ({**MINIMAL, "user_token": {"verify": "yes"}}, "user_token.verify"),
        ({**MINIMAL, "user_token": {"jwks_url": "ftp://x"}}, "user_token.jwks_url"),
        ({**MINIMAL, "user_token": {"algorithms": ["HS512"]}}, "user_token.algorithms"),
        ({**MINIMAL, "dispatch": {"deadline_seconds": 0}}, "dispatch.deadline_seconds"),
        ({**MINIMAL, "propagation": {"max_pending": 0}}, "propagation.max_pending"),
        ({**MINIMAL, "propagation": {"max_pending": 10.5}}, "propagation.max_pending"),
        ({**MINIMAL, "propagation": {"max_pending": 2_000_000}}, "propagation.max_pending"),
        (
            {
                **MINIMAL,
                "certificate_manager": {
                    "allowed_instances": [INSTANCE],
                    "public_key_url": "https://{host}/x",
                },
            },
            "certificate_manager.public_key_url",
        ),
        (
            {
                **MINIMAL,
                "certificate_manager": {
                    "allowed_instances": [INSTANCE],
                    "public_key_file": "/nonexistent.pem",
                },
            },
            "certificate_manager.public_key_file",
        ),
        ({**MINIMAL, "zones": [{"name": "example.com"}]}, "zones[0].provider"),
        (
            {
                **MINIMAL,
                "zones": [
                    {"name": "example.com", "provider": "memory", "options": {"latency_ms": "slow"}}
                ],
            },
            "zones[0].options.latency_ms",
        ),
        (
            {
                **MINIMAL,
                "zones": [{"name": "example.com", "provider": "memory", "options": {"nope": 1}}],
            },
            "zones[0].options.nope",
        ),
        ({**MINIMAL, "zones": {"name": "example.com"}}, "zones"),
    ],
)
def test_each_problem_names_its_key(data: dict[str, Any], key: str) -> None:
    assert any(p.startswith(f"{key}:") for p in problems(data)), problems(data)


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, public_key_file: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "receiver.toml").write_text(
        f'[certificate_manager]\nallowed_instances = ["{INSTANCE}"]\n'
        f'public_key_file = "../{public_key_file.name}"\n'
        '[[zones]]\nname = "example.com"\nprovider = "memory"\n'
    )
    settings = config.load_file(tmp_path / "conf" / "receiver.toml")
    assert (
        settings.certificate_manager.public_key_file
        == tmp_path / "conf" / ".." / public_key_file.name
    )


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load_file(tmp_path / "bad.toml")


def test_config_path_from_environment() -> None:
    assert config.config_path(None, {config.CONFIG_ENV: "/etc/r.toml"}) == Path("/etc/r.toml")
    assert config.config_path("/x.toml", {config.CONFIG_ENV: "/etc/r.toml"}) == Path("/x.toml")
    with pytest.raises(ConfigError, match=config.CONFIG_ENV):
        config.config_path(None, {})


def test_secrets_come_from_env_or_file_never_the_file_itself(tmp_path: Path) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Options:
        api_token: Secret = setting(help="token")
        region: str = setting(default="x", help="region")

    reader = config._Reader(tmp_path, {"TOKEN_VAR": "s3cr3t"})
    built = reader.build(Options, {"api_token_env": "TOKEN_VAR"}, "zones[0].options")
    assert built.api_token.reveal() == "s3cr3t"
    assert "s3cr3t" not in repr(built)

    (tmp_path / "token").write_text("from-file\n")
    built = reader.build(Options, {"api_token_file": "token"}, "zones[0].options")
    assert built.api_token.reveal() == "from-file"
    assert not reader.problems

    reader.build(Options, {"api_token": "literal"}, "p")
    reader.build(Options, {"api_token_env": "UNSET_VAR"}, "q")
    reader.build(Options, {}, "r")
    reader.build(Options, {"api_token_env": "TOKEN_VAR", "api_token_file": "token"}, "s")
    text = "\n".join(reader.problems)
    assert "p.api_token: secrets are never written in the file" in text
    assert "q.api_token_env: environment variable UNSET_VAR is not set" in text
    assert "r.api_token: required" in text
    assert "s.api_token: set only one" in text


# --- [state] ---------------------------------------------------------------------------------

URL = "postgresql://receiver:secret-password@db.internal:5432/receiver"


def test_state_unset_keeps_sqlite_files() -> None:
    settings = config.from_mapping(MINIMAL)
    assert settings.state.url is None and not settings.state.shared
    assert settings.journal.database is not None


def test_state_from_a_file_is_stripped_and_names_no_sqlite_file(tmp_path: Path) -> None:
    secret = tmp_path / "db-url"
    secret.write_text(f"\n  {URL}  \n")
    data = {
        **MINIMAL,
        "state": {"url_file": str(secret)},
        "zones": [{"name": "example.com", "provider": "local"}],
    }
    settings = config.from_mapping(data)
    assert settings.state.url is not None and settings.state.url.reveal() == URL
    assert settings.journal.database is None  # nothing points at a SQLite file
    assert "secret-password" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u:p@h/db", "state.url_env: must be a postgresql:// URL, not 'mysql'"),
        ("postgresql://u:p@/db", "state.url_env: names no host"),
        ("postgresql://u:p@db.internal:5432/", "state.url_env: names no database"),
        ("postgresql://u:p@db.internal:99999/db", "state.url_env: not a valid URL"),
    ],
)
def test_state_url_shape_is_checked_without_repeating_it(url: str, expected: str) -> None:
    found = problems(
        {**MINIMAL, "state": {"url_env": "DB"}}, environ={"DB": url.replace("p@", "s3cr3t@")}
    )
    assert any(p.startswith(expected) for p in found), found
    assert not any("s3cr3t" in p for p in found)


def test_state_beside_a_sqlite_file_names_both_keys() -> None:
    data = {
        **MINIMAL,
        "state": {"url_env": "DB"},
        "journal": {"database": "journal.sqlite3"},
        "local": {"database": "records.sqlite3"},
        "zones": [
            {"name": "example.com", "provider": "local"},
            {"name": "example.net", "provider": "local", "options": {"database": "x.sqlite3"}},
        ],
    }
    found = problems(data, environ={"DB": URL})
    assert (
        "journal.database: state.url_env keeps the journal in PostgreSQL: remove journal.database"
        in found
    )
    assert (
        "local.database: state.url_env keeps local records in PostgreSQL: remove local.database"
        in found
    )
    assert any(p.startswith("zones[1].options.database: state.url_env") for p in found)


def test_state_limits() -> None:
    found = problems(
        {**MINIMAL, "state": {"url_env": "DB", "max_connections": 0}}, environ={"DB": URL}
    )
    assert "state.max_connections: must be between 1 and 100" in found


def test_the_callback_cannot_take_another_open_doors_path() -> None:
    """Two doors on one path cannot both answer: said when the file is read, naming the
    key, rather than found when the server opens its doors."""
    data = {
        **MINIMAL,
        "server": {"callback_path": "/present"},
        "httpreq": {"enabled": True, "username": "u", "password_env": "P"},
    }
    with pytest.raises(ConfigError) as raised:
        config.from_mapping(data, environ={"P": "secret"})
    assert "server.callback_path: /present is already the httpreq door's path" in str(raised.value)
    data["httpreq"] = {"enabled": False}
    assert config.from_mapping(data).server.callback_path == "/present"  # free while closed


def test_the_paths_config_reserves_are_the_doors_own() -> None:
    from receiver.doors.acme_dns import AcmeDnsDoor
    from receiver.doors.admin import AdminDoor
    from receiver.doors.fileauth import FileAuthDoor
    from receiver.doors.httpreq import HttpreqDoor

    doors = [HttpreqDoor, AcmeDnsDoor, AdminDoor, FileAuthDoor]
    assert {door.name: frozenset(r.path for r in door.routes) for door in doors} == (
        config.DOOR_PATHS
    )


def test_the_sections_of_doors_that_are_off_are_none_until_given() -> None:
    """A door's table that is absent leaves its section None (the door is off, and its
    classes are never defined on a cold start); a given one is built, defaults and all."""
    from receiver import door_settings

    assert tuple(door_settings.SECTIONS) == config.DOOR_SECTIONS
    settings = config.from_mapping(MINIMAL)
    assert all(getattr(settings, name) is None for name in config.DOOR_SECTIONS)
    with pytest.raises(ConfigError, match=r"rfc2136_door: no \[rfc2136_door\] table"):
        door_settings.configured(settings.rfc2136_door, "rfc2136_door")
    given = config.from_mapping({**MINIMAL, "httpreq": {}, "acme_dns": {"register_burst": 5}})
    assert given.httpreq == door_settings.HttpreqSettings()
    assert given.acme_dns == door_settings.AcmeDnsSettings(register_burst=5)
    assert given.digicert is None and given.secrets_manager is None
    # An out-of-range value in a given table is still reported, door on or off.
    found = problems({**MINIMAL, "acme_dns": {"register_burst": 0}})
    assert "acme_dns.register_burst: must be between 1 and 10000" in found


def test_a_configuration_with_every_door_off_is_refused_whichever_tables_it_has() -> None:
    off = {"certificate_manager": {"enabled": False}, "zones": MINIMAL["zones"]}
    message = "certificate_manager.enabled: every door is disabled: enable at least one"
    assert message in problems(off)
    # DigiCert's table opens no door of its own (fileauth serves a file, writes nothing).
    assert message in problems({**off, "digicert": {}, "httpreq": {"enabled": False}})
    on = {**off, "digicert": {}, "httpreq": {"enabled": True, "username": "lego"}}
    assert message not in problems(on)  # (its password is missing: still a problem)
