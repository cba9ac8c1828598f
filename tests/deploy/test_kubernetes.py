"""The Kubernetes manifests: valid against the API schemas (offline), internally
consistent, with the promised hardening, the config they carry valid for the receiver,
and clean under checkov (its findings fixed or skipped with a reason in the manifest)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from receiver import config

from ..conftest import INSTANCE

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still supported upstream when written
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
# Each skip is explained next to it in the file; a new one must be added here knowingly.
JUSTIFIED_SKIPS = {"CKV_K8S_43", "CKV_DOCKER_7"}
NAME = "dns-challenge-receiver"


def documents() -> list[dict[str, Any]]:
    """Every resource in every manifest file (the Secrets' file is a template)."""
    found = [
        doc
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
    ]
    keys = [(doc["kind"], doc["metadata"]["name"]) for doc in found]
    assert len(keys) == len(set(keys)), keys
    return found


def resource(kind: str, name: str = NAME) -> dict[str, Any]:
    (only,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return only


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return dict(only)


def database_url() -> str:
    """The example Secret's URL: placeholders, but a URL of the right shape."""
    url: str = resource("Secret", f"{NAME}-database")["stringData"]["url"]
    return url


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_manifest_is_valid_against_the_api_schema(path: Path) -> None:
    if path.name == "kustomization.yaml":
        data = yaml.safe_load(path.read_text())
        listed = set(data["resources"])
        present = {p.name for p in MANIFESTS.glob("*.yaml")} - {path.name}
        # Everything but the Secret template, which users fill in and apply themselves.
        assert listed == present - {"secret.example.yaml"}
        return
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":  # explicit, so no file lands in "default" alone
            assert doc["metadata"]["namespace"] == "dns-challenge-receiver"


def test_schema_validation_catches_a_wrong_type() -> None:
    broken = resource("Deployment")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomize_renders_the_set() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True
    ).stdout
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(out))
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )


def test_deployment_is_replicated_probed_limited_and_locked_down() -> None:
    deployment = resource("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod, box = pod_spec(), container()
    assert box["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert box["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(box["resources"][kind])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    security = box["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["runAsUser"] == 10001  # the image's user (deploy/container/Dockerfile)
    # Shutdown: in-flight notifications get server.shutdown_timeout_seconds, inside the grace.
    settings = configmap_settings()
    assert settings.server.shutdown_timeout_seconds < pod["terminationGracePeriodSeconds"]


def test_selectors_and_mounts_line_up() -> None:
    deployment = resource("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind, name, selector in (
        ("Deployment", NAME, deployment["spec"]["selector"]["matchLabels"]),
        ("Service", NAME, resource("Service")["spec"]["selector"]),
        ("Service", f"{NAME}-dns", resource("Service", f"{NAME}-dns")["spec"]["selector"]),
        (
            "PodDisruptionBudget",
            NAME,
            resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        ),
        ("NetworkPolicy", NAME, resource("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]),
    ):
        assert selector.items() <= labels.items(), (kind, name)
    assert resource("PodDisruptionBudget")["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    box = container()
    ports = {port["name"]: port for port in box["ports"]}
    assert ports["http"]["containerPort"] == configmap_settings().server.port
    assert resource("Service")["spec"]["ports"][0]["targetPort"] == "http"
    mounts = {m["name"]: m for m in box["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert set(mounts) == set(volumes)
    # The image reads /etc/dns-challenge-receiver/receiver.toml; the config map has that key.
    configmap = resource("ConfigMap")
    assert mounts["config"]["mountPath"] == "/etc/dns-challenge-receiver"
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert "receiver.toml" in configmap["data"]
    # The database URL is the Secret's key `url`, mounted where [state] url_file points.
    url_file = Path(tomllib.loads(configmap["data"]["receiver.toml"])["state"]["url_file"])
    database = resource("Secret", f"{NAME}-database")
    assert volumes["database-url"]["secret"]["secretName"] == database["metadata"]["name"]
    assert url_file.parent.as_posix() == mounts["database-url"]["mountPath"]
    assert url_file.name in database["stringData"]
    # Nothing the receiver remembers is on the pod: no SQLite file, no data volume; /tmp
    # is the one writable path.
    settings = configmap_settings()
    assert settings.state.shared and settings.journal.database is None
    writable = {m["mountPath"] for m in mounts.values() if not m.get("readOnly", False)}
    assert writable == {"/tmp"}
    assert "emptyDir" in volumes["tmp"]
    # The AWS Secret is mounted as files where AWS_SHARED_CREDENTIALS_FILE points.
    aws = resource("Secret", f"{NAME}-aws")
    assert volumes["aws-credentials"]["secret"]["secretName"] == aws["metadata"]["name"]
    env = {e["name"]: e["value"] for e in box["env"]}
    credentials = Path(env["AWS_SHARED_CREDENTIALS_FILE"])
    assert credentials.parent.as_posix() == mounts["aws-credentials"]["mountPath"]
    assert credentials.name in aws["stringData"]


def configmap_settings() -> config.Settings:
    """The ConfigMap's receiver.toml as a pod loads it, with the example Secret's URL in the
    file that [state] url_file names (a temporary copy: the mount exists only in the pod)."""
    text = resource("ConfigMap")["data"]["receiver.toml"]
    data = tomllib.loads(re.sub(r'"crn:v1:[^"]*<account-id>[^"]*"', f'"{INSTANCE}"', text))
    with tempfile.TemporaryDirectory() as folder:
        url_file = Path(folder) / "url"
        url_file.write_text(database_url() + "\n")
        data["state"]["url_file"] = str(url_file)
        return config.from_mapping(data, base_dir=Path("/etc/dns-challenge-receiver"))


def test_the_configmap_is_a_valid_receiver_config_on_shared_state() -> None:
    settings = configmap_settings()
    assert settings.server.listen == "0.0.0.0:8080"
    assert settings.state.url is not None
    assert settings.state.url.reveal() == database_url()
    assert settings.journal.enabled
    # `local` zones are served by every replica: from the shared database, never a file.
    assert {zone.provider for zone in settings.zones if not zone.cname_to} == {"local", "route53"}


def test_the_dns_service_publishes_every_replicas_responder_on_port_53() -> None:
    service = resource("Service", f"{NAME}-dns")
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # Public authoritative DNS: the CA's resolvers must reach it from outside the cluster.
    assert service["spec"]["type"] == "LoadBalancer"
    (listen,) = {
        zone.options.dns_listen for zone in configmap_settings().zones if zone.provider == "local"
    }
    ports = {port["name"]: port for port in container()["ports"]}
    published = set()
    for port in service["spec"]["ports"]:
        target = ports[port["targetPort"]]
        assert target["containerPort"] == int(listen.rsplit(":", 1)[1]), port
        assert target["protocol"] == port["protocol"], port
        assert port["port"] == 53
        published.add(port["protocol"])
    assert published == {"UDP", "TCP"}  # TCP for answers too big for UDP


def test_the_network_policy_lets_in_http_and_dns_and_out_to_the_database() -> None:
    spec = resource("NetworkPolicy")["spec"]
    allowed_in = {(p["port"], p["protocol"]) for rule in spec["ingress"] for p in rule["ports"]}
    # A policy sees the pod's ports (after a Service's translation): every container port.
    assert allowed_in == {(p["containerPort"], p["protocol"]) for p in container()["ports"]}
    allowed_out = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    database_port = urllib.parse.urlsplit(database_url()).port or 5432
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (database_port, "TCP")} == allowed_out


def test_the_secrets_are_templates_with_placeholders_only() -> None:
    secrets = [doc for doc in documents() if doc["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {f"{NAME}-aws", f"{NAME}-database"}
    for secret in secrets:
        for value in secret["stringData"].values():
            assert "REPLACE_WITH_" in value
    credentials = resource("Secret", f"{NAME}-aws")["stringData"]["credentials"]
    assert not re.search(r"AKIA[0-9A-Z]{16}", credentials)  # no access key id
    for line in credentials.splitlines():
        if "=" in line:
            assert line.split("=", 1)[1].strip().startswith("REPLACE_WITH_"), line
    url = urllib.parse.urlsplit(database_url())
    assert url.password is not None and url.password.startswith("REPLACE_WITH_")
    assert url.hostname is not None and url.hostname.upper().startswith("REPLACE_WITH_")
    assert config.url_problem(database_url()) is None  # a real one fits where it stands


@pytest.mark.slow
def test_checkov_finds_nothing_unjustified() -> None:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: scripts/test creates it")
    result = subprocess.run(
        [
            str(CHECKOV),
            "--skip-download",
            "--output",
            "json",
            "--directory",
            str(ROOT / "deploy"),
            "--framework",
            "kubernetes",
            "dockerfile",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    frameworks = {report["check_type"] for report in reports}
    assert frameworks == {"kubernetes", "dockerfile"}, result.stdout[-2000:]
    failed = [
        f"{check['check_id']} {check['file_path']}: {check['check_name']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    assert not failed
    skipped = {
        check["check_id"] for report in reports for check in report["results"]["skipped_checks"]
    }
    assert skipped == JUSTIFIED_SKIPS
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 50  # it really looked
    assert result.returncode == 0
