"""Forged and malformed input: every case is a 4xx with a JSON error and no provider change.

Each case builds a request from a legitimate sender's pieces and breaks one thing. The
provider is pre-seeded with a value, so forged "completed" notifications are caught too.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from receiver import signing

from .conftest import (
    ACCOUNT,
    OTHER_ACCOUNT,
    STRANGER,
    USER_KID,
    FakeIbmCloud,
    Sender,
    ServiceFactory,
    long_domain,
)

SEEDED_DOMAIN = "seeded.example.com"
SEEDED_FQDN = "_acme-challenge.seeded.example.com"
SEEDED_VALUE = "S" * 43
REQUIRED = "cert_domain_validation_required"
DEEP = b"[" * 30_000  # json.loads raises RecursionError long before it sees the end
COMPLETED = "cert_domain_validation_completed"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: bytes, payload: bytes, signature: str = "c2ln") -> str:
    return f"{b64(header)}.{b64(payload)}.{signature}"


def signed_text(s: Sender, payload: bytes, header: dict[str, Any] | None = None) -> str:
    """Signed by the legitimate sender over exactly these payload bytes: JSON that
    `json.dumps` would never write (1e400) still verifies."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    signing_input = f"{b64(json.dumps(header or {'alg': 'RS256'}).encode())}.{b64(payload)}"
    rsa = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
    key = load_pem_private_key(s.keys[s.key_name].private_pem, None)
    return f"{signing_input}.{b64(rsa.sign(signing_input.encode(), key))}"  # type: ignore[arg-type]


def with_claim_text(s: Sender, name: str, text: str) -> Request:
    document = json.dumps({k: v for k, v in claims(s).items() if k != name})
    return body(signed_text(s, f'{document[:-1]}, "{name}": {text}}}'.encode()))


def unsigned(claims: dict[str, Any], header: dict[str, Any], signature: str = "") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), signature])


@dataclass(frozen=True)
class Request:
    body: bytes
    content_type: str | None = "application/json"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Sender], Request]
    status: int
    error: str
    settings: dict[str, Any] | None = None


def body(token: str) -> Request:
    return Request(signing.envelope(token))


def claims(s: Sender, **overrides: Any) -> dict[str, Any]:
    domain = overrides.pop("domain", "www.example.com")
    return s.claims(REQUIRED, domain, **overrides)


def now() -> int:
    return int(time.time())


def tamper_payload(s: Sender) -> Request:
    header, _, signature = s.token(claims(s)).split(".")
    evil = b64(json.dumps(claims(s, domain="evil.example.com")).encode())
    return body(f"{header}.{evil}.{signature}")


def tamper_signature(s: Sender) -> Request:
    header, payload, signature = s.token(claims(s)).split(".")
    flipped = "A" if signature[10] != "A" else "B"
    return body(f"{header}.{payload}.{signature[:10]}{flipped}{signature[11:]}")


def hmac_with_public_key(s: Sender) -> Request:
    """The classic confusion: HS256 keyed with the (public) RSA key bytes."""
    import hashlib
    import hmac

    signing_input = unsigned(claims(s), {"alg": "HS256", "typ": "JWT"})[:-1]
    mac = hmac.new(s.keys["sender"].public_pem, signing_input.encode(), hashlib.sha256).digest()
    return body(f"{signing_input}.{b64(mac)}")


def embedded_jwk(s: Sender) -> Request:
    """An attacker key embedded in the header must not be used to verify."""
    attacker = s.keys["attacker"]
    jwk = json.loads(
        jwt.algorithms.RSAAlgorithm.to_jwk(
            jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).prepare_key(
                attacker.public_pem
            )
        )
    )
    return body(s.token(claims(s), key=attacker.private_pem, headers={"jwk": jwk}))


def user(s: Sender, **kwargs: Any) -> Request:
    return body(s.token(claims(s, user_token=s.user_token(**kwargs))))


def user_token_with_headers(s: Sender, headers: dict[str, Any]) -> str:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(s.keys["user"].private_pem, None)
    claims = signing.user_token_claims(account=ACCOUNT)
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)  # type: ignore[arg-type]


def raw_user_token(token: Any) -> Callable[[Sender], Request]:
    return lambda s: body(s.token(claims(s, user_token=token)))


