"""IBM Cloud IAM tokens: an API key, or a Code Engine compute-resource (CR) token and a
trusted profile, exchanged at the token endpoint; cached and renewed before they expire.

The key and the tokens are `Secret`s: never logged, never in an exception's text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from providers.secret import Secret
from receiver.errors import UpstreamFailed

log = structlog.get_logger("receiver.ibm_iam")

APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"
CR_TOKEN_GRANT = "urn:ibm:params:oauth:grant-type:cr-token"  # noqa: S105 - a grant name
RENEW_AT = 0.8  # of the token's lifetime, as IBM's SDK core does
TIMEOUT_SECONDS = 30.0


class IamTokens:
    """One credential's bearer token. `token()` returns a cached one until 80% of its
    lifetime has passed; `invalidate()` after a 401 makes the next call fetch anew."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        api_key: Secret | None = None,
        cr_token_file: Path | None = None,
        profile_id: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (api_key is None) == (cr_token_file is None):
            raise ValueError("give an API key or a CR token file")
        self.session = session  # the pass's; the token outlives it
        self._url = url
        self._api_key = api_key
        self._cr_token_file = cr_token_file
        self._profile_id = profile_id
        self._clock = clock
        self._token: Secret | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> Secret:
        async with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        self._token = None

    def _form(self) -> dict[str, str]:
        if self._api_key is not None:
            return {
                "grant_type": APIKEY_GRANT,
                "apikey": self._api_key.reveal(),
                "response_type": "cloud_iam",
            }
        assert self._cr_token_file is not None
        try:  # read each time: the platform rotates the file
            cr_token = self._cr_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UpstreamFailed(
                "cannot read the compute-resource token file",
                code="iam_unavailable",
                internal=f"{self._cr_token_file}: {exc.strerror or exc}",
            ) from None
        return {"grant_type": CR_TOKEN_GRANT, "cr_token": cr_token, "profile_id": self._profile_id}

    async def _fetch(self) -> None:
        started = self._clock()
        try:
            async with self.session.post(
                self._url,
                data=self._form(),
                headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
            ) as resp:
                status = resp.status
                try:
                    body: Any = await resp.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamFailed(
                "IAM token endpoint unreachable",
                code="iam_unavailable",
                internal=type(exc).__name__,
            ) from None
        if status != 200 or not isinstance(body, dict):
            message = body.get("errorMessage") if isinstance(body, dict) else None
            raise UpstreamFailed(
                f"IAM refused the credential (HTTP {status})",
                code="iam_refused",
                internal=str(message)[:200] if message else None,
            )
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token:
            raise UpstreamFailed("IAM answered without an access_token", code="iam_refused")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            expires_in = 3600
        lifetime = max(1.0, min(float(expires_in), 24 * 3600.0))
        self._token = Secret(token)
        self._renew_at = started + lifetime * RENEW_AT
        log.debug("iam_token_fetched", expires_in=lifetime)
