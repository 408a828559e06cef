"""Grafana alone in a chart: provisioning paths, pod hardening, dashboards."""

from __future__ import annotations

import json
from typing import Any

import constructs_lib._bridge  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
import cdk8s
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from constructs_lib.common import Endpoint
from constructs_lib.dashboards import (
    ERROR_RATE,
    dashboard_panels,
    dashboard_queries,
    dashboards,
)
from constructs_lib.errors import ConfigurationError
from constructs_lib.grafana import (
    ADMIN_PASSWORD_KEY,
    ADMIN_USER_KEY,
    DASHBOARDS_DIR,
    DATA_DIR,
    DATASOURCE_UID,
    GRAFANA_USER,
    SECRETS_DIR,
    Grafana,
    GrafanaSettings,
)
from tests.objects import get, pod_volume

NAMESPACE = "monitoring"
PROMETHEUS = Endpoint("prometheus", 9090)


def synth(**kwargs: Any) -> list[dict[str, Any]]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    Grafana(
        chart,
        "grafana",
        settings=kwargs.pop("settings", GrafanaSettings()),
        namespace=NAMESPACE,
        prometheus=PROMETHEUS,
        **kwargs,
    )
    return cdk8s.Testing.synth(chart)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return synth()


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return get(objects, "Deployment", "grafana")["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (grafana,) = pod(objects)["containers"]
    return grafana


def mount_path(objects: list[dict[str, Any]], volume: str) -> str:
    (path,) = [
        mount["mountPath"]
        for mount in container(objects)["volumeMounts"]
        if mount["name"] == volume
    ]
    return path


def volume(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return pod_volume(pod(objects), name)


def config(objects: list[dict[str, Any]], config_map: str, key: str) -> Any:
    return yaml.safe_load(get(objects, "ConfigMap", config_map)["data"][key])


def env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {var["name"]: var.get("value") for var in container(objects)["env"]}


def rendered_dashboards(objects: list[dict[str, Any]]) -> dict[str, dict]:
    data = get(objects, "ConfigMap", "grafana-dashboards")["data"]
    return {name: json.loads(text) for name, text in data.items()}


# --- the objects -------------------------------------------------------------


def test_every_object_is_valid_kubernetes_1_27(objects: list[dict]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, "1.27.0", strict=True)


def test_grafana_renders_its_objects_in_dependency_order(objects: list[dict]) -> None:
    kinds = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]

    assert set(kinds) == {
        ("ServiceAccount", "grafana"),
        ("ConfigMap", "grafana-datasources"),
        ("ConfigMap", "grafana-dashboard-providers"),
        ("ConfigMap", "grafana-dashboards"),
        ("PersistentVolumeClaim", "grafana-storage"),
        ("Deployment", "grafana"),
        ("Service", "grafana"),
    }
    deployment = kinds.index(("Deployment", "grafana"))
    for dependency in [
        ("ConfigMap", "grafana-datasources"),
        ("ConfigMap", "grafana-dashboard-providers"),
        ("ConfigMap", "grafana-dashboards"),
        ("PersistentVolumeClaim", "grafana-storage"),
    ]:
        assert kinds.index(dependency) < deployment
    assert all(obj["metadata"]["namespace"] == NAMESPACE for obj in objects)


def test_service_account_mounts_no_token(objects: list[dict]) -> None:
    assert (
        get(objects, "ServiceAccount", "grafana")["automountServiceAccountToken"]
        is False
    )
    assert pod(objects)["serviceAccountName"] == "grafana"
    assert pod(objects)["automountServiceAccountToken"] is False


# --- provisioning ------------------------------------------------------------


def test_datasource_file_is_where_grafana_reads_datasources(
    objects: list[dict],
) -> None:
    assert mount_path(objects, "datasources") == "/etc/grafana/provisioning/datasources"
    assert volume(objects, "datasources")["configMap"]["name"] == "grafana-datasources"
    assert env(objects)["GF_PATHS_PROVISIONING"] == "/etc/grafana/provisioning"

    provisioned = config(objects, "grafana-datasources", "datasources.yaml")
    assert provisioned["apiVersion"] == 1
    assert provisioned["datasources"] == [
        {
            "name": "Prometheus",
            "uid": "prometheus",
            "type": "prometheus",
            "access": "proxy",
            "url": "http://prometheus:9090",
            "isDefault": True,
            "editable": False,
            "jsonData": {"timeInterval": "15s"},
        }
    ]


def test_dashboard_provider_points_at_the_dashboards_mount(objects: list[dict]) -> None:
    assert (
        mount_path(objects, "dashboard-providers")
        == "/etc/grafana/provisioning/dashboards"
    )
    providers = config(objects, "grafana-dashboard-providers", "dashboards.yaml")
    (provider,) = providers["providers"]

    assert providers["apiVersion"] == 1
    assert provider["type"] == "file"
    assert provider["folder"] == "Sunday"
    assert provider["disableDeletion"] is True
    assert provider["allowUiUpdates"] is False
    assert provider["updateIntervalSeconds"] == 30
    assert provider["options"]["path"] == mount_path(objects, "dashboards")
    assert mount_path(objects, "dashboards") == DASHBOARDS_DIR
    assert volume(objects, "dashboards")["configMap"]["name"] == "grafana-dashboards"


def test_dashboards_are_not_hidden_by_the_data_volume(objects: list[dict]) -> None:
    dashboards_dir = mount_path(objects, "dashboards")

    assert mount_path(objects, "storage") == DATA_DIR
    assert not dashboards_dir.startswith(DATA_DIR.rstrip("/") + "/")


def test_extra_datasources_follow_prometheus() -> None:
    loki = {"name": "Loki", "uid": "loki", "type": "loki", "url": "http://loki:3100"}
    tempo = {"name": "Tempo", "type": "tempo"}
    postgres = {"name": "Postgres", "type": "postgres"}
    objects = synth(extra_datasources=[loki, tempo, postgres])
    provisioned = config(objects, "grafana-datasources", "datasources.yaml")

    assert [source["name"] for source in provisioned["datasources"]] == [
        "Prometheus",
        "Loki",
        "Tempo",
        "Postgres",
    ]
    assert provisioned["datasources"][1:] == [loki, tempo, postgres]


@pytest.mark.parametrize(
    "extra",
    [
        {"name": "Prometheus", "type": "prometheus"},
        {"name": "Other", "type": "prometheus", "uid": "prometheus"},
        {"name": "Loki", "type": "loki", "isDefault": True},
        {"type": "loki"},
        {"name": "Loki"},
        "loki",
    ],
    ids=["same-name", "same-uid", "second-default", "no-name", "no-type", "string"],
)
def test_conflicting_extra_datasource_is_refused(extra: Any) -> None:
    with pytest.raises(ConfigurationError, match="extra_datasources #1"):
        synth(extra_datasources=[extra])


def test_config_checksum_changes_with_the_datasources(objects: list[dict]) -> None:
    def checksum(objs: list[dict]) -> str:
        template = get(objs, "Deployment", "grafana")["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/config"]

    changed = synth(extra_datasources=[{"name": "Loki", "type": "loki"}])

    assert checksum(objects) == checksum(synth())
    assert checksum(objects) != checksum(changed)


# --- workload ----------------------------------------------------------------


def test_deployment_recreates_its_single_pod(objects: list[dict]) -> None:
    spec = get(objects, "Deployment", "grafana")["spec"]

    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_data_volume_is_a_read_write_once_claim(objects: list[dict]) -> None:
    claim = get(objects, "PersistentVolumeClaim", "grafana-storage")["spec"]

    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in claim
    assert volume(objects, "storage")["persistentVolumeClaim"] == {
        "claimName": "grafana-storage"
    }


def test_storage_class_and_size_come_from_settings() -> None:
    settings = GrafanaSettings(storage_size="20Gi", storage_class="fast-ssd")
    claim = get(synth(settings=settings), "PersistentVolumeClaim", "grafana-storage")

    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["storageClassName"] == "fast-ssd"


def test_grafana_reads_admin_password_from_a_file(objects: list[dict]) -> None:
    variables = env(objects)

    assert variables["GF_SECURITY_ADMIN_USER__FILE"] == f"{SECRETS_DIR}/admin-user"
    assert (
        variables["GF_SECURITY_ADMIN_PASSWORD__FILE"] == f"{SECRETS_DIR}/admin-password"
    )
    assert mount_path(objects, "admin") == SECRETS_DIR
    assert volume(objects, "admin")["secret"]["secretName"] == "grafana-admin"
    assert [item["key"] for item in volume(objects, "admin")["secret"]["items"]] == [
        ADMIN_USER_KEY,
        ADMIN_PASSWORD_KEY,
    ]


def test_no_admin_credential_is_rendered(objects: list[dict]) -> None:
    variables = container(objects)["env"]

    assert "GF_SECURITY_ADMIN_PASSWORD" not in env(objects)
    assert "GF_SECURITY_ADMIN_USER" not in env(objects)
    assert all("valueFrom" not in var for var in variables)
    assert not [obj for obj in objects if obj["kind"] == "Secret"]


def test_grafana_makes_no_outbound_calls_and_installs_no_plugins(
    objects: list[dict],
) -> None:
    variables = env(objects)

    assert variables["GF_ANALYTICS_REPORTING_ENABLED"] == "false"
    assert variables["GF_ANALYTICS_CHECK_FOR_UPDATES"] == "false"
    assert variables["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert variables["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GF_INSTALL_PLUGINS" not in variables


def test_pod_runs_as_its_own_high_uid_with_runtime_seccomp(objects: list[dict]) -> None:
    security = pod(objects)["securityContext"]

    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == GRAFANA_USER >= 10000
    assert security["runAsGroup"] == GRAFANA_USER
    assert security["fsGroup"] == GRAFANA_USER
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_container_is_locked_down(objects: list[dict]) -> None:
    security = container(objects)["securityContext"]

    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_only_data_and_tmp_are_writable(objects: list[dict]) -> None:
    writable = {
        mount["mountPath"]
        for mount in container(objects)["volumeMounts"]
        if not mount.get("readOnly")
    }

    assert writable == {DATA_DIR, "/tmp"}
    assert "emptyDir" in volume(objects, "tmp")


def test_probes_ask_grafana_health_on_the_http_port(objects: list[dict]) -> None:
    grafana = container(objects)

    assert grafana["ports"] == [
        {"name": "http", "containerPort": 3000, "protocol": "TCP"}
    ]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert grafana[probe]["httpGet"] == {"path": "/api/health", "port": "http"}


def test_resources_default_to_the_design(objects: list[dict]) -> None:
    assert container(objects)["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    }
    assert container(objects)["image"] == "grafana/grafana:9.3.0"


# --- network -----------------------------------------------------------------


def test_service_exposes_the_http_port(objects: list[dict]) -> None:
    spec = get(objects, "Service", "grafana")["spec"]

    assert spec["ports"] == [
        {"name": "http", "port": 3000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert (
        spec["selector"]
        == get(objects, "Deployment", "grafana")["spec"]["selector"]["matchLabels"]
    )


def test_endpoint_names_the_service() -> None:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    grafana = Grafana(
        chart,
        "grafana",
        settings=GrafanaSettings(),
        namespace=NAMESPACE,
        prometheus=PROMETHEUS,
    )

    assert grafana.endpoint == Endpoint("grafana", 3000)
    assert grafana.datasources["datasources"][0]["uid"] == DATASOURCE_UID


# --- dashboards --------------------------------------------------------------


def test_every_dashboard_file_is_json_of_a_known_dashboard(objects: list[dict]) -> None:
    boards = rendered_dashboards(objects)

    assert set(boards) == {"sunday-application.json", "sunday-infrastructure.json"}
    for file_name, board in boards.items():
        assert file_name == f"{board['uid']}.json"
        assert board["schemaVersion"] == 37
        assert board["id"] is None
    assert boards == dashboards(DATASOURCE_UID)


def test_no_dashboard_uses_the_removed_graph_panel(objects: list[dict]) -> None:
    for board in rendered_dashboards(objects).values():
        kinds = {panel["type"] for panel in dashboard_panels(board)}
        assert "graph" not in kinds
        assert kinds <= {"timeseries", "stat", "table"}


def test_panel_ids_are_unique_and_every_panel_is_placed(objects: list[dict]) -> None:
    for board in rendered_dashboards(objects).values():
        panels = dashboard_panels(board)
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids))
        for panel in panels:
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_every_panel_and_query_uses_the_provisioned_datasource(
    objects: list[dict],
) -> None:
    provisioned = config(objects, "grafana-datasources", "datasources.yaml")
    uid = provisioned["datasources"][0]["uid"]
    expected = {"type": "prometheus", "uid": uid}

    for board in rendered_dashboards(objects).values():
        for panel in dashboard_panels(board):
            assert panel["datasource"] == expected, panel["title"]
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == expected, panel["title"]


def panel_by_title(board: dict, title: str) -> dict:
    (panel,) = [panel for panel in dashboard_panels(board) if panel["title"] == title]
    return panel


def test_error_rate_is_the_share_of_all_responses_that_failed() -> None:
    board = dashboards(DATASOURCE_UID)["sunday-application.json"]
    panel = panel_by_title(board, "Error Rate")
    (target,) = panel["targets"]
    numerator, denominator = target["expr"].split(" / ")

    assert target["expr"] == ERROR_RATE
    assert numerator == 'sum(rate(http_requests_total{status_code=~"5.."}[5m]))'
    assert denominator == "sum(rate(http_requests_total[5m]))"
    assert panel["type"] == "stat"
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"] == [
        {"color": "green", "value": None},
        {"color": "yellow", "value": 0.01},
        {"color": "red", "value": 0.05},
    ]


def test_application_dashboard_matches_the_design() -> None:
    board = dashboards(DATASOURCE_UID)["sunday-application.json"]

    assert board["title"] == "Sunday.com Application Dashboard"
    assert board["tags"] == ["sunday", "application"]
    assert board["refresh"] == "30s"
    assert board["time"] == {"from": "now-1h", "to": "now"}
    requests = panel_by_title(board, "Request Rate")
    assert requests["targets"][0]["legendFormat"] == "{{method}} {{route}}"
    assert requests["fieldConfig"]["defaults"]["unit"] == "reqps"
    latency = panel_by_title(board, "Response Time")
    assert [t["legendFormat"] for t in latency["targets"]] == ["p50", "p95", "p99"]
    assert latency["targets"][1]["expr"] == (
        "histogram_quantile(0.95, "
        "sum by (le) (rate(http_request_duration_seconds_bucket[5m])))"
    )
    assert latency["fieldConfig"]["defaults"]["unit"] == "s"
    assert panel_by_title(board, "Active Users")["targets"][0]["expr"] == (
        "sum(active_users_total)"
    )


def test_infrastructure_dashboard_matches_the_design() -> None:
    board = dashboards(DATASOURCE_UID)["sunday-infrastructure.json"]
    cpu = panel_by_title(board, "CPU Usage")
    pods = panel_by_title(board, "Pod Status")

    assert board["title"] == "Sunday.com Infrastructure Dashboard"
    for title in ("CPU Usage", "Memory Usage"):
        defaults = panel_by_title(board, title)["fieldConfig"]["defaults"]
        assert (defaults["unit"], defaults["min"], defaults["max"]) == (
            "percent",
            0,
            100,
        ), title
    assert cpu["targets"][0]["legendFormat"] == "{{instance}}"
    assert pods["type"] == "table"
    (target,) = pods["targets"]
    assert target["expr"] == "sum by (namespace, phase) (kube_pod_status_phase)"
    assert target["instant"] is True
    assert target["format"] == "table"
    (organize,) = pods["transformations"]
    assert organize["id"] == "organize"
    assert organize["options"]["excludeByName"] == {"Time": True}


def test_dashboard_queries_lists_every_expression() -> None:
    boards = dashboards(DATASOURCE_UID)

    assert len(dashboard_queries(boards["sunday-application.json"])) == 6
    assert dashboard_queries(boards["sunday-infrastructure.json"]) == [
        (
            '100 - (avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))'
            " * 100)"
        ),
        "(1 - (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)) * 100",
        "sum by (namespace, phase) (kube_pod_status_phase)",
    ]


# --- settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"image": "grafana/grafana:latest"},
        {"image": "grafana/grafana"},
        {"admin_password": "hunter2"},
        {"replicas": 2},
        {"replicas": "one"},
        {"storage_size": "ten gigs"},
        {"storage_size": 10},
        {"admin_secret_name": "Grafana_Admin"},
    ],
    ids=[
        "latest-tag",
        "untagged",
        "unknown-key",
        "two-replicas",
        "replicas-word",
        "size-words",
        "size-number",
        "secret-not-dns",
    ],
)
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        GrafanaSettings(**bad)


def test_every_setting_has_a_default_and_says_it() -> None:
    for name, field in GrafanaSettings.model_fields.items():
        assert not field.is_required(), name
        assert field.description and "efault" in field.description, name
