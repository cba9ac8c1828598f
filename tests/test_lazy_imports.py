"""Cold start: nothing imports an adapter (or its SDK) unless a zone configures it."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
at_start = set(sys.modules)  # a *-nspkg.pth (functions-framework's) pre-creates `google`
from receiver import cli, core, http, runtime, config  # everything a door imports
before = sorted(m for m in sys.modules if m.startswith("providers.") and m not in
                ("providers.base", "providers.errors", "providers.registry"))
heavy = sorted(m for m in set(sys.modules) - at_start if m.split(".")[0] in ("boto3", "botocore",
               "google", "cloudflare", "dns"))
from providers.registry import load_provider_class, provider_names
names = provider_names()
load_provider_class("memory")
after = "providers.memory" in sys.modules
print(before, heavy, "memory" in names, after)
"""


def test_adapters_load_only_when_asked_for() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[] [] True True"
