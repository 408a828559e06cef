"""The synth-time reference check, fed charts broken one reference at a time."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from constructs_lib.common import OperatorSecret
from constructs_lib.integrity import check_references
from tests.conftest import Manifest

Docs = list[dict[str, Any]]


@pytest.fixture
def production(manifests: dict[str, Manifest]) -> Docs:
    return copy.deepcopy(manifests["production"].documents)


@pytest.fixture
def secrets(manifests: dict[str, Manifest]) -> list[OperatorSecret]:
    """The operator Secrets the production chart declares."""
    from cdk8s import Testing

    from charts.loader import SETTINGS_DIR, load_environment
    from charts.monitoring_chart import MonitoringChart
    from constructs_lib.common import declared_secrets

    settings = load_environment(SETTINGS_DIR / "production.yaml")
    chart = MonitoringChart(Testing.app(), settings=settings)
    return declared_secrets(chart)


def find(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    return find(docs, kind, name)["spec"]["template"]["spec"]


def edit_config(docs: Docs, config_map: str, key: str, change: Callable) -> None:
    data = find(docs, "ConfigMap", config_map)["data"]
    config = yaml.safe_load(data[key])
    change(config)
    data[key] = yaml.safe_dump(config)


def test_the_rendered_charts_have_no_dangling_reference(
    manifests: dict[str, Manifest], secrets: list[OperatorSecret]
) -> None:
    for manifest in manifests.values():
        assert check_references(manifest.documents, secrets) == []


def break_selector(docs: Docs) -> None:
    find(docs, "Service", "grafana")["spec"]["selector"] = {"app": "grafana"}


def break_target_port(docs: Docs) -> None:
    find(docs, "Service", "prometheus")["spec"]["ports"][0]["targetPort"] = "http"


def break_config_map(docs: Docs) -> None:
    volumes = pod(docs, "Deployment", "grafana")["volumes"]
    [volume] = [v for v in volumes if v["name"] == "datasources"]
    volume["configMap"]["name"] = "grafana-datasource"


def break_config_map_key(docs: Docs) -> None:
    volumes = pod(docs, "Deployment", "postgres-exporter")["volumes"]
    [volume] = [v for v in volumes if "configMap" in v]
    volume["configMap"]["items"] = [{"key": "query.yaml", "path": "query.yaml"}]


def break_secret(docs: Docs) -> None:
    volumes = pod(docs, "StatefulSet", "alertmanager")["volumes"]
    [volume] = [v for v in volumes if "secret" in v]
    volume["secret"]["secretName"] = "alertmanager-secrets"


def break_secret_key(docs: Docs) -> None:
    volumes = pod(docs, "Deployment", "grafana")["volumes"]
    [volume] = [v for v in volumes if v["name"] == "admin"]
    volume["secret"]["items"].append({"key": "admin-token", "path": "admin-token"})


def _token_volume(docs: Docs) -> dict[str, Any]:
    volumes = pod(docs, "StatefulSet", "prometheus")["volumes"]
    [volume] = [v for v in volumes if "projected" in v]
    return volume


def break_projected_config_map(docs: Docs) -> None:
    for source in _token_volume(docs)["projected"]["sources"]:
        if "configMap" in source:
            source["configMap"]["name"] = "root-ca"


def break_projected_ca_key(docs: Docs) -> None:
    for source in _token_volume(docs)["projected"]["sources"]:
        if "configMap" in source:
            source["configMap"]["items"] = [{"key": "ca.pem", "path": "ca.crt"}]


def break_token_mount(docs: Docs) -> None:
    name = _token_volume(docs)["name"]
    for container in pod(docs, "StatefulSet", "prometheus")["containers"]:
        container["volumeMounts"] = [
            m for m in container.get("volumeMounts", []) if m["name"] != name
        ]


def break_token_to_the_sidecar(docs: Docs) -> None:
    volume = _token_volume(docs)["name"]
    containers = pod(docs, "StatefulSet", "prometheus")["containers"]
    [prometheus] = [c for c in containers if c["name"] == "prometheus"]
    [reloader] = [c for c in containers if c["name"] != "prometheus"]
    [mount] = [m for m in prometheus["volumeMounts"] if m["name"] == volume]
    prometheus["volumeMounts"].remove(mount)
    reloader["volumeMounts"].append(mount)


def break_token_path_beside_a_whole_ca(docs: Docs) -> None:
    for source in _token_volume(docs)["projected"]["sources"]:
        if "configMap" in source:
            del source["configMap"]["items"]
        if "serviceAccountToken" in source:
            source["serviceAccountToken"]["path"] = "tok"


def break_service_account(docs: Docs) -> None:
    pod(docs, "Deployment", "kube-state-metrics")["serviceAccountName"] = "ksm"


def break_role_ref(docs: Docs) -> None:
    binding = find(docs, "ClusterRoleBinding", "prometheus-monitoring")
    binding["roleRef"]["name"] = "prometheus"


def break_governing_service(docs: Docs) -> None:
    find(docs, "StatefulSet", "prometheus")["spec"]["serviceName"] = "prometheus"


def break_scrape_target(docs: Docs) -> None:
    def change(config: dict) -> None:
        [job] = [
            j for j in config["scrape_configs"] if j["job_name"] == "redis-exporter"
        ]
        job["static_configs"][0]["targets"] = ["redis_exporter:9121"]

    edit_config(docs, "prometheus-config", "prometheus.yml", change)


def break_scrape_port(docs: Docs) -> None:
    def change(config: dict) -> None:
        [job] = [j for j in config["scrape_configs"] if j["job_name"] == "grafana"]
        job["static_configs"][0]["targets"] = ["grafana:80"]

    edit_config(docs, "prometheus-config", "prometheus.yml", change)


def break_alertmanager_peer(docs: Docs) -> None:
    def change(config: dict) -> None:
        static = config["alerting"]["alertmanagers"][0]["static_configs"][0]
        static["targets"].append("alertmanager-3.alertmanager-headless:9093")

    edit_config(docs, "prometheus-config", "prometheus.yml", change)


def break_datasource(docs: Docs) -> None:
    def change(config: dict) -> None:
        config["datasources"][0]["url"] = "http://prometheus-server:9090"

    edit_config(docs, "grafana-datasources", "datasources.yaml", change)


def break_credential_file(docs: Docs) -> None:
    def change(config: dict) -> None:
        config["global"]["smtp_auth_password_file"] = "/etc/alertmanager/smtp"

    edit_config(docs, "alertmanager-config", "alertmanager.yml", change)


def break_env_file(docs: Docs) -> None:
    [container] = pod(docs, "Deployment", "grafana")["containers"]
    [env] = [e for e in container["env"] if e["name"].endswith("PASSWORD__FILE")]
    env["name"] = "GF_SECURITY_ADMIN_PASSWORD_FILE"
    env["value"] = "/etc/grafana/admin-password"


def break_probe(docs: Docs) -> None:
    [container] = pod(docs, "Deployment", "grafana")["containers"]
    container["readinessProbe"]["httpGet"]["port"] = "web"


def break_mount(docs: Docs) -> None:
    container = pod(docs, "StatefulSet", "prometheus")["containers"][0]
    container["volumeMounts"].append({"name": "extra", "mountPath": "/extra"})


def break_rollout(docs: Docs) -> None:
    find(docs, "Deployment", "grafana")["spec"]["strategy"] = {"type": "RollingUpdate"}


def break_elasticsearch_scheme(docs: Docs) -> None:
    data = find(docs, "ConfigMap", "filebeat-config")["data"]
    [key] = data
    data[key] = data[key].replace(
        "https://elasticsearch:9200", "http://elasticsearch:9200"
    )


def break_elasticsearch_host(docs: Docs) -> None:
    container = pod(docs, "Deployment", "jaeger-collector")["containers"][0]
    container["args"] = [
        arg.replace("https://elasticsearch:", "https://elastic:")
        for arg in container["args"]
    ]


def break_kibana_port(docs: Docs) -> None:
    cron = find(docs, "CronJob", "elasticsearch-setup")["spec"]
    container = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    for env in container["env"]:
        if env.get("value") == "http://kibana:5601":
            env["value"] = "http://kibana:5602"


CASES = {
    "es-scheme": (break_elasticsearch_scheme, "speaks https"),
    "es-host": (break_elasticsearch_host, "no Service 'elastic'"),
    "kibana-port": (break_kibana_port, "exposes [5601], not 5602"),
    "service-selector": (break_selector, "Service grafana: selects no pod template"),
    "service-port": (break_target_port, "targets 'http', which the selected"),
    "config-map": (break_config_map, "ConfigMap 'grafana-datasource' is not rendered"),
    "config-map-key": (break_config_map_key, "has no key 'query.yaml'"),
    "secret": (break_secret, "Secret 'alertmanager-secrets' is neither rendered"),
    "secret-key": (break_secret_key, "not declared with the key 'admin-token'"),
    "projected-config-map": (
        break_projected_config_map,
        "volume serviceaccount-token: ConfigMap 'root-ca' is not rendered",
    ),
    "projected-ca-key": (
        break_projected_ca_key,
        "ConfigMap 'kube-root-ca.crt' has no key 'ca.pem'",
    ),
    "token-mount": (
        break_token_mount,
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ),
    "token-in-the-sidecar": (
        break_token_to_the_sidecar,
        "/var/run/secrets/kubernetes.io/serviceaccount/token is read in "
        "StatefulSet prometheus",
    ),
    "token-path": (
        break_token_path_beside_a_whole_ca,
        "/var/run/secrets/kubernetes.io/serviceaccount/token is read in",
    ),
    "service-account": (break_service_account, "ServiceAccount 'ksm' is not"),
    "role-ref": (break_role_ref, "ClusterRole 'prometheus' is not rendered"),
    "governing": (
        break_governing_service,
        "serviceName 'prometheus' is not a headless",
    ),
    "scrape-target": (break_scrape_target, "no Service 'redis_exporter'"),
    "scrape-port": (break_scrape_port, "grafana:80: Service 'grafana' exposes [3000]"),
    "peer": (break_alertmanager_peer, "has no replica 3"),
    "datasource": (break_datasource, "no Service 'prometheus-server'"),
    "credential-file": (break_credential_file, "/etc/alertmanager/smtp is read in"),
    "env-file": (break_env_file, "reads /etc/grafana/admin-password, which no mount"),
    "probe": (break_probe, "readinessProbe uses port 'web'"),
    "mount": (break_mount, "mounts 'extra', which is no volume"),
    "rollout": (break_rollout, "ReadWriteOnce claim 'grafana-storage' deadlocks"),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_each_broken_reference_is_named(
    case: str, production: Docs, secrets: list[OperatorSecret]
) -> None:
    breaker, expected = CASES[case]
    breaker(production)

    problems = check_references(production, secrets)

    assert len(problems) >= 1
    assert any(expected in problem for problem in problems), problems


def test_targets_in_other_namespaces_are_left_to_their_owners(
    production: Docs, secrets: list[OperatorSecret]
) -> None:
    def change(config: dict) -> None:
        config["scrape_configs"].append(
            {
                "job_name": "payments",
                "static_configs": [{"targets": ["worker.payments.svc:9000"]}],
            }
        )

    edit_config(production, "prometheus-config", "prometheus.yml", change)

    assert check_references(production, secrets) == []
