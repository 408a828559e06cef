"""Prometheus: the rendered prometheus.yml, its RBAC and its workload."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from constructs_lib.common import SERVICE_ACCOUNT_DIR
from constructs_lib.errors import ConfigurationError
from constructs_lib.prometheus import (
    RULES_DIR,
    TOKEN_VOLUME,
    check_config_with_promtool,
    checkable_config,
    discovery_rules,
    kubernetes_sd_problems,
)
from tests.conftest import Manifest, find_program


def prometheus_yml(manifest: Manifest) -> dict[str, Any]:
    return manifest.config("prometheus-config", "prometheus.yml")


def test_rendered_prometheus_config_passes_promtool(
    manifest: Manifest, tmp_path: Path
) -> None:
    promtool = find_program("promtool")
    rules = manifest.get("ConfigMap", "prometheus-rules")["data"]
    path = checkable_config(prometheus_yml(manifest), rules, tmp_path)

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

    # sunday-backend, kubernetes-nodes, node-exporter and jaeger.
    assert len(blocks) == 4
    assert kubernetes_sd_problems(config) == []


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"role": "pods"}, "role 'pods' is not one of"),
        ({"role": "pod", "namespace": {"names": ["a"]}}, "unknown key(s) namespace"),
        ({"role": "pod", "namespaces": {"name": ["a"]}}, "namespaces takes only"),
    ],
    ids=["role", "key", "namespaces"],
)
def test_discovery_mistakes_are_named(block: dict, expected: str) -> None:
    config = {"scrape_configs": [{"job_name": "x", "kubernetes_sd_configs": [block]}]}

    [problem] = kubernetes_sd_problems(config)

    assert expected in problem and "job 'x'" in problem


def test_a_bad_scrape_config_fails_the_real_promtool_check() -> None:
    config = {
        "global": {"scrape_interval": "15s"},
        "scrape_configs": [{"job_name": "x", "scrape_interval": "5x"}],
    }

    with pytest.raises(ConfigurationError, match="promtool check config failed"):
        check_config_with_promtool(config, {}, "environment 'test'")


def test_discovery_without_namespaces_is_granted_cluster_wide() -> None:
    jobs = [
        {"job_name": "a", "kubernetes_sd_configs": [{"role": "endpoints"}]},
        {
            "job_name": "b",
            "kubernetes_sd_configs": [
                {"role": "pod", "namespaces": {"own_namespace": True}}
            ],
        },
    ]

    namespaced, cluster = discovery_rules(jobs, "monitoring")

    assert cluster == {"endpoints", "services", "pods"}
    assert namespaced == {"monitoring": {"pods"}}


def test_global_settings_follow_the_environment(manifest: Manifest) -> None:
    config = prometheus_yml(manifest)
    environment = manifest.path.name.removesuffix(".k8s.yaml")

    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["global"]["external_labels"] == {
        "cluster": f"sunday-{environment}",
        "environment": environment,
        "replica": "${POD_NAME}",
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


def test_only_containers_that_call_the_api_get_a_token(manifest: Manifest) -> None:
    with_token = set()
    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        for doc in manifest.of_kind(kind):
            pod = doc["spec"]["template"]["spec"]
            assert "automountServiceAccountToken" in pod, doc["metadata"]["name"]
            token_volumes = {
                volume["name"]
                for volume in pod.get("volumes", [])
                for source in volume.get("projected", {}).get("sources", [])
                if "serviceAccountToken" in source
            }
            for container in pod["containers"] + pod.get("initContainers", []):
                mounts = {m["name"] for m in container.get("volumeMounts", [])}
                if pod["automountServiceAccountToken"] or mounts & token_volumes:
                    with_token.add((doc["metadata"]["name"], container["name"]))

    # Filebeat's Kubernetes metadata processor reads pods and nodes;
    # Prometheus's config reloader only calls Prometheus, so it has none.
    assert with_token == {
        ("prometheus", "prometheus"),
        ("kube-state-metrics", "kube-state-metrics"),
        ("filebeat", "filebeat"),
    }


def test_the_token_is_mounted_where_discovery_reads_it(manifest: Manifest) -> None:
    pod = manifest.get("StatefulSet", "prometheus")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == TOKEN_VOLUME)
    files = set()
    for source in volume["projected"]["sources"]:
        if "serviceAccountToken" in source:
            files.add(source["serviceAccountToken"]["path"])
        for kind in ("configMap", "downwardAPI"):
            files |= {item["path"] for item in source.get(kind, {}).get("items", [])}
    prometheus = next(c for c in pod["containers"] if c["name"] == "prometheus")
    mount = next(m for m in prometheus["volumeMounts"] if m["name"] == TOKEN_VOLUME)

    # client-go's in-cluster configuration reads exactly these three files.
    assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert mount["readOnly"] is True
    assert files == {"token", "ca.crt", "namespace"}


def test_prometheus_rules_config_map_holds_every_rule_file(manifest: Manifest) -> None:
    data = manifest.get("ConfigMap", "prometheus-rules")["data"]

    assert set(data) == {
        "application.yml",
        "infrastructure.yml",
        "database.yml",
        "security.yml",
        "monitoring.yml",
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
        settings=PrometheusSettings(replicas=replicas, app_namespaces=["team-a-app"]),
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


def test_replicas_are_told_apart_but_alert_once(manifest: Manifest) -> None:
    config = prometheus_yml(manifest)
    container = manifest.get("StatefulSet", "prometheus")["spec"]["template"]["spec"][
        "containers"
    ][0]

    assert "--enable-feature=expand-external-labels" in container["args"]
    [env] = container["env"]
    assert env["name"] == "POD_NAME"
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert config["alerting"]["alert_relabel_configs"] == [
        {"action": "labeldrop", "regex": "replica"}
    ]


def test_production_runs_two_prometheus_and_three_alertmanagers(
    manifests: dict[str, Manifest],
) -> None:
    production = manifests["production"]

    assert production.get("StatefulSet", "prometheus")["spec"]["replicas"] == 2
    assert production.get("StatefulSet", "alertmanager")["spec"]["replicas"] == 3
    for name in ("prometheus", "alertmanager", "elasticsearch"):
        budget = production.get("PodDisruptionBudget", name)
        assert budget["spec"]["maxUnavailable"] == 1


def test_an_external_url_makes_notification_links_openable() -> None:
    from cdk8s import Testing

    from constructs_lib.prometheus import Prometheus, PrometheusSettings
    from constructs_lib.reloader import ReloaderSettings

    chart = Testing.chart()
    Prometheus(
        chart,
        "prometheus",
        settings=PrometheusSettings(
            app_namespaces=["team-a-app"],
            external_url="https://prometheus.example.invalid/prom",
        ),
        namespace="team-a",
        external_labels={"cluster": "c"},
        scrape_configs=[],
        alertmanagers=[],
        rule_files={},
        reloader=ReloaderSettings(),
    )
    [statefulset] = [d for d in Testing.synth(chart) if d["kind"] == "StatefulSet"]
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--web.external-url=https://prometheus.example.invalid/prom" in args
    # The probes stay at / even though the external URL has a path.
    assert "--web.route-prefix=/" in args
