"""`dns-challenge-receiver` (also `python -m receiver`): serve, check-config, dev tools."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from providers.errors import ProviderError
from receiver import __version__, config, logs, signing, workers
from receiver.challenge import CHALLENGE_LABEL, Action, Challenge, challenge_record_name
from receiver.errors import ConfigError, ReceiverError, StateUnavailable
from receiver.hosts.http import serving
from receiver.keys import FileSenderKeys, KeyMaterialError
from receiver.policy import Policy

log = structlog.get_logger("receiver")
DEMO_DIR = Path(".demo")
DIGICERT_AUTH_KEY_ENV = "DIGICERT_AUTH_KEY"
DEMO_KEY = "notification-key.pem"
DEMO_CONFIG = "receiver.toml"  # written by `serve --demo`, so every command can use the demo
EVENT_ALIASES = {
    "required": "cert_domain_validation_required",
    "completed": "cert_domain_validation_completed",
}


class _CommandError(Exception):
    """A command cannot start: printed as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _status(lambda: int(args.run(args)))


def _status(run: Callable[[], int]) -> int:
    """`run`'s exit status, or the status of the error that stopped it, said in one line."""
    try:
        return run()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except StateUnavailable as exc:  # the shared database: say why, never a traceback
        print(f"state: {exc.reason}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dns-challenge-receiver", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the HTTP service")
    _config_option(serve)
    serve.add_argument(
        "--demo",
        action="store_true",
        help="run the built-in demo: a generated key in --demo-dir and the zone "
        "example.test served by the built-in DNS responder; no config file needed",
    )
    serve.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help=_DEMO_DIR_HELP)
    serve.add_argument("--listen", help="host:port, overriding server.listen")
    serve.add_argument("--dns-listen", help="host:port, overriding local.dns_listen")
    serve.add_argument(
        "--workers",
        type=_workers,
        metavar="N|auto",
        help="server processes sharing the ports (auto: one per usable CPU), overriding "
        "server.workers (default 1: this process serves)",
    )
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="validate the config, print zone routes")
    _config_option(check, demo=True)
    check.add_argument(
        "--probe",
        action="store_true",
        help="also write, read back and remove a probe value in every zone (proves the "
        "credentials and that the zone is the intended one)",
    )
    check.set_defaults(run=_check_config)

    delegation = commands.add_parser(
        "delegation", help="print the CNAME records that delegate domains' challenges to us"
    )
    _config_option(delegation)
    delegation.add_argument(
        "domains", nargs="+", metavar="DOMAIN", help="a domain whose challenges to delegate"
    )
    delegation.set_defaults(run=_delegation)

    sweep = commands.add_parser(
        "sweep", help="remove values of ours older than journal.max_age_seconds (for cron)"
    )
    _config_option(sweep, demo=True)
    sweep.add_argument("--max-age", type=_duration, help="e.g. 2h, 30m, 90s (default: config)")
    sweep.add_argument("--dry-run", action="store_true", help="only list what would go")
    sweep.set_defaults(run=_sweep)

    secrets_manager = commands.add_parser(
        "secrets-manager", help="IBM Cloud Secrets Manager manual-DNS orders"
    )
    sm_actions = secrets_manager.add_subparsers(required=True, metavar="ACTION")
    sm_sync = sm_actions.add_parser(
        "sync", help="one pass: publish, validate, clean up (for cron and Code Engine jobs)"
    )
    _config_option(sm_sync)
    sm_sync.set_defaults(run=_secrets_manager_sync)

    journal = commands.add_parser("journal", help="list what was written and removed")
    _config_option(journal, demo=True)
    journal.add_argument("--since", type=_since, help="a duration (2h, 7d) or an ISO time")
    journal.add_argument("--domain", help="this name and the names below it")
    journal.add_argument("--limit", type=int, default=1000, help="at most this many entries")
    journal.add_argument("--json", action="store_true", help="one JSON object per line")
    journal.set_defaults(run=_journal)

    migrate = commands.add_parser(
        "migrate", help="bring the shared database's schema up to date ([state])"
    )
    _config_option(migrate)
    migrate.set_defaults(run=_migrate)

    query = commands.add_parser(
        "query", help="ask a DNS server for a record, directly, as a CA would (no dig needed)"
    )
    query.add_argument("name", help="e.g. _acme-challenge.www.example.test")
    query.add_argument("--type", default="TXT", help="record type (default: TXT)")
    query.add_argument(
        "--server",
        default=DEMO_DNS,
        help=f"host:port of the nameserver to ask (default: the demo's responder, {DEMO_DNS})",
    )
    query.add_argument("--timeout", type=float, default=5, help="seconds to wait for an answer")
    query.set_defaults(run=_query)

    _digicert_parser(commands)

    simulate = commands.add_parser(
        "simulate",
        help="play Certificate Manager: order from an ACME CA, notify the receiver, validate",
    )
    simulate.add_argument("--acme-directory", required=True, help="the CA's directory URL")
    simulate.add_argument("--callback", required=True, help="the receiver's callback URL")
    simulate.add_argument(
        "--domain", action="append", required=True, dest="domains", help=_DOMAINS_HELP
    )
    simulate.add_argument(
        "--demo", action="store_true", help="sign as the demo instance (see serve --demo)"
    )
    simulate.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help=_DEMO_DIR_HELP)
    simulate.add_argument("--key", type=Path, help="private key PEM of the sender")
    simulate.add_argument("--instance-crn", help="the sending instance's CRN")
    _algorithm_option(simulate, "the sender key's signature algorithm")
    simulate.add_argument(
        "--ca-bundle", help="CA certificates for the ACME CA and the callback (PEM file)"
    )
    simulate.add_argument("--timeout", type=float, default=120, help="seconds to wait for the CA")
    simulate.add_argument("--output", type=Path, help="write the chain here instead of stdout")
    simulate.set_defaults(run=_simulate)

    keygen = commands.add_parser("keygen", help="write a signing key pair (for local testing)")
    keygen.add_argument(
        "path", type=Path, help="private key file; the public half goes to <name>.pub.pem beside it"
    )
    _algorithm_option(keygen, "the key's signature algorithm")
    keygen.set_defaults(run=_keygen)

    sign = commands.add_parser(
        "sign-notification",
        help="print a signed notification body, as Certificate Manager would send it",
    )
    sign.add_argument(
        "--demo", action="store_true", help="sign with the demo key and instance (see serve --demo)"
    )
    sign.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help=_DEMO_DIR_HELP)
    sign.add_argument("--key", type=Path, help="private key PEM of the sender")
    sign.add_argument("--instance-crn", help="the sending instance's CRN")
    sign.add_argument("--domain", required=True, help="the domain, e.g. *.www.example.test")
    sign.add_argument(
        "--event",
        default="required",
        help="required, completed, or any event_type (default: required)",
    )
    sign.add_argument("--value", help="TXT value (default: a random 43-character value)")
    sign.add_argument(
        "--record-name", default="_acme-challenge", help="txt_record_name in the challenge"
    )
    sign.add_argument(
        "--certificate-crn", help="the certificate's CRN (default: <instance CRN>:certificate:demo)"
    )
    _algorithm_option(sign, "the signature algorithm of --key")
    sign.add_argument("--lifetime", type=int, default=300, help="seconds until exp (0: no exp)")
    sign.add_argument(
        "--user-token-key", type=Path, help="also embed a userToken signed with this private key"
    )
    sign.add_argument("--user-token-kid", default="local-1", help="the userToken's key id")
    sign.add_argument(
        "--user-token-issuer", default=signing.IAM_ISSUER, help="the userToken's iss claim"
    )
    sign.add_argument("--account", help="user token account (default: the instance's)")
    sign.set_defaults(run=_sign_notification)
    return parser


