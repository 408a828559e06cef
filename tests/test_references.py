"""Everything one rendered config refers to is something the chart deploys.

The addresses that leave the stack on purpose are listed in
``EXTERNAL_TARGETS`` with the reason: the application's own pods, database
and cache, which the monitoring chart watches but does not deploy.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

from tests.conftest import ROOT, Manifest

WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
EXTERNAL_TARGETS = {
    "sunday-backend": "the application's pods, found by Kubernetes discovery",
    "kubernetes-nodes": "each node's kubelet, found by Kubernetes discovery",
}
SELF = {"localhost", "127.0.0.1"}


def services(manifest: Manifest) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifest.of_kind("Service")}


def workloads(manifest: Manifest) -> list[dict[str, Any]]:
    return [doc for kind in WORKLOADS for doc in manifest.of_kind(kind)]


def resolve(manifest: Manifest, address: str) -> str | None:
    """Why ``host:port`` does not resolve inside the chart, or None if it does.

    ``name`` is a Service; ``pod-N.governing`` is replica N of the
    StatefulSet whose headless governing Service is ``governing``.
    """
    host, _, port_text = address.rpartition(":")
    port = int(port_text)
    by_name = services(manifest)
    if host in SELF:
        return None
    pod_match = re.fullmatch(
        r"(?P<set>[a-z0-9-]+)-(?P<index>[0-9]+)\.(?P<svc>[a-z0-9-]+)", host
    )
    if pod_match:
        governing = by_name.get(pod_match["svc"])
        if governing is None or governing["spec"].get("clusterIP") != "None":
            return f"{host}: no headless Service {pod_match['svc']!r}"
        statefulset = manifest.get("StatefulSet", pod_match["set"])
        if statefulset["spec"]["serviceName"] != pod_match["svc"]:
            return f"{host}: StatefulSet is not governed by {pod_match['svc']!r}"
        if int(pod_match["index"]) >= statefulset["spec"]["replicas"]:
            return f"{host}: the StatefulSet has no replica {pod_match['index']}"
        ports = [p["port"] for p in governing["spec"]["ports"]]
    else:
        if host not in by_name:
            return f"{address}: no Service named {host!r}"
        ports = [p["port"] for p in by_name[host]["spec"]["ports"]]
    if port not in ports:
        return f"{address}: the Service exposes {ports}, not {port}"
    return None


def test_every_static_scrape_target_is_a_deployed_service(manifest: Manifest) -> None:
    config = manifest.config("prometheus-config", "prometheus.yml")
    problems = []
    checked = 0
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                checked += 1
                problem = resolve(manifest, target)
                if problem:
                    problems.append(f"job {job['job_name']}: {problem}")

    assert checked >= 6
    assert problems == []


def test_every_discovery_job_is_internal_or_declared_external(
    manifest: Manifest,
) -> None:
    config = manifest.config("prometheus-config", "prometheus.yml")
    labelled = {
        doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: doc
        for doc in workloads(manifest)
    }
    for job in config["scrape_configs"]:
        if "kubernetes_sd_configs" not in job or job["job_name"] in EXTERNAL_TARGETS:
            continue
        keeps = {
            tuple(r["source_labels"]): r["regex"]
            for r in job["relabel_configs"]
            if r.get("action") == "keep"
        }
        names = keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]
        port = keeps[("__meta_kubernetes_pod_container_port_name",)]
        matched = [name for name in labelled if re.fullmatch(names, name)]
        assert matched, f"job {job['job_name']}: no workload matches {names!r}"
        for name in matched:
            pod = labelled[name]["spec"]["template"]["spec"]
            ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
            assert port in ports, f"job {job['job_name']}: {name} has no {port!r}"


def test_alerts_are_sent_to_deployed_alertmanagers(manifest: Manifest) -> None:
    config = manifest.config("prometheus-config", "prometheus.yml")
    targets = [
        target
        for am in config["alerting"]["alertmanagers"]
        for static in am["static_configs"]
        for target in static["targets"]
    ]

    assert targets
    assert [resolve(manifest, target) for target in targets] == [None] * len(targets)


def test_grafana_datasources_point_at_deployed_services(manifest: Manifest) -> None:
    data = manifest.get("ConfigMap", "grafana-datasources")["data"]
    [text] = data.values()
    import yaml

    for source in yaml.safe_load(text)["datasources"]:
        url = urlparse(source["url"])
        assert resolve(manifest, f"{url.hostname}:{url.port}") is None, source["url"]


def test_every_service_selects_pods_with_its_target_ports(manifest: Manifest) -> None:
    for service in manifest.of_kind("Service"):
        selector = service["spec"]["selector"]
        matching = [
            doc
            for doc in workloads(manifest)
            if selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        ]
        name = service["metadata"]["name"]
        assert matching, f"Service {name} selects no pods"
        for doc in matching:
            pod = doc["spec"]["template"]["spec"]
            ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in ports, f"Service {name}: {port}"


def test_statefulsets_are_governed_by_headless_services(manifest: Manifest) -> None:
    by_name = services(manifest)
    for statefulset in manifest.of_kind("StatefulSet"):
        governing = by_name[statefulset["spec"]["serviceName"]]
        assert governing["spec"]["clusterIP"] == "None"


def test_volumes_refer_to_objects_and_keys_that_exist(manifest: Manifest) -> None:
    config_maps = {
        doc["metadata"]["name"]: doc for doc in manifest.of_kind("ConfigMap")
    }
    claims = {
        doc["metadata"]["name"] for doc in manifest.of_kind("PersistentVolumeClaim")
    }
    operator_secrets = documented_secrets()
    for doc in workloads(manifest):
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            where = f"{doc['metadata']['name']} volume {volume['name']}"
            if "configMap" in volume:
                source = volume["configMap"]
                assert source["name"] in config_maps, where
                for item in source.get("items", []):
                    assert item["key"] in config_maps[source["name"]]["data"], where
            if "secret" in volume:
                name = volume["secret"]["secretName"]
                assert name in operator_secrets, f"{where}: {name} not in README"
                for item in volume["secret"].get("items", []):
                    assert item["key"] in operator_secrets[name], (
                        f"{where}: key {item['key']} of {name} not in README"
                    )
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where


def test_service_accounts_and_role_bindings_resolve(manifest: Manifest) -> None:
    accounts = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in manifest.of_kind("ServiceAccount")
    }
    roles = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in manifest.of_kind("Role")
    }
    cluster_roles = {d["metadata"]["name"] for d in manifest.of_kind("ClusterRole")}
    for doc in workloads(manifest):
        name = doc["spec"]["template"]["spec"]["serviceAccountName"]
        assert (doc["metadata"]["namespace"], name) in accounts
    for binding in manifest.of_kind("RoleBinding") + manifest.of_kind(
        "ClusterRoleBinding"
    ):
        ref = binding["roleRef"]
        if ref["kind"] == "Role":
            assert (binding["metadata"]["namespace"], ref["name"]) in roles
        else:
            assert ref["name"] in cluster_roles
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts


def test_alertmanager_credential_files_sit_under_the_secret_mount(
    manifest: Manifest,
) -> None:
    text = manifest.get("ConfigMap", "alertmanager-config")["data"]["alertmanager.yml"]
    pod = manifest.get("StatefulSet", "alertmanager")["spec"]["template"]["spec"]
    provided = set()
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            volumes = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            if volumes and "secret" in volumes[0]:
                volume = volumes[0]
                provided |= {
                    f"{mount['mountPath']}/{item['path']}"
                    for item in volume["secret"]["items"]
                }
    paths = re.findall(r"_file: (\S+)", text)

    assert len(paths) == 3
    assert set(paths) <= provided


def documented_secrets() -> dict[str, set[str]]:
    """Secrets the README tells operators to create, with their keys.

    Read from the README's table rows of the form
    ``| `name` | `key-a`, `key-b` | ... |``.
    """
    readme = (ROOT / "README.md").read_text()
    secrets: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|", readme, re.MULTILINE):
        name, keys = row
        secrets[name] = set(re.findall(r"`([A-Za-z0-9._-]+)`", keys))
    return secrets


def test_readme_lists_every_secret_the_charts_declare() -> None:
    from cdk8s import Testing

    from charts.loader import load_environments
    from charts.monitoring_chart import MonitoringChart
    from constructs_lib.common import declared_secrets

    documented = documented_secrets()
    for settings in load_environments():
        chart = MonitoringChart(Testing.app(), settings=settings)
        for secret in declared_secrets(chart):
            assert secret.name in documented, f"README lacks Secret {secret.name}"
            assert set(secret.keys) == documented[secret.name], secret.name
