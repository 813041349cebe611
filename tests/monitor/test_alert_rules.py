"""docs/monitoring/alerts.yml: valid for promtool, every alert complete, and every alert shown by
the promtool unit tests (alerts_test.yml) to fire on some traffic and to stay quiet on other."""

import subprocess

import yaml
from support.prometheus import RULE_TESTS, RULES, binary

EXPECTED = {"HalluwatchDown", "HalluwatchHighErrorRate", "HalluwatchQueueSaturated", "HalluwatchHighFlaggedShare",
            "HalluwatchHighOutOfDistributionShare", "HalluwatchDriftKS", "HalluwatchDriftPSI",
            "HalluwatchLogEntriesDropped"}


def _rules() -> list:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules():
    result = subprocess.run([binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EXPECTED)} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = subprocess.run([binary("promtool"), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_complete():
    rules = _rules()
    assert {rule["alert"] for rule in rules} == EXPECTED
    for rule in rules:
        assert rule["for"] and rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_alert_is_tested_firing_and_quiet():
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == quiet == EXPECTED