_DEMO_DIR_HELP = "where the demo keeps its key, config and records"
_DOMAINS_HELP = "a domain (repeat for several)"


def _digicert_parser(commands: Any) -> None:
    digicert_command = commands.add_parser(
        "digicert",
        help="DigiCert AuthKey request tokens (DV immediate issuance)",
        description=f"The AuthKey comes from ${DIGICERT_AUTH_KEY_ENV} or --auth-key-file, "
        "never from an argument. The CSR is hashed exactly as the file holds it.",
    )
    actions = digicert_command.add_subparsers(required=True, metavar="ACTION")
    # No abbreviations: `--auth-key` must not pass as `--auth-key-file` with the key as a path.
    token = actions.add_parser(
        "token", help="print the request token for a CSR", allow_abbrev=False
    )
    place = actions.add_parser(
        "place",
        help="publish the token as TXT at each domain (or _dnsauth.<domain>)",
        allow_abbrev=False,
    )
    remove = actions.add_parser(
        "remove",
        help="remove this CSR's tokens at each domain, and no other value",
        allow_abbrev=False,
    )
    for parser in (token, place, remove):
        parser.add_argument("--csr", type=Path, required=True, help="PEM CSR file")
        parser.add_argument("--auth-key-file", type=Path, help="file holding the AuthKey")
    for parser in (place, remove):
        _config_option(parser)
        parser.add_argument(
            "--domain", action="append", required=True, dest="domains", help=_DOMAINS_HELP
        )
        parser.add_argument(
            "--dnsauth", action="store_true", help="use _dnsauth.<domain> as the record name"
        )
    token.add_argument("--timestamp", help="yyyyMMddHHmmss in UTC (default: now)")
    place.add_argument("--timestamp", help="yyyyMMddHHmmss in UTC (default: now)")
    remove.add_argument(
        "--timestamp", help="remove only the token of this timestamp (default: any of this CSR)"
    )
    token.set_defaults(run=_digicert_token)
    place.set_defaults(run=_digicert_place)
    remove.set_defaults(run=_digicert_remove)


