"""redis_exporter: the Redis server's health, memory and traffic as metrics.

One exporter watches one Redis server. When Redis asks for a password, the
exporter reads it from a file of an operator-created Secret
(``--redis.password-file``), so no credential is rendered, put in the
environment or shown on the command line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated

from constructs import Construct
from pydantic import AfterValidator, Field

from constructs_lib.common import (
    NOBODY,
    DnsLabel,
    Endpoint,
    Image,
    Resources,
    StrictModel,
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
from imports import k8s

NAME = "redis-exporter"
PORT = 9121
SECRET_DIR = "/etc/redis-exporter/secrets"
PASSWORD_FILE_KEY = "password-file.json"

_ADDR = re.compile(r"^rediss?://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5}$")


def _redis_addr(value: str) -> str:
    if not _ADDR.fullmatch(value):
        raise ValueError(
            f"Redis address {value!r} must be exactly 'redis://host:port' (or "
            "'rediss://host:port' for TLS), without user, password or path, "
            "for example 'redis://redis.sunday-production.svc:6379'"
        )
    return value


RedisAddr = Annotated[str, AfterValidator(_redis_addr)]
"""A Redis server as ``redis://host:port``, the exporter's own spelling."""


class RedisExporterSettings(StrictModel):
    """How redis_exporter runs in one environment."""

    image: Image = Field(
        default="oliver006/redis_exporter:v1.45.0",
        description="redis_exporter image. Defaults to v1.45.0.",
    )
    redis_addr: RedisAddr = Field(
        description="Required: the Redis server as 'redis://host:port', e.g. "
        "'redis://redis.sunday-production.svc:6379'. No default, so that a new "
        "environment never reads another's Redis.",
    )
    password_secret: DnsLabel | None = Field(
        default=None,
        description="Operator-created Secret holding the Redis password, or "
        "none when Redis asks for no password (the default). The Secret's key "
        f"'{PASSWORD_FILE_KEY}' is a JSON object mapping the Redis address, "
        "spelled exactly as redis_addr, to the password, e.g. "
        '{"redis://redis.sunday-production.svc:6379": "<password>"}; '
        "password_file_content() writes it. The exporter reads it once at "
        "start.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="25m",
            memory_request="32Mi",
            cpu_limit="100m",
            memory_limit="64Mi",
        ),
        description="Exporter container resources. Defaults to 25m/32Mi, "
        "capped at 100m/64Mi.",
    )


def password_file_content(redis_addr: str, password: str) -> str:
    """The text of the password Secret's key for one Redis server.

    redis_exporter looks the password up by the Redis address it scrapes,
    so a key spelled in any other way than ``redis_addr`` is never used and
    the exporter logs in without a password.
    """
    return json.dumps({_redis_addr(redis_addr): password})


class RedisExporter(Construct):
    """redis_exporter with its Deployment and Service."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: RedisExporterSettings,
        namespace: str,
    ) -> None:
        super().__init__(scope, id)
        self.settings = settings
        self.namespace = namespace
        self.endpoint = Endpoint(NAME, PORT)
        labels = standard_labels(NAME, "exporter", image_tag(settings.image))
        selector = selector_labels(NAME)

        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        if settings.password_secret is not None:
            declare_secret(
                self,
                name=settings.password_secret,
                namespace=namespace,
                keys=[PASSWORD_FILE_KEY],
                purpose="redis-exporter: JSON map of the Redis address to its password",
            )

        k8s.KubeDeployment(
            self,
            "deployment",
            metadata=metadata(NAME, labels, namespace),
            spec=k8s.DeploymentSpec(
                # As for postgres-exporter: a lost pod is alerted on and
                # restarted; a second one would add nothing.
                replicas=1,
                selector=k8s.LabelSelector(match_labels=selector),
                template=self._pod_template(labels),
            ),
        )

        self.service = service(
            self,
            "service",
            name=NAME,
            namespace=namespace,
            labels=labels,
            ports=[("metrics", PORT)],
            selector=selector,
        )

    def _pod_template(self, labels: Mapping[str, str]) -> k8s.PodTemplateSpec:
        settings = self.settings
        args = [
            f"--redis.addr={settings.redis_addr}",
            f"--web.listen-address=:{PORT}",
        ]
        mounts = []
        volumes = []
        if settings.password_secret is not None:
            args.append(f"--redis.password-file={SECRET_DIR}/{PASSWORD_FILE_KEY}")
            mounts.append(mount("password", SECRET_DIR))
            volumes.append(
                secret_volume("password", settings.password_secret, [PASSWORD_FILE_KEY])
            )
        exporter = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            args=args,
            ports=[container_port("metrics", PORT)],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            # /health answers without touching Redis, so a Redis outage shows
            # as redis_up 0 instead of restarting the exporter.
            readiness_probe=http_probe("/health", "metrics"),
            liveness_probe=http_probe("/health", "metrics", failure_threshold=6),
            volume_mounts=mounts or None,
        )
        return k8s.PodTemplateSpec(
            metadata=k8s.ObjectMeta(labels=dict(labels)),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                automount_service_account_token=False,
                # fsGroup makes the Secret's 0440 file readable to the
                # exporter's group; without it the file belongs to root alone.
                security_context=pod_security(NOBODY, fs_group=NOBODY),
                containers=[exporter],
                volumes=volumes or None,
            ),
        )
