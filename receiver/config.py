"""Configuration: one TOML file -> frozen `Settings`, built once.

Every problem is collected and reported together, each naming its key
(`zones[1].provider: ...`). Secrets never sit in the file: a secret setting `x` is
given as `x_env = "VAR"` or `x_file = "/path"`. Relative paths are relative to the file.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from providers.base import Capabilities, setting, settings_acting_as_user
from providers.registry import UnknownProvider, is_provider, load_provider_class, provider_names
from providers.secret import Secret
from receiver.challenge import canonical_name, longest_zone
from receiver.crn import InstanceCrn, InvalidCrn
from receiver.errors import ConfigError, InvalidName

if TYPE_CHECKING:
    from receiver.door_settings import (
        AcmeDnsSettings,
        DigicertSettings,
        HttpreqSettings,
        Rfc2136DoorSettings,
        Rfc2136KeySettings,
        SecretsManagerSettings,
    )

CONFIG_ENV = "DNS_CHALLENGE_RECEIVER_CONFIG"
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_PUBLIC_KEY_URL = (
    "https://{region}.certificate-manager.cloud.ibm.com/api/v1/instances/"
    "{instance_crn}/notifications/publicKey?keyFormat=pem"
)
RESERVED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Paths of the other HTTP doors, which the callback must not take while they are open
# (`tests/test_config.py` holds these equal to the doors' own routes).
DOOR_PATHS = {
    "httpreq": frozenset({"/present", "/cleanup"}),
    "acme_dns": frozenset({"/register", "/update"}),
    "admin": frozenset({"/journal"}),
    "fileauth": frozenset({"/.well-known/pki-validation/fileauth.txt"}),
}
MAX_WORKERS = 256  # `serve --workers`: a bound on processes forked, far above any core count


@dataclass(frozen=True)
class ServerSettings:
    """The long-running HTTP server (`serve`); serverless platforms have their own limits.

    The limits below bound what one client can hold: a connection waiting for a request
    head, a body or the next request costs a descriptor and memory, so each wait ends.
    """

    listen: str = setting(default="127.0.0.1:8080", help="host:port of the HTTP server.")
    callback_path: str = setting(
        default="/callback",
        help="Path of Certificate Manager's notifications: register https://<host><path>.",
    )
    max_body_bytes: int = setting(
        default=64 * 1024,
        help="Largest request body (1024 to 16777216); a larger declared Content-Length"
        " gets 413 before any of the body is read.",
    )
    shutdown_timeout_seconds: float = setting(
        default=30.0, help="On SIGTERM, in-flight notifications get this long to finish."
    )
    header_timeout_seconds: float = setting(
        default=10.0,
        help="A request head must be complete this long after its first byte, or after"
        " the connection opened (at most 300).",
    )
    body_timeout_seconds: float = setting(
        default=30.0,
        help="A body must be complete this long after its head, else 408 (at most 300).",
    )
    keepalive_timeout_seconds: float = setting(
        default=15.0,
        help="An idle connection is closed this long after its last answer (at most 3600);"
        " set it above a proxy's upstream idle timeout.",
    )
    max_connections: int = setting(
        default=512,
        help="Open connections (1 to 1000000); beyond this, new ones are closed at once."
        " Lowered at start to fit the descriptor limit (RLIMIT_NOFILE).",
    )
    workers: int | Literal["auto"] = setting(
        default=1,
        help='Server processes sharing the ports (1 to 256); "auto": one per usable CPU.'
        " `serve --workers` wins over it.",
    )

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


@dataclass(frozen=True)
class LogSettings:
    """Structured logs on stdout."""

    format: Literal["auto", "json", "console"] = setting(
        default="auto", help="auto: JSON lines unless stdout is a terminal."
    )
    level: Literal["debug", "info", "warning", "error"] = setting(
        default="info", help="The least severe level logged."
    )


@dataclass(frozen=True)
class CertificateManagerSettings:
    """The IBM Cloud Certificate Manager door: signed notifications on `callback_path`."""

    enabled: bool = setting(default=True, help="Accept Certificate Manager notifications.")
    allowed_instances: tuple[str, ...] = setting(
        default=(),
        help="CRNs of the instances allowed to call (required when enabled); any other"
        " gets 403 before a key is fetched.",
    )
    public_key_file: Path | None = setting(
        default=None,
        help="The instance's public key (PEM), downloaded from the console; unset: fetched"
        " from public_key_url.",
    )
    public_key_url: str = setting(
        default=DEFAULT_PUBLIC_KEY_URL,
        help="Where sender keys are fetched; may use {region} and {instance_crn}, taken"
        " from the allow-listed CRN.",
    )
    algorithms: tuple[str, ...] = setting(
        default=("RS256",),
        help="JWS algorithms accepted; asymmetric only (none and HMAC cannot be configured).",
    )
    clock_skew_seconds: float = setting(
        default=300.0, help="Skew allowed on exp, nbf and iat (0 to 3600)."
    )
    key_refetch_interval_seconds: float = setting(
        default=60.0,
        help="After a signature failure, the key is refetched at most this often (rotation"
        " works, forged traffic cannot hammer the endpoint).",
    )
    key_fetch_timeout_seconds: float = setting(
        default=5.0, help="Timeout of one key fetch; then 503 sender_key_unavailable."
    )
    wait_for_propagation: bool = setting(
        default=False,
        help="Answer only once every authoritative nameserver serves the value (504"
        " propagation_timeout otherwise).",
    )


@dataclass(frozen=True)
class UserTokenSettings:
    """The ordering user's IAM access token that a notification may carry (`userToken`)."""

    verify: bool = setting(default=True, help="Verify a userToken when a notification carries one.")
    required: bool = setting(
        default=False,
        help="A notification that publishes must carry a token (401 user_token_required).",
    )
    jwks_url: str = setting(
        default="https://iam.cloud.ibm.com/identity/keys", help="IAM's signing keys (JWKS)."
    )
    issuer: str = setting(
        default="https://iam.cloud.ibm.com/identity", help="The iss claim a token must carry."
    )
    allowed_accounts: tuple[str, ...] = setting(
        default=(),
        help="Accounts (account.bss) accepted besides the one in the sending instance's CRN.",
    )
    algorithms: tuple[str, ...] = setting(
        default=("RS256",), help="JWS algorithms accepted for tokens; asymmetric only."
    )
    clock_skew_seconds: float = setting(
        default=30.0, help="Skew allowed on exp, nbf and iat (0 to 3600)."
    )
    jwks_cache_seconds: float = setting(
        default=3600.0, help="How long fetched keys are used before they are refetched."
    )
    jwks_refetch_interval_seconds: float = setting(
        default=60.0, help="An unknown key id refetches the JWKS at most this often."
    )
    jwks_fetch_timeout_seconds: float = setting(
        default=5.0, help="Timeout of one JWKS fetch; then 503 jwks_unavailable."
    )


