"""The whole monitoring stack of one environment, wired together.

Metrics and alerts (Prometheus, Alertmanager, Grafana, the exporters), logs
(Elasticsearch, Filebeat, Kibana), traces (Jaeger) and APM (the APM Server)
are composed here for one environment.
Each component is a construct that works alone; this module decides how they
refer to each other. Every address one component's configuration uses for
another is taken from that component's construct (its Service name and
port), never typed twice, so a reference cannot drift from what is deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from constructs import Construct
from pydantic import Field, model_validator

from constructs_lib import elastic
from constructs_lib import prometheus as prom
from constructs_lib.alertmanager import Alertmanager, AlertmanagerSettings
from constructs_lib.apm_server import ApmServer, ApmServerSettings, apm_setup_step
from constructs_lib.auto_recovery import AutoRecovery, AutoRecoverySettings
from constructs_lib.common import (
    DnsLabel,
    Endpoint,
    StrictModel,
    declare_secret,
    image_tag,
    metadata,
    mount,
)
from constructs_lib.elasticsearch import (
    Elasticsearch,
    ElasticsearchSettings,
    declare_certs_secret,
)
from constructs_lib.elasticsearch_setup import ElasticsearchSetup
from constructs_lib.filebeat import Filebeat, FilebeatSettings
from constructs_lib.grafana import Grafana, GrafanaSettings
from constructs_lib.jaeger import Jaeger, JaegerSettings, grafana_datasource
from constructs_lib.kibana import KIBANA_USER, Kibana, KibanaSettings
from constructs_lib.kube_state_metrics import KubeStateMetrics, KubeStateMetricsSettings
from constructs_lib.network_policies import NetworkPolicySettings
from constructs_lib.node_exporter import NodeExporter, NodeExporterSettings
from constructs_lib.postgres_exporter import PostgresExporter, PostgresExporterSettings
from constructs_lib.prometheus import Prometheus, PrometheusSettings
from constructs_lib.redis_exporter import RedisExporter, RedisExporterSettings
from constructs_lib.reloader import ReloaderSettings
from constructs_lib.rules import default_rule_paths, load_rule_files
from imports import k8s

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_GRAFANA_CA_DIR = "/etc/grafana/elasticsearch-ca"
_GRAFANA_LOGS_VOLUME = "elasticsearch-logs-reader"
_GRAFANA_LOGS_DIR = "/etc/grafana/elasticsearch-logs-reader"
_RESERVED_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}


class StackSettings(StrictModel):
    """Everything that differs between environments, in one model."""

    environment: DnsLabel = Field(
        description="Environment name; the external label 'environment' and "
        "the name of the rendered file."
    )
    cluster: str = Field(
        min_length=1,
        description="Cluster name; the external label 'cluster' on every "
        "series and alert this Prometheus sends.",
    )
    namespace: DnsLabel = Field(
        default="monitoring",
        description="Namespace the stack runs in. Defaults to 'monitoring'.",
    )
    extra_rule_files: list[str] = Field(
        default_factory=list,
        description="Further Prometheus rule files, as paths relative to the "
        "project root, loaded beside the built-in rules/ files. Defaults to "
        "none.",
    )
    prometheus: PrometheusSettings = Field(
        description="Required, for its app_namespaces."
    )
    alertmanager: AlertmanagerSettings = Field(default_factory=AlertmanagerSettings)
    grafana: GrafanaSettings = Field(default_factory=GrafanaSettings)
    node_exporter: NodeExporterSettings = Field(default_factory=NodeExporterSettings)
    kube_state_metrics: KubeStateMetricsSettings = Field(
        default_factory=KubeStateMetricsSettings
    )
    postgres_exporter: PostgresExporterSettings = Field(
        description="Required, for its data_source_uri."
    )
    redis_exporter: RedisExporterSettings = Field(
        description="Required, for its redis_addr."
    )
    reloader: ReloaderSettings = Field(default_factory=ReloaderSettings)
    elasticsearch: ElasticsearchSettings = Field(default_factory=ElasticsearchSettings)
    kibana: KibanaSettings = Field(default_factory=KibanaSettings)
    filebeat: FilebeatSettings = Field(default_factory=FilebeatSettings)
    apm_server: ApmServerSettings = Field(default_factory=ApmServerSettings)
    jaeger: JaegerSettings = Field(default_factory=JaegerSettings)
    network_policies: NetworkPolicySettings = Field(
        default_factory=NetworkPolicySettings
    )
    auto_recovery: AutoRecoverySettings = Field(
        description="Required, for its namespaces and dry_run."
    )

    @model_validator(mode="after")
    def _namespace_is_its_own(self) -> StackSettings:
        # The chart renders the Namespace object and labels it for Pod
        # Security; sharing it would relabel, and on delete remove, a
        # namespace the stack does not own.
        if self.namespace in _RESERVED_NAMESPACES:
            raise ValueError(
                f"namespace {self.namespace!r} is reserved; the stack needs a "
                "namespace of its own, such as 'monitoring'"
            )
        # The job must not scale the stack's own Deployments: Grafana's
        # ReadWriteOnce volume cannot follow a second replica.
        if self.namespace in self.auto_recovery.namespaces:
            raise ValueError(
                f"namespace {self.namespace!r} is the stack's own; "
                "auto_recovery.namespaces names the application's namespaces"
            )
        kibana = image_tag(self.kibana.image)
        elasticsearch = image_tag(self.elasticsearch.image)
        if kibana != elasticsearch:
            raise ValueError(
                f"kibana.image {self.kibana.image!r} runs Kibana {kibana}, but "
                f"elasticsearch.image runs Elasticsearch {elasticsearch}; Kibana "
                "refuses to start against another version, so set both to one "
                "release"
            )
        apm = image_tag(self.apm_server.image)
        if apm != elasticsearch:
            raise ValueError(
                f"apm_server.image {self.apm_server.image!r} runs APM Server "
                f"{apm}, but elasticsearch.image runs Elasticsearch "
                f"{elasticsearch}; the setup job installs the APM package of the "
                "server's release through Kibana, which offers its own release's "
                "package, so set both to one release"
            )
        if self.namespace in self.prometheus.app_namespaces:
            raise ValueError(
                f"namespace {self.namespace!r} is also an application namespace "
                "in prometheus.app_namespaces; the stack needs one of its own"
            )
        return self

    def rule_paths(self) -> list[Path]:
        """The built-in rule files, then this environment's extra ones."""
        return default_rule_paths() + [
            (PROJECT_ROOT / path) for path in self.extra_rule_files
        ]