def _algorithm_option(parser: argparse.ArgumentParser, what: str) -> None:
    choices = sorted(config.ASYMMETRIC_ALGORITHMS)
    parser.add_argument("--alg", default="RS256", choices=choices, help=what)


def _config_option(parser: argparse.ArgumentParser, *, demo: bool = False) -> None:
    parser.add_argument("--config", help=f"TOML file (default: ${config.CONFIG_ENV})")
    if demo:
        parser.add_argument(
            "--demo",
            action="store_true",
            help=f"use the demo's configuration, <demo-dir>/{DEMO_CONFIG} (see serve --demo)",
        )
        parser.add_argument("--demo-dir", type=Path, default=DEMO_DIR, help=_DEMO_DIR_HELP)


def _load(args: argparse.Namespace) -> config.Settings:
    if getattr(args, "demo", False):
        path = args.demo_dir / DEMO_CONFIG
        if not path.is_file():
            raise ConfigError([f"{path}: no demo there yet: start `serve --demo` once"])
        return config.load_file(path.resolve())
    return config.load_file(config.config_path(args.config, os.environ))


def _serve(args: argparse.Namespace) -> int:
    settings = demo_settings(args.demo_dir) if args.demo else _load(args)
    if args.listen:
        settings = config.with_listen(settings, args.listen)
    if args.dns_listen:
        settings = config.with_dns_listen(settings, args.dns_listen)
    count = args.workers or workers.resolve(settings.server.workers)
    logs.configure(settings.log)
    if args.demo:
        log.info(
            "demo",
            zone="example.test",
            provider="local",
            sign=f"dns-challenge-receiver sign-notification --demo --demo-dir {args.demo_dir}"
            " --domain www.example.test",
        )
    if count > 1:
        try:
            return workers.supervise(settings, count, _work)
        except workers.CannotListen as exc:
            print(f"serve: cannot listen on {exc}", file=sys.stderr)
            return 1
    asyncio.run(serve(settings))
    return 0


def _workers(text: str) -> int:
    try:
        return workers.worker_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _work(settings: config.Settings, slot: workers.Slot, listening: Callable[[], None]) -> int:
    """One worker of `serve --workers` (a forked child of the supervisor)."""
    logs.configure(settings.log, worker=slot.index)

    def run() -> int:
        asyncio.run(serve(settings, slot, listening))
        return 0

    return _status(run)


def _nothing() -> None:
    pass


