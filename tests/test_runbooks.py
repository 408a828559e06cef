"""Every alert links to its runbook page in docs/runbooks/, and the pages hold.

Each alerting rule in rules/*.yml carries ``runbook: docs/runbooks/<kebab>.md``
(the alert name in kebab case); Alertmanager prints that path in every
notification, so it must lead to a page that exists, is about that alert, and
has the sections the on-call reads first. docs/runbooks/README.md indexes the
pages: every alert exactly once, and no page without an alert.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "rules"
RUNBOOKS_DIR = ROOT / "docs" / "runbooks"
INDEX = RUNBOOKS_DIR / "README.md"

# The sections every page has, in this order.
SECTIONS = (
    "What it means",
    "First steps",
    "Likely causes and fixes",
    "When it is noise",
    "Related alerts",
)
SEVERITIES = ("critical", "warning", "info")


def kebab(name: str) -> str:
    """HighCPUUsage -> high-cpu-usage, as rules/monitoring.yml names its pages."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def load_alerts() -> dict[str, dict[str, Any]]:
    """Every alerting rule of rules/*.yml by name, with the file it is in."""
    alerts: dict[str, dict[str, Any]] = {}
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in alerts, rule["alert"]
                    alerts[rule["alert"]] = {**rule, "file": path.name}
    return alerts


ALERTS = load_alerts()


def page_path(name: str) -> str:
    return f"docs/runbooks/{kebab(name)}.md"


def index_rows() -> list[list[str]]:
    """The cells of each row of the index table, header and rule excluded."""
    rows = []
    for line in INDEX.read_text().splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "alert" or set(cells[0]) <= {"-", ":"}:
            continue
        rows.append(cells)
    return rows


def test_kebab_case_matches_the_existing_runbook_names() -> None:
    assert kebab("HighErrorRate") == "high-error-rate"
    assert kebab("HighCPUUsage") == "high-cpu-usage"
    assert kebab("SuspiciousAPIActivity") == "suspicious-api-activity"
    assert kebab("PrometheusTSDBCompactionsFailing") == (
        "prometheus-tsdb-compactions-failing"
    )


def test_the_rule_files_hold_the_29_alerts() -> None:
    assert len(ALERTS) == 29
    assert {rule["file"] for rule in ALERTS.values()} == {
        "application.yml",
        "database.yml",
        "infrastructure.yml",
        "monitoring.yml",
        "security.yml",
    }


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_each_alert_links_to_its_page(name: str) -> None:
    rule = ALERTS[name]
    runbook = rule.get("annotations", {}).get("runbook")
    assert runbook == page_path(name), (rule["file"], name, runbook)
    assert (ROOT / runbook).is_file(), f"{runbook} does not exist"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_each_page_names_its_alert_its_severity_and_has_every_section(
    name: str,
) -> None:
    text = (ROOT / page_path(name)).read_text()
    lines = text.splitlines()
    assert lines[0] == f"# {name}", "the page must start with the alert's name"
    severity = ALERTS[name]["labels"]["severity"]
    assert severity in SEVERITIES
    assert re.search(rf"^\*\*Severity:\*\* {severity}\b", text, re.MULTILINE), (
        f"the page must say '**Severity:** {severity}'"
    )
    headings = [line[3:] for line in lines if line.startswith("## ")]
    assert headings == list(SECTIONS), headings
    # The page explains this rule: it states the rule's hold time.
    if "for" in ALERTS[name]:
        assert f"`for: {ALERTS[name]['for']}`" in text, "state the rule's hold"


def test_every_page_is_the_runbook_of_an_alert() -> None:
    pages = {path.name for path in RUNBOOKS_DIR.glob("*.md")} - {"README.md"}
    expected = {f"{kebab(name)}.md" for name in ALERTS}
    assert pages - expected == set(), "pages without an alert"
    assert expected - pages == set(), "alerts without a page"


def test_the_index_lists_every_alert_once_with_its_severity_and_page() -> None:
    rows = index_rows()
    names = [row[0] for row in rows]
    assert sorted(names) == sorted(ALERTS), "the index must list each alert once"
    for name, severity, rule_file, link in rows:
        rule = ALERTS[name]
        assert severity == rule["labels"]["severity"], name
        assert rule_file == f"`rules/{rule['file']}`", name
        page = f"{kebab(name)}.md"
        assert link == f"[{page}]({page})", name
        assert (RUNBOOKS_DIR / page).is_file(), page


def test_promtool_tests_expect_the_runbook_annotation_of_firing_alerts() -> None:
    # promtool compares annotations exactly, so a firing case without the
    # runbook fails there too; this names the case instead.
    for path in sorted((RULES_DIR / "tests").glob("*.test.yml")):
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    annotations = alert.get("exp_annotations") or {}
                    expected = page_path(case["alertname"])
                    assert annotations.get("runbook") == expected, (
                        path.name,
                        group["name"],
                    )
