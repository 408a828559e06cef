"""The chart of one environment: one file in dist/ per environment."""

from __future__ import annotations

from collections.abc import Mapping

from cdk8s import Chart
from constructs import Construct

from constructs_lib.network_policies import NetworkPolicies, derive_flows
from constructs_lib.stack import MonitoringStack, StackSettings


class MonitoringChart(Chart):
    """Renders the whole stack of one environment as ``<environment>.k8s.yaml``."""

    def __init__(
        self,
        scope: Construct,
        *,
        settings: StackSettings,
        rule_files: Mapping[str, str] | None = None,
    ) -> None:
        # Objects set their own namespace: cluster-scoped ones have none.
        super().__init__(scope, settings.environment, disable_resource_name_hashes=True)
        self.settings = settings
        self.stack = MonitoringStack(
            self, "stack", settings=settings, rule_files=rule_files
        )
        # Last: the flows are read from every object above, and a workload
        # added after this would get no rule and be cut off by the default
        # deny. At chart level, because the flows of one namespace are read
        # from the whole chart.
        self.network_policies = NetworkPolicies(
            self,
            "network-policies",
            settings=settings.network_policies,
            namespace=settings.namespace,
            flows=derive_flows(
                self.to_json(),
                default_app_namespaces=settings.prometheus.app_namespaces,
            ),
        )
