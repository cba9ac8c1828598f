"""IBM Cloud Secrets Manager v2 (the manual-DNS public certificate calls) and IAM's token
endpoint, faked faithfully on one aiohttp server (real HTTP on 127.0.0.1).

IAM: `POST /identity/token`, form-encoded, grants `apikey` (the key the fake was given)
and `cr-token` (`cr_token` + `profile_id`); answers `access_token`, `refresh_token`,
`token_type`, `expires_in`, `expiration`. A wrong credential is 400 `BXNIM0415E`.

Secrets Manager, every call with `Authorization: Bearer <a live IAM token>` (401 else):
`GET /api/v2/secrets` (`limit`/`offset`, `secret_types`, `groups`, `match_all_labels`;
`total_count`, `limit`, `offset`, `first`, `last`, `next`/`previous` hrefs, `secrets[]`
without `issuance_info.challenges`), `GET /api/v2/secrets/{id}/metadata`,
`POST /api/v2/secrets/{id}/actions` with `public_cert_action_validate_dns_challenge`
(201). States are integers (0 pre-activation, 1 active, 3 deactivated) with snake-case
`state_description`; `dns`, `ca`, `bundle_certs` are top-level.

`create_secret` orders from the `Ca` it was given: `PebbleCa` orders from Pebble for real
with certbot's `acme` library, so the challenges are Pebble's (absolute names with a
trailing dot); the validate action makes Pebble validate, and the secret becomes active
(with Pebble's certificate; the challenges are gone) or deactivated (with Pebble's error).

Faults: `inject(status, times, retry_after=...)` answers the next API calls with that
status (429 with `Retry-After`, 5xx), before authentication as a gateway would.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from aiohttp import web

APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"
CR_TOKEN_GRANT = "urn:ibm:params:oauth:grant-type:cr-token"
VALIDATE = "public_cert_action_validate_dns_challenge"
STATE_NAMES = {0: "pre_activation", 1: "active", 2: "suspended", 3: "deactivated", 5: "destroyed"}
ACCOUNT = "0123456789abcdef0123456789abcdef"


def _now_iso(at: float | None = None) -> str:
    when = datetime.datetime.fromtimestamp(time.time() if at is None else at, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Ca(Protocol):
    async def order(self, names: Sequence[str]) -> tuple[Any, list[dict[str, Any]]]:
        """A new order for `names`: its handle and its challenges (the API's shape)."""
        ...

    async def validate(self, handle: Any) -> tuple[str | None, str | None]:
        """Validate and finalize: (certificate PEM, None) or (None, error message)."""
        ...


class ScriptedCa:
    """Makes up challenges; validation succeeds unless `fail_with` is set. For the fault
    tests, where Pebble would only add time."""

    def __init__(self, expiration_seconds: float = 7 * 86400) -> None:
        self.fail_with: str | None = None
        self.expiration_seconds = expiration_seconds
        self.validated: list[Any] = []

    async def order(self, names: Sequence[str]) -> tuple[Any, list[dict[str, Any]]]:
        challenges = []
        for name in names:
            base = name.removeprefix("*.")
            challenges.append(
                {
                    "domain": name,
                    "expiration": _now_iso(time.time() + self.expiration_seconds),
                    "status": "pending",
                    "txt_record_name": f"_acme-challenge.{base}.",
                    "txt_record_value": secrets.token_urlsafe(32)[:43],
                }
            )
        return object(), challenges

    async def validate(self, handle: Any) -> tuple[str | None, str | None]:
        self.validated.append(handle)
        if self.fail_with is not None:
            return None, self.fail_with
        return "-----BEGIN CERTIFICATE-----\nscripted\n-----END CERTIFICATE-----\n", None


class PebbleCa:
    """Orders from Pebble with certbot's `acme` library (blocking: run in threads)."""

    def __init__(self, directory_url: str, ca_bundle: str, timeout: float = 90) -> None:
        self.directory_url = directory_url
        self.ca_bundle = ca_bundle
        self.timeout = timeout
        self._client: Any = None
        self._account_key: Any = None

    def _acme(self) -> Any:
        from acme import client, messages
        from cryptography.hazmat.primitives.asymmetric import rsa
        from josepy.jwk import JWKRSA

        if self._client is None:
            key = JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
            net = client.ClientNetwork(
                key, user_agent="fake-secrets-manager", verify_ssl=cast(bool, self.ca_bundle)
            )
            acme = client.ClientV2(client.ClientV2.get_directory(self.directory_url, net), net=net)
            acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
            self._client, self._account_key = acme, key
        return self._client

    async def order(self, names: Sequence[str]) -> tuple[Any, list[dict[str, Any]]]:
        return await asyncio.to_thread(self._order, list(names))

    def _order(self, names: list[str]) -> tuple[Any, list[dict[str, Any]]]:
        from acme import challenges, crypto_util
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        acme = self._acme()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        created = acme.new_order(crypto_util.make_csr(key_pem, names))
        found, answers = [], []
        for authz in created.authorizations:
            domain = authz.body.identifier.value
            if authz.body.wildcard:
                domain = f"*.{domain}"
            challb = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.DNS01))
            expires = authz.body.expires
            found.append(
                {
                    "domain": domain,
                    "expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")
                    if expires
                    else _now_iso(time.time() + 7 * 86400),
                    "status": "pending",
                    "txt_record_name": challb.chall.validation_domain_name(
                        domain.removeprefix("*.")
                    )
                    + ".",
                    "txt_record_value": challb.chall.validation(self._account_key),
                }
            )
            answers.append(challb)
        return (created, answers), found

    async def validate(self, handle: Any) -> tuple[str | None, str | None]:
        return await asyncio.to_thread(self._validate, handle)

    def _validate(self, handle: Any) -> tuple[str | None, str | None]:
        created, answers = handle
        acme = self._client
        try:
            for challb in answers:
                acme.answer_challenge(challb, challb.chall.response(self._account_key))
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.timeout)
            finished = acme.poll_and_finalize(created, deadline=deadline)
        except Exception as exc:  # the acme library raises several unrelated types
            return None, str(exc)[:500]
        return str(finished.fullchain_pem), None