class MonitoringStack(Construct):
    """Namespace, exporters, Alertmanager, Prometheus and Grafana."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: StackSettings,
        rule_files: Mapping[str, str] | None = None,
    ) -> None:
        """Compose the stack.

        ``rule_files`` maps ConfigMap keys to rule file texts. Defaults to
        loading ``settings.rule_paths()``, which rejects duplicate alert
        names and unknown severities.
        """
        super().__init__(scope, id)
        namespace = settings.namespace
        self.settings = settings

        k8s.KubeNamespace(
            self,
            "namespace",
            metadata=metadata(
                namespace,
                {
                    "app.kubernetes.io/part-of": "sunday-monitoring",
                    # node-exporter needs the host's network, processes and
                    # files (see node_exporter.py); every other pod meets
                    # the "restricted" standard, which is what is reported.
                    "pod-security.kubernetes.io/enforce": "privileged",
                    "pod-security.kubernetes.io/warn": "baseline",
                    "pod-security.kubernetes.io/audit": "restricted",
                },
            ),
        )

        self.node_exporter = NodeExporter(
            self, "node-exporter", settings=settings.node_exporter, namespace=namespace
        )
        self.kube_state_metrics = KubeStateMetrics(
            self,
            "kube-state-metrics",
            settings=settings.kube_state_metrics,
            namespace=namespace,
        )
        self.postgres_exporter = PostgresExporter(
            self,
            "postgres-exporter",
            settings=settings.postgres_exporter,
            namespace=namespace,
        )
        self.redis_exporter = RedisExporter(
            self,
            "redis-exporter",
            settings=settings.redis_exporter,
            namespace=namespace,
        )
        self.alertmanager = Alertmanager(
            self,
            "alertmanager",
            settings=settings.alertmanager,
            namespace=namespace,
            reloader=settings.reloader,
        )
        self.auto_recovery = AutoRecovery(
            self, "auto-recovery", settings=settings.auto_recovery, namespace=namespace
        )
        self._logs_and_traces(settings)
        self.grafana = Grafana(
            self,
            "grafana",
            settings=settings.grafana,
            namespace=namespace,
            prometheus=Endpoint(prom.NAME, prom.PORT),
            # Grafana never asks Prometheus for a step finer than a scrape.
            scrape_interval=settings.prometheus.scrape_interval,
            extra_datasources=[
                self._logs_datasource(),
                grafana_datasource(self.jaeger.query),
            ],
            extra_volumes=[
                (elastic.ca_volume(), elastic.ca_mount(_GRAFANA_CA_DIR)),
                (
                    elastic.credentials_volume(_GRAFANA_LOGS_VOLUME, self.logs_reader),
                    mount(_GRAFANA_LOGS_VOLUME, _GRAFANA_LOGS_DIR),
                ),
            ],
        )
        declare_secret(
            self.grafana,
            name=self.logs_reader.secret,
            namespace=namespace,
            keys=[elastic.PASSWORD_KEY],
            purpose="Grafana's Elasticsearch user, which reads the logs",
        )
        declare_certs_secret(self.grafana, namespace)

        if rule_files is None:
            rule_files = load_rule_files(settings.rule_paths())
        self.prometheus = Prometheus(
            self,
            "prometheus",
            settings=settings.prometheus,
            namespace=namespace,
            external_labels={
                "cluster": settings.cluster,
                "environment": settings.environment,
            },
            scrape_configs=self._scrape_configs(),
            alertmanagers=self.alertmanager.peers,
            rule_files=rule_files,
            reloader=settings.reloader,
        )

    def _logs_and_traces(self, settings: StackSettings) -> None:
        """Elasticsearch and everything that writes to or reads from it."""
        namespace = settings.namespace
        self.elasticsearch = Elasticsearch(
            self,
            "elasticsearch",
            settings=settings.elasticsearch,
            namespace=namespace,
        )
        endpoint = self.elasticsearch.endpoint
        self.kibana = Kibana(
            self,
            "kibana",
            settings=settings.kibana,
            namespace=namespace,
            elasticsearch=endpoint,
        )
        self.filebeat = Filebeat(
            self,
            "filebeat",
            settings=settings.filebeat,
            namespace=namespace,
            environment=settings.environment,
            elasticsearch=endpoint,
        )
        self.apm_server = ApmServer(
            self,
            "apm-server",
            settings=settings.apm_server,
            namespace=namespace,
            elasticsearch=endpoint,
            environment=settings.environment,
        )
        self.jaeger = Jaeger(
            self,
            "jaeger",
            settings=settings.jaeger,
            namespace=namespace,
            elasticsearch=endpoint,
        )
        self.logs_reader = elastic.ClientUser(
            "grafana_reader",
            "grafana-elasticsearch",
            "grafana_reader",
            {
                "cluster": ["monitor"],
                "indices": [
                    {
                        "names": [self.filebeat.index_pattern],
                        "privileges": ["read", "view_index_metadata"],
                    }
                ],
            },
        )
        users = [KIBANA_USER, self.filebeat.user, self.apm_server.user]
        if settings.jaeger.mode == "production":
            users.append(self.jaeger.user)
        users.append(self.logs_reader)
        self.elasticsearch_setup = ElasticsearchSetup(
            self,
            "elasticsearch-setup",
            namespace=namespace,
            users=users,
            extra_steps=[apm_setup_step(image_tag(settings.apm_server.image))],
            image=settings.elasticsearch.setup_image,
            elastic_secret=settings.elasticsearch.credentials_secret,
            elasticsearch=endpoint,
            kibana=self.kibana.endpoint,
        )

    def _logs_datasource(self) -> dict:
        """Grafana's view of the logs: where Filebeat really writes them."""
        return {
            "name": "Logs",
            "uid": "elasticsearch-logs",
            "type": "elasticsearch",
            "access": "proxy",
            "url": self.elasticsearch.endpoint.url,
            # Grafana 9 takes the index pattern in "database"; the design's
            # logstash-* named an index nothing writes.
            "database": self.filebeat.index_pattern,
            "basicAuth": True,
            "basicAuthUser": self.logs_reader.username,
            "editable": False,
            "jsonData": {
                "timeField": self.filebeat.time_field,
                "esVersion": "8.0.0",
                "tlsAuthWithCACert": True,
                "logMessageField": "message",
                "logLevelField": "log.level",
            },
            # Grafana reads these files when it provisions the datasource,
            # so no secret value is written into the ConfigMap.
            "secureJsonData": {
                "basicAuthPassword": f"$__file{{{_GRAFANA_LOGS_DIR}/"
                f"{elastic.PASSWORD_KEY}}}",
                "tlsCACert": f"$__file{{{_GRAFANA_CA_DIR}/{elastic.CA_KEY}}}",
            },
        }

    def _scrape_configs(self) -> list[dict]:
        settings = self.settings
        return [
            # Each replica scrapes itself: through the Service, replicas
            # would scrape each other at random.
            prom.static_job("prometheus", Endpoint("localhost", prom.PORT)),
            {
                "job_name": "alertmanager",
                "static_configs": [
                    {"targets": [peer.address for peer in self.alertmanager.peers]}
                ],
            },
            prom.static_job("grafana", self.grafana.endpoint),
            prom.backend_pods_job(settings.prometheus),
            prom.kubelet_job(settings.prometheus),
            prom.pods_by_label_job(
                "node-exporter",
                settings.namespace,
                self.node_exporter.name,
                self.node_exporter.port_name,
            ),
            prom.static_job("kube-state-metrics", self.kube_state_metrics.endpoint),
            prom.static_job("postgres-exporter", self.postgres_exporter.endpoint),
            prom.static_job("redis-exporter", self.redis_exporter.endpoint),
            # Each Jaeger process by pod: through the Service, each scrape
            # would reach a random collector replica.
            prom.pods_by_label_job(
                "jaeger",
                settings.namespace,
                "|".join(sorted({e.host for e in self.jaeger.metrics} | {"jaeger"})),
                "admin",
                instance_from="__meta_kubernetes_pod_name",
            ),
        ]