def forged_completed(s: Sender, key: bytes) -> Request:
    return body(s.token(s.claims(COMPLETED, SEEDED_DOMAIN, SEEDED_VALUE), key=key))


CASES = [
    # --- the envelope: algorithms and signatures --------------------------------------
    Case(
        "alg none, empty signature",
        lambda s: body(unsigned(claims(s), {"alg": "none"})),
        400,
        "malformed_envelope",
    ),
    Case(
        "alg none with a signature",
        lambda s: body(unsigned(claims(s), {"alg": "none"}, "c2ln")),
        401,
        "algorithm_not_allowed",
    ),
    Case(
        "alg None spelled differently",
        lambda s: body(unsigned(claims(s), {"alg": "nOnE"}, "c2ln")),
        401,
        "algorithm_not_allowed",
    ),
    Case(
        "HS256 keyed with the sender's public key",
        hmac_with_public_key,
        401,
        "algorithm_not_allowed",
    ),
    Case(
        "HS256 with a guessed secret",
        lambda s: body(s.token(claims(s), alg="HS256", key=b"secret" * 6)),
        401,
        "algorithm_not_allowed",
    ),
    Case(
        "RS512 when only RS256 is configured",
        lambda s: body(s.token(claims(s), alg="RS512")),
        401,
        "algorithm_not_allowed",
    ),
    Case(
        "unknown algorithm",
        lambda s: body(unsigned(claims(s), {"alg": "XS999"}, "c2ln")),
        401,
        "algorithm_not_allowed",
    ),
    Case(
        "algorithm missing",
        lambda s: body(unsigned(claims(s), {"typ": "JWT"}, "c2ln")),
        401,
        "algorithm_not_allowed",
    ),
    Case(
        "ES256 signature against an RSA instance key",
        lambda s: body(s.token(claims(s), alg="ES256", key=s.keys["attacker_ec"].private_pem)),
        401,
        "invalid_envelope",
        settings={"certificate_manager": {"algorithms": ["RS256", "ES256"]}},
    ),
    Case(
        "signed by another RSA key",
        lambda s: body(s.token(claims(s), key=s.keys["attacker"].private_pem)),
        401,
        "invalid_signature",
    ),
    Case("attacker key embedded as jwk header", embedded_jwk, 401, "invalid_signature"),
    Case("payload changed after signing", tamper_payload, 401, "invalid_signature"),
    Case("signature bit flipped", tamper_signature, 401, "invalid_signature"),
    Case(
        "signature stripped",
        lambda s: body(s.token(claims(s)).rsplit(".", 1)[0] + "."),
        400,
        "malformed_envelope",
    ),
    Case(
        "forged completed removes nothing",
        lambda s: forged_completed(s, s.keys["attacker"].private_pem),
        401,
        "invalid_signature",
    ),
    # --- the envelope: time claims ---------------------------------------------------
    Case("expired", lambda s: body(s.token(claims(s, exp=now() - 3600))), 401, "envelope_expired"),
    Case(
        "not yet valid (nbf)",
        lambda s: body(s.token(claims(s, nbf=now() + 3600))),
        401,
        "envelope_not_yet_valid",
    ),
    Case(
        "issued in the future (iat)",
        lambda s: body(s.token(claims(s, iat=now() + 3600))),
        401,
        "envelope_not_yet_valid",
    ),
    Case(
        "exp not a number",
        lambda s: body(s.token(claims(s, exp="tomorrow"))),
        401,
        "invalid_envelope",
    ),
    Case(
        "exp 1e400 (infinite: never expires)",
        lambda s: with_claim_text(s, "exp", "1e400"),
        401,
        "invalid_envelope",
    ),
    Case("exp Infinity", lambda s: with_claim_text(s, "exp", "Infinity"), 401, "invalid_envelope"),
    Case("exp NaN", lambda s: with_claim_text(s, "exp", "NaN"), 401, "invalid_envelope"),
    Case("nbf NaN", lambda s: with_claim_text(s, "nbf", "NaN"), 401, "invalid_envelope"),
    Case("iat NaN", lambda s: with_claim_text(s, "iat", "NaN"), 401, "invalid_envelope"),
    Case(
        "exp an integer beyond any float",
        lambda s: with_claim_text(s, "exp", "1" + "0" * 400),
        401,
        "invalid_envelope",
    ),
    # --- the envelope: critical header extensions (RFC 7515 4.1.11) -----------------
    Case(
        "crit names an extension we do not understand",
        lambda s: body(
            s.token(claims(s), headers={"crit": ["urn:example:ext"], "urn:example:ext": 1})
        ),
        401,
        "invalid_envelope",
    ),
    Case(
        "crit names b64 (RFC 7797 unencoded payload)",
        lambda s: body(s.token(claims(s), headers={"crit": ["b64"], "b64": True})),
        401,
        "invalid_envelope",
    ),
    Case(
        "crit empty",
        lambda s: body(s.token(claims(s), headers={"crit": []})),
        401,
        "invalid_envelope",
    ),
    Case(
        "crit not a list",
        lambda s: body(s.token(claims(s), headers={"crit": "exp"})),
        401,
        "invalid_envelope",
    ),
    # --- the instance allow-list (checked before any key fetch) ----------------------
    Case(
        "instance not allow-listed",
        lambda s: body(
            s.token(claims(s, instance_crn=STRANGER), key=s.keys["attacker"].private_pem)
        ),
        403,
        "instance_not_allowed",
    ),
    Case(
        "instance missing",
        lambda s: body(s.token({k: v for k, v in claims(s).items() if k != "instance_crn"})),
        403,
        "instance_not_allowed",
    ),
    Case(
        "instance not a string",
        lambda s: body(s.token(claims(s, instance_crn=["crn"]))),
        403,
        "instance_not_allowed",
    ),
    Case(
        "allow-listed CRN with trailing junk",
        lambda s: body(s.token(claims(s, instance_crn=s.instance_crn + "x"))),
        403,
        "instance_not_allowed",
    ),
    # --- the user token --------------------------------------------------------------
    Case("user token expired", lambda s: user(s, exp=now() - 600), 401, "user_token_expired"),
    Case(
        "user token from another issuer",
        lambda s: user(s, iss="https://evil.example/identity"),
        401,
        "invalid_user_token",
    ),
    Case("user token without exp", lambda s: user(s, exp=None), 401, "invalid_user_token"),
    Case(
        "user token with an unknown kid",
        lambda s: user(s, kid="unknown-kid"),
        401,
        "invalid_user_token",
    ),
    Case(
        "user token signed by another key with IAM's kid",
        lambda s: user(s, key="attacker"),
        401,
        "invalid_user_token",
    ),
    Case(
        "user token exp Infinity",
        lambda s: user(s, exp=float("inf")),
        401,
        "invalid_user_token",
    ),
    Case("user token nbf NaN", lambda s: user(s, nbf=float("nan")), 401, "invalid_user_token"),
    Case(
        "user token exp beyond any float",
        lambda s: user(s, exp=10**400),
        401,
        "invalid_user_token",
    ),
    Case(
        "user token with a crit header",
        lambda s: body(
            s.token(
                claims(
                    s,
                    user_token=user_token_with_headers(
                        s, {"kid": USER_KID, "crit": ["urn:example:ext"], "urn:example:ext": 1}
                    ),
                )
            )
        ),
        401,
        "invalid_user_token",
    ),
    Case(
        "user token for another account",
        lambda s: user(s, account={"bss": OTHER_ACCOUNT, "valid": True}),
        403,
        "account_mismatch",
    ),
    Case(
        "user token without an account", lambda s: user(s, account=None), 401, "invalid_user_token"
    ),
    Case(
        "user token HS256 with the JWKS key as secret",
        raw_user_token(
            jwt.encode(
                signing.user_token_claims(account=ACCOUNT),
                "k" * 32,
                algorithm="HS256",
                headers={"kid": USER_KID},
            )
        ),
        401,
        "invalid_user_token",
    ),
    Case(
        "user token alg none",
        raw_user_token(
            unsigned(
                signing.user_token_claims(account=ACCOUNT), {"alg": "none", "kid": USER_KID}, "c2ln"
            )
        ),
        401,
        "invalid_user_token",
    ),
    Case("user token garbage", raw_user_token("definitely-not-a-jwt"), 401, "invalid_user_token"),
    Case("user token not a string", raw_user_token(12345), 401, "invalid_user_token"),
    Case("user token empty", raw_user_token(""), 401, "invalid_user_token"),
    Case(
        "user token missing when required",
        lambda s: body(s.token(claims(s))),
        401,
        "user_token_required",
        settings={"user_token": {"required": True}},
    ),
    # --- body and transport ----------------------------------------------------------
    Case("body not JSON", lambda s: Request(b"data=eyJ..."), 400, "malformed_body"),
    Case("body not UTF-8", lambda s: Request(b"\xff\xfe{}"), 400, "malformed_body"),
    Case("body a JSON array", lambda s: Request(b"[]"), 400, "malformed_body"),
    Case("body without data", lambda s: Request(b'{"token": "x"}'), 400, "malformed_body"),
    Case("data not a string", lambda s: Request(b'{"data": 42}'), 400, "malformed_envelope"),
    Case("data not a JWS", lambda s: Request(b'{"data": "hello"}'), 400, "malformed_envelope"),
    Case(
        "data with a non-JSON payload",
        lambda s: body(f"{b64(b'{}')}.{b64(b'not json')}.c2ln"),
        400,
        "malformed_envelope",
    ),
    Case(
        "data with a JSON-array payload",
        lambda s: body(f"{b64(json.dumps({'alg': 'RS256'}).encode())}.{b64(b'[1]')}.c2ln"),
        400,
        "malformed_envelope",
    ),
    # --- nesting deep enough to exhaust the JSON decoder's recursion (issue 21 #1) -----
    Case("body nested 30,000 deep", lambda s: Request(b'{"data": ' + DEEP), 400, "malformed_body"),
    Case(
        "JWS header nested 30,000 deep",
        lambda s: body(compact(DEEP, json.dumps(claims(s)).encode())),
        400,
        "malformed_envelope",
    ),
    Case(
        "JWS payload nested 30,000 deep",
        lambda s: body(compact(b'{"alg": "RS256"}', DEEP)),
        400,
        "malformed_envelope",
    ),
    Case(
        "JWS payload with a claim nested 30,000 deep",
        lambda s: body(compact(b'{"alg": "RS256"}', b'{"instance_crn": ' + DEEP)),
        400,
        "malformed_envelope",
    ),
    Case(
        "user token payload nested 30,000 deep",
        raw_user_token(compact(b'{"alg": "RS256", "kid": "%s"}' % USER_KID.encode(), DEEP)),
        401,
        "invalid_user_token",
    ),
    Case(
        "wrong content type",
        lambda s: Request(s.body(claims(s)), "text/plain"),
        415,
        "unsupported_media_type",
    ),
    Case(
        "form content type",
        lambda s: Request(s.body(claims(s)), "application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    ),
    Case(
        "no content type", lambda s: Request(s.body(claims(s)), None), 415, "unsupported_media_type"
    ),
    Case(
        "oversized body",
        lambda s: Request(json.dumps({"data": s.token(claims(s)), "pad": "x" * 70_000}).encode()),
        413,
        "body_too_large",
    ),
    # --- the payload (signed, so these reach validation) -----------------------------
    Case(
        "domain outside every zone",
        lambda s: body(s.token(s.claims(REQUIRED, "www.example.org"))),
        403,
        "zone_not_allowed",
    ),
    Case(
        "domain that only ends like a zone",
        lambda s: body(s.token(s.claims(REQUIRED, "badexample.com"))),
        403,
        "zone_not_allowed",
    ),
    Case(
        "record name for another domain",
        lambda s: body(
            s.token(
                claims(
                    s,
                    challenge={
                        "txt_record_name": "_acme-challenge.example.com",
                        "txt_record_val": "A" * 43,
                    },
                )
            )
        ),
        400,
        "invalid_record_name",
    ),
    Case(
        "record name not the challenge label",
        lambda s: body(
            s.token(claims(s, challenge={"txt_record_name": "www", "txt_record_val": "A" * 43}))
        ),
        400,
        "invalid_record_name",
    ),
    Case(
        "value too short", lambda s: body(s.token(claims(s, value="A" * 42))), 400, "invalid_value"
    ),
    Case(
        "value with padding",
        lambda s: body(s.token(claims(s, value="A" * 42 + "="))),
        400,
        "invalid_value",
    ),
    Case(
        "value with a quote",
        lambda s: body(s.token(claims(s, value="A" * 42 + '"'))),
        400,
        "invalid_value",
    ),
    Case(
        "domain not a string",
        lambda s: body(s.token(claims(s, domain=["example.com"]))),
        400,
        "invalid_notification",
    ),
    Case(
        "domain malformed",
        lambda s: body(s.token(claims(s, domain="www..example.com"))),
        400,
        "invalid_name",
    ),
    Case(
        "challenge name over 253 octets (domain of 238)",
        lambda s: body(s.token(claims(s, domain=long_domain(238)))),
        400,
        "invalid_name",
    ),
    Case(
        "challenge name over 253 octets (wildcard of 253)",
        lambda s: body(s.token(claims(s, domain="*." + long_domain(253)))),
        400,
        "invalid_name",
    ),
    Case(
        "domain with a double wildcard",
        lambda s: body(s.token(claims(s, domain="*.*.example.com"))),
        400,
        "invalid_name",
    ),
    Case(
        "challenge missing",
        lambda s: body(s.token({k: v for k, v in claims(s).items() if k != "challenge"})),
        400,
        "invalid_notification",
    ),
    Case(
        "challenge value not a string",
        lambda s: body(
            s.token(
                claims(s, challenge={"txt_record_name": "_acme-challenge", "txt_record_val": 7})
            )
        ),
        400,
        "invalid_notification",
    ),
    Case(
        "unsupported validation method",
        lambda s: body(s.token(claims(s, domain_validation_method="http-01"))),
        400,
        "unsupported_validation_method",
    ),
    Case(
        "event type not a string",
        lambda s: body(s.token(claims(s, event_type=1))),
        400,
        "invalid_notification",
    ),
]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_forged_input_is_rejected_without_writing(
    case: Case, start_service: ServiceFactory, sender: Sender, ibm_cloud: FakeIbmCloud
) -> None:
    service = await start_service(**(case.settings or {}))
    seed_claims = sender.claims(
        REQUIRED, SEEDED_DOMAIN, SEEDED_VALUE, user_token=sender.user_token()
    )
    seed = await service.post(sender.body(seed_claims))
    assert seed.status == 200
    before = await service.all_records()
    fetches_before = list(ibm_cloud.key_fetches)

    request = case.build(sender)
    headers = {} if request.content_type is None else {"Content-Type": request.content_type}
    resp = await service.client.post("/callback", data=request.body, headers=headers)
    payload = await resp.json()

    assert resp.status == case.status, payload
    assert payload["error"] == case.error, payload
    assert isinstance(payload["detail"], str) and payload["detail"]
    assert await service.all_records() == before == {SEEDED_FQDN: frozenset({SEEDED_VALUE})}
    if case.error == "instance_not_allowed":
        assert ibm_cloud.key_fetches == fetches_before, "a key was fetched for a stranger"


async def test_get_on_the_callback_is_405_json(start_service: ServiceFactory) -> None:
    service = await start_service()
    resp = await service.client.get("/callback")
    assert resp.status == 405
    assert (await resp.json())["error"] == "method_not_allowed"
    assert resp.headers["Allow"] == "POST"  # a 405 says what is allowed (RFC 9110)


async def test_unknown_path_is_404_json(start_service: ServiceFactory, sender: Sender) -> None:
    service = await start_service()
    resp = await service.post(sender.body(), path="/callbackx")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    assert await service.all_records() == {}


async def test_many_forgeries_for_an_allowed_instance_fetch_the_key_rarely(
    start_service: ServiceFactory, sender: Sender, ibm_cloud: FakeIbmCloud
) -> None:
    """Rotation refetch happens at most once per interval, whatever the attacker sends."""
    service = await start_service()
    for _ in range(25):
        resp = await service.post(sender.body(key=sender.keys["attacker"].private_pem))
        assert resp.status == 401
    assert ibm_cloud.key_fetches.count(sender.instance_crn) == 1


def test_rsa_key_size_of_fixtures_is_realistic(sender: Sender) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(sender.keys["sender"].private_pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048
