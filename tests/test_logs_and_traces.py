"""Logs and traces as composed per environment: every client can log in.

Each Elasticsearch client must use a user the setup Job creates, with the
password from the very Secret the Job reads, over HTTPS with the cluster CA;
Grafana must read logs where Filebeat writes them.
"""

from __future__ import annotations

import json
from typing import Any

import cdk8s
import pytest
import yaml

from charts.loader import load_environments
from charts.monitoring_chart import MonitoringChart
from constructs_lib.elastic import CERTS_SECRET, ELASTICSEARCH
from constructs_lib.elasticsearch import check_elasticsearch_config
from constructs_lib.filebeat import check_filebeat_config
from tests.conftest import ENVIRONMENTS, Manifest
from tests.objects import pod_template

STACKS = {
    settings.environment: MonitoringChart(cdk8s.Testing.app(), settings=settings).stack
    for settings in load_environments()
}


def pod_spec(manifest: Manifest, kind: str, name: str) -> dict[str, Any]:
    return pod_template(manifest.get(kind, name))["spec"]


def secret_names(spec: dict[str, Any]) -> set[str]:
    return {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}


def setup_users(manifest: Manifest) -> dict[str, Any]:
    """The users the setup Job creates, as rendered into its ConfigMap."""
    [config_map] = [
        doc
        for doc in manifest.of_kind("ConfigMap")
        if doc["metadata"]["name"].startswith("elasticsearch-setup")
    ]
    return config_map["data"]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_client_user_is_created_by_the_setup_job(environment: str) -> None:
    stack = STACKS[environment]
    created = {user.username: user for user in stack.elasticsearch_setup.users}
    clients = [
        stack.filebeat.user,
        stack.apm_server.user,
        stack.logs_reader,
    ]
    if stack.settings.jaeger.mode == "production":
        clients.append(stack.jaeger.user)

    for user in clients:
        assert created[user.username] == user
    assert "kibana_system" in created


def test_clients_log_in_as_their_users_over_https_with_the_ca(
    manifest: Manifest,
) -> None:
    stack = STACKS[manifest.path.name.removesuffix(".k8s.yaml")]
    filebeat = manifest.config("filebeat-config", "filebeat.yml")
    apm = manifest.config("apm-server-config", "apm-server.yml")
    kibana = manifest.config("kibana-config", "kibana.yml")

    for config, user in (
        (filebeat["output.elasticsearch"], stack.filebeat.user),
        (apm["output.elasticsearch"], stack.apm_server.user),
    ):
        assert config["hosts"] == [ELASTICSEARCH.url]
        assert config["username"] == user.username
        assert config["ssl.verification_mode"] == "full"
    assert kibana["elasticsearch.hosts"] == [ELASTICSEARCH.url]
    assert kibana["elasticsearch.username"] == "kibana_system"
    assert ELASTICSEARCH.url.startswith("https://")


@pytest.mark.parametrize(
    ("kind", "name", "user"),
    [
        ("DaemonSet", "filebeat", "filebeat"),
        ("Deployment", "apm-server", "apm_server"),
        ("Deployment", "grafana", "logs_reader"),
    ],
)
def test_clients_mount_their_users_secret_and_the_ca(
    manifest: Manifest, kind: str, name: str, user: str
) -> None:
    stack = STACKS[manifest.path.name.removesuffix(".k8s.yaml")]
    client = getattr(stack, user)
    client_user = client if user == "logs_reader" else client.user

    secrets = secret_names(pod_spec(manifest, kind, name))

    assert {client_user.secret, CERTS_SECRET} <= secrets


def test_production_jaeger_stores_spans_in_elasticsearch(
    manifests: dict[str, Manifest],
) -> None:
    manifest = manifests["production"]
    stack = STACKS["production"]
    for name in ("jaeger-collector", "jaeger-query"):
        spec = pod_spec(manifest, "Deployment", name)
        args = spec["containers"][0]["args"]
        assert f"--es.server-urls={ELASTICSEARCH.url}" in args
        assert f"--es.username={stack.jaeger.user.username}" in args
        assert {stack.jaeger.user.secret, CERTS_SECRET} <= secret_names(spec)
    cleaner = manifest.get("CronJob", "jaeger-es-index-cleaner")
    assert cleaner["spec"]["concurrencyPolicy"] == "Forbid"


