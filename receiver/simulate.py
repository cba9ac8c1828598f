"""`simulate`: play Certificate Manager against a real ACME CA and a deployed receiver.

Orders a certificate with certbot's `acme` library, sends a signed
`cert_domain_validation_required` notification for every DNS-01 challenge, asks the CA to
validate, sends `cert_domain_validation_completed`, and reports a timeline. Completion
notifications go out whatever happened, so a failed run leaves no value behind.
Blocking by design (a command-line tool); `acme` is imported only here.
"""

from __future__ import annotations

import datetime
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from receiver import signing

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"


class SimulationFailed(Exception):
    """The order could not be completed; the message says at which step."""


@dataclass(frozen=True)
class Sender:
    """Signs notifications as one Certificate Manager instance would."""

    private_pem: bytes
    instance_crn: str
    algorithm: str = "RS256"
    user_token: str | None = None

    def body(self, event_type: str, domain: str, value: str, certificate_crn: str) -> bytes:
        claims = signing.notification_claims(
            instance_crn=self.instance_crn,
            event_type=event_type,
            domain=domain,
            value=value,
            certificate_crn=certificate_crn,
            user_token=self.user_token,
        )
        return signing.envelope(signing.sign(claims, self.private_pem, self.algorithm))


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    print_line: Callable[[str], None] = print

    def __call__(self, text: str) -> None:
        self.print_line(f"{time.monotonic() - self.started:7.2f}s  {text}")


@dataclass(frozen=True)
class Result:
    fullchain_pem: str
    notified: int


class Publisher(Protocol):
    """How the order's TXT values reach the receiver; `simulate` signs notifications."""

    sent: int

    def __call__(self, event_type: str, domain: str, value: str) -> dict[str, Any]: ...


def run(
    *,
    directory_url: str,
    callback_url: str,
    domains: Sequence[str],
    sender: Sender,
    ca_bundle: str | None = None,
    timeout: float = 120.0,
    timeline: Timeline | None = None,
) -> Result:
    say = timeline or Timeline()

    def notifier(certificate_crn: str) -> Publisher:
        return _Notifier(callback_url, ca_bundle, sender, certificate_crn, say)

    return order(
        directory_url=directory_url,
        domains=domains,
        publisher=notifier,
        ca_bundle=ca_bundle,
        timeout=timeout,
        timeline=say,
        certificate_crn=sender.instance_crn.rstrip(":") + f":certificate:sim-{int(time.time())}",
    )


def order(
    *,
    directory_url: str,
    domains: Sequence[str],
    publisher: Callable[[str], Publisher],
    certificate_crn: str = "",
    ca_bundle: str | None = None,
    timeout: float = 120.0,
    timeline: Timeline | None = None,
) -> Result:
    """One ACME order whose DNS-01 values go out through `publisher(certificate_crn)`."""
    from acme import challenges, client, crypto_util, messages
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from josepy.jwk import JWKRSA

    say = timeline or Timeline()
    # acme hands `verify_ssl` to requests, which takes a CA bundle path where acme's
    # annotation says bool.
    verify = cast(bool, ca_bundle or True)
    account_key = JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    net = client.ClientNetwork(
        account_key, user_agent="dns-challenge-receiver-simulate", verify_ssl=verify
    )
    acme = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net=net)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    say(f"account registered at {directory_url}")

    cert_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = cert_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    created = acme.new_order(crypto_util.make_csr(key_pem, list(domains)))
    say(f"order created: {len(created.authorizations)} authorizations")

    pending = []
    for authz in created.authorizations:
        domain = authz.body.identifier.value
        if authz.body.wildcard:
            domain = f"*.{domain}"
        challb = next(
            (c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01)), None
        )
        if challb is None:
            raise SimulationFailed(f"the CA offered no dns-01 challenge for {domain}")
        pending.append((domain, challb, challb.chall.validation(account_key)))

    notify = publisher(certificate_crn)
    published: list[tuple[str, str]] = []
    try:
        for domain, _, value in pending:
            notify(REQUIRED, domain, value)
            published.append((domain, value))
        for _, challb, _ in pending:
            acme.answer_challenge(challb, challb.chall.response(account_key))
        say("challenges answered; the CA is validating")
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        try:
            finished = acme.poll_and_finalize(created, deadline=deadline)
        except Exception as exc:  # the acme library raises several unrelated types
            raise SimulationFailed(f"the CA did not issue: {exc}") from exc
        say("certificate issued")
    finally:
        for domain, value in published:
            try:
                notify(COMPLETED, domain, value)
            except SimulationFailed as exc:
                say(f"cleanup failed: {exc}")
    return Result(str(finished.fullchain_pem), notify.sent)


class _Notifier:
    def __init__(
        self,
        url: str,
        ca_bundle: str | None,
        sender: Sender,
        certificate_crn: str,
        say: Callable[[str], None],
    ) -> None:
        self.url = url
        self.context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
        self.sender = sender
        self.certificate_crn = certificate_crn
        self.say = say
        self.sent = 0

    def __call__(self, event_type: str, domain: str, value: str) -> dict[str, Any]:
        body = self.sender.body(event_type, domain, value, self.certificate_crn)
        request = urllib.request.Request(  # noqa: S310 - the user names the callback URL
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        short = event_type.removeprefix("cert_domain_validation_")
        try:
            with urllib.request.urlopen(request, timeout=60, context=self.context) as response:  # noqa: S310
                status, answer = response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            self.say(f"notify {short} {domain} -> {exc.code} {detail}")
            raise SimulationFailed(f"the receiver answered {exc.code} for {domain}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SimulationFailed(f"cannot reach {self.url}: {exc}") from None
        self.sent += 1
        self.say(f"notify {short} {domain} -> {status} {answer.get('status', '')}".rstrip())
        return dict(answer)
