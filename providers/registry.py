"""Find adapters by name through the `dns_challenge_receiver.providers` entry-point group.

Listing names never imports an adapter; `load` imports exactly one module, so a
deployment pays only for the SDK of the provider it configured.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from providers.base import Provider

ENTRY_POINT_GROUP = "dns_challenge_receiver.providers"


class UnknownProvider(LookupError):
    """No adapter is registered under that name."""


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def provider_names() -> list[str]:
    return sorted(_entry_points())


def load_provider_class(name: str) -> type[Provider]:
    """Import the adapter registered as `name`; raise `UnknownProvider` if there is none."""
    found = _entry_points().get(name)
    if found is None:
        known = ", ".join(provider_names()) or "none"
        raise UnknownProvider(f"no provider named {name!r} (installed: {known})")
    try:
        cls: Any = found.load()
    except ImportError as exc:
        raise UnknownProvider(
            f"provider {name!r} is registered but cannot be imported ({exc}); "
            f"install its extra: pip install 'dns-challenge-receiver[{name}]'"
        ) from exc
    if getattr(cls, "name", None) != name:
        raise UnknownProvider(f"entry point {name!r} loads {cls!r}, whose name differs")
    return cast(type[Provider], cls)
