"""kube-state-metrics: the ``kube_*`` series the rules and dashboards query.

PodCrashLooping and the infrastructure dashboard's pod table read
``kube_pod_container_status_restarts_total`` and ``kube_pod_status_phase``,
which only kube-state-metrics produces. It is limited to the resource kinds
listed in its settings, and its ClusterRole grants ``list`` and ``watch`` on
exactly those kinds.
"""

from __future__ import annotations

from typing import Literal

from constructs import Construct
from pydantic import Field

from constructs_lib.common import (
    NOBODY,
    Endpoint,
    Image,
    Resources,
    StrictModel,
    container_port,
    container_security,
    http_probe,
    image_tag,
    metadata,
    pod_security,
    pull_policy,
    rules_by_api_group,
    scan_exceptions,
    selector_labels,
    service,
    service_account,
    standard_labels,
)
from imports import k8s

NAME = "kube-state-metrics"
PORT = 8080
TELEMETRY_PORT = 8081

# The API group of each resource kind kube-state-metrics can watch, under
# the name its --resources flag uses.
_KINDS: dict[str, tuple[str, str]] = {
    "pods": ("", "pods"),
    "nodes": ("", "nodes"),
    "namespaces": ("", "namespaces"),
    "services": ("", "services"),
    "persistentvolumeclaims": ("", "persistentvolumeclaims"),
    "deployments": ("apps", "deployments"),
    "daemonsets": ("apps", "daemonsets"),
    "statefulsets": ("apps", "statefulsets"),
    "replicasets": ("apps", "replicasets"),
    "jobs": ("batch", "jobs"),
    "cronjobs": ("batch", "cronjobs"),
    "horizontalpodautoscalers": ("autoscaling", "horizontalpodautoscalers"),
    "poddisruptionbudgets": ("policy", "poddisruptionbudgets"),
}

Kind = Literal[
    "pods",
    "nodes",
    "namespaces",
    "services",
    "persistentvolumeclaims",
    "deployments",
    "daemonsets",
    "statefulsets",
    "replicasets",
    "jobs",
    "cronjobs",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
]


class KubeStateMetricsSettings(StrictModel):
    """How kube-state-metrics runs."""

    image: Image = Field(
        default="registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.9.2",
        description="Image. Defaults to v2.9.2, the release for Kubernetes 1.27.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="50m",
            memory_request="128Mi",
            cpu_limit="200m",
            memory_limit="256Mi",
        ),
        description="Container resources.",
    )
    kinds: list[Kind] = Field(
        default_factory=lambda: [
            "pods",
            "nodes",
            "namespaces",
            "deployments",
            "daemonsets",
            "statefulsets",
            "replicasets",
            "jobs",
            "cronjobs",
            "persistentvolumeclaims",
            "horizontalpodautoscalers",
        ],
        min_length=1,
        description="Resource kinds to export; RBAC follows. Defaults to the "
        "kinds the rules, dashboards and capacity reviews use.",
    )


class KubeStateMetrics(Construct):
    """kube-state-metrics with a read-only ClusterRole and a Service."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: KubeStateMetricsSettings,
        namespace: str,
    ) -> None:
        super().__init__(scope, id)
        self.endpoint = Endpoint(NAME, PORT)
        labels = standard_labels(NAME, "cluster-metrics", image_tag(settings.image))
        selector = selector_labels(NAME)
        kinds = sorted(set(settings.kinds))

        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        cluster_role = f"{NAME}-{namespace}"
        k8s.KubeClusterRole(
            self,
            "clusterrole",
            metadata=metadata(cluster_role, labels),
            rules=rules_by_api_group(
                [_KINDS[kind] for kind in kinds], ["list", "watch"]
            ),
        )
        k8s.KubeClusterRoleBinding(
            self,
            "clusterrolebinding",
            metadata=metadata(cluster_role, labels),
            role_ref=k8s.RoleRef(
                api_group="rbac.authorization.k8s.io",
                kind="ClusterRole",
                name=cluster_role,
            ),
            subjects=[
                k8s.Subject(kind="ServiceAccount", name=NAME, namespace=namespace)
            ],
        )

        container = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            args=[
                f"--port={PORT}",
                f"--telemetry-port={TELEMETRY_PORT}",
                f"--resources={','.join(kinds)}",
            ],
            ports=[
                container_port("http-metrics", PORT),
                container_port("telemetry", TELEMETRY_PORT),
            ],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            liveness_probe=http_probe("/healthz", "http-metrics"),
            readiness_probe=http_probe("/", "telemetry"),
        )
        k8s.KubeDeployment(
            self,
            "deployment",
            metadata=metadata(
                NAME,
                labels,
                namespace,
                scan_exceptions(
                    {
                        "CKV_K8S_38": "kube-state-metrics lists and watches the "
                        "objects it reports on through the API with this token",
                    }
                ),
            ),
            spec=k8s.DeploymentSpec(
                replicas=1,
                selector=k8s.LabelSelector(match_labels=selector),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=dict(labels)),
                    spec=k8s.PodSpec(
                        service_account_name=NAME,
                        # It lists and watches the Kubernetes API.
                        automount_service_account_token=True,
                        security_context=pod_security(NOBODY),
                        containers=[container],
                    ),
                ),
            ),
        )

        service(
            self,
            "service",
            name=NAME,
            namespace=namespace,
            labels=labels,
            ports=[("http-metrics", PORT), ("telemetry", TELEMETRY_PORT)],
            selector=selector,
        )
