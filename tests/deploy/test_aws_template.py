"""The SAM template: cfn-lint clean, and wired to the real handler, config and IAM actions."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from receiver import config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "aws"
TEMPLATE = DEPLOY / "template.yaml"
ADAPTER = Path(__file__).resolve().parents[2] / "providers" / "route53.py"
pytestmark = pytest.mark.slow  # cfn-lint runs as a process


def adapter_actions() -> set[str]:
    """Every `self._route53().<operation>(` call in the adapter, as an IAM action name."""
    calls = re.findall(r"_route53\(\)\.([a-z_]+)\(", ADAPTER.read_text())
    return {"route53:" + "".join(word.title() for word in call.split("_")) for call in calls}


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("cfn-lint")
    return subprocess.run([str(binary), str(path)], capture_output=True, text=True, check=False)


def function_properties() -> dict[str, Any]:
    from cfnlint.decode.cfn_yaml import load

    template = load(str(TEMPLATE))
    return dict(template["Resources"]["ReceiverFunction"]["Properties"])


def test_template_lints_clean() -> None:
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("Handler:", "Handlerr:"))
    assert cfn_lint(broken).returncode != 0


def test_handler_and_config_variable_are_the_real_ones() -> None:
    properties = function_properties()
    module, name = properties["Handler"].rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name))
    assert config.CONFIG_ENV in properties["Environment"]["Variables"]
    assert properties["Runtime"] == f"python{sys.version_info.major}.{sys.version_info.minor}"


def test_policy_grants_exactly_the_route53_calls_the_adapter_makes() -> None:
    (policy,) = function_properties()["Policies"]
    granted = {statement["Action"] for statement in policy["Statement"]}
    assert len(adapter_actions()) == 4
    assert granted == adapter_actions()


@pytest.mark.usefixtures("aws_credentials")
def test_example_lambda_config_loads() -> None:
    settings = config.load_file(DEPLOY / "receiver.toml")
    assert [zone.provider for zone in settings.zones] == ["route53"]
    assert settings.journal.enabled is False
    assert settings.propagation.check is False
