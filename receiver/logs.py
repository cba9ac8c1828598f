"""structlog set-up: JSON lines in production, a readable console on a terminal.

Redaction is a processor that runs last before rendering, on our events and on stdlib
records (aiohttp, botocore) alike: values under secret-sounding keys are replaced, and
anything shaped like a JWT or a PEM block is cut out of every string, tracebacks included.
Configured once per process by an entry point, never at import.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from providers.secret import Secret
from receiver.config import LogSettings

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(
    r"token|secret|password|passwd|authorization|signature|private|api_?key|credential|cookie"
    r"|jwt|jws|^data$|^key$",
    re.IGNORECASE,
)
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)?")
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    return bool(key) and _SECRET_KEY.search(key) is not None


def scrub(value: Any, key: str = "") -> Any:
    """A copy of `value` with secrets removed (keys that sound secret, JWTs, PEM blocks)."""
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str | bytes) and _secret_key(key):
        return REDACTED
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        # Substring checks first (C speed): almost every string holds neither marker.
        if "eyJ" in value:
            value = _JWT_LIKE.sub(REDACTED, value)
        if "-----BEGIN" in value:
            value = _PEM.sub(REDACTED, value)
        return value
    if isinstance(value, Mapping):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, key) for v in value]
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    redacted: EventDict = {}
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:  # the common case, kept cheap
            if key != "event" and _secret_key(key):
                value = REDACTED
            elif "eyJ" in value or "-----BEGIN" in value:
                value = scrub(value)
        elif value is not None and kind not in (int, float, bool):
            value = scrub(value, key if key != "event" else "")
        redacted[key] = value
    return redacted


def configure(
    settings: LogSettings, stream: TextIO | None = None, *, worker: int | None = None
) -> None:
    """`worker`: every line carries `"worker": <index>` (`serve --workers`), so that the
    lines of processes sharing one output can be told apart."""
    stream = stream or sys.stdout
    as_json = settings.format == "json" or (settings.format == "auto" and not stream.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if worker is not None:
        shared.insert(1, _worker_field(worker))
    # Tracebacks without frame locals: a local may hold a token or a key.
    exceptions: Processor = (
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if as_json
        else structlog.processors.format_exc_info
    )
    level = _LEVELS[settings.level]
    structlog.configure(
        processors=[*shared, exceptions, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, exceptions],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.INFO))  # third-party debug chatter stays out


def _worker_field(index: int) -> Processor:
    """A fixed field rather than a context variable: `bind_request` clears those."""

    def add(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["worker"] = index
        return event_dict

    return add


def bind_request(request_id: str, **fields: Any) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id, **fields)


def merge(target: MutableMapping[str, Any], fields: Mapping[str, Any]) -> None:
    target.update({k: v for k, v in fields.items() if v is not None})
