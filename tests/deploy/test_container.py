"""The container image, linted, built and run for real.

No registry is reachable here (deps.md §7), so the test builds the way an offline user
would: a Debian base image made from packages with mmdebstrap, every wheel fetched on the
host into the build context's wheels directory, and the same Dockerfile users build
with `--build-arg BASE=...`. The image then runs with a read-only root filesystem and
answers a signed notification; the record is read back from its DNS responder.
A missing tool fails these tests: scripts/test installs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from receiver import config, signing

from ..backends.bind import free_port
from ..conftest import INSTANCE, FakeIbmCloud, Sender

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"
EXTRAS = "route53,postgres"  # the Kubernetes example's provider and its shared state
UID = 10001  # the image's user
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
BASE_IMAGE = (
    "localhost/dns-challenge-receiver-test-base:bookworm-"
    + hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:12]
)
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# deps.md §7: crun fails on this host's hybrid cgroups, and the default rlimits are refused.
RUN_FLAGS = (
    "--runtime",
    "runc",
    "run",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
)
CONTEXT_FILES = ("pyproject.toml", "README.md", ".dockerignore", "receiver", "providers")
REQUIRED = "cert_domain_validation_required"
COMPLETED = "cert_domain_validation_completed"


async def txt_when(
    dns_port: int, name: str, wanted: Callable[[dns.message.Message], bool], within: float = 5
) -> dns.message.Message:
    """The responder's answer once `wanted` holds (replicas learn of writes by NOTIFY)."""
    deadline = time.monotonic() + within
    while not wanted(answer := await txt(dns_port, name)):
        assert time.monotonic() < deadline, answer.to_text()
        await asyncio.sleep(0.05)
    return answer


async def start_replica(
    image: str, tmp_path: Path, ibm_cloud: FakeIbmCloud, postgres_url: str
) -> tuple[str, str, int]:
    """One pod of deploy/kubernetes: read-only, no data volume (the image's VOLUME
    ignored), the database URL a read-only mounted file, its responder on its own port."""
    http_port, dns_port = free_port(), free_port()
    folder = tmp_path / f"replica-{http_port}"
    etc, secret = folder / "etc", folder / "database"
    etc.mkdir(parents=True)
    secret.mkdir()
    (secret / "url").write_text(postgres_url + "\n")
    (secret / "url").chmod(0o444)
    (etc / "receiver.toml").write_text(f"""
[server]
listen = "127.0.0.1:{http_port}"
[log]
format = "json"
[propagation]
check = false
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_url = "{ibm_cloud.public_key_url}"
[user_token]
jwks_url = "{ibm_cloud.jwks_url}"
[state]
url_file = "/var/run/secrets/dns-challenge-receiver/database/url"
[local]
dns_listen = "127.0.0.1:{dns_port}"
[[zones]]
name = "example.com"
provider = "local"
""")
    name = f"dcr-test-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{http_port}"
    await podman(
        *RUN_FLAGS,
        "--detach",
        "--name",
        name,
        "--read-only",
        "--image-volume=ignore",  # /var/lib/dns-challenge-receiver stays read-only
        "--network=host",
        "--env",
        f"DNS_CHALLENGE_RECEIVER_HEALTHCHECK_URL={base}/healthz",
        "--volume",
        f"{etc}:/etc/dns-challenge-receiver:ro",
        "--volume",
        f"{secret}:/var/run/secrets/dns-challenge-receiver/database:ro",
        image,
    )
    return name, base, dns_port


@pytest.mark.slow
async def test_two_replicas_of_the_image_share_state_as_the_kubernetes_pods_do(
    image: str, ibm_cloud: FakeIbmCloud, sender: Sender, tmp_path: Path, postgres_url: str
) -> None:
    """A value written through one replica is served by the other's DNS responder and
    removed through the other: nothing on either container's filesystem is state."""
    names: list[str] = []
    try:
        replicas = []
        for _ in range(2):
            name, base, dns_port = await start_replica(image, tmp_path, ibm_cloud, postgres_url)
            names.append(name)
            replicas.append((name, base, dns_port))
        for name, base, _ in replicas:
            await wait_ready(name, base)
        (_, first, first_dns), (_, second, second_dns) = replicas
        value = signing.challenge_value()
        record = "_acme-challenge.www.example.com"

        status, body = await post(
            f"{first}/callback", sender.body(sender.claims(REQUIRED, "www.example.com", value))
        )
        assert (status, body["status"]) == (200, "published"), body
        # The other replica serves it as soon as its mirror hears the NOTIFY.
        answer = await txt_when(second_dns, record, lambda a: a.rcode() == dns.rcode.NOERROR)
        assert [b"".join(r.strings).decode() for r in answer.answer[0]] == [value]

        status, body = await post(
            f"{second}/callback", sender.body(sender.claims(COMPLETED, "www.example.com", value))
        )
        assert (status, body["status"]) == (200, "removed"), body
        await txt_when(first_dns, record, lambda a: a.rcode() == dns.rcode.NXDOMAIN)
        for name in names:
            _, changed = await podman("diff", name)
            assert "/var/lib/dns-challenge-receiver" not in changed, changed
    finally:
        for name in names:
            _, logs = await podman("logs", name, check=False)
            print(logs)
            await podman("rm", "--force", name, check=False)


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        here = Path(sys.executable).parent / name  # console scripts of the test venv
        if here.exists():
            return str(here)
        pytest.fail(f"{name} is not installed (scripts/test installs it)")
    return found


