"""Bounded HTTP GETs for key documents: one contract, two transports.

The long-running server fetches through its pooled aiohttp session. Serverless doors use
the standard library instead, in a worker thread: importing aiohttp costs ~0.35 s of cold
start, and a function fetches a key a handful of times per container. Both answer the
body of a 200 (at most `MAX_DOCUMENT_BYTES`), never follow a redirect, ignore proxy
variables, and raise `Unavailable` for everything else.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from receiver import __version__
from receiver.errors import Unavailable

if TYPE_CHECKING:
    import aiohttp

MAX_DOCUMENT_BYTES = 64 * 1024
USER_AGENT = f"dns-challenge-receiver/{__version__}"


class HttpGet(Protocol):
    async def __call__(self, url: str, *, seconds: float, headers: Mapping[str, str]) -> bytes:
        """The body of a 200 answer; `Unavailable` for any other outcome."""
        ...


class AiohttpGet:
    """Through a shared aiohttp session (the long-running server)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def __call__(self, url: str, *, seconds: float, headers: Mapping[str, str]) -> bytes:
        import aiohttp

        try:
            async with self._session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=seconds),
                headers=dict(headers),
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    raise Unavailable(f"{where(url)} answered HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > MAX_DOCUMENT_BYTES:
                    raise _too_large(url)
                # read(n) answers what has arrived (up to n): loop to the end or the limit.
                body = bytearray()
                async for chunk in resp.content.iter_chunked(16 * 1024):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _too_large(url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"{where(url)} unreachable ({type(exc).__name__})") from None
        return bytes(body)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 3xx surfaces as an HTTPError, like any other non-200


class StdlibGet:
    """Through urllib in a worker thread (serverless doors: no aiohttp import)."""

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())
        self._opener.addheaders = [("User-Agent", USER_AGENT)]

    async def __call__(self, url: str, *, seconds: float, headers: Mapping[str, str]) -> bytes:
        if urlsplit(url).scheme not in ("http", "https"):
            raise Unavailable(f"{where(url)} is not an http(s) URL")
        try:
            # The socket timeout bounds each read; wait_for bounds the whole exchange.
            return await asyncio.wait_for(
                asyncio.to_thread(self._read, url, seconds, dict(headers)), seconds
            )
        except TimeoutError:
            raise Unavailable(f"{where(url)} unreachable (TimeoutError)") from None

    def _read(self, url: str, timeout: float, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked
        try:
            with self._opener.open(request, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > MAX_DOCUMENT_BYTES:
                    raise _too_large(url)
                body = bytearray()
                while chunk := resp.read(16 * 1024):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _too_large(url)
        except urllib.error.HTTPError as exc:
            exc.close()
            raise Unavailable(f"{where(url)} answered HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:  # URLError, timeouts, resets, bad URLs
            raise Unavailable(f"{where(url)} unreachable ({type(exc).__name__})") from None
        return bytes(body)


def _too_large(url: str) -> Unavailable:
    return Unavailable(f"{where(url)} answered a document that is too large")


def where(url: str) -> str:
    """scheme://host:port only: paths and queries may name an instance or carry tokens."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{parts.hostname}:{port}"
