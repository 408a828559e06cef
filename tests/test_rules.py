"""The alert rules in rules/: promtool lint, promtool unit tests, the loader.

Every test that needs promtool fails, never skips, when it is missing: a
rule suite that silently checked nothing would look the same as a green one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from constructs_lib.errors import ConfigurationError
from constructs_lib.rules import (
    DEFAULT_RULES_DIR,
    check_with_promtool,
    default_rule_paths,
    load_rule_files,
)

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "rules"
TESTS_DIR = RULES_DIR / "tests"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*.test.yml"))
EXPECTED_GROUPS = {
    "application.yml": "application.rules",
    "database.yml": "database.rules",
    "infrastructure.yml": "infrastructure.rules",
    "monitoring.yml": "monitoring.rules",
    "security.yml": "security.rules",
}
# Fires by design, always: it has no case where it stays silent.
ALWAYS_FIRING = {"Watchdog"}


def promtool() -> str:
    """promtool from $PROMTOOL or PATH, as the library finds it; fail if absent."""
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    assert path and os.access(path, os.X_OK), (
        "promtool is not installed; run `make setup` (Debian package prometheus)"
    )
    return path


def run_promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> dict[str, dict[str, Any]]:
    """Every alerting rule in rules/*.yml by alert name."""
    alerts: dict[str, dict[str, Any]] = {}
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    alerts[rule["alert"]] = rule
    return alerts


def alert_rule_tests() -> list[tuple[Path, str, dict[str, Any]]]:
    """Every alert_rule_test case as (test file, group name, case)."""
    cases = []
    for path in TEST_FILES:
        for group in load_yaml(path)["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.append((path, group.get("name", "?"), case))
    return cases


def run_unit_tests_for(alertname: str, tmp_path: Path) -> None:
    """Run, through promtool, only the test groups that exercise ``alertname``.

    Each behaviour then fails on its own, under its own name, instead of
    inside one run of every test file.
    """
    ran = 0
    for path in TEST_FILES:
        document = load_yaml(path)
        groups = [
            group
            for group in document["tests"]
            if any(
                case["alertname"] == alertname
                for case in group.get("alert_rule_test", [])
            )
        ]
        if not groups:
            continue
        subset = {
            "rule_files": [
                str((path.parent / rule_file).resolve())
                for rule_file in document["rule_files"]
            ],
            "evaluation_interval": document.get("evaluation_interval", "1m"),
            "tests": groups,
        }
        subset_path = tmp_path / f"{alertname}-{path.name}"
        subset_path.write_text(yaml.safe_dump(subset, sort_keys=False))
        result = run_promtool("test", "rules", str(subset_path))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "SUCCESS" in output, output
        ran += len(groups)
    assert ran >= 2, f"expected a firing and a silent test group for {alertname}"


# --- The rule files as a whole ------------------------------------------------


def test_rules_dir_holds_one_group_per_file_with_the_expected_names() -> None:
    assert DEFAULT_RULES_DIR == RULES_DIR
    assert default_rule_paths() == [RULES_DIR / name for name in EXPECTED_GROUPS]
    for path in RULE_FILES:
        groups = load_yaml(path)["groups"]
        assert [group["name"] for group in groups] == [EXPECTED_GROUPS[path.name]]


def test_every_rule_file_passes_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", *map(str, RULE_FILES))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(RULE_FILES), output


def test_every_promtool_unit_test_file_passes_from_the_project_root() -> None:
    relative = [str(path.relative_to(ROOT)) for path in TEST_FILES]
    assert len(relative) == len(EXPECTED_GROUPS)
    result = run_promtool("test", "rules", *relative)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(TEST_FILES), output
    assert "FAILED" not in output, output


def test_unit_tests_find_their_rule_files_relative_to_the_test_file(
    tmp_path: Path,
) -> None:
    for path in TEST_FILES:
        rule_files = load_yaml(path)["rule_files"]
        assert rule_files == [f"../{path.name.removesuffix('.test.yml')}.yml"]
        assert (path.parent / rule_files[0]).resolve().is_file()
    # From an unrelated working directory the tests must still load the rules.
    result = run_promtool("test", "rules", *map(str, TEST_FILES), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(TEST_FILES), output


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_is_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for _path, _group, case in alert_rule_tests():
        if case.get("exp_alerts"):
            fires.add(case["alertname"])
        elif case.get("exp_alerts") == [] and "exp_alerts" in case:
            silent.add(case["alertname"])
    alerts = set(alert_rules())
    assert len(alerts) == 29
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - silent - ALWAYS_FIRING == set(), "alerts never tested silent"
    assert (fires | silent) - alerts == set(), "tests name alerts that do not exist"


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name


def test_firing_test_cases_check_the_rendered_summary_and_description() -> None:
    # promtool renders a label the aggregation dropped as an empty string
    # without complaint, so only an exact expected text catches it.
    for path, group, case in alert_rule_tests():
        for alert in case.get("exp_alerts") or []:
            annotations = alert.get("exp_annotations") or {}
            assert (
                {"summary", "description"}
                <= set(annotations)
                <= {"summary", "description", "runbook"}
            ), (path, group)
            for text in annotations.values():
                assert "{{" not in text and "  " not in text, (path, group, text)


def test_description_templates_use_only_labels_the_expression_keeps() -> None:
    # A cheap static cross-check of the rendered-text tests above: every
    # $labels.x in a template must be named in the expression's by()/on()/
    # ignoring() clauses or selectors, or the expression must not aggregate.
    for name, rule in alert_rules().items():
        expr = rule["expr"]
        used = set()
        for text in rule["annotations"].values():
            used |= set(re.findall(r"\$labels\.(\w+)", text))
        kept = set()
        for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            kept |= {label.strip() for label in clause.split(",") if label.strip()}
        if "histogram_quantile" in expr:
            kept.discard("le")
        if kept:
            assert used <= kept, (name, used - kept)


# --- Each alert's behaviour, through promtool ---------------------------------


def test_high_error_rate_fires_only_when_errors_exceed_five_percent(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("HighErrorRate", tmp_path)


def test_high_response_time_fires_when_a_services_p95_exceeds_two_seconds(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("HighResponseTime", tmp_path)


def test_connection_pool_alert_compares_active_to_total_of_the_same_pool(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("DatabaseConnectionPoolHigh", tmp_path)


def test_service_down_fires_after_a_minute_and_ignores_one_failed_scrape(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("ServiceDown", tmp_path)


def test_high_cpu_usage_fires_on_the_node_average_above_eighty_percent(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("HighCPUUsage", tmp_path)


def test_high_memory_usage_fires_above_85_percent_for_five_minutes(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("HighMemoryUsage", tmp_path)


def test_disk_space_low_fires_above_90_percent_ignoring_in_memory_filesystems(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("DiskSpaceLow", tmp_path)


def test_pod_crash_looping_fires_for_more_than_two_restarts_in_15_minutes(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("PodCrashLooping", tmp_path)


def test_database_down_fires_when_pg_up_is_zero_for_a_minute(tmp_path: Path) -> None:
    run_unit_tests_for("DatabaseDown", tmp_path)


def test_high_database_connections_sums_all_databases_and_states_per_server(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("HighDatabaseConnections", tmp_path)


def test_slow_queries_fires_once_per_database_for_transactions_over_five_minutes(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("SlowQueries", tmp_path)


def test_replication_lag_fires_for_a_replica_over_30_seconds_behind(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("ReplicationLag", tmp_path)


def test_failed_logins_are_summed_across_pods_before_the_threshold(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("HighFailedLoginAttempts", tmp_path)


def test_suspicious_api_activity_fires_above_50_client_errors_per_second(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("SuspiciousAPIActivity", tmp_path)


def test_unauthorized_access_fires_above_five_failures_per_second_per_service(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("UnauthorizedAccess", tmp_path)


def test_data_export_anomaly_pages_for_a_surge_but_not_a_single_export(
    tmp_path: Path,
) -> None:
    run_unit_tests_for("DataExportAnomaly", tmp_path)


# --- The loader and promtool check --------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ALERT = """\
groups:
  - name: {group}
    rules:
      - alert: {alert}
        expr: {expr}
        for: 5m
        labels:
          severity: {severity}
        annotations:
          runbook: https://wiki.example.com/runbooks/{alert}
"""


def rule_file(
    path: Path,
    *,
    group: str = "extra.rules",
    alert: str = "QueueBacklog",
    expr: str = "sum by (service) (queue_depth) > 100",
    severity: str = "warning",
) -> Path:
    return write(
        path, ALERT.format(group=group, alert=alert, expr=expr, severity=severity)
    )


def test_loading_the_built_in_rules_returns_their_text_keyed_by_file_name() -> None:
    files = load_rule_files(default_rule_paths())
    assert list(files) == list(EXPECTED_GROUPS)
    for name, text in files.items():
        assert text == (RULES_DIR / name).read_text()


def test_built_in_rules_pass_check_with_promtool() -> None:
    check_with_promtool(load_rule_files(default_rule_paths()), "built-in rules")


def test_extra_rule_file_with_a_new_alert_loads_beside_the_built_in_ones(
    tmp_path: Path,
) -> None:
    extra = rule_file(tmp_path / "queues.yml")
    files = load_rule_files([*default_rule_paths(), extra])
    assert files["queues.yml"] == extra.read_text()
    check_with_promtool(files, "environment 'staging'")


def test_an_alert_name_repeated_in_another_file_is_rejected_naming_both_files(
    tmp_path: Path,
) -> None:
    extra = rule_file(tmp_path / "extra.yml", alert="HighErrorRate")
    with pytest.raises(ConfigurationError) as raised:
        load_rule_files([*default_rule_paths(), extra])
    message = str(raised.value)
    assert "'HighErrorRate'" in message
    assert str(extra) in message
    assert str(RULES_DIR / "application.yml") in message


def test_a_group_name_repeated_in_another_file_is_rejected(tmp_path: Path) -> None:
    first = rule_file(tmp_path / "a.yml", group="team.rules", alert="A")
    second = rule_file(tmp_path / "b.yml", group="team.rules", alert="B")
    with pytest.raises(ConfigurationError, match="group 'team.rules'") as raised:
        load_rule_files([first, second])
    assert str(first) in str(raised.value) and str(second) in str(raised.value)


def test_two_files_with_the_same_name_are_rejected_as_a_configmap_key_clash(
    tmp_path: Path,
) -> None:
    extra = rule_file(tmp_path / "more" / "security.yml")
    with pytest.raises(ConfigurationError, match="same file name") as raised:
        load_rule_files([*default_rule_paths(), extra])
    assert str(RULES_DIR / "security.yml") in str(raised.value)


def test_an_unknown_severity_is_rejected_listing_the_allowed_ones(
    tmp_path: Path,
) -> None:
    extra = rule_file(tmp_path / "extra.yml", severity="page")
    with pytest.raises(ConfigurationError) as raised:
        load_rule_files([extra])
    message = str(raised.value)
    assert str(extra) in message and "'QueueBacklog'" in message
    assert "'page'" in message and "critical, warning, info" in message


def test_an_alert_without_a_severity_label_is_rejected(tmp_path: Path) -> None:
    extra = write(
        tmp_path / "extra.yml",
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n",
    )
    with pytest.raises(ConfigurationError, match="no 'severity' label"):
        load_rule_files([extra])


def test_a_rule_without_expr_is_rejected(tmp_path: Path) -> None:
    extra = write(
        tmp_path / "extra.yml",
        "groups:\n  - name: g\n    rules:\n      - record: job:up:sum\n",
    )
    with pytest.raises(ConfigurationError, match="has no 'expr'") as raised:
        load_rule_files([extra])
    assert str(extra) in str(raised.value)


def test_a_missing_rule_file_is_rejected_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yml"
    with pytest.raises(ConfigurationError, match="does not exist") as raised:
        load_rule_files([*default_rule_paths(), missing])
    assert str(missing) in str(raised.value)


def test_invalid_yaml_is_rejected_with_its_line(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.yml", "groups:\n  - name: g\n    rules: [\n")
    with pytest.raises(ConfigurationError, match="not valid YAML") as raised:
        load_rule_files([broken])
    assert "line " in str(raised.value) and "\n" not in str(raised.value)


def test_an_alert_without_a_runbook_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path / "team.yml",
        "groups:\n  - name: team.rules\n    rules:\n      - alert: QueueStuck\n"
        "        expr: up == 0\n        labels: {severity: warning}\n"
        "        annotations: {summary: stuck}\n",
    )

    with pytest.raises(ConfigurationError) as raised:
        load_rule_files([path])

    assert str(raised.value) == (
        f"{path}: group 'team.rules', alert 'QueueStuck' has no 'runbook' "
        "annotation; give the page or URL that tells on-call what to do "
        "(docs/runbooks/ for the built-in alerts)"
    )


def test_a_yaml_file_in_the_rules_folder_is_refused_not_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import constructs_lib.rules as rules

    for name in ("a.yml", "extra.yaml"):
        rule_file(tmp_path / name, group=name, alert=name.replace(".", "_"))
    (tmp_path / "README.md").write_text("not a rule file\n")
    monkeypatch.setattr(rules, "DEFAULT_RULES_DIR", tmp_path)

    assert default_rule_paths() == [tmp_path / "a.yml", tmp_path / "extra.yaml"]
    with pytest.raises(ConfigurationError, match="'extra.yaml' must end in '.yml'"):
        load_rule_files(default_rule_paths())


def test_a_repeated_key_is_rejected_like_prometheus_does(tmp_path: Path) -> None:
    repeated = write(
        tmp_path / "repeated.yml",
        "groups:\n  - name: g\n    rules:\n      - alert: A\n"
        "        expr: up == 0\n        expr: up == 1\n"
        "        labels: {severity: info}\n",
    )
    with pytest.raises(ConfigurationError, match="duplicate key 'expr'"):
        load_rule_files([repeated])


@pytest.mark.parametrize(
    "text",
    ["- alert: A\n", "rules: []\n", "groups: []\n", "groups:\n  - rules: []\n"],
    ids=["a-list", "no-groups-key", "empty-groups", "group-without-name"],
)
def test_a_file_not_shaped_like_groups_of_rules_is_rejected(
    tmp_path: Path, text: str
) -> None:
    odd = write(tmp_path / "odd.yml", text)
    with pytest.raises(ConfigurationError) as raised:
        load_rule_files([odd])
    assert str(odd) in str(raised.value)


def test_broken_promql_gives_one_line_naming_the_file_and_the_parse_error(
    tmp_path: Path,
) -> None:
    extra = rule_file(
        tmp_path / "extra.yml", expr="sum by (service) (rate(queue_depth[5m]) > 100"
    )
    files = load_rule_files([*default_rule_paths(), extra])
    with pytest.raises(ConfigurationError) as raised:
        check_with_promtool(files, "environment 'staging'")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("environment 'staging', rule file extra.yml: ")
    assert "QueueBacklog" in message and "parse error" in message
    assert "rules-check-" not in message, "temporary paths leak into the message"


def test_a_bad_template_is_reported_by_check_with_promtool(tmp_path: Path) -> None:
    files = {
        "extra.yml": ALERT.format(
            group="g", alert="A", expr="up == 0", severity="warning"
        )
        + "          summary: '{{ $labels.job'\n"
    }
    with pytest.raises(ConfigurationError, match="rule file extra.yml: .*template"):
        check_with_promtool(files, "extra rules")


def test_missing_promtool_is_an_error_pointing_at_make_setup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PROMTOOL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigurationError, match="make setup") as raised:
        check_with_promtool({"a.yml": "groups: []\n"}, "environment 'dev'")
    assert str(raised.value).startswith("environment 'dev': promtool is not installed")


def test_promtool_env_var_pointing_nowhere_is_an_error_not_a_skip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMTOOL", str(tmp_path / "promtool"))
    with pytest.raises(ConfigurationError, match="PROMTOOL=.*make setup"):
        check_with_promtool({"a.yml": "groups: []\n"}, "environment 'dev'")


def test_promtool_env_var_selects_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMTOOL", promtool())
    monkeypatch.setenv("PATH", "/nonexistent")
    check_with_promtool(load_rule_files(default_rule_paths()), "built-in rules")
