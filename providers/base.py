"""The adapter contract every DNS provider implements.

The core resolves everything before an adapter is called: the zone (longest configured
match), the canonical record name (absolute, lower case, punycode, no trailing dot), the
unquoted value and the TTL. An adapter translates those to one provider's API and does
nothing else: no retries, no DNS lookups, no policy, no logging of secrets.

Semantics (the conformance suite in `tests/providers` is the executable definition, and
`docs/writing-a-provider-contract.md` the guide):

* `add_txt` is idempotent and keeps every other value at the name.
* `remove_txt` removes only that value, succeeds when it is already gone, and deletes the
  record set when the last value goes.
* Stateless: a fresh process can remove what another one added (no remembered record ids).
* Errors only from `providers.errors`; the core owns every retry.
* What the core must do differently for an adapter is declared on its class
  (`capabilities`, `wants_user_token`), never inferred from its name.

A Settings class may define `problems() -> list[tuple[str, str]]`: (option, why) for
values that can never work. The config reader reports them with every other problem, so
`check-config` catches what would otherwise fail only when `open` refuses it at start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable

# Not part of the contract's text, but of its signatures; importable from here as before.
from providers.rate_budget import UNLIMITED as UNLIMITED
from providers.rate_budget import RateBudget as RateBudget
from providers.secret import Secret as Secret


class Provider(Protocol):
    """One provider's adapter. See the module docstring for the semantics."""

    name: ClassVar[str]  # registry key, module name and extra name: "route53"
    Settings: ClassVar[type[Any]]  # frozen dataclass; fields declared with `setting`
    capabilities: ClassVar[Capabilities]
    # True: `ctx.user_token` carries the ordering user's verified token (IBM CIS acting
    # as that user). Every other adapter is never handed one.
    wants_user_token: ClassVar[bool]
    # The provider's documented request rate per account; None: no limit to keep to.
    default_rate_per_second: ClassVar[float | None]

    @classmethod
    async def open(cls, settings: Any, budget: RateBudget) -> Self:
        """Build the adapter. Cheap: no network I/O here (cold starts matter). Settings
        that cannot work raise `ProviderRejected`/`ProviderAuthError` (a config error)."""
        ...

    async def zone_handle(self, zone_name: str, *, ctx: ChangeContext | None = None) -> str:
        """The provider's id for `zone_name`; raise `ZoneNotFound`. The core caches it.

        `ctx` is the change that needs the zone, when there is one: an adapter acting as
        the ordering user looks the zone up with that user's token. Reads outside a
        change (sweep, probe) pass none."""
        ...

    async def list_txt(self, zone: ZoneRef, fqdn: str) -> frozenset[str]:
        """Every TXT value at `fqdn`, unquoted (an empty set when there is none)."""
        ...

    async def add_txt(
        self, zone: ZoneRef, fqdn: str, value: str, ttl: int, *, ctx: ChangeContext
    ) -> None: ...

    async def remove_txt(
        self, zone: ZoneRef, fqdn: str, value: str, *, ctx: ChangeContext
    ) -> None: ...

    async def aclose(self) -> None:
        """Release connections; safe to call twice."""
        ...


@runtime_checkable
class BatchingProvider(Protocol):
    """An adapter that can apply many changes in one provider call (Route 53, Cloud DNS).

    The dispatcher coalesces changes per zone within a short window and calls `apply`
    once; changes are in arrival order and may touch one name several times. All or
    nothing per provider transaction; the same errors as the single-change methods.
    Changes of different users never share a batch: `ctx.user_token` is theirs.
    """

    async def apply(
        self, zone: ZoneRef, changes: Sequence[TxtChange], *, ctx: ChangeContext
    ) -> None: ...


@dataclasses.dataclass(frozen=True)
class ZoneRef:
    """A zone as the core resolved it: canonical name plus the provider's own id for it."""

    name: str
    handle: str


@dataclasses.dataclass(frozen=True)
class ChangeContext:
    """What a few adapters need beyond the record itself.

    `user_token` is set only for adapters whose class declares `wants_user_token = True`
    (IBM CIS acting as the ordering user); no other adapter ever sees it.
    """

    request_id: str
    user_token: Secret | None = None


@dataclasses.dataclass(frozen=True)
class TxtChange:
    """One step of a batch: add or remove one value at one (canonical) name."""

    action: Literal["add", "remove"]
    fqdn: str
    value: str
    ttl: int


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the core does differently for an adapter. The defaults describe a remote API
    whose records real nameservers publish; most adapters declare `Capabilities()`."""

    # The receiver's own responder answers for the adapter's zones (`local`): the server
    # starts it, workers share its port, and a committed value is live at once (nothing
    # to check for propagation). The adapter's Settings carry the responder's fields, as
    # `providers.local.LocalSettings` does.
    serves_dns: bool = False
    # The records live in the receiver's own state: with `[state]`, in the shared
    # database (the adapter is built with `on_store`, see `StoreBackedProvider`);
    # otherwise in a SQLite file (Settings field `database`) the journal shares by default.
    local_store: bool = False
    # False: values reach no DNS at all (`memory`): propagation has nothing to check.
    publishes_to_dns: bool = True


class StoreBackedProvider(Protocol):
    """The constructor a `local_store` adapter offers the composition root: the adapter
    on a record store the receiver's shared state provides."""

    @classmethod
    def on_store(cls, settings: Any, store: Any) -> Provider: ...


def setting(
    *,
    default: Any = dataclasses.MISSING,
    help: str,
    secret: bool = False,
    acts_as_user_when: Any = None,
) -> Any:
    """Declare a provider setting: its help text and default feed the generated docs
    (`python -m receiver.docsgen`).

    A field typed `Secret` is never written in the config file: the file names where it
    lives, with `<field>_env` (an environment variable) or `<field>_file` (a path).
    `acts_as_user_when`: the value of this setting under which the adapter acts only with
    the ordering user's verified token (configuration then requires `user_token.verify`).
    """
    metadata = {"help": help, "secret": secret, "acts_as_user_when": acts_as_user_when}
    return dataclasses.field(default=default, metadata=metadata)


def settings_acting_as_user(settings: Any) -> list[str]:
    """The fields of an adapter's settings whose value makes it act only with the
    ordering user's verified token."""
    if not dataclasses.is_dataclass(settings):
        return []
    return [
        field.name
        for field in dataclasses.fields(settings)
        if field.metadata.get("acts_as_user_when") is not None
        and getattr(settings, field.name) == field.metadata["acts_as_user_when"]
    ]
