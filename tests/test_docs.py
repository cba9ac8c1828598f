"""The README and the docs site stay true to the code: generated references match it,
every shell snippet runs against the demo, and every error code is catalogued."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from providers.registry import BUILT_IN
from receiver import config, docsgen, errors
from receiver.dispatch import ERROR_CODES as PROVIDER_ERROR_CODES
from receiver.hosts.http import _STATUS_CODES

from .conftest import INSTANCE
from .demo import demo_server

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if docsgen.GENERATED not in p.parents)
NOT_RUN = re.compile(r"<!-- not run: (\S.*) -->")


def test_readme_starts_with_the_two_setup_commands() -> None:
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = first_block.strip().splitlines()
    assert len(commands) == 2
    assert "serve --demo" in commands[0]
    assert commands[1] == "bash scripts/test"
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_is_a_short_front_door() -> None:
    assert len(README.splitlines()) <= 200
    linked = re.findall(r"\]\((docs/[^)#]+)", README)
    assert len(linked) >= 10
    assert [link for link in linked if not (ROOT / link).is_file()] == []


def test_generated_references_match_the_code() -> None:
    """`python -m receiver.docsgen` has been run since the code last changed."""
    expected = docsgen.render_all()
    on_disk = {
        str(p.relative_to(docsgen.GENERATED)): p.read_text()
        for p in docsgen.GENERATED.rglob("*.md")
    }
    stale = sorted(k for k in expected.keys() | on_disk.keys() if expected.get(k) != on_disk.get(k))
    assert stale == [], "run: python -m receiver.docsgen"


def test_generated_tables_are_included_by_a_page() -> None:
    text = "\n".join(page.read_text() for page in PAGES)
    included = set(re.findall(r'^--8<-- "generated/([^"]+)"$', text, re.MULTILINE))
    assert included == set(docsgen.render_all())
    for name in BUILT_IN:  # every registered provider has a page of its own
        assert (
            f'--8<-- "generated/providers/{name}.md"'
            in (DOCS / "providers" / f"{name}.md").read_text()
        )


def test_every_setting_has_a_meaning() -> None:
    """docsgen refuses a setting without help; this names the first one it meets."""
    docsgen.configuration()
    for name in BUILT_IN:
        docsgen.provider_options(name)
    docsgen.command_line()


def test_every_error_code_is_catalogued() -> None:
    """Codes the code can answer with are in `errors.CODES` (the docs' table), and the
    catalogue names no code the code no longer has."""
    source = "\n".join(p.read_text() for p in (ROOT / "receiver").rglob("*.py"))
    raised = set(re.findall(r'code="([a-z_]+)"', source))
    raised |= set(re.findall(r'default_code = "([a-z_]+)"', source))
    raised |= set(PROVIDER_ERROR_CODES.values())
    raised |= set(_STATUS_CODES.values())  # aiohttp's own rejections, as JSON
    prefixes = set(re.findall(r'code_prefix="([a-z_]+)"', source))
    raised |= {f"{p}_{suffix}" for p in prefixes for suffix in ("expired", "not_yet_valid")}
    raised |= {f"invalid_{p}" for p in prefixes}
    catalogue = [entry.code for entry in errors.CODES]
    assert len(catalogue) == len(set(catalogue))
    assert sorted(raised - set(catalogue)) == []
    not_in_code = [c for c in catalogue if c not in raised and f'"{c}"' not in source]
    assert not_in_code == []


def test_error_statuses_match_the_exception_classes() -> None:
    by_code = {entry.code: entry.status for entry in errors.CODES}
    classes: list[type[errors.ReceiverError]] = [errors.ReceiverError]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        # acme-dns answers `forbidden` with 401, as its reference server does; `Forbidden`
        # itself (403) is always raised with a code of its own.
        if cls.default_code in by_code and cls is not errors.Forbidden:
            assert by_code[cls.default_code] == cls.status, cls


def test_example_config_is_valid_once_filled_in() -> None:
    text = (ROOT / "deploy" / "receiver.example.toml").read_text()
    filled = re.sub(r'"crn:v1:[^"]*<account-id>[^"]*"', f'"{INSTANCE}"', text)
    path = ROOT / "deploy" / "receiver.example.toml"
    settings = config.from_mapping(tomllib.loads(filled), base_dir=path.parent)
    assert settings.certificate_manager.allowed_instances == (INSTANCE,)
    assert settings.server.listen == "0.0.0.0:8080"


# --- shell snippets ------------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    text: str
    not_run: str | None  # why it cannot run here, or None


def snippets(page: Path) -> list[Snippet]:
    """The `sh` and `bash` blocks of a page, with the `<!-- not run: why -->` before each."""
    found = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = lines[index].strip()
        if fence in ("```sh", "```bash"):
            previous = next((ln.strip() for ln in reversed(lines[:index]) if ln.strip()), "")
            reason = NOT_RUN.fullmatch(previous)
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            body = textwrap.dedent("\n".join(lines[index + 1 : end]))
            found.append(Snippet(page, index + 1, body, reason.group(1) if reason else None))
            index = end
        index += 1
    return found


RUNNABLE = [s for page in [ROOT / "README.md", *PAGES] for s in snippets(page) if s.not_run is None]


def test_snippets_that_cannot_run_say_why() -> None:
    marked = [s for page in [ROOT / "README.md", *PAGES] for s in snippets(page) if s.not_run]
    assert marked and all(len(s.not_run or "") > 10 for s in marked)
    # The tour in the README and the getting-started page run for real.
    pages = {s.page.name for s in RUNNABLE}
    assert {"README.md", "getting-started.md", "journal.md", "metrics.md"} <= pages


def expected_output(snippet: str) -> list[str]:
    """`# ...` lines right after a command: what it prints (`...` marks an abbreviation)."""
    expected, after_command = [], False
    for line in snippet.splitlines():
        if line.startswith("# "):
            if after_command and "..." not in line:
                expected.append(line[2:])
        else:
            after_command = bool(line.strip())
    return expected


def as_run_here(snippet: str, http: str, dns: str) -> str:
    """The snippet against this test's demo: its ports instead of the defaults."""
    text = snippet.replace("127.0.0.1:8080", http)
    return re.sub(r"(dns-challenge-receiver query) ", rf"\1 --server {dns} ", text)


@pytest.mark.parametrize(
    "page",
    sorted({s.page for s in RUNNABLE}),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_shell_snippets_run_against_the_demo(page: Path, tmp_path: Path) -> None:
    """Each page's runnable snippets, in order, in a fresh demo's directory."""
    binaries = Path(sys.executable).parent
    venv = tmp_path / ".venv" / "bin"  # the README's `.venv/bin/dns-challenge-receiver`
    venv.mkdir(parents=True)
    (venv / "dns-challenge-receiver").symlink_to(binaries / "dns-challenge-receiver")
    env = {**os.environ, "PATH": f"{binaries}:{os.environ.get('PATH', '')}"}
    with demo_server(tmp_path) as demo:
        for snippet in (s for s in RUNNABLE if s.page == page):
            script = as_run_here(snippet.text, demo.http, demo.dns)
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            where = f"{page.relative_to(ROOT)}:{snippet.line}"
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{where} exited {result.returncode}:\n{output}"
            missing = [line for line in expected_output(snippet.text) if line not in output]
            assert missing == [], f"{where} did not print these lines:\n{output}"
