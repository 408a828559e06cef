"""The alerts on the monitoring system itself: rules/monitoring.yml.

promtool lints the file and runs its unit tests (rules/tests/monitoring.test.yml),
each alert's test groups on their own so a failure names the alert. Static
checks hold the file to what those tests cannot see: severities, the runbook
paths, and that no alert about a broken delivery path is routed through it.
Like tests/test_rules.py, every test that needs promtool fails, never skips,
when promtool is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from constructs_lib.alertmanager import (
    AlertmanagerSettings,
    alertmanager_config,
    route_for,
)
from constructs_lib.rules import (
    check_with_promtool,
    default_rule_paths,
    load_rule_files,
)
from tests.test_rules import ROOT, RULES_DIR, TESTS_DIR, load_yaml, run_promtool

RULE_FILE = RULES_DIR / "monitoring.yml"
TEST_FILE = TESTS_DIR / "monitoring.test.yml"
GROUP = "monitoring.rules"

# Alert name -> severity. Severities pick the route (critical: PagerDuty,
# warning: Slack, the rest: email); the reasons are in the rule file.
EXPECTED_ALERTS = {
    "Watchdog": "info",
    "PrometheusNotConnectedToAlertmanagers": "warning",
    "PrometheusErrorSendingAlertsToSomeAlertmanagers": "warning",
    "PrometheusErrorSendingAlertsToAnyAlertmanager": "critical",
    "PrometheusRuleEvaluationFailures": "critical",
    "PrometheusConfigReloadFailed": "critical",
    "PrometheusTSDBCompactionsFailing": "warning",
    "AlertmanagerConfigReloadFailed": "critical",
    "AlertmanagerNotificationsFailing": "warning",
    "AlertmanagerSlackNotificationsFailing": "critical",
    "AlertmanagerClusterMembersMissing": "warning",
}
# Fires always, by design: the one alert without a silent test case.
HEARTBEAT = "Watchdog"
# Labels that exist only once alerts leave Prometheus (external labels).
NOT_AT_EVALUATION = ("cluster", "environment", "replica")


def alerts() -> dict[str, dict[str, Any]]:
    [group] = load_yaml(RULE_FILE)["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def cases() -> list[tuple[str, dict[str, Any]]]:
    """Every alert_rule_test case of the unit test file, with its group name."""
    return [
        (group["name"], case)
        for group in load_yaml(TEST_FILE)["tests"]
        for case in group.get("alert_rule_test", [])
    ]


def kebab(name: str) -> str:
    """PrometheusTSDBCompactionsFailing -> prometheus-tsdb-compactions-failing."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


# --- The file as a whole ------------------------------------------------------


def test_the_file_holds_one_group_with_the_expected_alerts_and_severities() -> None:
    groups = load_yaml(RULE_FILE)["groups"]
    assert [group["name"] for group in groups] == [GROUP]
    found = {name: rule["labels"]["severity"] for name, rule in alerts().items()}
    assert found == EXPECTED_ALERTS
    assert all("record" not in rule for rule in groups[0]["rules"])


def test_promtool_check_rules_passes() -> None:
    result = run_promtool("check", "rules", str(RULE_FILE))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in output, output


def test_the_loader_takes_the_file_beside_the_other_rule_files() -> None:
    # Alert and group names must be unique across every file in rules/.
    files = load_rule_files(default_rule_paths())
    assert files["monitoring.yml"] == RULE_FILE.read_text()
    check_with_promtool(files, "built-in rules")


def test_the_promtool_unit_tests_pass_from_the_project_root() -> None:
    result = run_promtool("test", "rules", str(TEST_FILE.relative_to(ROOT)))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output and "FAILED" not in output, output