def test_staging_jaeger_runs_all_in_one_behind_the_same_services(
    manifests: dict[str, Manifest],
) -> None:
    def ports(manifest: Manifest, name: str) -> list[tuple[str, int]]:
        service = manifest.get("Service", name)
        return [(p["name"], p["port"]) for p in service["spec"]["ports"]]

    staging, production = manifests["staging"], manifests["production"]

    assert staging.get("Deployment", "jaeger")
    assert not [
        d for d in staging.of_kind("CronJob") if "jaeger" in d["metadata"]["name"]
    ]
    for name in ("jaeger-collector", "jaeger-query"):
        assert ports(staging, name) == ports(production, name)


def test_grafana_reads_logs_where_filebeat_writes_them(manifest: Manifest) -> None:
    stack = STACKS[manifest.path.name.removesuffix(".k8s.yaml")]
    sources = manifest.config("grafana-datasources", "datasources.yaml")["datasources"]
    by_type = {source["type"]: source for source in sources}
    filebeat = manifest.config("filebeat-config", "filebeat.yml")

    logs = by_type["elasticsearch"]
    index = filebeat["output.elasticsearch"]["index"]
    assert index.startswith(logs["database"].removesuffix("*"))
    assert filebeat["setup.template.pattern"] == logs["database"]
    assert logs["jsonData"]["timeField"] == "@timestamp"
    assert logs["url"] == ELASTICSEARCH.url
    assert logs["basicAuthUser"] == stack.logs_reader.username
    assert logs["secureJsonData"]["basicAuthPassword"].startswith("$__file{")
    assert by_type["jaeger"]["url"] == "http://jaeger-query:16686"
    assert "logstash" not in json.dumps(sources)


def test_filebeat_config_passes_the_startup_rules(manifest: Manifest) -> None:
    assert (
        check_filebeat_config(manifest.config("filebeat-config", "filebeat.yml")) == []
    )


def test_elasticsearch_forms_a_cluster_or_runs_alone(
    manifests: dict[str, Manifest],
) -> None:
    production = manifests["production"].config(
        "elasticsearch-config", "elasticsearch.yml"
    )
    staging = manifests["staging"].config("elasticsearch-config", "elasticsearch.yml")
    statefulset = manifests["production"].get("StatefulSet", "elasticsearch")

    assert production["discovery.seed_hosts"] == [statefulset["spec"]["serviceName"]]
    assert production["cluster.initial_master_nodes"] == [
        f"elasticsearch-{i}" for i in range(statefulset["spec"]["replicas"])
    ]
    assert statefulset["spec"]["replicas"] == 3
    assert staging["discovery.type"] == "single-node"
    assert "cluster.initial_master_nodes" not in staging
    assert check_elasticsearch_config(production, 3) == []
    assert check_elasticsearch_config(staging, 1) == []


def test_elasticsearch_security_is_on_in_every_environment(manifest: Manifest) -> None:
    config = manifest.config("elasticsearch-config", "elasticsearch.yml")

    assert config["xpack.security.enabled"] is True
    assert config["xpack.security.http.ssl.enabled"] is True
    assert config["xpack.security.transport.ssl.enabled"] is True


def test_the_setup_job_installs_apm_templates(manifest: Manifest) -> None:
    text = yaml.safe_dump(setup_users(manifest))

    assert "/api/fleet/epm/packages/apm" in text


def test_the_setup_job_installs_the_apm_package_of_the_servers_release() -> None:
    [settings] = [s for s in load_environments() if s.environment == "staging"]
    release = "8.6.2"
    settings = settings.model_copy(
        update={
            section: getattr(settings, section).model_copy(
                update={
                    "image": getattr(settings, section).image.replace("8.5.0", release)
                }
            )
            for section in ("elasticsearch", "kibana", "apm_server")
        }
    )
    chart = MonitoringChart(cdk8s.Testing.app(), settings=settings)
    [config_map] = [
        doc
        for doc in chart.to_json()
        if doc["kind"] == "ConfigMap"
        and doc["metadata"]["name"].startswith("elasticsearch-setup")
    ]
    scripts = "\n".join(config_map["data"].values())

    assert f"/api/fleet/epm/packages/apm/{release}" in scripts
    assert "/api/fleet/epm/packages/apm/8.5.0" not in scripts