@dataclass(frozen=True)
class DispatchSettings:
    """How changes reach a provider: deadline, retries, batching, rate budgets."""

    deadline_seconds: float = setting(
        default=10.0,
        help="Provider retries stop here; the caller then gets 503 with Retry-After.",
    )
    retry_initial_seconds: float = setting(
        default=0.2, help="First retry delay (exponential backoff with full jitter)."
    )
    retry_max_seconds: float = setting(default=3.0, help="Longest retry delay.")
    batch_window_seconds: float = setting(
        default=0.2,
        help="Changes for one zone arriving within this window go out as one batch, for"
        " adapters that batch (0 to 5; 0: never).",
    )
    rate_limits: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "Requests per second per provider account, e.g. { route53 = 5 },"
            " overriding each adapter's documented default."
        },
    )


@dataclass(frozen=True)
class PropagationSettings:
    """Checks that every authoritative nameserver serves a new value."""

    check: bool = setting(
        default=True,
        help="In the long-running server, check every new value in the background.",
    )
    timeout_seconds: float = setting(
        default=60.0, help="A value still missing after this long is a timeout (at most 3600)."
    )
    interval_seconds: float = setting(
        default=2.0, help="Each zone's nameservers are asked this often."
    )
    resolvers: tuple[str, ...] = setting(
        default=(), help="host[:port] of resolvers for NS lookups (default: the system's)."
    )
    nameserver_port: int = setting(default=53, help="Port of nameservers found by NS lookup.")
    rewrite_lagging: bool = setting(
        default=True, help="Write a value once more if it is still missing at the timeout."
    )
    max_pending: int = setting(
        default=1000,
        help="Background checks pending at most (1 to 1000000); over it, the oldest is"
        " dropped (logged, counted).",
    )


@dataclass(frozen=True)
class JournalSettings:
    """The durable record of every provider write; the sweep removes stale values."""

    enabled: bool = setting(
        default=True,
        help="Record every write; sweep stale values; clean up after failed orders.",
    )
    database: Path | None = setting(
        default=None,
        help="SQLite file; default: the `local` store's file when a zone uses it, else"
        " dns-challenge-receiver.sqlite3 beside the config. Not with [state].",
    )
    max_age_seconds: float = setting(
        default=7200.0,
        help="The sweep removes values of ours older than this (60 to 2592000).",
    )
    sweep_interval_seconds: float = setting(
        default=300.0, help="The server sweeps at start and this often (10 to 86400)."
    )
    retention_days: float = setting(
        default=90.0, help="Settled history older than this is pruned by the sweep."
    )
    admin_token: Secret | None = setting(
        default=None,
        help="Enables GET /journal for callers sending Authorization: Bearer <token>.",
        secret=True,
    )


DEFAULT_DATABASE = "dns-challenge-receiver.sqlite3"