@dataclass
class FakeSecret:
    id: str
    name: str
    crn: str
    common_name: str
    alt_names: list[str]
    secret_group_id: str
    labels: list[str]
    handle: Any
    challenges: list[dict[str, Any]]
    created_at: str = field(default_factory=_now_iso)
    state: int = 0
    dns: str = "manual"
    certificate: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    validation_time: str | None = None
    validations: int = 0

    def metadata(self, *, with_challenges: bool) -> dict[str, Any]:
        info: dict[str, Any] = {
            "auto_rotated": False,
            "ordered_on": self.created_at,
            "state": self.state,
            "state_description": STATE_NAMES[self.state],
        }
        if with_challenges and self.state == 0:
            info["challenges"] = [dict(c) for c in self.challenges]
        if self.validation_time is not None:
            info["dns_challenge_validation_time"] = self.validation_time
        if self.error_code is not None:
            info["error_code"] = self.error_code
            info["error_message"] = self.error_message
        return {
            "id": self.id,
            "name": self.name,
            "secret_type": "public_cert",
            "secret_group_id": self.secret_group_id,
            "labels": list(self.labels),
            "crn": self.crn,
            "created_by": "iam-ServiceId-fake",
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "state": self.state,
            "state_description": STATE_NAMES[self.state],
            "versions_total": 1,
            "locks_total": 0,
            "downloaded": False,
            "common_name": self.common_name,
            "alt_names": list(self.alt_names),
            "key_algorithm": "RSA2048",
            "ca": "pebble-config",
            "dns": self.dns,
            "bundle_certs": True,
            "rotation": {"auto_rotate": False, "rotate_keys": False},
            "issuance_info": info,
        }


