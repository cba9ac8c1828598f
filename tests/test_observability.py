"""deploy/observability: the alerting rules load and fire when they should (promtool), the
PrometheusRule holds the same rules, runbook links lead somewhere, and every metric the
rules and the dashboard name is one a running demo exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .demo import demo_server

ROOT = Path(__file__).resolve().parent.parent
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yml"
RUNBOOK = ROOT / "docs" / "operations" / "runbook.md"
METRIC = re.compile(r"\bdcr_[a-z_]+")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/test installs Debian's prometheus package"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    for rules in (RULES, ROOT / "tests" / "observability" / "broken_rules.yml"):
        result = promtool("check", "rules", str(rules))
        if rules == RULES:
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"SUCCESS: {len(alerts())} rules found" in result.stdout
        else:  # the check can fail
            assert result.returncode != 0


def test_alerts_fire_and_stay_quiet_as_the_unit_tests_say() -> None:
    result = promtool("test", "rules", str(ROOT / "tests" / "observability" / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(
        re.findall(r"alertname: (\w+)", (ROOT / "tests/observability/alerts_test.yml").read_text())
    )
    assert tested == {rule["alert"] for rule in alerts()}  # every alert has a case


def test_the_prometheus_rule_holds_the_same_rules() -> None:
    resource = yaml.safe_load((OBSERVABILITY / "prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule"
    assert resource["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_every_alert_waits_and_links_to_its_runbook_section() -> None:
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    for rule in alerts():
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "operations/runbook/" and anchor in anchors, rule["alert"]


def test_every_metric_named_exists_in_a_running_demo(tmp_path: Path) -> None:
    dashboard = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    expressions = [rule["expr"] for rule in alerts()]
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {name for expr in expressions for name in METRIC.findall(expr)}
    assert len(named) >= 8
    with (
        demo_server(tmp_path) as demo,
        urllib.request.urlopen(f"http://{demo.http}/metrics", timeout=10) as response,
    ):
        text = response.read().decode()
    exported = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        name, kind = match.groups()
        exported.add(name)
        if kind == "histogram":
            exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    assert sorted(named - exported) == []