def run(*command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} -> {result.returncode}\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return result


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_exec_form_non_root_and_checks_health() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines()]
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    instructions = {line.split()[0] for line in final_stage if line and not line.startswith("#")}
    assert {"USER", "HEALTHCHECK", "ENTRYPOINT", "CMD", "VOLUME"} <= instructions
    for line in final_stage:
        if line.startswith(("ENTRYPOINT", "CMD")):
            assert line.split(maxsplit=1)[1].startswith("["), line
    assert f"USER {UID}:{UID}" in final_stage
    joined = DOCKERFILE.read_text().replace("\\\n", " ")
    (healthcheck,) = [line for line in joined.splitlines() if line.startswith("HEALTHCHECK")]
    assert 'CMD ["python3", "-c"' in healthcheck  # slim bases have no curl


def test_the_container_example_config_is_valid_and_writes_only_to_the_volume() -> None:
    path = ROOT / "deploy" / "container" / "receiver.toml"
    filled = re.sub(r'"crn:v1:[^"]*<account-id>[^"]*"', f'"{INSTANCE}"', path.read_text())
    settings = config.from_mapping(
        tomllib.loads(filled), base_dir=Path("/etc/dns-challenge-receiver")
    )
    volume = Path("/var/lib/dns-challenge-receiver")
    (local,) = {zone.options for zone in settings.zones if zone.provider == "local"}
    assert local.database.parent == volume
    assert settings.journal.database is not None and settings.journal.database.parent == volume
    # Listening on every address of the container's own namespace, on the EXPOSEd ports.
    exposed = next(
        line for line in DOCKERFILE.read_text().splitlines() if line.startswith("EXPOSE")
    )
    assert settings.server.listen == "0.0.0.0:8080" and "8080/tcp" in exposed
    assert local.dns_listen == "0.0.0.0:8053"
    assert {"8053/udp", "8053/tcp"} <= set(exposed.split())


@pytest.fixture(scope="session")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Debian bookworm image with Python 3.11, built once and kept across runs."""
    podman = tool("podman")
    if subprocess.run([podman, "image", "exists", BASE_IMAGE], check=False).returncode == 0:
        return BASE_IMAGE
    rootfs = tmp_path_factory.mktemp("base") / "rootfs.tar"
    run(
        tool("mmdebstrap"),
        "--variant=apt",
        "--include=" + ",".join(BASE_PACKAGES),
        "--format=tar",
        "bookworm",
        str(rootfs),
        DEBIAN_MIRROR,
    )
    run(podman, "import", str(rootfs), BASE_IMAGE)
    rootfs.unlink()
    return BASE_IMAGE


@pytest.fixture(scope="session")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's build inputs plus, in the wheels directory, every wheel the build
    needs (fetched on the host: pip inside a build step has no trusted index here)."""
    context = tmp_path_factory.mktemp("context")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.whl")
    for name in CONTEXT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=ignore)
        else:
            shutil.copy2(source, context / name)
    shutil.copytree(ROOT / "deploy" / "container", context / "deploy" / "container", ignore=ignore)
    wheels = context / "deploy" / "container" / "wheels"
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--wheel-dir",
        str(wheels),
        f"{context}[{EXTRAS}]",
        "setuptools>=69",
    )
    for own in wheels.glob("dns_challenge_receiver-*.whl"):
        own.unlink()  # the image builds the project itself
    return context