@dataclass(frozen=True)
class StateSettings:
    """Where the journal, acme-dns accounts and `local` records live: unset, SQLite files
    on this host; `url_env`/`url_file`, one PostgreSQL database shared by every process."""

    url: Secret | None = setting(
        default=None,
        help="postgresql://user:password@host:port/database[?sslmode=...]; unset: SQLite"
        " files on this host.",
        secret=True,
    )
    max_connections: int = setting(
        default=5, help="Connections per process (1 to 100); serverless: 1-2."
    )
    statement_timeout_seconds: float = setting(
        default=5.0, help="A statement running longer is cancelled (0.1 to 600)."
    )
    connect_timeout_seconds: float = setting(
        default=5.0, help="Timeout of opening a connection (0.1 to 600)."
    )

    @property
    def shared(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class ZoneSettings:
    """A zone the receiver may write to (`provider`), or a zone whose challenge names are
    CNAMEs into one that it writes to (`cname_to`): exactly one of the two is set."""

    name: str = setting(help="The zone's name; the longest configured match wins.")
    provider: str = setting(default="", help="The DNS provider that writes it (or cname_to).")
    ttl: int = setting(default=60, help="TTL of the TXT records written (1 to 86400).")
    options: Any = setting(
        default=None,
        help="The provider's options ([zones.options]), over the [<provider>] table's.",
    )
    cname_to: str | None = setting(
        default=None,
        help="A delegated domain: its challenge names are CNAMEs into this zone, which"
        " has a provider.",
    )
    nameservers: tuple[tuple[str, str], ...] = setting(
        default=(),
        help='{ "ns1.example.com" = "192.0.2.1:53" }: ask these for propagation checks,'
        " instead of an NS lookup (split-horizon DNS).",
    )

    @property
    def provider_key(self) -> tuple[str, Any]:
        """Zones with equal provider and options share one adapter instance."""
        return (self.provider, self.options)

    @property
    def capabilities(self) -> Capabilities:
        """What the zone's adapter declares (a delegating zone has none: the defaults)."""
        return capabilities_of(self.provider) if self.cname_to is None else Capabilities()


@dataclass(frozen=True)
class Settings:
    """The whole configuration, validated: every host and door reads only this."""

    server: ServerSettings = field(default_factory=ServerSettings)
    log: LogSettings = field(default_factory=LogSettings)
    certificate_manager: CertificateManagerSettings = field(
        default_factory=CertificateManagerSettings
    )
    user_token: UserTokenSettings = field(default_factory=UserTokenSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    propagation: PropagationSettings = field(default_factory=PropagationSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    state: StateSettings = field(default_factory=StateSettings)
    # The doors that are off unless configured (`receiver.door_settings`): None without
    # their table.
    httpreq: HttpreqSettings | None = None
    acme_dns: AcmeDnsSettings | None = None
    digicert: DigicertSettings | None = None
    rfc2136_door: Rfc2136DoorSettings | None = None
    secrets_manager: SecretsManagerSettings | None = None
    zones: tuple[ZoneSettings, ...] = ()


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "log": LogSettings,
    "certificate_manager": CertificateManagerSettings,
    "user_token": UserTokenSettings,
    "dispatch": DispatchSettings,
    "propagation": PropagationSettings,
    "journal": JournalSettings,
    "state": StateSettings,
}
# Built from `receiver.door_settings.SECTIONS`, imported only when one of these is given.
DOOR_SECTIONS = ("httpreq", "acme_dns", "digicert", "rfc2136_door", "secrets_manager")


def config_path(explicit: str | None, environ: Mapping[str, str]) -> Path:
    chosen = explicit or environ.get(CONFIG_ENV)
    if not chosen:
        raise ConfigError([f"no configuration file: pass --config PATH or set {CONFIG_ENV}"])
    return Path(chosen)


def load_file(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    return from_mapping(data, base_dir=path.parent, environ=environ)


def from_mapping(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build `Settings` from parsed TOML (tests use this directly with dicts)."""
    reader = _Reader(base_dir or Path.cwd(), os.environ if environ is None else environ)
    provider_tables = []
    for key in data:
        if key in _SECTIONS or key in DOOR_SECTIONS or key == "zones":
            continue
        if is_provider(key):
            provider_tables.append(key)
        else:
            known = ", ".join([*_SECTIONS, *DOOR_SECTIONS, "zones", *provider_names()])
            reader.problem(key, f"unknown section (known: {known})")
    sections = {
        name: reader.build(cls, _table(reader, data, name), name) for name, cls in _SECTIONS.items()
    }
    if any(name in data for name in DOOR_SECTIONS):
        from receiver import door_settings

        for name, cls in door_settings.SECTIONS.items():
            if name in data:
                sections[name] = reader.build(cls, _table(reader, data, name), name)
    # A top-level table named after a provider holds defaults for every zone using it.
    reader.provider_defaults = {name: _table(reader, data, name) for name in provider_tables}
    raw_zones = data.get("zones", [])
    zones = reader.zones(raw_zones)
    # Fields that failed conversion kept their defaults, so the cross-field rules can still
    # run and every problem is reported in one go.
    settings = Settings(zones=zones, **sections)
    _check_state(settings.state, data, raw_zones, reader)
    if not settings.state.shared:  # with [state], no SQLite file anywhere
        settings = _with_journal_database(settings, reader.base_dir)
    _check(settings, reader, zones_given=bool(raw_zones))
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def _check_state(
    state: StateSettings, data: Mapping[str, Any], raw_zones: Any, reader: _Reader
) -> None:
    """The URL's shape (never echoed: it holds a password), and no SQLite file beside it."""
    for key, value, low, high in (
        ("max_connections", state.max_connections, 1, 100),
        ("statement_timeout_seconds", state.statement_timeout_seconds, 0.1, 600),
        ("connect_timeout_seconds", state.connect_timeout_seconds, 0.1, 600),
    ):
        if not low <= value <= high:
            reader.problem(f"state.{key}", f"must be between {low} and {high}")
    if state.url is None:
        return
    key = "state.url_file" if "url_file" in _mapping(data.get("state")) else "state.url_env"
    problem = url_problem(state.url.reveal())
    if problem:
        reader.problem(key, problem)
    if "database" in _mapping(data.get("journal")):
        reader.problem(
            "journal.database", f"{key} keeps the journal in PostgreSQL: remove journal.database"
        )
    zones = raw_zones if isinstance(raw_zones, list) else []
    provider_tables = [
        (f"{name}.database", _mapping(data.get(name)))
        for name in reader.provider_defaults
        if capabilities_of(name).local_store
    ]
    local_tables = provider_tables + [
        (f"zones[{i}].options.database", _mapping(_mapping(zone).get("options")))
        for i, zone in enumerate(zones)
        if capabilities_of(_mapping(zone).get("provider")).local_store
    ]
    for name, table in local_tables:
        if "database" in table:
            reader.problem(name, f"{key} keeps local records in PostgreSQL: remove {name}")


def url_problem(url: str) -> str | None:
    """What is wrong with a database URL's shape, without repeating the URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("postgresql", "postgres"):
        return f"must be a postgresql:// URL, not {parts.scheme or 'a bare string'!r}"
    if not parts.hostname and "host=" not in parts.query:
        return "names no host: postgresql://user:password@host:port/database"
    if not parts.path.strip("/"):
        return "names no database: postgresql://user:password@host:port/database"
    return None


def capabilities_of(provider: object) -> Capabilities:
    """What the adapter registered as `provider` declares; the defaults for a name no
    adapter has (reported as a problem elsewhere)."""
    if not isinstance(provider, str):
        return Capabilities()
    try:
        return load_provider_class(provider).capabilities
    except UnknownProvider:
        return Capabilities()


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _with_journal_database(settings: Settings, base_dir: Path) -> Settings:
    """The journal shares the `local` store's file unless told otherwise."""
    if settings.journal.database is not None:
        return settings
    local = [z.options.database for z in settings.zones if z.capabilities.local_store]
    database = local[0] if local else base_dir / DEFAULT_DATABASE
    return dataclasses.replace(
        settings, journal=dataclasses.replace(settings.journal, database=database)
    )


def with_listen(settings: Settings, listen: str) -> Settings:
    """`settings` listening elsewhere (the `serve --listen` override)."""
    try:
        split_host_port(listen)
    except ValueError as exc:
        raise ConfigError([f"--listen: {exc}"]) from None
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, listen=listen))


def with_dns_listen(settings: Settings, listen: str) -> Settings:
    """`settings` with the built-in responder elsewhere (the `serve --dns-listen` override)."""
    try:
        split_host_port(listen)
    except ValueError as exc:
        raise ConfigError([f"--dns-listen: {exc}"]) from None
    zones = tuple(
        dataclasses.replace(z, options=dataclasses.replace(z.options, dns_listen=listen))
        if z.capabilities.serves_dns
        else z
        for z in settings.zones
    )
    if zones == settings.zones:
        raise ConfigError(["--dns-listen: no zone uses the local provider"])
    return dataclasses.replace(settings, zones=zones)


def _table(reader: _Reader, data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        reader.problem(name, "must be a table")
        return {}
    return value


class _Reader:
    """Converts TOML values by the declared field types, collecting problems."""

    def __init__(self, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.environ = environ
        self.problems: list[str] = []
        self.provider_defaults: dict[str, Mapping[str, Any]] = {}
        # zones[i] -> option -> the key it was set under (zones[i].options.x, or [provider])
        self.option_keys: dict[str, dict[str, str]] = {}

    def problem(self, key: str, message: str) -> None:
        text = f"{key}: {message}"
        if text not in self.problems:  # a shared [provider] table is read once per zone
            self.problems.append(text)

    def build(self, cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
        if not data:  # an absent table: its defaults, without evaluating its type hints
            try:
                return cls()
            except TypeError:
                pass  # a required setting: reported below
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        secret_keys = {
            f"{name}_{suffix}": name
            for name in fields
            if hints[name] in (Secret, Secret | None)
            for suffix in ("env", "file")
        }
        for key in data:
            if key not in fields and key not in secret_keys:
                known = ", ".join(sorted([*fields, *secret_keys])) or "none"
                self.problem(f"{prefix}.{key}", f"unknown setting (known: {known})")
        values: dict[str, Any] = {}
        for name, fld in fields.items():
            key = f"{prefix}.{name}"
            hint = hints[name]
            if hint in (Secret, Secret | None):
                secret = self.secret(data, name, prefix)
                if secret is not None:
                    values[name] = secret
                elif fld.default is dataclasses.MISSING:
                    self.problem(key, f"required: set {name}_env or {name}_file")
                continue
            if name not in data:
                if (
                    fld.default is dataclasses.MISSING
                    and fld.default_factory is dataclasses.MISSING
                ):
                    self.problem(key, "required")
                continue
            converted = self.convert(data[name], hint, key)
            if converted is not _INVALID:
                values[name] = converted
        try:
            return cls(**values)
        except TypeError:
            return None  # a required value was missing; already reported

    def secret(self, data: Mapping[str, Any], name: str, prefix: str) -> Secret | None:
        env_key, file_key = f"{name}_env", f"{name}_file"
        if name in data:
            self.problem(
                f"{prefix}.{name}",
                f"secrets are never written in the file: use {env_key} or {file_key}",
            )
        if env_key in data and file_key in data:
            self.problem(f"{prefix}.{name}", f"set only one of {env_key} and {file_key}")
            return None
        if env_key in data:
            var = data[env_key]
            if not isinstance(var, str) or not var:
                self.problem(f"{prefix}.{env_key}", "must name an environment variable")
                return None
            value = self.environ.get(var)
            if not value:
                self.problem(f"{prefix}.{env_key}", f"environment variable {var} is not set")
                return None
            return Secret(value)
        if file_key in data:
            path = self.convert(data[file_key], Path, f"{prefix}.{file_key}")
            if path is _INVALID:
                return None
            try:
                text = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                self.problem(f"{prefix}.{file_key}", f"cannot read {path}: {exc.strerror or exc}")
                return None
            if not text:
                self.problem(f"{prefix}.{file_key}", f"{path} is empty")
                return None
            return Secret(text)
        return None

    def convert(self, value: Any, hint: Any, key: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType) and type(None) in args:
            inner = next(a for a in args if a is not type(None))
            return self.convert(value, inner, key)
        if origin in (typing.Union, types.UnionType):
            return self._either(value, args, key)
        if origin is Literal:
            if value not in args:
                self.problem(key, f"must be one of {', '.join(map(repr, args))}, not {value!r}")
                return _INVALID
            return value
        if origin is dict:
            if not isinstance(value, Mapping):
                self.problem(key, "must be a table")
                return _INVALID
            entries = {k: self.convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
            return _INVALID if _INVALID in entries.values() else entries
        if origin is tuple:
            if not isinstance(value, list):
                self.problem(key, "must be a list")
                return _INVALID
            items = [self.convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
            return _INVALID if _INVALID in items else tuple(items)
        if hint is bool:
            if not isinstance(value, bool):
                self.problem(key, f"must be true or false, not {value!r}")
                return _INVALID
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.problem(key, f"must be an integer, not {value!r}")
                return _INVALID
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.problem(key, f"must be a number, not {value!r}")
                return _INVALID
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                self.problem(key, f"must be a string, not {value!r}")
                return _INVALID
            return value
        if hint is Path:
            if not isinstance(value, str) or not value:
                self.problem(key, "must be a path string")
                return _INVALID
            path = Path(value).expanduser()
            return path if path.is_absolute() else self.base_dir / path
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):  # [[section.items]]
            if not isinstance(value, Mapping):
                self.problem(key, "must be a table")
                return _INVALID
            built = self.build(hint, value, key)
            return _INVALID if built is None else built
        raise TypeError(f"unsupported setting type {hint!r} for {key}")  # programming error

    def _either(self, value: Any, hints: tuple[Any, ...], key: str) -> Any:
        """The first of `hints` that `value` converts to; else one problem naming them all
        (`must be an integer or one of 'auto', not 'x'`)."""
        wanted = []
        for hint in hints:
            trial = _Reader(self.base_dir, self.environ)
            converted = trial.convert(value, hint, key)
            if converted is not _INVALID and not trial.problems:
                return converted
            for problem in trial.problems:
                wanted.append(problem.removeprefix(f"{key}: must be ").split(", not ")[0])
        self.problem(key, f"must be {' or '.join(wanted)}, not {value!r}")
        return _INVALID

    def zones(self, raw: Any) -> tuple[ZoneSettings, ...]:
        if not isinstance(raw, list):
            self.problem("zones", "must be an array of tables ([[zones]])")
            return ()
        zones: list[ZoneSettings] = []
        for index, entry in enumerate(raw):
            key = f"zones[{index}]"
            if not isinstance(entry, Mapping):
                self.problem(key, "must be a table")
                continue
            zone = self.zone(entry, key)
            if zone is not None:
                zones.append(zone)
        return tuple(zones)

    def zone(self, entry: Mapping[str, Any], key: str) -> ZoneSettings | None:
        known = {"name", "provider", "ttl", "options", "cname_to", "nameservers"}
        for unknown in sorted(set(entry) - known):
            self.problem(f"{key}.{unknown}", f"unknown setting (known: {', '.join(sorted(known))})")
        name = None
        try:
            name = canonical_name(entry.get("name"), allow_underscore=True)
        except InvalidName as exc:
            self.problem(f"{key}.name", exc.detail)
        ttl = entry.get("ttl", 60)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= 86400:
            self.problem(f"{key}.ttl", f"must be an integer from 1 to 86400, not {ttl!r}")
        nameservers = self._nameservers(entry.get("nameservers", {}), f"{key}.nameservers")
        if "cname_to" in entry:
            zone = self._delegating_zone(entry, key, name, ttl)
            return dataclasses.replace(zone, nameservers=nameservers) if zone else None
        provider = entry.get("provider")
        options: Any = None
        if not isinstance(provider, str):
            self.problem(f"{key}.provider", "required: the name of a DNS provider (or cname_to)")
        else:
            try:
                cls = load_provider_class(provider)
            except UnknownProvider as exc:
                self.problem(f"{key}.provider", str(exc))
            else:
                raw = entry.get("options", {})
                if not isinstance(raw, Mapping):
                    self.problem(f"{key}.options", "must be a table")
                else:
                    defaults = self.provider_defaults.get(provider, {})
                    prefix = f"{key}.options" if raw else provider
                    options = self.build(cls.Settings, {**defaults, **raw}, prefix)
                    for option, problem in _option_problems(options):
                        self.problem(f"{prefix}.{option}", problem)
                    self.option_keys[key] = {
                        option: f"{key}.options.{option}"
                        if option in raw
                        else f"{provider}.{option}"
                        for option in {**defaults, **raw}
                    }
        if name is None or not isinstance(provider, str) or options is None:
            return None
        return ZoneSettings(
            name=name, provider=provider, ttl=ttl, options=options, nameservers=nameservers
        )

    def _nameservers(self, raw: Any, key: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(raw, Mapping):
            self.problem(key, 'must be a table of name = "host:port"')
            return ()
        found = []
        for name, address in raw.items():
            try:
                canonical = canonical_name(name)
                if not isinstance(address, str):
                    raise ValueError(f"{address!r} is not a string")
                split_host_port(address if ":" in address else f"{address}:53")
            except (InvalidName, ValueError) as exc:
                self.problem(f"{key}.{name}", getattr(exc, "detail", str(exc)))
                continue
            found.append((canonical, address if ":" in address else f"{address}:53"))
        return tuple(found)

    def _delegating_zone(
        self, entry: Mapping[str, Any], key: str, name: str | None, ttl: int
    ) -> ZoneSettings | None:
        for conflicting in ("provider", "options"):
            if conflicting in entry:
                self.problem(f"{key}.{conflicting}", "a zone with cname_to has no provider")
        try:
            target = canonical_name(entry["cname_to"], allow_underscore=True)
        except InvalidName as exc:
            self.problem(f"{key}.cname_to", exc.detail)
            return None
        if name is None:
            return None
        return ZoneSettings(name=name, ttl=ttl, cname_to=target)


_INVALID: Any = object()


def _option_problems(options: Any) -> list[tuple[str, str]]:
    """What an adapter's own `Settings.problems()` finds (see providers/base.py)."""
    problems = getattr(options, "problems", None)
    return list(problems()) if callable(problems) else []


def split_host_port(listen: str) -> tuple[str, int]:
    """`"[::1]:8053"` -> `("::1", 8053)`; ValueError unless it is host:port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    """The inverse of `split_host_port`: IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check(settings: Settings, reader: _Reader, *, zones_given: bool) -> None:
    """Rules that span fields: ranges, cross-references, fail-closed requirements."""
    server = settings.server
    try:
        split_host_port(server.listen)
    except ValueError as exc:
        reader.problem("server.listen", str(exc))
    path = server.callback_path
    if not path.startswith("/") or path in RESERVED_PATHS or any(c in path for c in "?#{} "):
        reader.problem("server.callback_path", f"must be a plain absolute path, not {path!r}")
    open_doors = {
        "httpreq": settings.httpreq is not None and settings.httpreq.enabled,
        "acme_dns": settings.acme_dns is not None and settings.acme_dns.enabled,
        "admin": settings.journal.enabled and settings.journal.admin_token is not None,
        "fileauth": settings.digicert is not None and settings.digicert.fileauth,
    }
    for door, paths in DOOR_PATHS.items():
        if settings.certificate_manager.enabled and open_doors[door] and path in paths:
            reader.problem("server.callback_path", f"{path} is already the {door} door's path")
    if not 1024 <= server.max_body_bytes <= 16 * 1024 * 1024:
        reader.problem("server.max_body_bytes", "must be between 1024 and 16777216")
    for name, value, most in [
        ("server.header_timeout_seconds", server.header_timeout_seconds, 300),
        ("server.body_timeout_seconds", server.body_timeout_seconds, 300),
        ("server.keepalive_timeout_seconds", server.keepalive_timeout_seconds, 3600),
    ]:
        if not 0 < value <= most:
            reader.problem(name, f"must be greater than 0 and at most {most}")
    if not 1 <= server.max_connections <= 1_000_000:
        reader.problem("server.max_connections", "must be between 1 and 1000000")
    if server.workers != "auto" and not 1 <= server.workers <= MAX_WORKERS:
        reader.problem("server.workers", f'must be between 1 and {MAX_WORKERS}, or "auto"')

    cm = settings.certificate_manager
    if cm.enabled and not cm.allowed_instances:
        reader.problem(
            "certificate_manager.allowed_instances",
            "required: the CRNs of the Certificate Manager instances allowed to call",
        )
    for index, crn in enumerate(cm.allowed_instances):
        try:
            InstanceCrn.parse(crn)
        except InvalidCrn as exc:
            reader.problem(f"certificate_manager.allowed_instances[{index}]", str(exc))
    if cm.public_key_file is not None and not cm.public_key_file.is_file():
        reader.problem("certificate_manager.public_key_file", f"{cm.public_key_file} is not a file")
    _check_url(reader, "certificate_manager.public_key_url", cm.public_key_url, template=True)
    _check_algorithms(reader, "certificate_manager.algorithms", cm.algorithms)

    ut = settings.user_token
    if ut.required and not ut.verify:
        reader.problem("user_token.required", "a required user token must also be verified")
    if ut.verify:
        _check_url(reader, "user_token.jwks_url", ut.jwks_url, template=False)
        if not ut.issuer:
            reader.problem("user_token.issuer", "must not be empty")
    _check_algorithms(reader, "user_token.algorithms", ut.algorithms)
    if not ut.verify:
        _check_acting_as_user(settings, reader)

    for name, value in [
        ("certificate_manager.clock_skew_seconds", cm.clock_skew_seconds),
        ("user_token.clock_skew_seconds", ut.clock_skew_seconds),
    ]:
        if not 0 <= value <= 3600:
            reader.problem(name, "must be between 0 and 3600")
    for name, value in [
        ("certificate_manager.key_fetch_timeout_seconds", cm.key_fetch_timeout_seconds),
        ("user_token.jwks_fetch_timeout_seconds", ut.jwks_fetch_timeout_seconds),
        ("dispatch.deadline_seconds", settings.dispatch.deadline_seconds),
        ("dispatch.retry_initial_seconds", settings.dispatch.retry_initial_seconds),
        ("dispatch.retry_max_seconds", settings.dispatch.retry_max_seconds),
    ]:
        if not 0 < value <= 300:
            reader.problem(name, "must be greater than 0 and at most 300")
    propagation = settings.propagation
    if not 0 < propagation.interval_seconds <= propagation.timeout_seconds <= 3600:
        reader.problem("propagation", "need 0 < interval_seconds <= timeout_seconds <= 3600")
    for index, resolver in enumerate(propagation.resolvers):
        try:
            split_host_port(resolver if ":" in resolver else f"{resolver}:53")
        except ValueError as exc:
            reader.problem(f"propagation.resolvers[{index}]", str(exc))
    journal = settings.journal
    if not 60 <= journal.max_age_seconds <= 30 * 86400:
        reader.problem("journal.max_age_seconds", "must be between 60 and 2592000")
    if not 10 <= journal.sweep_interval_seconds <= 86400:
        reader.problem("journal.sweep_interval_seconds", "must be between 10 and 86400")
    if not 1 <= journal.retention_days <= 3650:
        reader.problem("journal.retention_days", "must be between 1 and 3650")
    if not 0 < propagation.nameserver_port <= 65535:
        reader.problem("propagation.nameserver_port", "must be a port number")
    if not 1 <= propagation.max_pending <= 1_000_000:
        reader.problem("propagation.max_pending", "must be between 1 and 1000000")
    if not 0 <= settings.dispatch.batch_window_seconds <= 5:
        reader.problem("dispatch.batch_window_seconds", "must be between 0 and 5")
    for provider, rate in settings.dispatch.rate_limits.items():
        if not is_provider(provider):
            reader.problem(f"dispatch.rate_limits.{provider}", "no provider has that name")
        if not 0 < rate <= 100_000:
            reader.problem(f"dispatch.rate_limits.{provider}", "must be greater than 0")

    if not zones_given:
        reader.problem("zones", "required: at least one [[zones]] entry")
    _check_local(settings, reader)
    seen: dict[str, int] = {}
    for index, zone in enumerate(settings.zones):
        if zone.name in seen:
            reader.problem(
                f"zones[{index}].name", f"{zone.name!r} repeats zones[{seen[zone.name]}]"
            )
        seen.setdefault(zone.name, index)
    doors = (settings.httpreq, settings.acme_dns, settings.rfc2136_door, settings.secrets_manager)
    if not cm.enabled and not any(door is not None and door.enabled for door in doors):
        reader.problem("certificate_manager.enabled", "every door is disabled: enable at least one")
    _check_digicert(settings, reader)
    _check_doors(settings, reader)
    _check_secrets_manager(settings, reader)
    written = [z.name for z in settings.zones if z.cname_to is None]
    for index, zone in enumerate(settings.zones):
        if zone.cname_to is not None and longest_zone(zone.cname_to, written) is None:
            reader.problem(
                f"zones[{index}].cname_to",
                f"{zone.cname_to!r} is inside no zone with a provider: add one for it",
            )


def _check_acting_as_user(settings: Settings, reader: _Reader) -> None:
    """A zone whose adapter acts only as the ordering user could never write when no
    verified user token is passed on: say so at start, naming both keys."""
    for index, zone in enumerate(settings.zones):
        for option in settings_acting_as_user(zone.options):
            key = reader.option_keys.get(f"zones[{index}]", {}).get(option)
            value = getattr(zone.options, option)
            reader.problem(
                key or f"zones[{index}].options.{option}",
                f'{option} = "{value}" acts only with the ordering user\'s verified token, and'
                " user_token.verify = false passes none on: every write would fail. Set"
                f" user_token.verify = true, or change {option}",
            )


def base_url_problem(url: str) -> str | None:
    """An https:// URL, or http:// to a loopback address only (tests, local proxies)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "must be an https:// URL"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname:
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return None
        except ValueError:
            if parts.hostname == "localhost":
                return None
        return "http:// only for a loopback address; use https://"
    return "must be an https:// URL"


SM_REGIONS = frozenset(
    {
        "us-south", "us-east", "ca-tor", "ca-mon", "br-sao", "eu-gb", "eu-de", "eu-es",
        "jp-tok", "jp-osa", "au-syd", "in-mum", "in-che",
    }
)  # fmt: skip


def _check_secrets_manager(settings: Settings, reader: _Reader) -> None:
    sm = settings.secrets_manager
    if sm is None or not sm.enabled:
        return
    for key, value, low, high in (
        ("interval_seconds", sm.interval_seconds, 10, 86400),
        ("rate_per_second", sm.rate_per_second, 0.1, 20),
        ("lease_seconds", sm.lease_seconds, 60, 86400),
    ):
        if not low <= value <= high:
            reader.problem(f"secrets_manager.{key}", f"must be between {low} and {high}")
    if not sm.instances:
        reader.problem(
            "secrets_manager.instances", "name at least one [[secrets_manager.instances]]"
        )
    if not settings.journal.enabled:
        reader.problem("secrets_manager.enabled", "needs the journal (journal.enabled = true)")
    seen: set[tuple[str, str]] = set()
    for index, instance in enumerate(sm.instances):
        key = f"secrets_manager.instances[{index}]"
        if instance is None:
            continue
        if not re.fullmatch(_GUID, instance.instance_id):
            reader.problem(f"{key}.instance_id", "must be the instance's GUID")
        if instance.region not in SM_REGIONS:
            reader.problem(f"{key}.region", f"must be one of {', '.join(sorted(SM_REGIONS))}")
        if (instance.instance_id, instance.region) in seen:
            reader.problem(key, "the same instance twice")
        seen.add((instance.instance_id, instance.region))
        if instance.endpoint not in ("private", "public"):
            problem = base_url_problem(instance.endpoint)
            if problem:
                reader.problem(f"{key}.endpoint", problem)
        problem = base_url_problem(instance.iam_url)
        if problem:
            reader.problem(f"{key}.iam_url", problem)
        profile = instance.cr_token_file is not None or instance.trusted_profile_id
        if (instance.api_key is None) == (not profile):
            reader.problem(
                f"{key}.api_key_env",
                "set exactly one of api_key_env/api_key_file and"
                " cr_token_file + trusted_profile_id",
            )
        elif profile and not (instance.cr_token_file and instance.trusted_profile_id):
            reader.problem(f"{key}.trusted_profile_id", "cr_token_file needs trusted_profile_id")


# Compiled (and cached by `re`) only when a Secrets Manager instance is checked.
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def _check_doors(settings: Settings, reader: _Reader) -> None:
    _check_rfc2136_door(settings, reader)
    httpreq = settings.httpreq
    if httpreq is not None and httpreq.enabled:
        if not httpreq.username or ":" in httpreq.username:
            reader.problem("httpreq.username", "required, without ':'")
        if httpreq.password is None:
            reader.problem("httpreq.password", "required: set password_env or password_file")
    acme_dns = settings.acme_dns
    if acme_dns is None:
        return
    if acme_dns.enabled:
        try:
            zone = canonical_name(acme_dns.zone)
        except InvalidName as exc:
            reader.problem("acme_dns.zone", exc.detail)
            return
        served = {z.name: z for z in settings.zones}
        if zone not in served or served[zone].cname_to is not None:
            reader.problem("acme_dns.zone", f"{zone!r} must be a [[zones]] entry with a provider")
    for key, value, low, high in (
        ("register_burst", acme_dns.register_burst, 1, 10_000),
        ("register_per_hour", acme_dns.register_per_hour, 0, 1_000_000),
        ("max_accounts", acme_dns.max_accounts, 0, 100_000_000),
        ("max_pending_password_checks", acme_dns.max_pending_password_checks, 1, 10_000),
    ):
        if not low <= value <= high:
            reader.problem(f"acme_dns.{key}", f"must be between {low} and {high}")


def _check_rfc2136_door(settings: Settings, reader: _Reader) -> None:
    """Keys that can work and can only reach configured zones; fail closed otherwise."""
    door = settings.rfc2136_door
    if door is None or not door.enabled:
        return
    if door.listen is not None:
        try:
            split_host_port(door.listen)
        except ValueError as exc:
            reader.problem("rfc2136_door.listen", str(exc))
    if not 1 <= door.fudge_seconds <= 3600:
        reader.problem("rfc2136_door.fudge_seconds", "must be between 1 and 3600")
    if not settings.journal.enabled:
        reader.problem(
            "rfc2136_door.enabled",
            "needs the journal (journal.enabled): an RRset delete removes only the values"
            " the journal shows this key wrote",
        )
    if not door.keys:
        reader.problem("rfc2136_door.keys", "required: one valid [[rfc2136_door.keys]] or more")
    zones = {zone.name for zone in settings.zones}
    seen: set[str] = set()
    for index, key in enumerate(door.keys):
        _check_rfc2136_key(key, f"rfc2136_door.keys[{index}]", zones, seen, settings, reader)


def _check_rfc2136_key(
    key: Rfc2136KeySettings,
    prefix: str,
    zones: set[str],
    seen: set[str],
    settings: Settings,
    reader: _Reader,
) -> None:
    try:
        name = canonical_name(key.name, allow_underscore=True)
    except InvalidName as exc:
        reader.problem(f"{prefix}.name", exc.detail)
    else:
        if name in seen:
            reader.problem(f"{prefix}.name", f"{name!r} names another key too")
        seen.add(name)
        httpreq = settings.httpreq
        if httpreq is not None and httpreq.enabled and name == httpreq.username:
            # The journal tells senders apart by name: one name, one sender.
            reader.problem(f"{prefix}.name", "must differ from httpreq.username")
    try:
        secret = base64.b64decode(key.secret.reveal(), validate=True)
    except (binascii.Error, ValueError):
        reader.problem(f"{prefix}.secret", "is not valid base64 (tsig-keygen prints it so)")
    else:
        if len(secret) < 16:
            reader.problem(f"{prefix}.secret", "is under 16 bytes: make one with tsig-keygen")
    if not key.zones:
        reader.problem(f"{prefix}.zones", "required: the [[zones]] this key may change")
    for index, zone in enumerate(key.zones):
        try:
            canonical = canonical_name(zone, allow_underscore=True)
        except InvalidName as exc:
            reader.problem(f"{prefix}.zones[{index}]", exc.detail)
            continue
        if canonical not in zones:
            reader.problem(f"{prefix}.zones[{index}]", f"{canonical!r} is not a [[zones]] entry")
    if not key.names:
        reader.problem(f"{prefix}.names", "required: at least one name pattern")
    for index, pattern in enumerate(key.names):
        if not pattern or pattern != pattern.lower() or pattern.endswith("."):
            reader.problem(
                f"{prefix}.names[{index}]",
                "write a pattern in lower case without a trailing dot, e.g. _acme-challenge.*",
            )
    if not 0.1 <= key.changes_per_minute <= 10_000_000:
        reader.problem(f"{prefix}.changes_per_minute", "must be between 0.1 and 10000000")
    if not 1 <= key.burst <= 10_000:
        reader.problem(f"{prefix}.burst", "must be between 1 and 10000")


def _check_digicert(settings: Settings, reader: _Reader) -> None:
    digicert = settings.digicert
    if digicert is None or not digicert.fileauth:
        return
    if digicert.auth_key is None:
        reader.problem("digicert.auth_key", "required with fileauth: set auth_key_env or _file")
    if not digicert.fileauth_csr_files:
        reader.problem("digicert.fileauth_csr_files", "name at least one host and its CSR file")
    zones = [zone.name for zone in settings.zones]
    for host, path in digicert.fileauth_csr_files.items():
        key = f"digicert.fileauth_csr_files.{host}"
        try:
            name = canonical_name(host)
        except InvalidName as exc:
            reader.problem(key, exc.detail)
            continue
        if name != host:
            reader.problem(key, f"write the host as {name!r}")
        elif longest_zone(name, zones) is None:
            reader.problem(key, f"{name} is in no configured zone")
        if not path.is_file():
            reader.problem(key, f"{path} is not a readable file")


def _check_local(settings: Settings, reader: _Reader) -> None:
    """Zones served by the built-in responder (`local`) share one store and responder."""
    local = [(i, z) for i, z in enumerate(settings.zones) if z.capabilities.serves_dns]
    if not local:
        return
    first = local[0][1].options
    for index, zone in local[1:]:
        if zone.options != first:
            reader.problem(
                f"zones[{index}].options",
                "local zones share one store and DNS responder: set their options in [local]",
            )
    try:
        split_host_port(first.dns_listen)
    except ValueError as exc:
        reader.problem("local.dns_listen", str(exc))
    for index, name in enumerate(first.nameservers):
        try:
            canonical_name(name)
        except InvalidName as exc:
            reader.problem(f"local.nameservers[{index}]", exc.detail)
    for index, address in enumerate(first.nameserver_addresses):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            reader.problem(f"local.nameserver_addresses[{index}]", f"{address!r} is not an IP")
    if not 0 <= first.negative_ttl <= 86400:
        reader.problem("local.negative_ttl", "must be between 0 and 86400")
    if not 1 <= first.value_lifetime_seconds <= 7 * 86400:
        reader.problem("local.value_lifetime_seconds", "must be between 1 and 604800")


def _check_url(reader: _Reader, key: str, url: str, *, template: bool) -> None:
    if template:
        try:
            url = url.format(region="region", instance_crn="crn")
        except (KeyError, IndexError, ValueError):
            reader.problem(key, "may use only the placeholders {region} and {instance_crn}")
            return
    if not url.startswith(("https://", "http://")):
        reader.problem(key, "must be an http(s) URL")


def _check_algorithms(reader: _Reader, key: str, algorithms: tuple[str, ...]) -> None:
    if not algorithms:
        reader.problem(key, "must list at least one algorithm")
    for alg in algorithms:
        if alg not in ASYMMETRIC_ALGORITHMS:
            reader.problem(
                key,
                f"{alg!r} is not allowed: only asymmetric signature algorithms "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})",
            )
