"""postgres-exporter and redis-exporter: the objects they synthesize.

What the real programs make of these objects is checked in
test_exporters_live.py; here each field is checked as rendered.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

import constructs_lib._bridge  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
from cdk8s import App, Chart

from constructs_lib.common import NOBODY, Endpoint
from constructs_lib.errors import ConfigurationError
from constructs_lib.postgres_exporter import (
    QUERIES_FILE,
    PostgresExporter,
    PostgresExporterSettings,
    load_queries,
)
from constructs_lib.redis_exporter import (
    RedisExporter,
    RedisExporterSettings,
    password_file_content,
)


def synthesize(build: Callable[[Chart], Any]) -> list[dict[str, Any]]:
    app = App()
    chart = Chart(app, "test")
    build(chart)
    return chart.to_json()


PG_URI = "postgres.sunday-production.svc:5432/sunday?sslmode=require"
REDIS_ADDR = "redis://redis.sunday-production.svc:6379"


def postgres(**settings: Any) -> list[dict[str, Any]]:
    return synthesize(
        lambda chart: PostgresExporter(
            chart,
            "postgres-exporter",
            settings=PostgresExporterSettings(
                **{"data_source_uri": PG_URI, **settings}
            ),
            namespace="monitoring",
        )
    )


def redis(**settings: Any) -> list[dict[str, Any]]:
    return synthesize(
        lambda chart: RedisExporter(
            chart,
            "redis-exporter",
            settings=RedisExporterSettings(**{"redis_addr": REDIS_ADDR, **settings}),
            namespace="monitoring",
        )
    )


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod(objects)["containers"]
    return only


def env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(objects)["env"]}


RENDERINGS = {
    "postgres": lambda: postgres(),
    "redis": lambda: redis(),
    "redis-with-password": lambda: redis(password_secret="redis-exporter"),
}


@pytest.fixture(params=sorted(RENDERINGS))
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return RENDERINGS[request.param]()


# --- both exporters --------------------------------------------------------


def test_every_object_passes_strict_kubernetes_validation(
    rendered: list[dict[str, Any]],
) -> None:
    for obj in rendered:
        kubernetes_validate.validate(obj, "1.27.0", strict=True)


def test_objects_come_in_order_identity_configuration_workload_service(
    rendered: list[dict[str, Any]],
) -> None:
    kinds = [obj["kind"] for obj in rendered]

    assert kinds[0] == "ServiceAccount"
    assert kinds[-2:] == ["Deployment", "Service"]


def test_the_pod_runs_as_nobody_with_no_token_and_a_locked_container(
    rendered: list[dict[str, Any]],
) -> None:
    spec = pod(rendered)
    context = container(rendered)["securityContext"]

    assert spec["securityContext"]["runAsUser"] == NOBODY
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    assert one(rendered, "ServiceAccount")["automountServiceAccountToken"] is False
    assert (
        spec["serviceAccountName"]
        == one(rendered, "ServiceAccount")["metadata"]["name"]
    )
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}


def test_every_volume_is_mounted_read_only(rendered: list[dict[str, Any]]) -> None:
    for volume_mount in container(rendered).get("volumeMounts", []):
        assert volume_mount["readOnly"] is True, volume_mount


def test_no_secret_object_or_credential_literal_is_rendered(
    rendered: list[dict[str, Any]],
) -> None:
    text = yaml.safe_dump_all(rendered)
    main = container(rendered)
    env_names = {item["name"] for item in main.get("env", [])}

    assert "Secret" not in {obj["kind"] for obj in rendered}
    # Only *_FILE variants: a value in the environment shows in the pod spec.
    assert not env_names & {
        "DATA_SOURCE_NAME",
        "DATA_SOURCE_USER",
        "DATA_SOURCE_PASS",
        "REDIS_PASSWORD",
    }
    assert not [arg for arg in main["args"] if arg.startswith("--redis.password=")]
    assert "@" not in json.dumps(main["args"])
    assert "secretKeyRef" not in text
    assert "password=" not in text


# --- postgres-exporter -----------------------------------------------------


def test_postgres_exporter_reads_its_credentials_from_secret_files() -> None:
    objects = postgres()
    volumes = {volume["name"]: volume for volume in pod(objects)["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    credentials = volumes["credentials"]["secret"]

    assert credentials["secretName"] == "postgres-exporter"
    assert credentials["items"] == [
        {"key": "username", "path": "username"},
        {"key": "password", "path": "password"},
    ]
    assert credentials["defaultMode"] == 0o440
    # The files are root's and the fsGroup's: the exporter reads them by group.
    assert pod(objects)["securityContext"]["fsGroup"] == NOBODY
    assert env(objects) == {
        "DATA_SOURCE_URI": "postgres.sunday-production.svc:5432/sunday?sslmode=require",
        "DATA_SOURCE_USER_FILE": f"{mounts['credentials']}/username",
        "DATA_SOURCE_PASS_FILE": f"{mounts['credentials']}/password",
        "PG_EXPORTER_EXTEND_QUERY_PATH": f"{mounts['queries']}/queries.yaml",
    }


def test_postgres_exporter_credentials_secret_is_a_setting() -> None:
    objects = postgres(credentials_secret="pg-monitor")
    volumes = {volume["name"]: volume for volume in pod(objects)["volumes"]}

    assert volumes["credentials"]["secret"]["secretName"] == "pg-monitor"


def test_postgres_exporter_queries_config_map_carries_the_file() -> None:
    objects = postgres()
    config_map = one(objects, "ConfigMap")
    volumes = {volume["name"]: volume for volume in pod(objects)["volumes"]}

    assert config_map["metadata"]["name"] == "postgres-exporter-queries"
    assert config_map["data"] == {"queries.yaml": QUERIES_FILE.read_text()}
    assert volumes["queries"]["configMap"]["name"] == "postgres-exporter-queries"
    assert (
        "checksum/config"
        in one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    )


def test_postgres_exporter_listens_and_is_probed_on_port_9187() -> None:
    objects = postgres()
    main = container(objects)
    service = one(objects, "Service")

    assert main["args"] == ["--web.listen-address=:9187"]
    assert main["ports"] == [
        {"name": "metrics", "containerPort": 9187, "protocol": "TCP"}
    ]
    # The landing page: /metrics would query the database on every probe.
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/", "port": "metrics"}
    assert service["metadata"]["name"] == "postgres-exporter"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9187, "protocol": "TCP", "targetPort": "metrics"}
    ]


def test_postgres_exporter_defaults_follow_the_design() -> None:
    objects = postgres()
    deployment = one(objects, "Deployment")
    main = container(objects)

    assert deployment["metadata"]["name"] == "postgres-exporter"
    assert deployment["spec"]["replicas"] == 1
    assert main["image"] == "prometheuscommunity/postgres-exporter:v0.11.1"
    assert main["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "200m", "memory": "256Mi"},
    }


def test_postgres_exporter_exposes_its_endpoint_and_queries() -> None:
    app = App()
    exporter = PostgresExporter(
        Chart(app, "test"),
        "postgres-exporter",
        settings=PostgresExporterSettings(data_source_uri=PG_URI),
        namespace="monitoring",
    )

    assert exporter.endpoint == Endpoint("postgres-exporter", 9187)
    assert exporter.endpoint.address == "postgres-exporter:9187"
    assert exporter.queries == load_queries()


def test_table_query_names_the_views_real_columns() -> None:
    query = load_queries()["pg_stat_user_tables"]
    columns = [next(iter(column)) for column in query["metrics"]]

    assert "relname" in columns
    assert "tablename" not in columns
    assert "tablename" not in query["query"]


def test_replication_lag_comes_from_a_custom_query() -> None:
    query = load_queries()["pg_replication"]

    # pg_replication + lag = pg_replication_lag, the series ReplicationLag uses.
    assert [list(column) for column in query["metrics"]] == [["lag"]]
    assert query["metrics"][0]["lag"]["usage"] == "GAUGE"
    assert "pg_is_in_recovery()" in query["query"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "pg_stat_activity:\n  query: SELECT 1 AS n\n"
            "  metrics:\n    - n: {usage: GAUGE, description: n}\n",
            "replace the exporter's built-in query",
        ),
        (
            "custom:\n  query: SELECT 1 AS n\n"
            "  metrics:\n    - n: {usage: NUMBER, description: n}\n",
            "usage 'NUMBER'",
        ),
        ("custom:\n  metrics:\n    - n: {usage: GAUGE}\n", "no 'query' text"),
        ("custom:\n  query: SELECT 1\n  metrics: []\n", "lists no metrics"),
        ("custom:\n  query: SELECT 1\n  metrics: [n GAUGE]\n", "must be one"),
        ("- just a list\n", "must map metric prefixes"),
        ("custom: [unclosed\n", "cannot be read as YAML"),
    ],
    ids=["builtin", "usage", "no-query", "no-metrics", "shorthand", "list", "yaml"],
)
def test_a_malformed_queries_file_is_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "queries.yaml"
    path.write_text(text)

    with pytest.raises(ConfigurationError) as error:
        load_queries(path)

    assert error.value.where == str(path)
    assert problem in error.value.problem


@pytest.mark.parametrize(
    "uri",
    [
        "postgres.sunday-staging.svc:5432/sunday?sslmode=require",
        "db.internal/sunday",
        "10.0.0.5:6432/sunday?sslmode=verify-full&sslrootcert=/etc/ssl/ca.crt",
    ],
)
def test_data_source_uri_accepts_host_port_database_and_params(uri: str) -> None:
    assert env(postgres(data_source_uri=uri))["DATA_SOURCE_URI"] == uri


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"image": "prometheuscommunity/postgres-exporter:latest"}, "latest"),
        ({"image": "prometheuscommunity/postgres-exporter"}, "repository:tag"),
        ({"data_source_uri": ""}, "host:port/database"),
        ({"data_source_uri": "postgres:5432"}, "host:port/database"),
        (
            {"data_source_uri": "postgresql://postgres:5432/sunday"},
            "must not carry a scheme or credentials",
        ),
        (
            {"data_source_uri": "monitor:secret@postgres:5432/sunday"},
            "must not carry a scheme or credentials",
        ),
        ({"credentials_secret": "Postgres_Secret"}, "not a DNS label"),
        ({"replicas": 2}, "Extra inputs are not permitted"),
    ],
    ids=[
        "latest",
        "untagged",
        "empty-uri",
        "no-database",
        "scheme",
        "credentials",
        "secret-name",
        "unknown-key",
    ],
)
def test_bad_postgres_exporter_settings_are_refused(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        PostgresExporterSettings(**{"data_source_uri": PG_URI, **settings})


# --- redis-exporter --------------------------------------------------------


def test_redis_exporter_without_password_mounts_nothing() -> None:
    objects = redis()
    main = container(objects)

    assert main["args"] == [
        "--redis.addr=redis://redis.sunday-production.svc:6379",
        "--web.listen-address=:9121",
    ]
    assert "volumeMounts" not in main
    assert "volumes" not in pod(objects)
    assert "env" not in main


def test_redis_exporter_reads_the_password_from_a_secret_file() -> None:
    objects = redis(password_secret="redis-exporter")
    main = container(objects)
    (volume,) = pod(objects)["volumes"]
    (volume_mount,) = main["volumeMounts"]

    assert volume["secret"] == {
        "secretName": "redis-exporter",
        "defaultMode": 0o440,
        "items": [{"key": "password-file.json", "path": "password-file.json"}],
    }
    assert volume_mount["name"] == volume["name"]
    assert (
        f"--redis.password-file={volume_mount['mountPath']}/password-file.json"
        in main["args"]
    )
    assert pod(objects)["securityContext"]["fsGroup"] == NOBODY


def test_redis_password_file_maps_the_address_to_the_password() -> None:
    addr = "redis://redis.sunday-production.svc:6379"

    assert json.loads(password_file_content(addr, 'p"w')) == {addr: 'p"w'}
    with pytest.raises(ValueError, match="redis://host:port"):
        password_file_content("redis.sunday-production.svc:6379", "pw")


def test_redis_exporter_listens_and_is_probed_on_port_9121() -> None:
    objects = redis()
    main = container(objects)
    service = one(objects, "Service")

    assert main["ports"] == [
        {"name": "metrics", "containerPort": 9121, "protocol": "TCP"}
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert service["metadata"]["name"] == "redis-exporter"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9121, "protocol": "TCP", "targetPort": "metrics"}
    ]
    assert main["image"] == "oliver006/redis_exporter:v1.45.0"
    assert one(objects, "Deployment")["spec"]["replicas"] == 1


def test_redis_exporter_exposes_its_endpoint() -> None:
    app = App()
    exporter = RedisExporter(
        Chart(app, "test"),
        "redis-exporter",
        settings=RedisExporterSettings(redis_addr=REDIS_ADDR),
        namespace="monitoring",
    )

    assert exporter.endpoint == Endpoint("redis-exporter", 9121)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"image": "oliver006/redis_exporter:latest"}, "latest"),
        ({"redis_addr": ""}, "redis://host:port"),
        ({"redis_addr": "redis.sunday-production.svc:6379"}, "redis://host:port"),
        ({"redis_addr": "redis://redis:6379/"}, "redis://host:port"),
        ({"redis_addr": "redis://:secret@redis:6379"}, "redis://host:port"),
        ({"redis_addr": "redis://redis"}, "redis://host:port"),
        ({"password_secret": ""}, "not a DNS label"),
        ({"password": "secret"}, "Extra inputs are not permitted"),
    ],
    ids=[
        "latest",
        "empty",
        "no-scheme",
        "trailing-slash",
        "credentials",
        "no-port",
        "empty-secret",
        "unknown-key",
    ],
)
def test_bad_redis_exporter_settings_are_refused(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        RedisExporterSettings(**{"redis_addr": REDIS_ADDR, **settings})
