"""The settings of the doors that are off unless configured: httpreq, acme-dns, RFC 2136,
DigiCert file authentication and Secrets Manager.

`receiver.config` imports this module only for a file with one of these tables, so a
function that serves Certificate Manager alone never defines these classes: on a cold
start each frozen dataclass costs ~0.4 ms to create (`bench/cold_start.py`). In
`Settings`, a section whose table is absent is `None`: that door is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from providers.base import setting
from providers.secret import Secret
from receiver.errors import ConfigError


@dataclass(frozen=True)
class HttpreqSettings:
    """lego's `httpreq` protocol: POST /present and /cleanup with HTTP basic auth."""

    enabled: bool = setting(default=False, help="Serve POST /present and POST /cleanup.")
    username: str = setting(default="", help="Basic-auth user name (required when enabled).")
    password: Secret | None = setting(
        default=None, help="Basic-auth password (required when enabled).", secret=True
    )


@dataclass(frozen=True)
class AcmeDnsSettings:
    """The acme-dns API: POST /update (and /register when allowed) for one served zone."""

    enabled: bool = setting(default=False, help="Serve POST /update (and /register).")
    zone: str = setting(
        default="",
        help="Registrations live at <subdomain>.<zone>; a [[zones]] entry with a provider,"
        " typically local.",
    )
    allow_register: bool = setting(
        default=False, help="Serve POST /register, which needs no credentials."
    )
    # What an unauthenticated caller can cost: registrations per source address (a
    # burst, then a steady rate), accounts in all, and password checks waiting.
    register_burst: int = setting(
        default=10, help="Registrations at once per source address (an IPv6 /64 is one)."
    )
    register_per_hour: float = setting(
        default=30, help="Rate at which the burst refills; beyond it, 429."
    )
    max_accounts: int = setting(
        default=10_000, help="Accounts in all; then 403 account_limit_reached."
    )
    max_pending_password_checks: int = setting(
        default=16, help="Password checks running or waiting; beyond: 503 busy."
    )


TsigAlgorithm = Literal[
    "hmac-sha256", "hmac-sha512", "hmac-sha384", "hmac-sha224", "hmac-sha1", "hmac-md5"
]
DEFAULT_DOOR_NAMES = ("_acme-challenge.*",)


@dataclass(frozen=True)
class Rfc2136KeySettings:
    """One TSIG key of the RFC 2136 door (`[[rfc2136_door.keys]]`): who holds it may change
    TXT records at the names it allows, in the zones it lists, at the rate it allows."""

    name: str = setting(help="The TSIG key name, as clients send it (tsig-keygen's argument).")
    secret: Secret = setting(
        help="The key's base64 secret, as `tsig-keygen` prints it (at least 16 bytes).",
        secret=True,
    )
    algorithm: TsigAlgorithm = setting(
        default="hmac-sha256",
        help="The TSIG algorithm; a message signed with any other is refused (BADKEY).",
    )
    zones: tuple[str, ...] = setting(
        default=(), help="Configured [[zones]] this key may change (at least one)."
    )
    names: tuple[str, ...] = setting(
        default=DEFAULT_DOOR_NAMES,
        help="Patterns of the names this key may change (`*` matches any characters, dots"
        " included), inside its zones; values at `_acme-challenge` names must be challenge"
        " digests.",
    )
    changes_per_minute: float = setting(
        default=60.0,
        help="Record changes this key may make per minute, after its burst (GCRA); beyond"
        " it, an UPDATE is REFUSED and nothing of it is written (0.1 to 10000000).",
    )
    burst: int = setting(default=30, help="Record changes this key may make at once (1 to 10000).")


