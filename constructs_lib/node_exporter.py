"""node-exporter: the CPU, memory and disk figures of every node.

This is the one component that needs more than the stack's hardened
defaults. It shares the host's network namespace, so the node's own
interfaces are measured and each node is scraped at its own address, and the
host's process namespace, so the process and pressure figures are the
node's rather than the container's. It reads the host's root filesystem
through a read-only mount to report disk usage. It still runs as a numeric
non-root user with every capability dropped and a read-only root filesystem.
"""

from __future__ import annotations

from constructs import Construct
from pydantic import Field

from constructs_lib.common import (
    NOBODY,
    Image,
    Resources,
    StrictModel,
    container_port,
    container_security,
    http_probe,
    image_tag,
    metadata,
    mount,
    pod_security,
    pull_policy,
    scan_exceptions,
    selector_labels,
    service_account,
    standard_labels,
)
from imports import k8s

NAME = "node-exporter"
PORT = 9100


class NodeExporterSettings(StrictModel):
    """How node-exporter runs on every node."""

    image: Image = Field(
        default="prom/node-exporter:v1.5.0",
        description="node-exporter image. Defaults to the design's v1.5.0.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="100m",
            memory_request="64Mi",
            cpu_limit="200m",
            memory_limit="128Mi",
        ),
        description="Container resources. Defaults to the design's.",
    )


class NodeExporter(Construct):
    """A DaemonSet of node-exporter on every node, tainted ones included."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: NodeExporterSettings,
        namespace: str,
    ) -> None:
        super().__init__(scope, id)
        self.namespace = namespace
        self.name = NAME
        self.port_name = "metrics"
        labels = standard_labels(NAME, "node-metrics", image_tag(settings.image))
        selector = selector_labels(NAME)

        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)

        exporter = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            args=[
                "--path.procfs=/host/proc",
                "--path.sysfs=/host/sys",
                "--path.rootfs=/host/root",
                f"--web.listen-address=:{PORT}",
                # "$$" is Kubernetes' escape for a literal "$" in args.
                "--collector.filesystem.mount-points-exclude="
                "^/(dev|proc|sys|run/k3s/containerd/.+|var/lib/docker/.+"
                "|var/lib/kubelet/pods/.+)($$|/)",
            ],
            ports=[container_port(self.port_name, PORT)],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            readiness_probe=http_probe("/", self.port_name),
            liveness_probe=http_probe("/", self.port_name),
            volume_mounts=[
                mount("proc", "/host/proc"),
                mount("sys", "/host/sys"),
                k8s.VolumeMount(
                    name="root",
                    mount_path="/host/root",
                    read_only=True,
                    # Volumes the host mounts later must show up here too,
                    # or their usage would go unreported until a restart.
                    mount_propagation="HostToContainer",
                ),
            ],
        )
        k8s.KubeDaemonSet(
            self,
            "daemonset",
            metadata=metadata(
                NAME,
                labels,
                namespace,
                scan_exceptions(
                    {
                        "CKV_K8S_17": "node-exporter reports the node's processes "
                        "and pressure, so it shares the host PID namespace",
                        "CKV_K8S_19": "node-exporter reports the node's own network "
                        "interfaces and is scraped at the node's address",
                    }
                ),
            ),
            spec=k8s.DaemonSetSpec(
                selector=k8s.LabelSelector(match_labels=selector),
                update_strategy=k8s.DaemonSetUpdateStrategy(
                    type="RollingUpdate",
                    rolling_update=k8s.RollingUpdateDaemonSet(
                        max_unavailable=k8s.IntOrString.from_number(1)
                    ),
                ),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=dict(labels)),
                    spec=k8s.PodSpec(
                        service_account_name=NAME,
                        automount_service_account_token=False,
                        # The node's own network and process views; see the
                        # module docstring.
                        host_network=True,
                        host_pid=True,
                        dns_policy="ClusterFirstWithHostNet",
                        security_context=pod_security(NOBODY),
                        # Every node, tainted control-plane nodes included.
                        tolerations=[k8s.Toleration(operator="Exists")],
                        containers=[exporter],
                        volumes=[
                            _host_volume("proc", "/proc"),
                            _host_volume("sys", "/sys"),
                            _host_volume("root", "/"),
                        ],
                    ),
                ),
            ),
        )


def _host_volume(name: str, path: str) -> k8s.Volume:
    return k8s.Volume(
        name=name, host_path=k8s.HostPathVolumeSource(path=path, type="Directory")
    )
