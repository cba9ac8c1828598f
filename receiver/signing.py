"""Build and sign notifications like Certificate Manager does, for local testing.

Used by `sign-notification`, the demo and the tests. Nothing here is on the request path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

DEMO_CRN = (
    "crn:v1:bluemix:public:cloudcerts:us-south:a/0123456789abcdef0123456789abcdef:"
    "00000000-0000-4000-8000-000000000000::"
)
DEMO_ACCOUNT = "0123456789abcdef0123456789abcdef"
IAM_ISSUER = "https://iam.cloud.ibm.com/identity"
_CURVES = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}


def generate_private_key(algorithm: str = "RS256") -> bytes:
    key: PrivateKeyTypes
    if algorithm in _CURVES:
        key = ec.generate_private_key(_CURVES[algorithm])
    elif algorithm == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(private_pem: bytes) -> bytes:
    private = serialization.load_pem_private_key(private_pem, password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_key_pair(private_path: Path, algorithm: str = "RS256") -> Path:
    """Write a private key (mode 0600) and its public half next to it; return the latter."""
    private_pem = generate_private_key(algorithm)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path = private_path.with_name(private_path.stem + ".pub.pem")
    public_path.write_bytes(public_pem(private_pem))
    return public_path


def challenge_value() -> str:
    """A random value shaped like a real DNS-01 value (43 base64url characters)."""
    digest = hashlib.sha256(secrets.token_bytes(32)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def notification_claims(
    *,
    instance_crn: str,
    event_type: str,
    domain: str,
    value: str,
    record_name: str = "_acme-challenge",
    certificate_crn: str | None = None,
    user_token: str | None = None,
    lifetime: int | None = 300,
    now: float | None = None,
) -> dict[str, Any]:
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "instance_crn": instance_crn,
        "certificate_manager_url": "https://cloud.ibm.com/services/cloudcerts/demo",
        "event_type": event_type,
        "certificateCRN": certificate_crn or instance_crn.rstrip(":") + ":certificate:demo",
        "domain_validation_method": "dns-01",
        "domain": domain,
        "challenge": {"txt_record_name": record_name, "txt_record_val": value},
        "version": 4,
        "latestVersion": 4,
        "iat": issued,
    }
    if lifetime is not None:
        claims["exp"] = issued + lifetime
    if user_token is not None:
        claims["userToken"] = user_token
    return claims


def user_token_claims(
    *,
    account: str,
    subject: str = "user@example.com",
    issuer: str = IAM_ISSUER,
    lifetime: int = 3600,
    now: float | None = None,
) -> dict[str, Any]:
    issued = int(now if now is not None else time.time())
    return {
        "iam_id": "IBMid-550000DEMO",
        "sub": subject,
        "sub_type": "user",
        "account": {"valid": True, "bss": account},
        "iat": issued,
        "exp": issued + lifetime,
        "iss": issuer,
        "grant_type": "password",
        "scope": "ibm openid",
        "client_id": "bx",
    }


def sign(
    claims: dict[str, Any], private_pem: bytes, algorithm: str = "RS256", kid: str | None = None
) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, private_pem, algorithm=algorithm, headers=headers)


def envelope(token: str) -> bytes:
    return json.dumps({"data": token}).encode()


def jwks_document(public_keys: dict[str, bytes], algorithm: str = "RS256") -> dict[str, Any]:
    """A JWKS like IAM's: `kid`, `alg`, and no `use` member."""
    keys = []
    for kid, pem in public_keys.items():
        key = serialization.load_pem_public_key(pem)
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(key))
        jwk.pop("use", None)
        keys.append({**jwk, "kid": kid, "alg": algorithm})
    return {"keys": keys}
