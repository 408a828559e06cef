"""Prometheus: the rendered prometheus.yml, its RBAC and its workload."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from constructs_lib.common import SERVICE_ACCOUNT_DIR
from constructs_lib.prometheus import RULES_DIR
from tests.conftest import Manifest, find_program

# The keys a kubernetes_sd_config accepts in Prometheus 2.40, and its roles.
# Debian's promtool is built without Kubernetes discovery, so these blocks
# are checked here instead (see prometheus_config_for_promtool).
KUBERNETES_SD_KEYS = {
    "api_server",
    "role",
    "kubeconfig_file",
    "namespaces",
    "selectors",
    "attach_metadata",
    "basic_auth",
    "authorization",
    "oauth2",
    "tls_config",
    "proxy_url",
    "follow_redirects",
    "enable_http2",
}
KUBERNETES_SD_ROLES = {
    "node",
    "service",
    "pod",
    "endpoints",
    "endpointslice",
    "ingress",
}


def prometheus_yml(manifest: Manifest) -> dict[str, Any]:
    return manifest.config("prometheus-config", "prometheus.yml")


def prometheus_config_for_promtool(
    config: dict[str, Any], rule_files: dict[str, str], workdir: Path
) -> Path:
    """The rendered config, made checkable by Debian's promtool.

    Substitutions, each the smallest that lets the real checker run:
    - every ``kubernetes_sd_configs`` block becomes a loopback
      ``static_configs`` target, because Debian builds Prometheus without
      Kubernetes discovery; the blocks themselves are checked against the
      upstream keys and roles by test_kubernetes_discovery_blocks_are_valid;
    - the ServiceAccount token and CA paths point at stand-in files, because
      promtool insists that referenced files exist;
    - the rule glob points at the rendered rule files written to disk.
    """
    sa_dir = workdir / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text("stand-in token\n")
    (sa_dir / "ca.crt").write_text("")
    rules_dir = workdir / "rules"
    rules_dir.mkdir()
    for name, text in rule_files.items():
        (rules_dir / name).write_text(text)

    text = yaml.safe_dump(config).replace(SERVICE_ACCOUNT_DIR, str(sa_dir))
    text = text.replace(RULES_DIR, str(rules_dir))
    checkable = yaml.safe_load(text)
    for job in checkable["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(checkable))
    return path


def test_rendered_prometheus_config_passes_promtool(
    manifest: Manifest, tmp_path: Path
) -> None:
    promtool = find_program("promtool")
    rules = manifest.get("ConfigMap", "prometheus-rules")["data"]
    path = prometheus_config_for_promtool(prometheus_yml(manifest), rules, tmp_path)

    result = subprocess.run(
        [promtool, "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    # The rule files were found through the glob and checked too.
    assert (
        f"{len(rules)} rules found" in result.stdout or "rules found" in result.stdout
    )


def test_kubernetes_discovery_blocks_are_valid(manifest: Manifest) -> None:
    config = prometheus_yml(manifest)
    blocks = [
        sd
        for job in config["scrape_configs"]
        for sd in job.get("kubernetes_sd_configs", [])
    ]

    assert blocks, "expected Kubernetes discovery jobs"
    for sd in blocks:
        assert set(sd) <= KUBERNETES_SD_KEYS, sd
        assert sd["role"] in KUBERNETES_SD_ROLES
        if "namespaces" in sd:
            assert set(sd["namespaces"]) <= {"names", "own_namespace"}
            assert all(isinstance(n, str) for n in sd["namespaces"]["names"])


def test_global_settings_follow_the_environment(manifest: Manifest) -> None:
    config = prometheus_yml(manifest)
    environment = manifest.path.name.removesuffix(".k8s.yaml")

    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["global"]["external_labels"] == {
        "cluster": f"sunday-{environment}",
        "environment": environment,
    }
    assert config["rule_files"] == [f"{RULES_DIR}/*.yml"]


def test_scrape_jobs_cover_the_design_and_the_rules_needs(manifest: Manifest) -> None:
    jobs = {job["job_name"] for job in prometheus_yml(manifest)["scrape_configs"]}

    assert {
        "sunday-backend",
        "kubernetes-nodes",
        "postgres-exporter",
        "redis-exporter",
        "node-exporter",
        "kube-state-metrics",
        "prometheus",
        "alertmanager",
    } <= jobs


def test_backend_job_scrapes_only_its_environments_namespace(
    manifest: Manifest,
) -> None:
    environment = manifest.path.name.removesuffix(".k8s.yaml")
    job = _job(manifest, "sunday-backend")

    assert job["kubernetes_sd_configs"] == [
        {"role": "pod", "namespaces": {"names": [f"sunday-{environment}"]}}
    ]
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    assert {tuple(r["source_labels"]): r["regex"] for r in keep} == {
        ("__meta_kubernetes_pod_label_app",): "backend",
        ("__meta_kubernetes_pod_annotation_prometheus_io_scrape",): "true",
    }
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"__metrics_path__", "__address__", "namespace", "pod", "service"} <= targets


def test_kubelet_is_scraped_over_https_with_the_pods_token(manifest: Manifest) -> None:
    job = _job(manifest, "kubernetes-nodes")

    assert job["scheme"] == "https"
    assert job["authorization"] == {"credentials_file": f"{SERVICE_ACCOUNT_DIR}/token"}
    assert job["tls_config"]["ca_file"] == f"{SERVICE_ACCOUNT_DIR}/ca.crt"


def test_alerts_go_to_every_alertmanager_peer(manifest: Manifest) -> None:
    alerting = prometheus_yml(manifest)["alerting"]["alertmanagers"]
    replicas = manifest.get("StatefulSet", "alertmanager")["spec"]["replicas"]

    targets = alerting[0]["static_configs"][0]["targets"]
    assert targets == [
        f"alertmanager-{i}.alertmanager-headless:9093" for i in range(replicas)
    ]


def test_rbac_grants_only_what_discovery_reads(manifest: Manifest) -> None:
    environment = manifest.path.name.removesuffix(".k8s.yaml")
    roles = {
        (doc["metadata"]["namespace"], doc["metadata"]["name"]): doc["rules"]
        for doc in manifest.of_kind("Role")
        if doc["metadata"]["name"] == "prometheus-discovery"
    }
    cluster_role = manifest.get("ClusterRole", "prometheus-monitoring")

    assert roles == {
        (f"sunday-{environment}", "prometheus-discovery"): [
            {
                "apiGroups": [""],
                "resources": ["pods"],
                "verbs": ["get", "list", "watch"],
            }
        ],
        ("monitoring", "prometheus-discovery"): [
            {
                "apiGroups": [""],
                "resources": ["pods"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }
    assert cluster_role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
    ]
    for doc in manifest.of_kind("Role") + manifest.of_kind("ClusterRole"):
        for rule in doc["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"]


def test_prometheus_keeps_its_data_on_a_claim_per_replica(manifest: Manifest) -> None:
    statefulset = manifest.get("StatefulSet", "prometheus")
    spec = statefulset["spec"]
    container = spec["template"]["spec"]["containers"][0]

    assert spec["serviceName"] == "prometheus-headless"
    assert manifest.get("Service", "prometheus-headless")["spec"]["clusterIP"] == "None"
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"name": "data", "mountPath": "/prometheus", "readOnly": False} in container[
        "volumeMounts"
    ]
    assert "--storage.tsdb.path=/prometheus" in container["args"]


def test_retention_and_storage_follow_the_environment(manifests: dict) -> None:
    def args(name: str) -> list[str]:
        spec = manifests[name].get("StatefulSet", "prometheus")["spec"]
        return spec["template"]["spec"]["containers"][0]["args"]

    assert "--storage.tsdb.retention.time=30d" in args("production")
    assert "--storage.tsdb.retention.time=7d" in args("staging")


def test_config_edits_are_reloaded_in_place(manifest: Manifest) -> None:
    pod = manifest.get("StatefulSet", "prometheus")["spec"]["template"]["spec"]
    prometheus, reloader = pod["containers"]

    assert "--web.enable-lifecycle" in prometheus["args"]
    assert reloader["name"] == "config-reloader"
    assert "--webhook-url=http://127.0.0.1:9090/-/reload" in reloader["args"]
    assert {
        "--volume-dir=/etc/prometheus/config",
        "--volume-dir=/etc/prometheus/rules",
    } <= set(reloader["args"])


def test_only_pods_that_call_the_api_get_a_token(manifest: Manifest) -> None:
    with_token = set()
    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        for doc in manifest.of_kind(kind):
            pod = doc["spec"]["template"]["spec"]
            assert "automountServiceAccountToken" in pod, doc["metadata"]["name"]
            if pod["automountServiceAccountToken"]:
                with_token.add(doc["metadata"]["name"])

    assert with_token == {"prometheus", "kube-state-metrics"}


def test_prometheus_rules_config_map_holds_every_rule_file(manifest: Manifest) -> None:
    data = manifest.get("ConfigMap", "prometheus-rules")["data"]

    assert set(data) == {
        "application.yml",
        "infrastructure.yml",
        "database.yml",
        "security.yml",
    }
    for text in data.values():
        assert yaml.safe_load(text)["groups"]


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_disruption_budget_exists_only_for_replicated_prometheus(
    replicas: int,
) -> None:
    from cdk8s import Testing

    from constructs_lib.prometheus import Prometheus, PrometheusSettings
    from constructs_lib.reloader import ReloaderSettings

    chart = Testing.chart()
    Prometheus(
        chart,
        "prometheus",
        settings=PrometheusSettings(replicas=replicas),
        namespace="team-a",
        external_labels={"cluster": "c"},
        scrape_configs=[],
        alertmanagers=[],
        rule_files={},
        reloader=ReloaderSettings(),
    )
    kinds = [doc["kind"] for doc in Testing.synth(chart)]

    assert kinds.count("PodDisruptionBudget") == (1 if replicas > 1 else 0)


def _job(manifest: Manifest, name: str) -> dict[str, Any]:
    [job] = [
        job
        for job in prometheus_yml(manifest)["scrape_configs"]
        if job["job_name"] == name
    ]
    return job
