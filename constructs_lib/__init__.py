"""Reusable cdk8s constructs of the Sunday monitoring stack.

Import a single component into your own chart::

    from constructs_lib import Prometheus, PrometheusSettings

or the whole stack with :class:`MonitoringStack`. Every construct takes
``scope, id`` and then keyword-only settings; every settings model is strict
and rejects unknown keys.
"""

from constructs_lib import _bridge  # noqa: F401  (must run before cdk8s loads)
from constructs_lib.alertmanager import Alertmanager, AlertmanagerSettings
from constructs_lib.auto_recovery import AutoRecovery, AutoRecoverySettings
from constructs_lib.common import Endpoint, Resources
from constructs_lib.errors import ConfigurationError
from constructs_lib.grafana import Grafana, GrafanaSettings
from constructs_lib.kube_state_metrics import KubeStateMetrics, KubeStateMetricsSettings
from constructs_lib.node_exporter import NodeExporter, NodeExporterSettings
from constructs_lib.postgres_exporter import PostgresExporter, PostgresExporterSettings
from constructs_lib.prometheus import Prometheus, PrometheusSettings
from constructs_lib.redis_exporter import RedisExporter, RedisExporterSettings
from constructs_lib.reloader import ReloaderSettings
from constructs_lib.stack import MonitoringStack, StackSettings

__all__ = [
    "Alertmanager",
    "AlertmanagerSettings",
    "AutoRecovery",
    "AutoRecoverySettings",
    "ConfigurationError",
    "Endpoint",
    "Grafana",
    "GrafanaSettings",
    "KubeStateMetrics",
    "KubeStateMetricsSettings",
    "MonitoringStack",
    "NodeExporter",
    "NodeExporterSettings",
    "PostgresExporter",
    "PostgresExporterSettings",
    "Prometheus",
    "PrometheusSettings",
    "RedisExporter",
    "RedisExporterSettings",
    "ReloaderSettings",
    "Resources",
    "StackSettings",
]
