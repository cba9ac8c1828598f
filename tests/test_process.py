"""The real server process: started as users start it, driven over real HTTP.

Keys come from the fake IBM Cloud (public-key endpoint and JWKS) running on loopback in
the test's event loop, so the process fetches them exactly as it would in production.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from receiver import cli, config, signing

from .conftest import INSTANCE, FakeIbmCloud, Sender, shared_store_config

REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"


def write_config(
    path: Path, ibm_cloud: FakeIbmCloud, *, latency_ms: int = 0, required: bool = False
) -> Path:
    path.write_text(f"""
[server]
listen = "127.0.0.1:0"
shutdown_timeout_seconds = 10

[log]
format = "json"

[propagation]
check = false

[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_url = "{ibm_cloud.public_key_url}"

[user_token]
jwks_url = "{ibm_cloud.jwks_url}"
required = {str(required).lower()}

[[zones]]
name = "example.com"
provider = "memory"
[zones.options]
latency_ms = {latency_ms}
""")
    return path


async def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        return resp.status, await resp.json()


async def test_server_process_end_to_end(
    tmp_path: Path, ibm_cloud: FakeIbmCloud, sender: Sender, run_server: Callable[..., Any]
) -> None:
    server = await run_server(write_config(tmp_path / "r.toml", ibm_cloud, required=True))
    value = signing.challenge_value()
    user_token = sender.user_token()

    status, body = await post(
        server.url,
        sender.body(sender.claims(REQUIRED, "*.example.com", value, user_token=user_token)),
    )
    assert (status, body) == (
        200,
        {
            "status": "published",
            "fqdn": "_acme-challenge.example.com",
            "record": "_acme-challenge.example.com",
        },
    )

    status, body = await post(
        server.url,
        sender.body(
            sender.claims(REQUIRED, "*.example.com", value, user_token=user_token),
            key=sender.keys["attacker"].private_pem,
        ),
    )
    assert (status, body["error"]) == (401, "invalid_signature")

    status, body = await post(server.url, sender.body(sender.claims(REQUIRED, "example.com")))
    assert (status, body["error"]) == (401, "user_token_required")

    status, body = await post(
        server.url,
        sender.body(sender.claims(COMPLETED, "*.example.com", value, user_token=user_token)),
    )
    assert (status, body["status"]) == (200, "removed")

    assert ibm_cloud.key_fetches == [INSTANCE]
    assert ibm_cloud.jwks_fetches == 1
    async with aiohttp.ClientSession() as session:
        base = server.url.rsplit("/", 1)[0]
        async with session.get(f"{base}/readyz") as resp:
            assert resp.status == 200
    summaries = [e for e in server.events() if e["event"] == "notification"]
    assert [(e["outcome"], e["status"]) for e in summaries] == [
        ("published", 200),
        ("rejected", 401),
        ("rejected", 401),
        ("removed", 200),
    ]
    output = "\n".join(server.lines)
    assert user_token not in output and user_token.split(".")[2] not in output


async def test_sigterm_finishes_the_notification_in_flight(
    tmp_path: Path, ibm_cloud: FakeIbmCloud, sender: Sender, run_server: Callable[..., Any]
) -> None:
    server = await run_server(write_config(tmp_path / "r.toml", ibm_cloud, latency_ms=1500))
    in_flight = asyncio.create_task(post(server.url, sender.body()))
    await asyncio.sleep(0.5)  # the request is inside the provider call now
    server.proc.send_signal(signal.SIGTERM)
    await server.wait_for("shutting_down")
    status, body = await in_flight
    assert (status, body["status"]) == (200, "published")
    assert await asyncio.wait_for(server.proc.wait(), 15) == 0
    names = [e["event"] for e in server.events()]
    assert names.index("shutting_down") < names.index("notification") < names.index("stopped")


async def test_signed_by_the_cli_tool(
    tmp_path: Path, ibm_cloud: FakeIbmCloud, run_server: Callable[..., Any], keys: Any
) -> None:
    """`sign-notification` produces what the server accepts (the README's curl example)."""
    key = tmp_path / "sender.pem"
    key.write_bytes(keys["sender"].private_pem)
    user_key = tmp_path / "user.pem"
    user_key.write_bytes(keys["user"].private_pem)
    server = await run_server(write_config(tmp_path / "r.toml", ibm_cloud, required=True))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "sign-notification",
        "--key",
        str(key),
        "--instance-crn",
        INSTANCE,
        "--domain",
        "www.example.com",
        "--user-token-key",
        str(user_key),
        "--user-token-kid",
        "20261101",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    status, body = await post(server.url, out.strip())
    assert (status, body["status"]) == (200, "published"), body


async def test_bad_config_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "r.toml"
    config.write_text(
        '[server]\nlisten = "nowhere"\n[[zones]]\nname = "x..y"\nprovider = "memory"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "receiver",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    for key in ("server.listen", "zones[0].name", "certificate_manager.allowed_instances"):
        assert key in text, text


async def test_readme_demo_flow(tmp_path: Path, run_server: Callable[..., Any]) -> None:
    """`serve --demo`, `sign-notification --demo` and a DNS query, as the README shows them."""
    import dns.asyncquery
    import dns.message
    import dns.rcode

    demo = tmp_path / "demo"
    server = await run_server(
        Path("unused"),
        "--demo",
        "--demo-dir",
        str(demo),
        "--listen",
        "127.0.0.1:0",
        "--dns-listen",
        "127.0.0.1:0",
    )
    dns_port = int((await server.wait_for("dns_listening"))["address"].rsplit(":", 1)[1])
    query = dns.message.make_query("_acme-challenge.www.example.test", "TXT")
    for event, outcome in (("required", "published"), ("completed", "removed")):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "receiver",
            "sign-notification",
            "--demo",
            "--demo-dir",
            str(demo),
            "--domain",
            "www.example.test",
            "--event",
            event,
            "--value",
            "d" * 43,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        status, body = await post(server.url, out.strip())
        assert (status, body["status"]) == (200, outcome), body
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=dns_port, timeout=3)
        if outcome == "published":
            assert [b"".join(r.strings) for r in answer.answer[0]] == [b"d" * 43]
        else:
            assert answer.rcode() == dns.rcode.NXDOMAIN


async def test_two_processes_share_one_store_and_lose_nothing(
    tmp_path: Path, sender: Sender, public_key_file: Path, run_server: Callable[..., Any]
) -> None:
    """50 concurrent add/remove pairs for one name through two receiver processes that
    share one `local` store: no value lost on the way, none left behind."""
    from providers.local import ChallengeStore

    config = shared_store_config(tmp_path, public_key_file)
    first, second = await run_server(config), await run_server(config)
    name = "_acme-challenge.example.com"
    keeper = signing.challenge_value()
    assert (await post(first.url, sender.body(sender.claims(REQUIRED, "example.com", keeper))))[
        0
    ] == 200
    values = [signing.challenge_value() for _ in range(50)]
    seen_together: list[bool] = []

    async def pair(index: int, value: str) -> None:
        add_via, remove_via = (first, second) if index % 2 else (second, first)
        status, _ = await post(
            add_via.url, sender.body(sender.claims(REQUIRED, "*.example.com", value))
        )
        assert status == 200
        store = ChallengeStore(tmp_path / "shared.sqlite3", lifetime=3600)
        try:
            current = {v.value for v in store.values(name)}
        finally:
            store.close()
        seen_together.append({value, keeper} <= current)  # nothing lost meanwhile
        status, _ = await post(
            remove_via.url, sender.body(sender.claims(COMPLETED, "*.example.com", value))
        )
        assert status == 200

    await asyncio.gather(*(pair(i, v) for i, v in enumerate(values)))
    assert all(seen_together)
    store = ChallengeStore(tmp_path / "shared.sqlite3", lifetime=3600)
    try:
        assert {v.value for v in store.values(name)} == {keeper}  # nothing left behind
    finally:
        store.close()


async def test_a_server_settles_its_heap_before_it_listens(
    monkeypatch: pytest.MonkeyPatch, ibm_cloud: FakeIbmCloud, tmp_path: Path
) -> None:
    """`serve` freezes what start-up built and raises the young generation's threshold
    (`cli.settle_heap`) once the app is up, before it says it listens."""
    calls: list[str] = []
    listening = asyncio.Event()
    monkeypatch.setattr(cli, "settle_heap", lambda: calls.append("settle_heap"))

    def said_listening() -> None:
        calls.append("listening")
        listening.set()

    settings = config.load_file(write_config(tmp_path / "receiver.toml", ibm_cloud))
    server = asyncio.create_task(cli.serve(settings, listening=said_listening))
    try:
        await asyncio.wait_for(listening.wait(), 30)
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
    assert calls == ["settle_heap", "listening"]


def test_settle_heap_freezes_start_up_and_raises_the_young_threshold() -> None:
    """In a process of its own: a frozen heap is never collected again."""
    code = (
        "import gc, receiver.cli as cli; cli.settle_heap();"
        " print(gc.get_freeze_count(), gc.get_threshold()[0], gc.get_count()[0])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    frozen, threshold, young = (int(n) for n in done.stdout.split())
    assert frozen > 10_000  # the modules and what they built
    assert threshold == cli.YOUNG_GC_THRESHOLD > 700
    assert young < 100  # collected before freezing
