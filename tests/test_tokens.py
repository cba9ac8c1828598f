"""Our compact-JWS parsing and claim checks agree with PyJWT's, and are strict."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver import tokens
from receiver.errors import BadRequest, Unauthorized

from .conftest import KeyPair


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NOW = 1_800_000_000
moments = st.one_of(
    st.none(),
    st.integers(NOW - 1000, NOW + 1000),
    st.floats(NOW - 1000, NOW + 1000, allow_nan=False),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    exp=moments,
    nbf=moments,
    iat=moments,
    leeway=st.sampled_from([0, 30, 300]),
    signer=st.sampled_from(["sender", "attacker"]),
    tamper=st.booleans(),
    issuer=st.sampled_from([None, "https://iam.cloud.ibm.com/identity"]),
    iss=st.sampled_from([None, "https://iam.cloud.ibm.com/identity", "https://evil"]),
)
def test_verdicts_match_pyjwt(
    keys: dict[str, KeyPair],
    exp: Any,
    nbf: Any,
    iat: Any,
    leeway: int,
    signer: str,
    tamper: bool,
    issuer: str | None,
    iss: str | None,
) -> None:
    claims: dict[str, Any] = {"sub": "x"}
    for name, value in (("exp", exp), ("nbf", nbf), ("iat", iat), ("iss", iss)):
        if value is not None:
            claims[name] = value
    token = jwt.encode(claims, load_pem_private_key(keys[signer].private_pem, None), "RS256")
    if tamper:
        head, _, sig = token.split(".")
        token = f"{head}.{b64(json.dumps({**claims, 'sub': 'y'}).encode())}.{sig}"
    public = keys["sender"].public_pem

    def ours() -> bool:
        try:
            jws = tokens.parse(token, what="t", code="bad")
            tokens.verify(
                jws,
                jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).prepare_key(public),
                "RS256",
                what="t",
                code_prefix="t",
                leeway=leeway,
                issuer=issuer,
                now=NOW,
            )
        except (BadRequest, Unauthorized):
            return False
        return True

    def theirs() -> bool:
        from unittest import mock

        with mock.patch("time.time", return_value=NOW), mock.patch("jwt.api_jwt.datetime") as fake:
            from datetime import UTC, datetime

            fake.now.return_value = datetime.fromtimestamp(NOW, UTC)
            fake.side_effect = datetime
            try:
                jwt.decode(
                    token,
                    public,
                    algorithms=["RS256"],
                    leeway=leeway,
                    issuer=issuer,
                    options={"verify_aud": False, "require": []},
                )
            except jwt.PyJWTError:
                return False
            return True

    assert ours() == theirs(), claims


@pytest.mark.parametrize(
    "token",
    [
        "a.b",  # two parts
        "a.b.c.d",
        "e30.e30.",  # empty signature
        "e30=.e30.c2ln",  # padding
        "e3+.e30.c2ln",  # not base64url
        "e31.e30.c2ln",  # non-canonical: the last character carries stray bits
        "W10.e30.c2ln",  # header is a JSON array
        "e30.bnVsbA.c2ln",  # payload is null
        "e30.eyJh.c2ln",  # truncated JSON
        "e.e30.c2ln",  # impossible base64 length
    ],
)
def test_strict_parsing(token: str) -> None:
    with pytest.raises(BadRequest):
        tokens.parse(token, what="t", code="bad")


def test_parse_keeps_the_exact_signing_input() -> None:
    jws = tokens.parse("e30.eyJhIjoxfQ.c2ln", what="t", code="bad")
    assert (jws.header, jws.claims, jws.signing_input, jws.signature) == (
        {},
        {"a": 1},
        b"e30.eyJhIjoxfQ",
        b"sig",
    )


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        ({"alg": "RS256", "crit": ["urn:example:ext"], "urn:example:ext": 1}, b'{"sub": "x"}'),
        ({"alg": "RS256", "crit": []}, b'{"sub": "x"}'),
        ({"alg": "RS256"}, b'{"exp": 1e400}'),
        ({"alg": "RS256"}, b'{"exp": -1e400}'),
        ({"alg": "RS256"}, b'{"exp": NaN}'),
        ({"alg": "RS256"}, b'{"nbf": NaN}'),
        ({"alg": "RS256"}, b'{"iat": Infinity}'),
        ({"alg": "RS256"}, b'{"exp": 1' + b"0" * 400 + b"}"),
        ({"alg": "RS256"}, b'{"exp": "1800000000"}'),
        ({"alg": "RS256"}, b'{"exp": true}'),
    ],
)
def test_critical_extensions_and_unusable_times_are_invalid(
    keys: dict[str, KeyPair], header: dict[str, Any], payload: bytes
) -> None:
    rsa = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload)}"
    signature = rsa.sign(signing_input.encode(), rsa.prepare_key(keys["sender"].private_pem))
    jws = tokens.parse(f"{signing_input}.{b64(signature)}", what="t", code="bad")
    with pytest.raises(Unauthorized) as caught:
        tokens.verify(
            jws,
            rsa.prepare_key(keys["sender"].public_pem),
            "RS256",
            what="t",
            code_prefix="t",
            leeway=0,
            now=NOW,
        )
    assert caught.value.code == "invalid_t"
