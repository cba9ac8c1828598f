"""The command line: check-config, keygen, sign-notification, demo settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from receiver import cli, config, signing
from receiver.config import CONFIG_ENV

from .conftest import INSTANCE, KeyPair


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_console_script_and_module_agree() -> None:
    script = Path(sys.executable).with_name("dns-challenge-receiver")
    by_script = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=True
    )
    assert by_script.stdout == run("--version").stdout != ""


def test_check_config_prints_routes(tmp_path: Path, public_key_file: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text(f"""
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{public_key_file}"
[[zones]]
name = "Example.com."
provider = "memory"
ttl = 30
[[zones]]
name = "_acme-challenge.example.org"
provider = "memory"
""")
    result = run("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "configuration ok: 2 zone(s)" in result.stdout
    assert "example.com                  -> memory  ttl=30" in result.stdout
    assert "_acme-challenge.example.org  -> memory  ttl=60" in result.stdout


def test_check_config_from_environment_and_bad_key_file(tmp_path: Path) -> None:
    bad_key = tmp_path / "key.pem"
    bad_key.write_text("not a key")
    config = tmp_path / "r.toml"
    config.write_text(
        f'[certificate_manager]\nallowed_instances = ["{INSTANCE}"]\n'
        f'public_key_file = "{bad_key}"\n'
        '[[zones]]\nname = "example.com"\nprovider = "memory"\n'
    )
    import os

    result = run("check-config", env={**os.environ, CONFIG_ENV: str(config)})
    assert result.returncode == 2
    assert "certificate_manager.public_key_file" in result.stderr
    assert "not a PEM public key" in result.stderr


@pytest.mark.parametrize(
    ("provider", "options", "expected"),
    [
        # Cloud DNS: anonymous is only for a fake, which needs an endpoint.
        ("gcloud", 'project = "p"\nanonymous = true', "zones[0].options.anonymous: anonymous"),
        # CIS: an API key login without the key, and an instance that is not a CRN.
        ("cis", 'instance_crn = "crn:v1:x"\nauth = "api_key"', "zones[0].options.api_key:"),
        ("cis", 'instance_crn = "my-cis"\nauth = "user_token"', "must be a CRN"),
        # RFC 2136: a server without a port, a secret that is not base64.
        (
            "rfc2136",
            'server = "ns1.example.com"\ntsig_key_name = "k"\ntsig_secret_env = "TSIG"',
            "zones[0].options.server: 'ns1.example.com' is not host:port",
        ),
        (
            "rfc2136",
            'server = "ns1.example.com:53"\ntsig_key_name = "k"\ntsig_secret_env = "TSIG"',
            "zones[0].options.tsig_secret: tsig_secret is not valid base64",
        ),
    ],
)
def test_check_config_refuses_adapter_options_that_would_fail_at_start(
    tmp_path: Path, public_key_file: Path, provider: str, options: str, expected: str
) -> None:
    """What an adapter would refuse on opening is found by check-config, not at start."""
    config = tmp_path / "r.toml"
    config.write_text(f"""
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_file = "{public_key_file}"
[[zones]]
name = "example.com"
provider = "{provider}"
[zones.options]
{options}
""")
    result = run("check-config", "--config", str(config), env={"TSIG": "not base64!", "PATH": ""})
    assert result.returncode == 2, result.stdout
    assert expected in result.stderr, result.stderr


def test_check_config_without_a_file() -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    result = run("check-config", env=env)
    assert result.returncode == 2 and CONFIG_ENV in result.stderr


def test_keygen_writes_a_private_key_only_we_can_read(tmp_path: Path) -> None:
    assert cli.main(["keygen", str(tmp_path / "k" / "sender.pem")]) == 0
    private = tmp_path / "k" / "sender.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    public = tmp_path / "k" / "sender.pub.pem"
    assert public.read_bytes() == signing.public_pem(private.read_bytes())


def test_sign_notification_output(
    tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "sender.pem"
    key.write_bytes(keys["sender"].private_pem)
    assert (
        cli.main(
            [
                "sign-notification",
                "--key",
                str(key),
                "--instance-crn",
                INSTANCE,
                "--domain",
                "*.example.com",
                "--event",
                "completed",
                "--value",
                "v" * 43,
            ]
        )
        == 0
    )
    envelope = json.loads(capsys.readouterr().out)
    claims = jwt.decode(envelope["data"], keys["sender"].public_pem, algorithms=["RS256"])
    assert claims["event_type"] == "cert_domain_validation_completed"
    assert claims["domain"] == "*.example.com"
    assert claims["challenge"] == {"txt_record_name": "_acme-challenge", "txt_record_val": "v" * 43}
    assert claims["instance_crn"] == INSTANCE and "userToken" not in claims


def test_sign_notification_needs_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sign-notification", "--domain", "example.com"]) == 2
    assert "--demo" in capsys.readouterr().err


def test_demo_settings_generate_a_key_once(tmp_path: Path) -> None:
    first = cli.demo_settings(tmp_path / "demo")
    key = (tmp_path / "demo" / cli.DEMO_KEY).read_bytes()
    second = cli.demo_settings(tmp_path / "demo")
    assert (tmp_path / "demo" / cli.DEMO_KEY).read_bytes() == key
    assert first == second
    assert first.certificate_manager.allowed_instances == (signing.DEMO_CRN,)
    assert [z.name for z in first.zones] == ["example.test"]


def test_the_demo_writes_a_config_that_other_commands_read(tmp_path: Path) -> None:
    """`journal`, `sweep` and `check-config` reach the demo's state with --demo."""
    demo = tmp_path / "demo"
    settings = cli.demo_settings(demo)
    written = demo / cli.DEMO_CONFIG
    assert config.load_file(written) == settings
    result = run("check-config", "--demo", "--demo-dir", str(demo))
    assert result.returncode == 0, result.stderr
    assert str(demo.resolve() / "challenges.sqlite3") in result.stdout
    assert run("journal", "--demo", "--demo-dir", str(demo)).returncode == 0


def test_demo_commands_without_a_demo_say_how_to_start_one(tmp_path: Path) -> None:
    result = run("journal", "--demo", "--demo-dir", str(tmp_path / "none"))
    assert result.returncode == 2
    assert "start `serve --demo` once" in result.stderr
