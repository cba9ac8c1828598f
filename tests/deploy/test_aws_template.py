"""The SAM template: cfn-lint clean, and wired to the real handlers, config, IAM actions and
database secret."""

from __future__ import annotations

import importlib
import json
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
HANDLERS = {
    "ReceiverFunction": "receiver.hosts.aws_lambda.handler",
    "SweepFunction": "receiver.hosts.aws_lambda.sweep_handler",
}
pytestmark = pytest.mark.slow  # cfn-lint runs as a process


def adapter_actions() -> set[str]:
    """Every `self._route53().<operation>(` call in the adapter, as an IAM action name."""
    calls = re.findall(r"_route53\(\)\.([a-z_]+)\(", ADAPTER.read_text())
    return {"route53:" + "".join(word.title() for word in call.split("_")) for call in calls}


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("cfn-lint")
    return subprocess.run([str(binary), str(path)], capture_output=True, text=True, check=False)


def template() -> dict[str, Any]:
    from cfnlint.decode.cfn_yaml import load

    return dict(load(str(TEMPLATE)))


def function_globals() -> dict[str, Any]:
    return dict(template()["Globals"]["Function"])


def test_template_lints_clean() -> None:
    result = cfn_lint(TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_catches_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("Handler:", "Handlerr:"))
    assert cfn_lint(broken).returncode != 0


def test_each_function_runs_a_real_handler_with_the_config_variable() -> None:
    resources = template()["Resources"]
    functions = {k for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"}
    assert functions == set(HANDLERS)
    for name, handler in HANDLERS.items():
        assert resources[name]["Properties"]["Handler"] == handler
        module, attribute = handler.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute))
    shared = function_globals()
    assert config.CONFIG_ENV in shared["Environment"]["Variables"]
    assert shared["Runtime"] == f"python{sys.version_info.major}.{sys.version_info.minor}"


def test_the_sweep_runs_on_an_eventbridge_schedule_only_with_a_database() -> None:
    document = template()
    sweep = document["Resources"]["SweepFunction"]
    assert sweep["Condition"] == "HasDatabase"
    (event,) = sweep["Properties"]["Events"].values()
    assert event["Type"] == "Schedule"  # an EventBridge rule: sweep_handler's event shape
    assert event["Properties"]["Schedule"] == {"Ref": "SweepSchedule"}
    schedule = document["Parameters"]["SweepSchedule"]["Default"]
    minutes = re.fullmatch(r"rate\((\d+) minutes\)", schedule)
    assert minutes is not None, schedule
    # Often enough that a stale value goes soon after journal.max_age_seconds.
    assert int(minutes.group(1)) * 60 < config.JournalSettings().max_age_seconds


def test_policy_grants_exactly_the_route53_calls_the_adapter_makes_to_both() -> None:
    resources = template()["Resources"]
    policy = resources["ChallengeRecordsPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    granted = {
        statement["Action"] for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    }
    assert len(adapter_actions()) == 4
    assert granted == adapter_actions()
    for name in HANDLERS:
        assert resources[name]["Properties"]["Policies"] == [{"Ref": "ChallengeRecordsPolicy"}]


def test_the_database_url_is_a_secrets_manager_reference_never_a_value() -> None:
    variables = function_globals()["Environment"]["Variables"]
    example = (DEPLOY / "receiver.toml").read_text()
    url_env = re.search(r'^url_env = "([A-Z_]+)"', example, re.MULTILINE)
    assert url_env is not None
    condition, reference, otherwise = variables[url_env.group(1)]["Fn::If"]
    assert condition == "HasDatabase"
    assert reference == {"Fn::Sub": "{{resolve:secretsmanager:${DatabaseUrlSecret}}}"}
    assert otherwise == {"Ref": "AWS::NoValue"}
    assert template()["Parameters"]["DatabaseUrlSecret"]["Default"] == ""
    assert not re.search(r"postgres(ql)?://[^\s@]*@", TEMPLATE.read_text())  # no credentials


def test_vpc_config_only_when_subnets_or_security_groups_are_given() -> None:
    document = template()
    condition, vpc, otherwise = function_globals()["VpcConfig"]["Fn::If"]
    assert condition == "HasVpc"
    assert vpc == {
        "SubnetIds": {"Ref": "SubnetIds"},
        "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
    }
    assert otherwise == {"Ref": "AWS::NoValue"}
    for name in ("SubnetIds", "SecurityGroupIds"):
        assert document["Parameters"][name]["Default"] == ""  # optional: no VPC by default
    # Either list alone still makes a VpcConfig, so that the missing half fails loudly.
    either = document["Conditions"]["HasVpc"]["Fn::Or"]
    assert [json.dumps(c["Fn::Not"][0]["Fn::Equals"][0]["Fn::Join"][1]) for c in either] == [
        '{"Ref": "SubnetIds"}',
        '{"Ref": "SecurityGroupIds"}',
    ]


@pytest.mark.usefixtures("aws_credentials")
def test_example_lambda_config_loads_with_the_database_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DCR_DATABASE_URL", "postgresql://receiver:pw@proxy.example:5432/receiver")
    settings = config.load_file(DEPLOY / "receiver.toml")
    assert [zone.provider for zone in settings.zones] == ["route53"]
    assert settings.state.shared
    assert settings.journal.enabled is True and settings.journal.database is None
    # 1-2 per container; the sweep needs both (its lock holds one).
    assert settings.state.max_connections == 2
    assert settings.propagation.check is False


def test_example_lambda_config_needs_the_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DCR_DATABASE_URL", raising=False)
    with pytest.raises(config.ConfigError, match="DCR_DATABASE_URL is not set"):
        config.load_file(DEPLOY / "receiver.toml")
