"""The Kubernetes manifests: valid against the API schemas (offline), internally
consistent, with the promised hardening, the config they carry valid for the receiver,
and clean under checkov (its findings fixed or skipped with a reason in the manifest)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
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


def documents() -> dict[str, dict[str, Any]]:
    """kind -> resource, from every manifest file (the Secret is a template)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in found, f"two {doc['kind']}s"
            found[doc["kind"]] = doc
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = documents()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return dict(only)


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
    broken = documents()["Deployment"]
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
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )


def test_deployment_is_replicated_probed_limited_and_locked_down() -> None:
    deployment = documents()["Deployment"]
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
    docs = documents()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind, selector in (
        ("Deployment", docs["Deployment"]["spec"]["selector"]["matchLabels"]),
        ("Service", docs["Service"]["spec"]["selector"]),
        ("PodDisruptionBudget", docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]),
        ("NetworkPolicy", docs["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]),
    ):
        assert selector.items() <= labels.items(), kind
    assert (
        docs["PodDisruptionBudget"]["spec"]["minAvailable"] < docs["Deployment"]["spec"]["replicas"]
    )
    box = container()
    port = box["ports"][0]
    assert port["containerPort"] == configmap_settings().server.port
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    mounts = {m["name"]: m for m in box["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert set(mounts) == set(volumes)
    # The image reads /etc/dns-challenge-receiver/receiver.toml; the config map has that key.
    assert mounts["config"]["mountPath"] == "/etc/dns-challenge-receiver"
    assert volumes["config"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert "receiver.toml" in docs["ConfigMap"]["data"]
    # Everything the receiver writes lies on a writable volume.
    journal = configmap_settings().journal.database
    assert journal is not None
    assert journal.parent.as_posix() == mounts["data"]["mountPath"]
    assert not mounts["data"].get("readOnly", False)
    # The Secret is mounted as files where AWS_SHARED_CREDENTIALS_FILE points.
    secret = docs["Secret"]
    assert volumes["aws-credentials"]["secret"]["secretName"] == secret["metadata"]["name"]
    env = {e["name"]: e["value"] for e in box["env"]}
    credentials = Path(env["AWS_SHARED_CREDENTIALS_FILE"])
    assert credentials.parent.as_posix() == mounts["aws-credentials"]["mountPath"]
    assert credentials.name in secret["stringData"]


def configmap_settings() -> config.Settings:
    text = documents()["ConfigMap"]["data"]["receiver.toml"]
    filled = re.sub(r'"crn:v1:[^"]*<account-id>[^"]*"', f'"{INSTANCE}"', text)
    return config.from_mapping(tomllib.loads(filled), base_dir=Path("/etc/dns-challenge-receiver"))


def test_the_configmap_is_a_valid_receiver_config_for_route53() -> None:
    settings = configmap_settings()
    assert settings.server.listen == "0.0.0.0:8080"
    # Several replicas: no zone may use the per-pod `local` store.
    assert {zone.provider for zone in settings.zones if not zone.cname_to} == {"route53"}


def test_the_secret_is_a_template_with_placeholders_only() -> None:
    secret = documents()["Secret"]
    values = "\n".join(secret["stringData"].values())
    assert "REPLACE_WITH_" in values
    assert not re.search(r"AKIA[0-9A-Z]{16}", values)  # no access key id
    for line in values.splitlines():
        if "=" in line:
            assert line.split("=", 1)[1].strip().startswith("REPLACE_WITH_"), line


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
