"""postgres_exporter: the PostgreSQL server's health and activity as metrics.

One exporter watches one PostgreSQL server through one database. It logs in
with a monitoring role whose user name and password it reads from files of an
operator-created Secret (``DATA_SOURCE_USER_FILE``, ``DATA_SOURCE_PASS_FILE``),
so no credential is rendered or passed in the environment. Besides its
built-in metrics it runs the custom queries of ``postgres_queries.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from constructs import Construct
from pydantic import AfterValidator, Field

from constructs_lib.common import (
    NOBODY,
    DnsLabel,
    Endpoint,
    Image,
    Resources,
    StrictModel,
    config_checksum,
    config_map_volume,
    container_port,
    container_security,
    declare_secret,
    http_probe,
    image_tag,
    metadata,
    mount,
    pod_security,
    pull_policy,
    secret_volume,
    selector_labels,
    service,
    service_account,
    standard_labels,
)
from constructs_lib.errors import ConfigurationError
from imports import k8s

NAME = "postgres-exporter"
PORT = 9187
QUERIES_DIR = "/etc/postgres-exporter/queries"
QUERIES_KEY = "queries.yaml"
CREDENTIALS_DIR = "/etc/postgres-exporter/credentials"
USERNAME_KEY = "username"
PASSWORD_KEY = "password"
CREDENTIAL_KEYS = (USERNAME_KEY, PASSWORD_KEY)

QUERIES_FILE = Path(__file__).with_name("postgres_queries.yaml")

# Prefixes of the exporter's built-in queries (0.11.1). A custom query of the
# same name silently replaces the built-in one and its metrics.
BUILTIN_PREFIXES = frozenset(
    {
        "pg_stat_bgwriter",
        "pg_stat_database",
        "pg_stat_database_conflicts",
        "pg_locks",
        "pg_stat_replication",
        "pg_replication_slots",
        "pg_stat_archiver",
        "pg_stat_activity",
        "pg_settings",
    }
)
_USAGES = frozenset(
    {"LABEL", "COUNTER", "GAUGE", "DISCARD", "MAPPEDMETRIC", "DURATION", "HISTOGRAM"}
)

_URI = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?"
    r"/[A-Za-z0-9_][A-Za-z0-9_$-]*(\?[A-Za-z0-9_=&.%/:,+-]*)?$"
)


def _data_source_uri(value: str) -> str:
    if "@" in value or "://" in value:
        raise ValueError(
            f"data source {value!r} must not carry a scheme or credentials: the "
            "exporter prepends 'postgresql://USER:PASSWORD@' itself, from the "
            "credentials Secret. Give 'host:port/database?sslmode=require'"
        )
    if re.search(r"[?&](password|user|sslpassword|passfile)=", value):
        raise ValueError(
            f"data source {value!r} carries a credential parameter; the user "
            "and password come only from the credentials Secret"
        )
    if not _URI.fullmatch(value):
        raise ValueError(
            f"data source {value!r} is not 'host:port/database' with optional "
            "'?param=value&...', for example "
            "'postgres.sunday-production.svc:5432/sunday?sslmode=require'"
        )
    return value


DataSourceUri = Annotated[str, AfterValidator(_data_source_uri)]
"""A PostgreSQL ``host[:port]/database[?params]`` without scheme or user."""


class PostgresExporterSettings(StrictModel):
    """How postgres_exporter runs in one environment."""

    image: Image = Field(
        default="prometheuscommunity/postgres-exporter:v0.11.1",
        description="postgres_exporter image. Defaults to v0.11.1, the design's.",
    )
    data_source_uri: DataSourceUri = Field(
        description="Required: the PostgreSQL server and database as "
        "'host:port/database', with connection parameters after '?' and no "
        "credentials, e.g. "
        "'postgres.sunday-production.svc:5432/sunday?sslmode=require'. No "
        "default, so that a new environment never reads another's database.",
    )
    credentials_secret: DnsLabel = Field(
        default=NAME,
        description="Operator-created Secret with the keys "
        f"'{USERNAME_KEY}' and '{PASSWORD_KEY}' of a login role granted "
        "pg_monitor; a final newline in either is ignored. The exporter reads "
        "them once at start, so restart it after rotating the password. "
        f"Defaults to '{NAME}'.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="100m",
            memory_request="128Mi",
            cpu_limit="200m",
            memory_limit="256Mi",
        ),
        description="Exporter container resources. Defaults to the design's.",
    )


def load_queries(path: Path = QUERIES_FILE) -> dict[str, Any]:
    """Parse and check the exporter's custom queries file.

    Raises ``ConfigurationError`` naming the file and the query when the file
    is not in the exporter's format, or a query would replace a built-in one.
    """
    where = str(path)
    try:
        queries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigurationError(where, f"cannot be read as YAML: {error}") from None
    if not isinstance(queries, dict) or not queries:
        raise ConfigurationError(where, "must map metric prefixes to queries")
    for prefix, spec in queries.items():
        _check_query(where, prefix, spec)
    return queries


def _check_query(where: str, prefix: Any, spec: Any) -> None:
    if not isinstance(prefix, str) or not re.fullmatch(r"^[a-z_][a-z0-9_]*$", prefix):
        raise ConfigurationError(
            where, f"metric prefix {prefix!r} is not a lower-case metric name"
        )
    if prefix in BUILTIN_PREFIXES:
        raise ConfigurationError(
            where,
            f"query {prefix!r} would replace the exporter's built-in query of "
            "that name and its metrics; choose another prefix",
        )
    if not isinstance(spec, dict) or not isinstance(spec.get("query"), str):
        raise ConfigurationError(where, f"query {prefix!r} has no 'query' text")
    metrics = spec.get("metrics")
    if not isinstance(metrics, list) or not metrics:
        raise ConfigurationError(where, f"query {prefix!r} lists no metrics")
    for column in metrics:
        if not (isinstance(column, dict) and len(column) == 1):
            raise ConfigurationError(
                where,
                f"query {prefix!r}: metric {column!r} must be one "
                "'column: {usage: ..., description: ...}' entry",
            )
        ((name, detail),) = column.items()
        usage = detail.get("usage") if isinstance(detail, dict) else None
        if usage not in _USAGES:
            raise ConfigurationError(
                where,
                f"query {prefix!r}: column {name!r} has usage {usage!r}; "
                f"allowed are {', '.join(sorted(_USAGES))}",
            )


class PostgresExporter(Construct):
    """postgres_exporter with its queries, Deployment and Service."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: PostgresExporterSettings,
        namespace: str,
    ) -> None:
        super().__init__(scope, id)
        self.settings = settings
        self.namespace = namespace
        self.endpoint = Endpoint(NAME, PORT)
        labels = standard_labels(NAME, "exporter", image_tag(settings.image))
        selector = selector_labels(NAME)

        # The ConfigMap carries the file as written, comments and all, so an
        # operator reading it in the cluster sees why each query is so.
        queries_text = QUERIES_FILE.read_text()
        self.queries = load_queries()

        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        declare_secret(
            self,
            name=settings.credentials_secret,
            namespace=namespace,
            keys=CREDENTIAL_KEYS,
            purpose="postgres-exporter's login role (granted pg_monitor)",
        )

        config_map = k8s.KubeConfigMap(
            self,
            "queries",
            metadata=metadata(f"{NAME}-queries", labels, namespace),
            data={QUERIES_KEY: queries_text},
        )

        deployment = k8s.KubeDeployment(
            self,
            "deployment",
            metadata=metadata(NAME, labels, namespace),
            spec=k8s.DeploymentSpec(
                # A second replica would add nothing: Prometheus alerts when
                # the only one is down, and it restarts within seconds.
                replicas=1,
                selector=k8s.LabelSelector(match_labels=selector),
                template=self._pod_template(labels, queries_text),
            ),
        )
        deployment.add_dependency(config_map)

        self.service = service(
            self,
            "service",
            name=NAME,
            namespace=namespace,
            labels=labels,
            ports=[("metrics", PORT)],
            selector=selector,
        )

    def _pod_template(
        self, labels: Mapping[str, str], queries_text: str
    ) -> k8s.PodTemplateSpec:
        settings = self.settings
        env = {
            "DATA_SOURCE_URI": settings.data_source_uri,
            "DATA_SOURCE_USER_FILE": f"{CREDENTIALS_DIR}/{USERNAME_KEY}",
            "DATA_SOURCE_PASS_FILE": f"{CREDENTIALS_DIR}/{PASSWORD_KEY}",
            "PG_EXPORTER_EXTEND_QUERY_PATH": f"{QUERIES_DIR}/{QUERIES_KEY}",
        }
        exporter = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            args=[f"--web.listen-address=:{PORT}"],
            env=[k8s.EnvVar(name=key, value=value) for key, value in env.items()],
            ports=[container_port("metrics", PORT)],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            # The landing page, not /metrics: a scrape queries PostgreSQL, and
            # a database outage must show as pg_up 0, not restart the exporter.
            readiness_probe=http_probe("/", "metrics"),
            liveness_probe=http_probe("/", "metrics", failure_threshold=6),
            volume_mounts=[
                mount("queries", QUERIES_DIR),
                mount("credentials", CREDENTIALS_DIR),
            ],
        )
        return k8s.PodTemplateSpec(
            metadata=k8s.ObjectMeta(
                labels=dict(labels),
                annotations={"checksum/config": config_checksum(queries_text)},
            ),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                automount_service_account_token=False,
                # fsGroup makes the Secret's 0440 files readable to the
                # exporter's group; without it they belong to root alone.
                security_context=pod_security(NOBODY, fs_group=NOBODY),
                containers=[exporter],
                volumes=[
                    config_map_volume("queries", f"{NAME}-queries"),
                    secret_volume(
                        "credentials", settings.credentials_secret, CREDENTIAL_KEYS
                    ),
                ],
            ),
        )
