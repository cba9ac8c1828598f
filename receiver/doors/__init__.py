"""The doors, and the one place that says which are open (`open_doors`).

A door is imported only when its settings enable it: a serverless function that serves
Certificate Manager never loads the acme-dns door's account and password machinery.
Enabling a new door is one block here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from receiver.config import Settings
from receiver.door import Door, Doors
from receiver.fetch import HttpGet
from receiver.runtime import Runtime


def open_doors(runtime: Runtime) -> Doors:
    """The doors `runtime.settings` enables, built on `runtime`'s services."""
    settings = runtime.settings
    doors: list[Door] = []
    try:
        if settings.certificate_manager.enabled:
            from receiver.doors.certificate_manager import CertificateManagerDoor

            doors.append(CertificateManagerDoor(runtime))
        if settings.httpreq is not None and settings.httpreq.enabled:
            from receiver.doors.httpreq import HttpreqDoor

            doors.append(HttpreqDoor(runtime, settings.httpreq))
        accounts = runtime.state.accounts  # open when acme_dns.enabled
        if settings.acme_dns is not None and accounts is not None:
            from receiver.doors.acme_dns import AcmeDnsDoor

            doors.append(AcmeDnsDoor(runtime, settings.acme_dns, accounts))
        if runtime.journal is not None and settings.journal.admin_token is not None:
            from receiver.doors.admin import AdminDoor

            doors.append(AdminDoor(runtime.journal, settings.journal.admin_token))
        if settings.digicert is not None and settings.digicert.fileauth:
            from receiver.doors.fileauth import FileAuthDoor

            doors.append(FileAuthDoor(settings.digicert))
        if settings.secrets_manager is not None and settings.secrets_manager.enabled:
            from receiver.doors.secrets_manager import SecretsManagerDoor

            doors.append(SecretsManagerDoor(runtime, settings.secrets_manager))
        return Doors(doors)
    except BaseException:
        for door in reversed(doors):
            door.close()
        raise


@asynccontextmanager
async def serving_runtime(
    settings: Settings, *, long_running: bool = False, http: HttpGet | None = None
) -> AsyncIterator[Runtime]:
    """A Runtime with its doors open: what a host that answers requests enters."""
    async with Runtime.open(settings, long_running=long_running, http=http) as runtime:
        runtime.doors = open_doors(runtime)
        try:
            yield runtime
        finally:
            runtime.doors.close()