async def serve(
    settings: config.Settings,
    slot: workers.Slot = workers.ALONE,
    listening: Callable[[], None] = _nothing,
) -> None:
    """Run until SIGTERM/SIGINT, then finish in-flight notifications before exiting.

    A worker (`slot`) says `worker_listening` rather than `listening` (its supervisor
    says that once all of them listen), then calls `listening`."""
    async with serving(settings, slot) as site:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # before saying so: a stop is graceful
            loop.add_signal_handler(sig, stop.set)
        host, port = site.addresses[0]
        settle_heap()  # start-up is over: before anyone is told it listens
        log.info(
            "listening" if slot.alone else "worker_listening",
            url=f"http://{host}:{port}{settings.server.callback_path}",
            version=__version__,
            zones=[z.name for z in settings.zones],
            max_connections=site.max_connections,
        )
        listening()
        await stop.wait()
        log.info("shutting_down", grace_seconds=settings.server.shutdown_timeout_seconds)
    log.info("stopped")


YOUNG_GC_THRESHOLD = 7000  # allocations; Python's default is 700


def settle_heap() -> None:
    """Keep the cyclic garbage collector off the request path of a long-running server.

    What start-up built (~50,000 objects: modules, the app, the configuration) lives as
    long as the process: it is collected once, then frozen out of the collector's way,
    so that a full collection no longer walks it (~23 ms each under load, a pause every
    in-flight request waits for). The young generation is collected after
    YOUNG_GC_THRESHOLD net allocations instead of 700: 32 requests in flight, some
    waiting for the journal's commit, hold ~1,000 objects that their requests free by
    reference counting a moment later, and at 700 every ~70 requests walked them for
    nothing (the collector cost the default configuration ~6 µs per request)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])


def demo_settings(directory: Path) -> config.Settings:
    """The demo's settings, from the config file it writes beside its key: `journal`,
    `sweep` and `check-config` then read the demo's state like any other."""
    key = directory / DEMO_KEY
    public = key.with_name(key.stem + ".pub.pem")
    if not key.exists() or not public.exists():
        signing.write_key_pair(key)
    path = directory / DEMO_CONFIG
    path.write_text(_DEMO_TOML.format(crn=signing.DEMO_CRN, public_key=public.name))
    return config.load_file(path.resolve())


DEMO_DNS = "127.0.0.1:8053"
_DEMO_TOML = f"""\
# Written by `dns-challenge-receiver serve --demo` at every start: edits are overwritten.
# Other commands read it with --demo (or --config <this file>): journal, sweep, check-config.
# Paths are relative to this file.

[server]
listen = "127.0.0.1:8080"

[certificate_manager]
allowed_instances = ["{{crn}}"]
public_key_file = "{{public_key}}"

[user_token]
verify = false  # the demo's notifications carry no IAM token

[local]
database = "challenges.sqlite3"
dns_listen = "{DEMO_DNS}"

[[zones]]
name = "example.test"
provider = "local"
"""


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    cm = settings.certificate_manager
    if cm.public_key_file is not None:
        try:
            FileSenderKeys(cm.public_key_file, refetch_interval=cm.key_refetch_interval_seconds)
        except (OSError, KeyMaterialError) as exc:
            raise ConfigError([f"certificate_manager.public_key_file: {exc}"]) from None
    print(f"configuration ok: {len(settings.zones)} zone(s)")
    width = max(len(zone.name) for zone in settings.zones)
    for zone in settings.zones:
        if zone.cname_to is not None:
            print(f"  {zone.name:<{width}}  -> CNAME into {zone.cname_to}")
        else:
            print(f"  {zone.name:<{width}}  -> {zone.provider}  ttl={zone.ttl}  {zone.options!r}")
    if args.probe:
        return asyncio.run(_probe(settings))
    return 0


async def _probe(settings: config.Settings) -> int:
    from receiver.probe import probe
    from receiver.runtime import Runtime

    async with Runtime.open(settings) as runtime:
        results = await probe(runtime)
    width = max(len(r.zone) for r in results)
    for result in results:
        verdict = "ok  " if result.ok else "FAIL"
        print(
            f"  {verdict} {result.zone:<{width}}  {result.provider:<8} "
            f"{result.seconds:5.1f}s  {result.detail}"
        )
    return 0 if all(r.ok for r in results) else 1


