"""Cold start: nothing imports an adapter (or its SDK) unless a zone configures it."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from providers.registry import BUILT_IN, ENTRY_POINT_GROUP
from receiver import signing
from receiver.config import CONFIG_ENV

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import sys
at_start = set(sys.modules)  # a *-nspkg.pth (functions-framework's) pre-creates `google`
from receiver import cli, core, runtime, config  # everything a host imports
from receiver.hosts import http
from providers.registry import BUILT_IN
adapters = {target.partition(":")[0] for target in BUILT_IN.values()}
before = sorted(m for m in sys.modules if m in adapters)  # shared helpers may load
heavy = sorted(m for m in set(sys.modules) - at_start if m.split(".")[0] in ("boto3", "botocore",
               "google", "cloudflare", "dns"))
from providers.registry import load_provider_class, provider_names
names = provider_names()
load_provider_class("memory")
after = "providers.memory" in sys.modules
print(before, heavy, "memory" in names, after)
"""


def test_adapters_load_only_when_asked_for() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[] [] True True"


SERVERLESS_PROBE = """
import sys
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from receiver import signing
from tests.hosts import events

private = load_pem_private_key(Path(sys.argv[1]).read_bytes(), None)
claims = signing.notification_claims(
    instance_crn=signing.DEMO_CRN,
    event_type="cert_domain_validation_required",
    domain="www.example.com",
    value=signing.challenge_value(),
)
body = signing.envelope(jwt.encode(claims, private, algorithm="RS256"))
event = events.function_url(body, headers={"content-type": "application/json"})

from receiver.hosts import aws_lambda

answer = aws_lambda.handler(event, None)
unwanted = ("aiohttp", "prometheus_client", "importlib.metadata", "boto3", "dns", "sqlite3",
            "idna", "receiver.sweep", "receiver.digicert", "receiver.propagation",
            "receiver.door_settings", "receiver.journal", "receiver.coalescer")
print(answer["statusCode"], sorted(m for m in sys.modules if m.startswith(unwanted)))
"""


def test_a_serverless_invocation_imports_no_server_metrics_or_entry_point_scan(
    tmp_path: Path,
) -> None:
    """A whole Lambda invocation on a built-in adapter: no aiohttp, no Prometheus registry
    (nobody scrapes a function), no importlib.metadata scan (~40 ms of cold start); with
    the journal off, no SQLite and no journal module; for an ASCII name, no IDNA tables;
    no sweep; with checks off, no propagation checker; no settings classes of the doors
    that are off; no coalescer for an adapter that does not batch."""
    public = signing.write_key_pair(tmp_path / "sender.pem", "RS256")
    config = tmp_path / "receiver.toml"
    config.write_text(f"""
[certificate_manager]
allowed_instances = ["{signing.DEMO_CRN}"]
public_key_file = "{public}"
[journal]
enabled = false
[propagation]
check = false
[[zones]]
name = "example.com"
provider = "memory"
""")
    result = subprocess.run(
        [sys.executable, "-c", SERVERLESS_PROBE, str(tmp_path / "sender.pem")],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, CONFIG_ENV: str(config)},
    )
    assert result.stdout.strip().splitlines()[-1] == "200 []", result.stderr


def test_importing_the_password_module_computes_no_hash() -> None:
    """The decoy hash for unknown acme-dns users is made on first use (scrypt: ~40 ms)."""
    probe = (
        "import hashlib\n"
        "def refuse(*args, **kwargs):\n"
        "    raise SystemExit('scrypt ran at import')\n"
        "hashlib.scrypt = refuse\n"
        "import receiver.passwords, receiver.doors.acme_dns\n"
        "print('imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "imported", result.stderr


def test_built_in_adapters_match_the_entry_points_in_pyproject() -> None:
    """The built-ins are imported without scanning entry points: the table must not drift."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = project["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert declared == BUILT_IN