class FakeSecretsManager:
    def __init__(
        self,
        ca: Ca,
        *,
        instance_id: str | None = None,
        region: str = "us-south",
        api_key: str = "test-api-key",
        token_lifetime: int = 3600,
    ) -> None:
        self.ca = ca
        self.instance_id = instance_id or str(uuid.uuid4())
        self.region = region
        self.api_key = api_key
        self.cr_token, self.profile_id = "cr-token-from-the-file", "Profile-1234"
        self.token_lifetime = token_lifetime
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch)
        self.secrets: dict[str, FakeSecret] = {}
        self.calls: list[tuple[str, str, int]] = []  # (method, path, status)
        self.token_grants = 0
        self._faults: list[tuple[int, float | None]] = []
        self.expire_tokens_at_call: int | None = None  # IAM's lifetime ends mid-pass
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    @property
    def instance_crn(self) -> str:
        return (
            f"crn:v1:bluemix:public:secrets-manager:{self.region}:a/{ACCOUNT}:{self.instance_id}::"
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/identity/token", self._token)
        app.router.add_get("/api/v2/secrets", self._list)
        app.router.add_get("/api/v2/secrets/{id}/metadata", self._metadata)
        app.router.add_post("/api/v2/secrets/{id}/actions", self._action)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def inject(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        self._faults += [(status, retry_after)] * times

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (IAM's lifetime ended mid-pass)."""
        for token in self.tokens:
            self.tokens[token] = 0.0

    async def create_secret(
        self,
        common_name: str,
        alt_names: Sequence[str] = (),
        *,
        name: str | None = None,
        group: str = "default",
        labels: Sequence[str] = (),
        dns: str = "manual",
    ) -> FakeSecret:
        """`POST /api/v2/secrets` with `dns: manual`: the CA's order, in pre-activation."""
        names = [common_name, *alt_names]
        handle, challenges = await self.ca.order(names)
        secret_id = str(uuid.uuid4())
        secret = FakeSecret(
            id=secret_id,
            name=name or common_name.replace("*", "wildcard").replace(".", "-"),
            crn=self.instance_crn.removesuffix("::") + f":secret:{secret_id}",
            common_name=common_name,
            alt_names=list(alt_names),
            secret_group_id=group,
            labels=list(labels),
            handle=handle,
            challenges=challenges,
            dns=dns,
        )
        self.secrets[secret_id] = secret
        return secret

    async def settled(self, secret: FakeSecret, within: float = 120) -> int:
        async with asyncio.timeout(within):
            while secret.state == 0 or self._tasks:  # noqa: ASYNC110 - polled, as a client would
                await asyncio.sleep(0.05)
        return secret.state

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if len(self.calls) == self.expire_tokens_at_call:
            self.expire_tokens()
        if request.path.startswith("/api/") and self._faults:
            status, retry_after = self._faults.pop(0)
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            self.calls.append((request.method, request.path, status))
            return web.json_response(
                {"errors": [{"code": "fault", "message": "injected"}], "status_code": status},
                status=status,
                headers=headers,
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.calls.append((request.method, request.path, exc.status))
            raise
        self.calls.append((request.method, request.path, response.status))
        return response

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = form.get("grant_type")
        ok = (grant == APIKEY_GRANT and form.get("apikey") == self.api_key) or (
            grant == CR_TOKEN_GRANT
            and form.get("cr_token") == self.cr_token
            and form.get("profile_id") == self.profile_id
        )
        if not ok:
            return web.json_response(
                {
                    "errorCode": "BXNIM0415E",
                    "errorMessage": "Provided API key could not be found.",
                    "context": {"requestId": uuid.uuid4().hex},
                },
                status=400,
            )
        token = secrets.token_urlsafe(48)
        expiration = int(time.time()) + self.token_lifetime
        self.tokens[token] = float(expiration)
        self.token_grants += 1
        return web.json_response(
            {
                "access_token": token,
                "refresh_token": "not_supported",
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "expiration": expiration,
                "scope": "ibm openid",
            }
        )

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        if token is None or self.tokens.get(token, 0.0) <= time.time():
            raise web.HTTPUnauthorized(
                text='{"errors":[{"code":"unauthorized","message":"Unauthorized"}]}',
                content_type="application/json",
            )

    def _secret(self, request: web.Request) -> FakeSecret:
        secret = self.secrets.get(request.match_info["id"])
        if secret is None:
            raise web.HTTPNotFound(
                text='{"errors":[{"code":"not_found","message":"Secret not found"}]}',
                content_type="application/json",
            )
        return secret

    async def _list(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        query = request.query
        try:
            limit = int(query.get("limit", "200"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            raise web.HTTPBadRequest() from None
        if not 1 <= limit <= 1000 or offset < 0:
            raise web.HTTPBadRequest()
        items = list(self.secrets.values())
        if "secret_types" in query:
            items = [s for s in items if "public_cert" in query["secret_types"].split(",")]
        if "groups" in query:
            groups = query["groups"].split(",")
            items = [s for s in items if s.secret_group_id in groups]
        if "match_all_labels" in query:
            wanted = set(query["match_all_labels"].split(","))
            items = [s for s in items if wanted <= set(s.labels)]
        page = items[offset : offset + limit]
        base = "/api/v2/secrets"
        body: dict[str, Any] = {
            "total_count": len(items),
            "limit": limit,
            "offset": offset,
            "first": {"href": f"{self.url}{base}?limit={limit}"},
            "last": {
                "href": f"{self.url}{base}?offset={max(0, (len(items) - 1) // limit * limit)}"
                f"&limit={limit}"
            },
            "secrets": [s.metadata(with_challenges=False) for s in page],
        }
        if offset + limit < len(items):
            body["next"] = {"href": f"{self.url}{base}?offset={offset + limit}&limit={limit}"}
        if offset > 0:
            body["previous"] = {
                "href": f"{self.url}{base}?offset={max(0, offset - limit)}&limit={limit}"
            }
        return web.json_response(body)

    async def _metadata(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        return web.json_response(self._secret(request).metadata(with_challenges=True))

    async def _action(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        secret = self._secret(request)
        body = await request.json()
        if body.get("action_type") != VALIDATE:
            raise web.HTTPBadRequest()
        if secret.state != 0 or secret.validation_time is not None:
            raise web.HTTPBadRequest(
                text='{"errors":[{"code":"bad_request","message":"Validation already requested"}]}',
                content_type="application/json",
            )
        secret.validations += 1
        secret.validation_time = _now_iso()
        task = asyncio.create_task(self._validate(secret))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"action_type": VALIDATE}, status=201)

    async def _validate(self, secret: FakeSecret) -> None:
        certificate, error = await self.ca.validate(secret.handle)
        if certificate is not None:
            secret.state, secret.certificate = 1, certificate
        else:
            secret.state = 3
            secret.error_code = "secrets-manager.Error07035"
            secret.error_message = error