def _query(args: argparse.Namespace) -> int:
    """`dig +short @server TXT name`, for machines without dig: one record per line.
    Exit status 1 only when no answer came."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    try:
        host, port = config.split_host_port(args.server)
        rdtype = dns.rdatatype.from_text(args.type)
    except (ValueError, dns.exception.DNSException) as exc:
        print(f"query: {exc}", file=sys.stderr)
        return 2
    question = dns.message.make_query(args.name, rdtype)
    try:
        answer, _ = dns.query.udp_with_fallback(question, host, port=port, timeout=args.timeout)
    except (OSError, dns.exception.DNSException) as exc:
        print(f"query: no answer from {args.server} ({exc or type(exc).__name__})", file=sys.stderr)
        return 1
    records = [rdata.to_text() for rrset in answer.answer for rdata in rrset]
    for record in records:
        print(record)
    # Like dig, an answer is a success whatever it says: the status goes to stderr.
    if answer.rcode() != dns.rcode.NOERROR:
        print(f"status: {dns.rcode.to_text(answer.rcode())}", file=sys.stderr)
    elif not records:
        print(f"status: NOERROR, no {args.type.upper()} record", file=sys.stderr)
    return 0


def _delegation(args: argparse.Namespace) -> int:
    settings = _load(args)
    policy = Policy(settings.zones)
    status = 0
    for domain in args.domains:
        try:
            shown, fqdn = challenge_record_name(domain, CHALLENGE_LABEL)
            route = policy.route(Challenge(Action.ADD, shown, fqdn, ""))
        except ReceiverError as exc:
            print(f"; {domain}: {exc.detail}", file=sys.stderr)
            status = 2
            continue
        if route.delegated_from is None:
            print(
                f"; {shown}: written directly at {fqdn} in zone {route.zone.name}"
                f" ({route.zone.provider}); no delegation needed"
            )
            continue
        print(f"{route.delegated_from}. 300 IN CNAME {route.fqdn}.")
        print(f";   check: dig +short CNAME {route.delegated_from}")
    return status


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 90s, 30m, 2h, 7d"
        ) from None


def _since(text: str) -> float:
    try:
        return time.time() - _duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration nor an ISO time"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _sweep(args: argparse.Namespace) -> int:
    settings = _load(args)
    logs.configure(settings.log, sys.stderr)
    return asyncio.run(_run_sweep(settings, args.max_age, args.dry_run))


async def _run_sweep(settings: config.Settings, max_age: float | None, dry_run: bool) -> int:
    from receiver.runtime import Runtime
    from receiver.sweep import sweep

    if not settings.journal.enabled:
        print("sweep: the journal is disabled; nothing is known to be ours", file=sys.stderr)
        return 2
    async with Runtime.open(settings) as runtime:
        report = await sweep(runtime, max_age=max_age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for entry in report.removed:
        print(
            f"{verb} {entry.fqdn} {entry.value} ({entry.provider}, written "
            f"{_iso(entry.created)}, certificate {entry.certificate or '-'})"
        )
    for entry in report.settled:
        print(f"settled {entry.fqdn} {entry.value}: a crashed write, nothing to remove")
    for entry, reason in report.failed + report.skipped:
        print(f"left {entry.fqdn} {entry.value}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def _secrets_manager_sync(args: argparse.Namespace) -> int:
    settings = _load(args)
    logs.configure(settings.log, sys.stderr)
    if settings.secrets_manager is None or not settings.secrets_manager.enabled:
        print("secrets-manager sync: [secrets_manager] enabled = false", file=sys.stderr)
        return 2
    return asyncio.run(_run_secrets_manager_sync(settings))


async def _run_secrets_manager_sync(settings: config.Settings) -> int:
    from receiver.doors import serving_runtime
    from receiver.doors.secrets_manager import SecretsManagerDoor

    async with serving_runtime(settings) as runtime:
        door = runtime.doors.named("secrets_manager")
        assert isinstance(door, SecretsManagerDoor)
        report = await door.sync_once()
    for crn in report.published:
        print(f"published and asked to validate {crn}")
    for crn, why in report.skipped:
        print(f"skipped {crn}: {why}", file=sys.stderr)
    for what, code in report.failed:
        print(f"failed {what}: {code}", file=sys.stderr)
    print(
        "secrets-manager sync: "
        + ", ".join(f"{key} {value}" for key, value in report.as_dict().items())
    )
    return 1 if report.failed else 0


def _journal(args: argparse.Namespace) -> int:
    from receiver.state import State

    settings = _load(args)
    if not settings.journal.enabled:
        print("journal: the journal is disabled", file=sys.stderr)
        return 2

    async def read() -> list[Any]:
        async with State.open(settings) as state:
            assert state.journal is not None
            return await state.journal.entries(
                since=args.since, domain=args.domain, limit=args.limit
            )

    for entry in asyncio.run(read()):
        if args.json:
            print(json.dumps(entry.as_dict(), sort_keys=True))
        else:
            who = entry.user or entry.sender or "-"
            print(
                f"{_iso(entry.created)}  {entry.action:<6} {entry.outcome:<7} {entry.fqdn}"
                f"  {entry.value}  {entry.provider}  {entry.door}  {who}"
                f"  {entry.certificate or '-'}"
            )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    settings = _load(args)
    logs.configure(settings.log, sys.stderr)
    if settings.state.url is None:
        print("migrate: no [state] database; SQLite files create their tables on first use")
        return 0
    from receiver.postgres.database import Database

    async def run() -> tuple[list[int], int]:
        database = Database(settings.state)
        try:
            return await database.migrate(), await database.schema_version()
        finally:
            await database.aclose()

    applied, version = asyncio.run(run())
    if applied:
        print(f"migrated: applied {', '.join(map(str, applied))}; schema version {version}")
    else:
        print(f"up to date: schema version {version}")
    return 0


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digicert_inputs(args: argparse.Namespace) -> tuple[str, bytes]:
    """The AuthKey and the CSR bytes, or `_CommandError` saying what is missing."""
    if args.auth_key_file is not None:
        try:
            auth_key = args.auth_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _CommandError(f"cannot read {args.auth_key_file}: {exc.strerror}") from None
    else:
        auth_key = os.environ.get(DIGICERT_AUTH_KEY_ENV, "").strip()
    if not auth_key:
        raise _CommandError(f"no AuthKey: set ${DIGICERT_AUTH_KEY_ENV} or pass --auth-key-file")
    try:
        csr = args.csr.read_bytes()
    except OSError as exc:
        raise _CommandError(f"cannot read {args.csr}: {exc.strerror}") from None
    if b"-----BEGIN" not in csr:
        raise _CommandError(f"{args.csr} is not a PEM CSR")
    return auth_key, csr


def _digicert_token_now(args: argparse.Namespace, auth_key: str, csr: bytes) -> str:
    from receiver import digicert

    timestamp = args.timestamp or digicert.format_timestamp(datetime.now(UTC))
    return digicert.request_token(auth_key, csr, timestamp)


def _digicert(args: argparse.Namespace, action: Any) -> int:
    try:
        return int(action(args, *_digicert_inputs(args)))
    except _CommandError as exc:
        print(f"digicert: {exc}", file=sys.stderr)
        return 2
    except ReceiverError as exc:
        print(f"digicert: {exc.detail}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    except ProviderError as exc:
        print(f"digicert: {exc}", file=sys.stderr)
        return 1


def _digicert_token(args: argparse.Namespace) -> int:
    def run(args: argparse.Namespace, auth_key: str, csr: bytes) -> int:
        print(_digicert_token_now(args, auth_key, csr))
        return 0

    return _digicert(args, run)


def _digicert_place(args: argparse.Namespace) -> int:
    async def publish(settings: config.Settings, token: str) -> list[Any]:
        from receiver import digicert_placement as digicert
        from receiver.runtime import Runtime

        async with Runtime.open(settings) as runtime:
            return await digicert.place(runtime, token, args.domains, dnsauth=args.dnsauth)

    def run(args: argparse.Namespace, auth_key: str, csr: bytes) -> int:
        from receiver import digicert

        token = _digicert_token_now(args, auth_key, csr)
        settings = _load(args)
        logs.configure(settings.log, sys.stderr)
        window = digicert.window(token)
        for placed in asyncio.run(publish(settings, token)):
            print(f"placed {placed.fqdn} TXT {placed.token} ({placed.provider})")
        print(f"valid {_iso(window.start.timestamp())} to {_iso(window.end.timestamp())}")
        return 0

    return _digicert(args, run)


def _digicert_remove(args: argparse.Namespace) -> int:
    async def withdraw(settings: config.Settings, auth_key: str, csr: bytes) -> list[Any]:
        from receiver import digicert_placement as digicert
        from receiver.runtime import Runtime

        async with Runtime.open(settings) as runtime:
            return await digicert.remove(
                runtime, auth_key, csr, args.domains, dnsauth=args.dnsauth, timestamp=args.timestamp
            )

    def run(args: argparse.Namespace, auth_key: str, csr: bytes) -> int:
        settings = _load(args)
        logs.configure(settings.log, sys.stderr)
        removed = asyncio.run(withdraw(settings, auth_key, csr))
        for placed in removed:
            print(f"removed {placed.fqdn} TXT {placed.token} ({placed.provider})")
        if not removed:
            print("no token of this CSR was published at those names")
        return 0

    return _digicert(args, run)


def _simulate(args: argparse.Namespace) -> int:
    try:
        from receiver import simulate
    except ImportError:  # pragma: no cover - depends on the installed extras
        print("simulate: install the extra: pip install 'dns-challenge-receiver[simulate]'")
        return 2
    key_path = args.key or (args.demo_dir / DEMO_KEY if args.demo else None)
    instance_crn = args.instance_crn or (signing.DEMO_CRN if args.demo else None)
    if key_path is None or instance_crn is None:
        print("simulate: pass --key and --instance-crn, or --demo", file=sys.stderr)
        return 2
    try:
        private_pem = key_path.read_bytes()
    except OSError as exc:
        print(f"simulate: cannot read {key_path}: {exc.strerror}", file=sys.stderr)
        return 2
    timeline = simulate.Timeline(print_line=lambda line: print(line, file=sys.stderr))
    try:
        result = simulate.run(
            directory_url=args.acme_directory,
            callback_url=args.callback,
            domains=args.domains,
            sender=simulate.Sender(private_pem, instance_crn, args.alg),
            ca_bundle=args.ca_bundle,
            timeout=args.timeout,
            timeline=timeline,
        )
    except simulate.SimulationFailed as exc:
        timeline(f"failed: {exc}")
        return 1
    timeline(f"done: {result.notified} notifications")
    if args.output is not None:
        args.output.write_text(result.fullchain_pem)
    else:
        sys.stdout.write(result.fullchain_pem)
    return 0


def _keygen(args: argparse.Namespace) -> int:
    public = signing.write_key_pair(args.path, args.alg)
    print(f"private key: {args.path}\npublic key:  {public}")
    return 0


def _sign_notification(args: argparse.Namespace) -> int:
    key_path = args.key or (args.demo_dir / DEMO_KEY if args.demo else None)
    instance_crn = args.instance_crn or (signing.DEMO_CRN if args.demo else None)
    if key_path is None or instance_crn is None:
        print("sign-notification: pass --key and --instance-crn, or --demo", file=sys.stderr)
        return 2
    user_token = None
    if args.user_token_key is not None:
        account = args.account or instance_crn.split(":")[6].removeprefix("a/")
        user_token = signing.sign(
            signing.user_token_claims(account=account, issuer=args.user_token_issuer),
            args.user_token_key.read_bytes(),
            kid=args.user_token_kid,
        )
    claims = signing.notification_claims(
        instance_crn=instance_crn,
        event_type=EVENT_ALIASES.get(args.event, args.event),
        domain=args.domain,
        value=args.value or signing.challenge_value(),
        record_name=args.record_name,
        certificate_crn=args.certificate_crn,
        user_token=user_token,
        lifetime=args.lifetime or None,
    )
    try:
        private_pem = key_path.read_bytes()
    except OSError as exc:
        hint = " (start `serve --demo` once to create it)" if args.demo else ""
        print(f"sign-notification: cannot read {key_path}: {exc.strerror}{hint}", file=sys.stderr)
        return 2
    token = signing.sign(claims, private_pem, args.alg)
    sys.stdout.write(signing.envelope(token).decode() + "\n")
    return 0
