"""Alertmanager: the rendered alertmanager.yml, checked by the real amtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from constructs_lib.alertmanager import SECRET_KEYS, SECRETS_DIR
from tests.conftest import Manifest, find_program


def alertmanager_yml(manifest: Manifest) -> dict:
    return manifest.config("alertmanager-config", "alertmanager.yml")


@pytest.fixture
def config_file(manifest: Manifest, tmp_path: Path) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(
        manifest.get("ConfigMap", "alertmanager-config")["data"]["alertmanager.yml"]
    )
    return path


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_program("amtool"), *args], capture_output=True, text=True, timeout=60
    )


def test_rendered_config_passes_amtool(config_file: Path) -> None:
    result = amtool("check-config", str(config_file))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "4 receivers" in result.stdout
    assert "1 inhibit rules" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical"], "pagerduty-critical"),
        (["severity=critical", "alertname=DatabaseDown"], "pagerduty-critical"),
        (["severity=warning"], "slack-warnings"),
        (["severity=warning", "alertname=HighCPUUsage"], "slack-warnings"),
        (["severity=info"], "default"),
        (["alertname=Unlabelled"], "default"),
        (["alertname=Watchdog", "severity=info"], "heartbeat"),
    ],
    ids=[
        "critical",
        "critical-named",
        "warning",
        "warning-named",
        "info",
        "none",
        "watchdog",
    ],
)
def test_severity_routes_to_its_receiver(
    config_file: Path, labels: list[str], receiver: str
) -> None:
    result = amtool("config", "routes", "test", f"--config.file={config_file}", *labels)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


def test_design_slack_url_with_a_variable_is_rejected_by_amtool(tmp_path: Path) -> None:
    """Why credentials are files: Alertmanager does not expand ${VAR}."""
    path = tmp_path / "design.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "route": {"receiver": "slack"},
                "receivers": [
                    {
                        "name": "slack",
                        "slack_configs": [
                            {"api_url": "${SLACK_WEBHOOK_URL}", "channel": "#alerts"}
                        ],
                    }
                ],
            }
        )
    )

    result = amtool("check-config", str(path))

    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_credentials_are_read_from_the_mounted_secret(manifest: Manifest) -> None:
    config = alertmanager_yml(manifest)
    receivers = {r["name"]: r for r in config["receivers"]}
    pod = manifest.get("StatefulSet", "alertmanager")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "secret" in v]
    [container] = [c for c in pod["containers"] if c["name"] == "alertmanager"]

    files = {
        config["global"]["smtp_auth_password_file"],
        receivers["pagerduty-critical"]["pagerduty_configs"][0]["routing_key_file"],
        receivers["slack-warnings"]["slack_configs"][0]["api_url_file"],
    }
    assert files == {f"{SECRETS_DIR}/{key}" for key in SECRET_KEYS}
    assert volume["secret"]["secretName"] == "alertmanager-receivers"
    assert {item["key"] for item in volume["secret"]["items"]} == set(SECRET_KEYS)
    assert {
        "name": volume["name"],
        "mountPath": SECRETS_DIR,
        "readOnly": True,
    } in container["volumeMounts"]


def test_no_deprecated_match_keys_remain(manifest: Manifest) -> None:
    text = manifest.get("ConfigMap", "alertmanager-config")["data"]["alertmanager.yml"]
    config = yaml.safe_load(text)

    deprecated = re.compile(r"^\s*(- )?(source_|target_)?match(_re)?:", re.MULTILINE)
    assert deprecated.search(text) is None
    assert all("matchers" in route for route in config["route"]["routes"])


def test_critical_alerts_inhibit_warnings_about_the_same_thing(
    manifest: Manifest,
) -> None:
    [rule] = alertmanager_yml(manifest)["inhibit_rules"]

    assert rule["source_matchers"] == ['severity="critical"']
    assert rule["target_matchers"] == ['severity="warning"']
    # Not alertname: alert names are unique per severity, so a rule keyed on
    # the name (as first designed) could never inhibit anything.
    assert "alertname" not in rule["equal"]
    assert {"namespace", "service", "instance"} <= set(rule["equal"])


def test_email_subject_is_a_header(manifest: Manifest) -> None:
    receivers = {r["name"]: r for r in alertmanager_yml(manifest)["receivers"]}
    [email] = receivers["default"]["email_configs"]

    assert "subject" not in email
    assert email["headers"]["Subject"].startswith("Sunday.com Alert")


def test_single_alertmanager_turns_gossip_off(manifests: dict[str, Manifest]) -> None:
    staging = manifests["staging"]
    pod = staging.get("StatefulSet", "alertmanager")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]

    assert "--cluster.listen-address=" in args
    assert not [arg for arg in args if arg.startswith("--cluster.peer")]


def test_three_alertmanagers_form_a_cluster() -> None:
    from cdk8s import Testing

    from constructs_lib.alertmanager import Alertmanager, AlertmanagerSettings
    from constructs_lib.reloader import ReloaderSettings

    chart = Testing.chart()
    alertmanager = Alertmanager(
        chart,
        "am",
        settings=AlertmanagerSettings(replicas=3),
        namespace="monitoring",
        reloader=ReloaderSettings(),
    )
    docs = Testing.synth(chart)
    [statefulset] = [d for d in docs if d["kind"] == "StatefulSet"]
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]

    assert [a for a in args if a.startswith("--cluster.peer=")] == [
        f"--cluster.peer=alertmanager-{i}.alertmanager-headless:9094" for i in range(3)
    ]
    assert [peer.address for peer in alertmanager.peers] == [
        f"alertmanager-{i}.alertmanager-headless:9093" for i in range(3)
    ]
    assert [d["kind"] for d in docs].count("PodDisruptionBudget") == 1


def test_production_alertmanagers_gossip_with_every_peer(
    manifests: dict[str, Manifest],
) -> None:
    production = manifests["production"]
    pod = production.get("StatefulSet", "alertmanager")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    headless = production.get("Service", "alertmanager-headless")

    assert [a for a in args if a.startswith("--cluster.peer=")] == [
        f"--cluster.peer=alertmanager-{i}.alertmanager-headless:9094" for i in range(3)
    ]
    assert ("mesh-tcp", 9094) in [
        (p["name"], p["port"]) for p in headless["spec"]["ports"]
    ]
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_watchdog_reaches_the_dead_mans_switch_when_one_is_set() -> None:
    from constructs_lib.alertmanager import AlertmanagerSettings, alertmanager_config

    settings = AlertmanagerSettings(
        receivers={"heartbeat_url": "https://deadman.example.invalid/ping/abc"}
    )
    receivers = {r["name"]: r for r in alertmanager_config(settings)["receivers"]}

    assert receivers["heartbeat"]["webhook_configs"] == [
        {"url": "https://deadman.example.invalid/ping/abc", "send_resolved": False}
    ]
    assert (
        "webhook_configs"
        not in {
            r["name"]: r
            for r in alertmanager_config(AlertmanagerSettings())["receivers"]
        }["heartbeat"]
    )


def test_runbook_paths_become_links_with_a_base_url(tmp_path: Path) -> None:
    from constructs_lib.alertmanager import AlertmanagerSettings, alertmanager_config

    base = "https://git.example.invalid/sunday/monitoring/blob/main/"
    config = alertmanager_config(
        AlertmanagerSettings(receivers={"runbook_base_url": base})
    )
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    receivers = {r["name"]: r for r in config["receivers"]}

    assert (
        f"Runbook: {base}{{{{ .Annotations.runbook }}}}"
        in (receivers["default"]["email_configs"][0]["text"])
    )
    assert amtool("check-config", str(path)).returncode == 0
