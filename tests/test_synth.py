"""Synth as a user runs it: success is quiet, bad input is one clear line.

A failed synth must leave the previously rendered dist/ exactly as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BROKEN_RULE = """groups:
- name: team.rules
  rules:
  - alert: TeamAlert
    expr: rate(http_requests_total[5m] > 1
    labels: {severity: warning}
    annotations: {runbook: https://wiki.example.com/team}
"""
UNKNOWN_SEVERITY = """groups:
- name: team.rules
  rules:
  - alert: TeamAlert
    expr: up == 0
    labels: {severity: urgent}
    annotations: {runbook: https://wiki.example.com/team}
"""
DUPLICATE_ALERT = """groups:
- name: team.rules
  rules:
  - alert: HighErrorRate
    expr: up == 0
    labels: {severity: warning}
    annotations: {runbook: https://wiki.example.com/team}
"""


def synth(settings_dir: Path, dist: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MONITORING_SETTINGS_DIR": str(settings_dir),
        "MONITORING_DIST_DIR": str(dist),
    }
    env.pop("MONITORING_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def edit(settings_dir: Path, environment: str, change) -> None:
    path = settings_dir / f"{environment}.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
def previous_dist(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "production.k8s.yaml").write_text("# rendered earlier\n")
    return dist


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def test_a_good_synth_prints_nothing_and_writes_every_environment(
    project_copy: Path, tmp_path: Path
) -> None:
    dist = tmp_path / "out"

    result = synth(project_copy, dist)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert sorted(p.name for p in dist.iterdir()) == [
        "production.k8s.yaml",
        "staging.k8s.yaml",
    ]


def _set(path: str, value):
    def change(data: dict) -> None:
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return change


def _rule_file(tmp_dir: Path, text: str):
    def change(data: dict) -> None:
        path = tmp_dir / "team.yml"
        path.write_text(text)
        data["extra_rule_files"] = [str(path)]

    return change


BAD_SETTINGS = {
    "zero-replicas": (
        "production",
        _set("prometheus.replicas", 0),
        ["environment 'production'", "prometheus.replicas", "got 0", "greater than"],
    ),
    "negative-replicas": (
        "staging",
        _set("alertmanager.replicas", -1),
        ["environment 'staging'", "alertmanager.replicas", "got -1"],
    ),
    "bad-retention": (
        "production",
        _set("prometheus.retention", "30x"),
        ["prometheus.retention", "'30x'", "units y, w, d, h, m, s, ms"],
    ),
    "untagged-image": (
        "production",
        _set("grafana.image", "grafana/grafana"),
        ["grafana.image", "'grafana/grafana'", "released tag"],
    ),
    "latest-image": (
        "staging",
        _set("prometheus.image", "prom/prometheus:latest"),
        ["prometheus.image", "latest"],
    ),
    "unknown-key": (
        "production",
        _set("prometheus.retension", "30d"),
        ["prometheus.retension", "unknown setting", "retention"],
    ),
    "dangling-scrape-target": (
        "production",
        _set(
            "prometheus.extra_scrape_configs",
            [{"job_name": "x", "static_configs": [{"targets": ["grafan:3000"]}]}],
        ),
        ["environment 'production'", "prometheus-config", "no Service 'grafan'"],
    ),
    "invalid-scrape-config": (
        "staging",
        _set(
            "prometheus.extra_scrape_configs",
            [{"job_name": "bad", "scrape_interval": "5x"}],
        ),
        ["environment 'staging'", "prometheus.yml", "promtool check config failed"],
    ),
    "unknown-discovery-role": (
        "staging",
        _set(
            "prometheus.extra_scrape_configs",
            [{"job_name": "bad", "kubernetes_sd_configs": [{"role": "bogus"}]}],
        ),
        ["prometheus.extra_scrape_configs", "role 'bogus' is not one of"],
    ),
    "string-replicas": (
        "production",
        _set("prometheus.replicas", "2"),
        ["prometheus.replicas", "got '2'", "integer"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS), ids=list(BAD_SETTINGS))
def test_bad_settings_fail_with_one_clear_line_and_keep_dist(
    case: str, project_copy: Path, previous_dist: Path
) -> None:
    environment, change, expected = BAD_SETTINGS[case]
    edit(project_copy, environment, change)
    before = snapshot(previous_dist)

    result = synth(project_copy, previous_dist)

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in expected:
        assert fragment in lines[0]
    assert snapshot(previous_dist) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BROKEN_RULE, ["team.yml", "parse error"]),
        (UNKNOWN_SEVERITY, ["team.yml", "TeamAlert", "'urgent'", "critical"]),
        (DUPLICATE_ALERT, ["HighErrorRate", "application.yml", "team.yml"]),
    ],
    ids=["broken-promql", "unknown-severity", "duplicate-alert"],
)
def test_bad_rule_files_fail_synth_and_keep_dist(
    text: str,
    expected: list[str],
    project_copy: Path,
    previous_dist: Path,
    tmp_path: Path,
) -> None:
    edit(project_copy, "staging", _rule_file(tmp_path, text))
    before = snapshot(previous_dist)

    result = synth(project_copy, previous_dist)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "environment 'staging'" in lines[0] or "team.yml" in lines[0]
    for fragment in expected:
        assert fragment.lower() in lines[0].lower()
    assert snapshot(previous_dist) == before


def test_an_environment_file_must_match_its_name(
    project_copy: Path, previous_dist: Path
) -> None:
    edit(project_copy, "staging", _set("environment", "qa"))

    result = synth(project_copy, previous_dist)

    assert result.returncode == 1
    assert "field environment: got 'qa'" in result.stderr
    assert "'staging'" in result.stderr


def test_another_team_adds_a_scrape_job_and_a_rule_file_without_library_edits(
    project_copy: Path, tmp_path: Path
) -> None:
    rule = tmp_path / "team.yml"
    rule.write_text(
        "groups:\n- name: team.rules\n  rules:\n  - alert: TeamQueueStuck\n"
        "    expr: sum by (queue) (queue_depth) > 1000\n    for: 10m\n"
        "    labels: {severity: warning}\n"
        "    annotations: {runbook: https://wiki.example.com/team}\n"
    )

    def change(data: dict) -> None:
        data["extra_rule_files"] = [str(rule)]
        data["prometheus"]["extra_scrape_configs"] = [
            {
                "job_name": "team-worker",
                "static_configs": [{"targets": ["worker.payments.svc:9000"]}],
            }
        ]

    edit(project_copy, "staging", change)
    dist = tmp_path / "out"

    result = synth(project_copy, dist)

    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all((dist / "staging.k8s.yaml").read_text()))
    [rules] = [
        d
        for d in docs
        if d
        and d["kind"] == "ConfigMap"
        and d["metadata"]["name"] == "prometheus-rules"
    ]
    [config] = [
        d
        for d in docs
        if d
        and d["kind"] == "ConfigMap"
        and d["metadata"]["name"] == "prometheus-config"
    ]
    assert "TeamQueueStuck" in rules["data"]["team.yml"]
    jobs = yaml.safe_load(config["data"]["prometheus.yml"])["scrape_configs"]
    assert jobs[-1]["job_name"] == "team-worker"


def test_synth_refuses_to_replace_a_folder_it_did_not_render(
    project_copy: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me\n")

    result = synth(project_copy, victim)

    assert result.returncode == 1
    assert "notes.txt" in result.stderr and "refusing" in result.stderr
    assert (victim / "notes.txt").read_text() == "keep me\n"


def test_published_dist_is_readable_by_everyone(
    project_copy: Path, tmp_path: Path
) -> None:
    dist = tmp_path / "out"

    assert synth(project_copy, dist).returncode == 0

    assert dist.stat().st_mode & 0o777 == 0o755
    for path in dist.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644


def test_check_mode_validates_without_writing(
    project_copy: Path, tmp_path: Path
) -> None:
    dist = tmp_path / "out"
    env = {
        **os.environ,
        "MONITORING_SETTINGS_DIR": str(project_copy),
        "MONITORING_DIST_DIR": str(dist),
    }

    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    assert not dist.exists()