def test_the_unit_tests_find_the_rules_relative_to_themselves(tmp_path: Path) -> None:
    assert load_yaml(TEST_FILE)["rule_files"] == ["../monitoring.yml"]
    result = run_promtool("test", "rules", str(TEST_FILE), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output, output


# --- What the unit tests cover ------------------------------------------------


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for _group, case in cases():
        (fires if case["exp_alerts"] else silent).add(case["alertname"])
    assert set(EXPECTED_ALERTS) - fires == set(), "alerts never tested firing"
    assert set(EXPECTED_ALERTS) - {HEARTBEAT} - silent == set(), (
        "alerts never tested silent"
    )
    assert HEARTBEAT not in silent, "the heartbeat can never be silent"
    assert (fires | silent) - set(EXPECTED_ALERTS) == set(), (
        "tests name alerts that do not exist"
    )


def test_every_test_group_is_about_the_one_alert_its_name_starts_with() -> None:
    # Each group then runs on its own below, under its alert's name.
    for group in load_yaml(TEST_FILE)["tests"]:
        names = {case["alertname"] for case in group["alert_rule_test"]}
        assert len(names) == 1, group["name"]
        assert group["name"].startswith(f"{names.pop()} "), group["name"]


def test_firing_cases_check_every_label_and_annotation_exactly() -> None:
    # promtool renders a label the expression dropped as an empty string
    # without complaint, so only an exact expected text catches it.
    for group, case in cases():
        for alert in case["exp_alerts"] or []:
            severity = EXPECTED_ALERTS[case["alertname"]]
            assert alert["exp_labels"]["severity"] == severity, group
            annotations = alert["exp_annotations"]
            assert set(annotations) == {"summary", "description", "runbook"}, group
            for text in annotations.values():
                assert "{{" not in text and "  " not in text, (group, text)


@pytest.mark.parametrize("alertname", sorted(EXPECTED_ALERTS))
def test_each_alert_behaves_as_its_unit_tests_say(
    alertname: str, tmp_path: Path
) -> None:
    """Run, through promtool, only the test groups about ``alertname``."""
    document = load_yaml(TEST_FILE)
    groups = [
        group
        for group in document["tests"]
        if any(case["alertname"] == alertname for case in group["alert_rule_test"])
    ]
    assert len(groups) >= 2, f"{alertname} needs a firing and a silent test group"
    subset = {
        "rule_files": [str(RULE_FILE)],
        "evaluation_interval": document["evaluation_interval"],
        "tests": groups,
    }
    path = tmp_path / f"{alertname}.test.yml"
    path.write_text(yaml.safe_dump(subset, sort_keys=False))
    result = run_promtool("test", "rules", str(path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output, output


# --- Static checks ------------------------------------------------------------


def test_every_alert_has_a_summary_a_description_and_its_runbook_path() -> None:
    assert kebab("PrometheusTSDBCompactionsFailing") == (
        "prometheus-tsdb-compactions-failing"
    )
    for name, rule in alerts().items():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook"] == f"docs/runbooks/{kebab(name)}.md", name


def test_expressions_select_their_job_and_never_use_external_labels() -> None:
    for name, rule in alerts().items():
        expr = rule["expr"]
        texts = [expr, *rule["annotations"].values()]
        for label in NOT_AT_EVALUATION:
            for text in texts:
                assert not re.search(rf"\b{label}\s*(=|!=|=~|!~)", text), (name, label)
                assert f"$labels.{label}" not in text, (name, label)
        if name == HEARTBEAT:
            continue
        # Every selector names its job, so an extra scrape job exposing the
        # same metric names cannot trigger these alerts.
        selectors = re.findall(r"\b(\w+)\{([^}]*)\}", expr)
        assert selectors, name
        for metric, matchers in selectors:
            job = "prometheus" if metric.startswith("prometheus_") else "alertmanager"
            assert f'job="{job}"' in matchers, (name, metric)


def test_the_heartbeat_always_fires_and_carries_nothing_to_route_on() -> None:
    rule = alerts()[HEARTBEAT]
    assert rule["expr"].strip() == "vector(1)"
    assert "for" not in rule
    assert rule["labels"] == {"severity": "info"}


# --- Routing ------------------------------------------------------------------


def integrations_reached(
    labels: dict[str, str], settings: AlertmanagerSettings | None = None
) -> set[str]:
    """The integrations an alert with ``labels`` is notified through.

    Follows the first matching route of the project's Alertmanager config
    (none of its routes use ``continue``), else the root receiver.
    """
    config = alertmanager_config(settings or AlertmanagerSettings())
    assert not any(r.get("continue") for r in config["route"]["routes"])
    receiver = route_for(config, labels)["receiver"]
    [found] = [r for r in config["receivers"] if r["name"] == receiver]
    return {key.removesuffix("_configs") for key in found if key.endswith("_configs")}


def test_the_heartbeat_reaches_only_the_dead_mans_switch() -> None:
    labels = {"alertname": HEARTBEAT, "severity": "info"}
    switch = AlertmanagerSettings(
        receivers={"heartbeat_url": "https://deadman.example.invalid/ping"}
    )

    assert integrations_reached(labels, switch) == {"webhook"}
    # Without a switch configured it is dropped, never emailed every 12h.
    assert integrations_reached(labels) == set()


@pytest.mark.parametrize(
    "alertname",
    ["AlertmanagerNotificationsFailing", "AlertmanagerSlackNotificationsFailing"],
)
def test_a_failing_integration_is_reported_through_another_one(alertname: str) -> None:
    rule = alerts()[alertname]
    ops = re.findall(r'integration(!=|=)"(\w+)"', rule["expr"])
    assert len(set(ops)) == 1, "both sides of the ratio must select alike"
    [(op, value)] = set(ops)
    reached = integrations_reached(
        {"alertname": alertname, "severity": rule["labels"]["severity"]}
    )
    assert reached
    for integration in reached:
        watched = integration == value if op == "=" else integration != value
        assert not watched, f"{alertname} goes out through {integration}, it watches"