@dataclass(frozen=True)
class Rfc2136DoorSettings:
    """RFC 2136 dynamic updates signed with TSIG (nsupdate, certbot-dns-rfc2136, lego,
    cert-manager), served by the built-in DNS listener on UDP and TCP."""

    enabled: bool = setting(default=False, help="Accept signed UPDATEs and answer SOA queries.")
    listen: str | None = setting(
        default=None,
        help="host:port of the door's UDP and TCP listener; default: local.dns_listen (one"
        " socket serves both when they are equal).",
    )
    fudge_seconds: int = setting(
        default=300,
        help="Largest clock difference accepted (1 to 3600): a message's own fudge is"
        " capped at this; beyond it, BADTIME.",
    )
    keys: tuple[Rfc2136KeySettings, ...] = setting(
        default=(), help="The TSIG keys, `[[rfc2136_door.keys]]` (at least one when enabled)."
    )


@dataclass(frozen=True)
class DigicertSettings:
    """DigiCert AuthKey request tokens (`dcv_method = http-token` needs `fileauth`)."""

    auth_key: Secret | None = setting(
        default=None, help="The DigiCert AuthKey (required with fileauth).", secret=True
    )
    fileauth: bool = setting(
        default=False,
        help="Serve GET /.well-known/pki-validation/fileauth.txt for the hosts below.",
    )
    fileauth_csr_files: dict[str, Path] = field(
        default_factory=dict,
        metadata={
            "help": "host -> the PEM CSR file (hashed byte for byte) whose token that host serves."
        },
    )


@dataclass(frozen=True)
class SecretsManagerInstanceSettings:
    """One IBM Cloud Secrets Manager instance whose manual-DNS orders this service serves."""

    instance_id: str = setting(help="The instance's GUID.")
    region: str = setting(help="Its region, e.g. us-south.")
    endpoint: str = setting(
        default="private",
        help='"private" (the default; the private network), "public", or a full https://'
        " URL used as the base URL as given (http:// only for loopback addresses).",
    )
    iam_url: str = setting(
        default="https://iam.cloud.ibm.com/identity/token",
        help="The IAM token endpoint.",
    )
    api_key: Secret | None = setting(
        default=None,
        help="An IAM API key with the Writer role on the instance (api_key_env or api_key_file).",
        secret=True,
    )
    cr_token_file: Path | None = setting(
        default=None,
        help="Code Engine: the compute-resource token file, exchanged with trusted_profile_id"
        " (instead of an API key).",
    )
    trusted_profile_id: str = setting(
        default="", help="The trusted profile the CR token is exchanged for."
    )
    secret_groups: tuple[str, ...] = setting(
        default=(), help="Only secrets in these secret groups (IDs, or default); empty: all."
    )
    labels: tuple[str, ...] = setting(
        default=(), help="Only secrets that carry all of these labels; empty: no filter."
    )


@dataclass(frozen=True)
class SecretsManagerSettings:
    """IBM Cloud Secrets Manager: publish the challenges of public certificates ordered
    with `dns = manual`, ask for validation, and remove the values afterwards."""

    enabled: bool = setting(default=False, help="Poll the instances below.")
    interval_seconds: float = setting(
        default=60.0, help="The server's pause between passes (10 to 86400), jittered by 10%."
    )
    rate_per_second: float = setting(
        default=20.0, help="Requests per second to one instance, at most (0.1 to 20)."
    )
    lease_seconds: float = setting(
        default=900.0,
        help="How long one pass holds a secret: another replica or cron job skips it meanwhile"
        " (60 to 86400; a pass that dies frees it after this long).",
    )
    instances: tuple[SecretsManagerInstanceSettings, ...] = setting(
        default=(), help="[[secrets_manager.instances]]: the instances polled."
    )


SECTIONS: dict[str, type[Any]] = {  # in the configuration reference's order
    "httpreq": HttpreqSettings,
    "acme_dns": AcmeDnsSettings,
    "digicert": DigicertSettings,
    "rfc2136_door": Rfc2136DoorSettings,
    "secrets_manager": SecretsManagerSettings,
}


_Section = TypeVar("_Section")


def configured(section: _Section | None, name: str) -> _Section:
    """A door's section where the door runs only when its table is given."""
    if section is None:
        raise ConfigError([f"{name}: no [{name}] table, so the door is off"])
    return section