@pytest.fixture(scope="session")
def image(base_image: str, build_context: Path) -> Iterator[str]:
    tag = f"localhost/dns-challenge-receiver:test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    run(
        tool("buildah"),
        "bud",
        "--isolation",
        "chroot",
        "--pull=never",
        "--format",
        "docker",  # keeps HEALTHCHECK (the OCI format has no field for it)
        "--file",
        str(build_context / "deploy" / "container" / "Dockerfile"),
        "--build-arg",
        f"BASE={base_image}",
        "--build-arg",
        f"EXTRAS={EXTRAS}",
        "--tag",
        tag,
        str(build_context),
    )
    seconds = time.monotonic() - started
    size = run(tool("podman"), "image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    print(f"\nimage {tag}: built in {seconds:.1f} s, {int(size) / 1e6:.0f} MB")
    yield tag
    subprocess.run([tool("podman"), "rmi", "--force", tag], capture_output=True, check=False)


async def podman(*args: str, check: bool = True) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        tool("podman"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode is not None
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {proc.returncode}\n{text}")
    return proc.returncode, text


def write_config(etc: Path, ibm_cloud: FakeIbmCloud, http_port: int, dns_port: int) -> None:
    etc.mkdir()
    (etc / "receiver.toml").write_text(f"""
[server]
listen = "127.0.0.1:{http_port}"
[log]
format = "json"
[propagation]
check = false
[certificate_manager]
allowed_instances = ["{INSTANCE}"]
public_key_url = "{ibm_cloud.public_key_url}"
[user_token]
jwks_url = "{ibm_cloud.jwks_url}"
[local]
database = "/var/lib/dns-challenge-receiver/challenges.sqlite3"
dns_listen = "127.0.0.1:{dns_port}"
[[zones]]
name = "example.com"
provider = "local"
""")


async def wait_ready(name: str, base: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            _, running = await podman("inspect", "--format", "{{.State.Running}}", name)
            assert running.strip() == "true", "the container exited"
            await asyncio.sleep(0.25)
    raise AssertionError(f"not ready within {within} s")


async def post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        return resp.status, await resp.json()


async def txt(dns_port: int, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "TXT")
    return await dns.asyncquery.udp(query, "127.0.0.1", port=dns_port, timeout=3)


@pytest.mark.slow
async def test_the_image_publishes_and_removes_a_signed_challenge(
    image: str, ibm_cloud: FakeIbmCloud, sender: Sender, tmp_path: Path
) -> None:
    """The image's own entry point and default command, a read-only root filesystem, a
    writable volume, host networking on loopback ports (the service fetches the sender
    key from the fake IBM Cloud as in production)."""
    _, user = await podman("image", "inspect", "--format", "{{.Config.User}}", image)
    assert user.strip() == f"{UID}:{UID}"
    http_port, dns_port = free_port(), free_port()
    etc, data = tmp_path / "etc", tmp_path / "data"
    write_config(etc, ibm_cloud, http_port, dns_port)
    data.mkdir()
    if os.geteuid() == 0:
        os.chown(data, UID, UID)
    else:
        data.chmod(0o777)
    name = f"dcr-test-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{http_port}"
    await podman(
        *RUN_FLAGS,
        "--detach",
        "--name",
        name,
        "--read-only",
        "--network=host",
        "--env",
        f"DNS_CHALLENGE_RECEIVER_HEALTHCHECK_URL={base}/healthz",
        "--volume",
        f"{etc}:/etc/dns-challenge-receiver:ro",
        "--volume",
        f"{data}:/var/lib/dns-challenge-receiver",
        image,
    )
    try:
        await wait_ready(name, base)
        value = signing.challenge_value()
        record = "_acme-challenge.www.example.com"

        status, body = await post(
            f"{base}/callback", sender.body(sender.claims(REQUIRED, "www.example.com", value))
        )
        assert (status, body["status"]) == (200, "published"), body
        answer = await txt(dns_port, record)
        assert [b"".join(r.strings).decode() for r in answer.answer[0]] == [value]
        assert ibm_cloud.key_fetches == [INSTANCE]

        status, body = await post(
            f"{base}/callback", sender.body(sender.claims(COMPLETED, "www.example.com", value))
        )
        assert (status, body["status"]) == (200, "removed"), body
        assert (await txt(dns_port, record)).rcode() == dns.rcode.NXDOMAIN

        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
        assert 'outcome="published"' in metrics and 'outcome="removed"' in metrics
        # The image's HEALTHCHECK (Python, no curl) passes against the running service.
        code, out = await podman("healthcheck", "run", name, check=False)
        assert code == 0, out
        # Written by the image's user, on the volume: nothing else needed a writable path.
        assert (data / "challenges.sqlite3").stat().st_uid == UID
    finally:
        _, logs = await podman("logs", name, check=False)
        print(logs)
        await podman("rm", "--force", name, check=False)
