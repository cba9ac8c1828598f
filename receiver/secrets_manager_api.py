"""The few IBM Cloud Secrets Manager v2 calls the Secrets Manager door makes.

List secrets (every page), read one secret's metadata, and ask for DNS validation.
Every call draws from the instance's `RateBudget` (at most 20 requests/s), carries a
bearer token from `IamTokens` (renewed once on a 401), and is retried on 429 (after
`Retry-After`) and 5xx with exponential backoff and jitter, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import structlog

from providers.rate_budget import RateBudget
from providers.retry_after import retry_after_seconds
from receiver.door_settings import SecretsManagerInstanceSettings
from receiver.errors import UpstreamFailed
from receiver.ibm_iam import IamTokens

log = structlog.get_logger("receiver.secrets_manager")

VALIDATE_ACTION = "public_cert_action_validate_dns_challenge"
PAGE_SIZE = 200
MAX_PAGES = 1000
RETRIES = 4
RETRY_INITIAL_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
TIMEOUT_SECONDS = 30.0


class SecretGone(UpstreamFailed):
    """404: the secret was deleted."""


def base_url(instance: SecretsManagerInstanceSettings) -> str:
    if instance.endpoint == "public":
        return f"https://{instance.instance_id}.{instance.region}.secrets-manager.appdomain.cloud"
    if instance.endpoint == "private":
        return (
            f"https://{instance.instance_id}.private.{instance.region}"
            ".secrets-manager.appdomain.cloud"
        )
    return instance.endpoint.rstrip("/")


class SecretsManagerApi:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        instance: SecretsManagerInstanceSettings,
        tokens: IamTokens,
        budget: RateBudget,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
        retry_initial_seconds: float | None = None,
    ) -> None:
        self.session = session
        self._base = base_url(instance)
        self.tokens = tokens
        self._budget = budget
        self._sleep = sleep
        self._retry_initial = (
            RETRY_INITIAL_SECONDS if retry_initial_seconds is None else retry_initial_seconds
        )

    async def pending_candidates(
        self, groups: tuple[str, ...], labels: tuple[str, ...]
    ) -> AsyncIterator[dict[str, Any]]:
        """Every `public_cert` secret's list metadata, page by page (the caller filters)."""
        query: dict[str, str] = {"secret_types": "public_cert", "limit": str(PAGE_SIZE)}
        if groups:
            query["groups"] = ",".join(groups)
        if labels:
            query["match_all_labels"] = ",".join(labels)
        offset = 0
        for _ in range(MAX_PAGES):
            page = await self._call("GET", "/api/v2/secrets", {**query, "offset": str(offset)})
            secrets = page.get("secrets")
            if not isinstance(secrets, list):
                raise UpstreamFailed("secret list without secrets[]", code="secrets_manager_bad")
            for item in secrets:
                if isinstance(item, dict):
                    yield item
            following = _next_offset(page)
            if following is None or following <= offset or not secrets:
                return
            offset = following

    async def metadata(self, secret_id: str) -> dict[str, Any]:
        path = f"/api/v2/secrets/{urllib.parse.quote(secret_id, safe='')}/metadata"
        return await self._call("GET", path)

    async def validate(self, secret_id: str) -> None:
        path = f"/api/v2/secrets/{urllib.parse.quote(secret_id, safe='')}/actions"
        await self._call("POST", path, body={"action_type": VALIDATE_ACTION})

    async def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        renewed = False
        attempt = 0
        while True:
            await self._budget.take()
            token = await self.tokens.token()
            headers = {"Authorization": f"Bearer {token.reveal()}", "Accept": "application/json"}
            retry_after: float | None = None
            try:
                async with self.session.request(
                    method,
                    self._base + path,
                    params=query,
                    json=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
                ) as resp:
                    status = resp.status
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    try:
                        document: Any = await resp.json(content_type=None)
                    except ValueError:
                        document = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, document = 0, None
                failure = type(exc).__name__
            else:
                failure = f"HTTP {status}"
            if 200 <= status < 300:
                if not isinstance(document, dict):
                    raise UpstreamFailed(
                        f"{method} {path}: the answer is not a JSON object",
                        code="secrets_manager_bad",
                    )
                return document
            if status == 401 and not renewed:  # expired or revoked early: renew once
                self.tokens.invalidate()
                renewed = True
                continue
            if (status == 0 or status == 429 or status >= 500) and attempt < RETRIES:
                attempt += 1
                delay = (
                    retry_after
                    if status == 429 and retry_after is not None
                    else min(RETRY_MAX_SECONDS, self._retry_initial * 2 ** (attempt - 1))
                    * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                )
                delay = min(delay, RETRY_MAX_SECONDS)
                log.info("secrets_manager_retry", path=path, reason=failure, delay_s=delay)
                await self._sleep(delay)
                continue
            if status == 404:
                raise SecretGone(f"{path}: 404", code="secret_not_found")
            raise UpstreamFailed(
                f"Secrets Manager {method} {path}: {failure}",
                code="secrets_manager_failed",
                internal=_message(document),
            )


def _next_offset(page: Mapping[str, Any]) -> int | None:
    following = page.get("next")
    if not isinstance(following, dict) or not isinstance(following.get("href"), str):
        return None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(following["href"]).query)
    try:
        return int(query["offset"][0])
    except (KeyError, ValueError, IndexError):
        return None


def _message(document: Any) -> str | None:
    if not isinstance(document, dict):
        return None
    errors = document.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message"))[:200]
    for key in ("error", "message"):
        if isinstance(document.get(key), str):
            return str(document[key])[:200]
    return None
