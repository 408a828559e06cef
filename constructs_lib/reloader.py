"""The sidecar that reloads Prometheus or Alertmanager when a ConfigMap changes.

Kubernetes updates a mounted ConfigMap in place about a minute after it is
edited, but neither program watches its files. The sidecar sees the change
and calls the program's ``/-/reload`` endpoint on the pod's loopback, so a
new rule or route takes effect without a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from constructs_lib.common import (
    Image,
    Resources,
    StrictModel,
    container_port,
    container_security,
    http_probe,
    pull_policy,
)
from imports import k8s

PORT = 9533


class ReloaderSettings(StrictModel):
    """The configuration-reload sidecar."""

    image: Image = Field(
        default="jimmidyson/configmap-reload:v0.8.0",
        description="configmap-reload image. Defaults to v0.8.0.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="10m",
            memory_request="16Mi",
            cpu_limit="50m",
            memory_limit="32Mi",
        ),
        description="Sidecar resources. Defaults to 10m/16Mi, capped at 50m/32Mi.",
    )


def reloader_container(
    settings: ReloaderSettings,
    *,
    watched_dirs: Sequence[str],
    reload_url: str,
    mounts: Sequence[k8s.VolumeMount],
) -> k8s.Container:
    """A sidecar that POSTs to ``reload_url`` when a watched dir changes."""
    return k8s.Container(
        name="config-reloader",
        image=settings.image,
        image_pull_policy=pull_policy(settings.image),
        args=[f"--volume-dir={path}" for path in watched_dirs]
        + [f"--webhook-url={reload_url}", f"--web.listen-address=:{PORT}"],
        ports=[container_port("reloader", PORT)],
        resources=settings.resources.to_k8s(),
        security_context=container_security(),
        liveness_probe=http_probe("/metrics", "reloader", period_seconds=30),
        readiness_probe=http_probe("/metrics", "reloader", period_seconds=30),
        volume_mounts=list(mounts),
    )
