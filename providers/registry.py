"""Find adapters by name: the built-in ones directly, others through the
`dns_challenge_receiver.providers` entry-point group.

Listing names never imports an adapter; `load` imports exactly one module, so a
deployment pays only for the SDK of the provider it configured. The built-in adapters
skip the entry-point scan (importing importlib.metadata and reading every installed
distribution's metadata costs ~40 ms of cold start); `BUILT_IN` mirrors pyproject's
entry points, and a test keeps the two equal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, cast

from providers.base import Provider

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "dns_challenge_receiver.providers"
BUILT_IN = {
    "memory": "providers.memory:MemoryProvider",
    "local": "providers.local:LocalProvider",
    "route53": "providers.route53:Route53Provider",
    "rfc2136": "providers.rfc2136:Rfc2136Provider",
    "cis": "providers.cis:CisProvider",
    "cloudflare": "providers.cloudflare:CloudflareProvider",
    "gcloud": "providers.gcloud:GoogleCloudDnsProvider",
}


class UnknownProvider(LookupError):
    """No adapter is registered under that name."""


def _entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def provider_names() -> list[str]:
    return sorted(set(BUILT_IN) | set(_entry_points()))


def is_provider(name: str) -> bool:
    """Whether an adapter is registered as `name` (scans entry points only if not built in)."""
    return name in BUILT_IN or name in _entry_points()


def load_provider_class(name: str) -> type[Provider]:
    """Import the adapter registered as `name`; raise `UnknownProvider` if there is none."""
    try:
        cls = _load(name)
    except ImportError as exc:
        raise UnknownProvider(
            f"provider {name!r} is registered but cannot be imported ({exc}); "
            f"install its extra: pip install 'dns-challenge-receiver[{name}]'"
        ) from exc
    if getattr(cls, "name", None) != name:
        raise UnknownProvider(f"entry point {name!r} loads {cls!r}, whose name differs")
    return cast(type[Provider], cls)


def _load(name: str) -> Any:
    if name in BUILT_IN:
        module, _, attribute = BUILT_IN[name].partition(":")
        return getattr(importlib.import_module(module), attribute)
    found = _entry_points().get(name)
    if found is None:
        known = ", ".join(provider_names())
        raise UnknownProvider(f"no provider named {name!r} (installed: {known})")
    return found.load()
