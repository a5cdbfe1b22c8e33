"""deploy/prometheus: the alert rules pass `promtool check rules` and `promtool test rules`, and
reference only metrics the service exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.metrics import Metrics
from tests.deploy.conftest import REPO, RULES, RULES_TEST, metric_names, run_promtool

# Building promtool on a fresh machine takes minutes (the session fixture's first use).
pytestmark = pytest.mark.timeout(1800)

REQUIRED_ALERTS = {
    "CapiConsumerLagGrowing",
    "CapiNoAcceptanceWhileLagging",
    "CapiDeadLetterRate",
    "CapiDestinationParked",
    "CapiDeadLetterOlderThan5Days",
    "CapiGraphErrorRatio",
    "CapiTenantsParked",
    "CapiParkedEventsNearExpiry",
}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_promtool_check_rules(promtool: Path) -> None:
    done = run_promtool(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


def test_promtool_test_rules(promtool: Path) -> None:
    done = run_promtool(promtool, "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_fails_a_broken_rule(promtool: Path, tmp_path: Path) -> None:
    # The checks above can fail: a rule with a PromQL syntax error and a test expecting a wrong alert.
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(RULES.read_text().replace("> 5 * 86400", "> 5 * 86400)"))
    assert run_promtool(promtool, "check", "rules", str(broken)).returncode != 0
    shifted = tmp_path / "capi-consumer.rules.yml"
    shifted.write_text(RULES.read_text().replace("> 5 * 86400", "> 6 * 86400"))
    (tmp_path / RULES_TEST.name).write_text(RULES_TEST.read_text())
    done = run_promtool(promtool, "test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert done.returncode != 0 and "CapiDeadLetterOlderThan5Days" in done.stdout + done.stderr


def test_every_required_alert_is_defined_and_documented() -> None:
    rules = _rules()
    names = {rule["alert"] for rule in rules}
    assert names >= REQUIRED_ALERTS
    operations = (REPO / "docs" / "operations.md").read_text().split("## Alerts", 1)[1]
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert f"`{rule['alert']}`" in operations, f"docs/operations.md lacks {rule['alert']}"


def test_rule_tests_cover_the_lag_and_dead_letter_age_alerts() -> None:
    doc = yaml.safe_load(RULES_TEST.read_text())
    firing = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {"CapiConsumerLagGrowing", "CapiDeadLetterOlderThan5Days"} <= firing
    assert firing >= REQUIRED_ALERTS


def test_rules_reference_only_exported_metrics() -> None:
    exported = Metrics().series_names()
    for rule in _rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']}: unknown {used - exported}"
