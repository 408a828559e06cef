"""Grafana: the Sunday dashboards over the stack's Prometheus.

Grafana reads its datasources and dashboards only from the ``datasources/``
and ``dashboards/`` folders of its provisioning path, and dashboards only
through a provider file that names the folder they live in. The original
design mounted its datasource file at the provisioning root, where Grafana
ignores it; here each file is where Grafana looks, and the dashboard JSON
sits outside the data volume so the volume's mount cannot hide it.

Grafana keeps users, sessions and preferences in SQLite on a ReadWriteOnce
volume, so it runs as a single pod. The admin credentials come from an
operator-created Secret, read as files, and are never rendered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from constructs import Construct
from pydantic import Field

from constructs_lib.common import (
    DnsLabel,
    DnsSubdomain,
    Endpoint,
    Image,
    Resources,
    StorageSize,
    StrictModel,
    config_checksum,
    config_map_volume,
    container_port,
    container_security,
    declare_secret,
    dump_config,
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
from constructs_lib.dashboards import dashboards
from constructs_lib.errors import ConfigurationError
from imports import k8s

NAME = "grafana"
PORT = 3000
# The image is built for uid 472; it runs as a uid of its own above the range
# hosts hand out (docs/security.md). Its data directory is the claim (group
# writable through fsGroup) and it needs no passwd entry.
GRAFANA_USER = 11005

PROVISIONING_DIR = "/etc/grafana/provisioning"
DATASOURCES_DIR = f"{PROVISIONING_DIR}/datasources"
PROVIDERS_DIR = f"{PROVISIONING_DIR}/dashboards"
DASHBOARDS_DIR = "/etc/grafana/dashboards"
SECRETS_DIR = "/etc/grafana/secrets"
DATA_DIR = "/var/lib/grafana"
TMP_DIR = "/tmp"

DATASOURCE_UID = "prometheus"
SCRAPE_INTERVAL = "15s"
"""Prometheus's default scrape interval; Grafana never asks for a finer step."""

ADMIN_USER_KEY = "admin-user"
ADMIN_PASSWORD_KEY = "admin-password"
SECRET_KEYS = (ADMIN_USER_KEY, ADMIN_PASSWORD_KEY)


class GrafanaSettings(StrictModel):
    """How Grafana runs in one environment."""

    image: Image = Field(
        default="grafana/grafana:9.3.0",
        description="Grafana image. Defaults to 9.3.0, the release the design "
        "names; the dashboards are written in its JSON model.",
    )
    replicas: Literal[1] = Field(
        default=1,
        description="Grafana pods. Fixed at 1, the default: Grafana's SQLite "
        "database lives on a ReadWriteOnce volume that one pod can hold. "
        "More replicas would need an external SQL database.",
    )
    storage_size: StorageSize = Field(
        default="10Gi",
        description="Volume for Grafana's database and plugins. Defaults to 10Gi.",
    )
    storage_class: DnsSubdomain | None = Field(
        default=None, description="StorageClass. Defaults to the cluster default."
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="100m",
            memory_request="256Mi",
            cpu_limit="500m",
            memory_limit="512Mi",
        ),
        description="Grafana container resources. Defaults to the design's.",
    )
    admin_secret_name: DnsLabel = Field(
        default="grafana-admin",
        description="Operator-created Secret with the keys "
        f"{', '.join(SECRET_KEYS)}. Defaults to 'grafana-admin'.",
    )


def datasources_config(
    prometheus: Endpoint,
    extra: Sequence[Mapping[str, Any]] = (),
    scrape_interval: str = SCRAPE_INTERVAL,
) -> dict[str, Any]:
    """The ``datasources.yaml`` provisioning file as data.

    The Prometheus datasource keeps a fixed uid because every dashboard panel
    names its datasource by uid.
    """
    sources: list[dict[str, Any]] = [
        {
            "name": "Prometheus",
            "uid": DATASOURCE_UID,
            "type": "prometheus",
            "access": "proxy",
            "url": prometheus.url,
            "isDefault": True,
            "editable": False,
            "jsonData": {"timeInterval": scrape_interval},
        }
    ]
    names = {"Prometheus"}
    uids = {DATASOURCE_UID}
    for index, source in enumerate(extra, start=1):
        where = f"grafana extra_datasources #{index}"
        if not isinstance(source, Mapping):
            raise ConfigurationError(where, f"is {source!r}, not a mapping")
        for key in ("name", "type"):
            if not isinstance(source.get(key), str) or not source[key]:
                raise ConfigurationError(where, f"has no {key!r}; each needs one")
        if source["name"] in names:
            raise ConfigurationError(
                where, f"name {source['name']!r} is already taken; names are unique"
            )
        # Without a uid Grafana generates a fresh one, which cannot clash.
        if "uid" in source and source["uid"] in uids:
            raise ConfigurationError(
                where, f"uid {source['uid']!r} is already taken; uids are unique"
            )
        # Grafana refuses the whole file if two datasources claim the default.
        if source.get("isDefault"):
            raise ConfigurationError(
                where, "sets isDefault; Prometheus is the default datasource"
            )
        names.add(source["name"])
        if "uid" in source:
            uids.add(source["uid"])
        sources.append(dict(source))
    return {"apiVersion": 1, "datasources": sources}


def dashboard_providers_config() -> dict[str, Any]:
    """The ``dashboards.yaml`` provider file: the JSON files, read-only."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "sunday",
                "orgId": 1,
                "folder": "Sunday",
                "type": "file",
                # The files are the source of truth; the UI may not drift them.
                "disableDeletion": True,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {"path": DASHBOARDS_DIR},
            }
        ],
    }


class Grafana(Construct):
    """Grafana with provisioned datasources and dashboards, on its own volume."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: GrafanaSettings,
        namespace: str,
        prometheus: Endpoint,
        extra_datasources: list[dict[str, Any]] | None = None,
        scrape_interval: str = SCRAPE_INTERVAL,
        extra_volumes: Sequence[tuple[k8s.Volume, k8s.VolumeMount]] = (),
    ) -> None:
        """Render Grafana.

        ``extra_volumes`` are mounted into the Grafana container, for the
        files that ``extra_datasources`` read with ``$__file{path}`` (a
        datasource's password or CA). Defaults to none.
        """
        super().__init__(scope, id)
        self.extra_volumes = list(extra_volumes)
        self.settings = settings
        self.namespace = namespace
        self.endpoint = Endpoint(NAME, PORT)
        labels = standard_labels(NAME, "dashboards", image_tag(settings.image))
        selector = selector_labels(NAME)

        self.datasources = datasources_config(
            prometheus, extra_datasources or [], scrape_interval
        )
        self.providers = dashboard_providers_config()
        self.dashboards = dashboards(DATASOURCE_UID)

        # Grafana does not call the Kubernetes API; its pod gets no token.
        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        declare_secret(
            self,
            name=settings.admin_secret_name,
            namespace=namespace,
            keys=SECRET_KEYS,
            purpose="Grafana's first admin account",
        )

        config_maps = [
            k8s.KubeConfigMap(
                self,
                "datasources",
                metadata=metadata(f"{NAME}-datasources", labels, namespace),
                data={"datasources.yaml": dump_config(self.datasources)},
            ),
            k8s.KubeConfigMap(
                self,
                "dashboard-providers",
                metadata=metadata(f"{NAME}-dashboard-providers", labels, namespace),
                data={"dashboards.yaml": dump_config(self.providers)},
            ),
            k8s.KubeConfigMap(
                self,
                "dashboards",
                metadata=metadata(f"{NAME}-dashboards", labels, namespace),
                data={
                    file_name: json.dumps(board, indent=2)
                    for file_name, board in self.dashboards.items()
                },
            ),
        ]

        claim = k8s.KubePersistentVolumeClaim(
            self,
            "storage",
            metadata=metadata(f"{NAME}-storage", labels, namespace),
            spec=k8s.PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                storage_class_name=settings.storage_class,
                resources=k8s.ResourceRequirements(
                    requests={
                        "storage": k8s.Quantity.from_string(settings.storage_size)
                    }
                ),
            ),
        )
        self.deployment = k8s.KubeDeployment(
            self,
            "deployment",
            metadata=metadata(NAME, labels, namespace),
            spec=k8s.DeploymentSpec(
                replicas=settings.replicas,
                selector=k8s.LabelSelector(match_labels=selector),
                # A rolling update starts the new pod while the old one still
                # holds the ReadWriteOnce volume; on different nodes the new
                # pod never attaches it and the rollout deadlocks.
                strategy=k8s.DeploymentStrategy(type="Recreate"),
                template=self._pod_template(labels, claim.name),
            ),
        )
        for dependency in [*config_maps, claim]:
            self.deployment.add_dependency(dependency)

        self.service = service(
            self,
            "service",
            name=NAME,
            namespace=namespace,
            labels=labels,
            ports=[("http", PORT)],
            selector=selector,
        )

    def _pod_template(
        self, labels: Mapping[str, str], claim_name: str
    ) -> k8s.PodTemplateSpec:
        settings = self.settings
        env = {
            # The image's entrypoint reads each *__FILE variable's file into
            # the variable itself, so the password never appears in the spec.
            "GF_SECURITY_ADMIN_USER__FILE": f"{SECRETS_DIR}/{ADMIN_USER_KEY}",
            "GF_SECURITY_ADMIN_PASSWORD__FILE": f"{SECRETS_DIR}/{ADMIN_PASSWORD_KEY}",
            "GF_PATHS_PROVISIONING": PROVISIONING_DIR,
            "GF_PATHS_DATA": DATA_DIR,
            # The default also writes log files under the read-only root.
            "GF_LOG_MODE": "console",
            # No outbound calls: the cluster reaches no usage or update server.
            "GF_ANALYTICS_REPORTING_ENABLED": "false",
            "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            "GF_USERS_ALLOW_SIGN_UP": "false",
            "GF_AUTH_ANONYMOUS_ENABLED": "false",
            # GF_INSTALL_PLUGINS stays unset. The design installed two Angular
            # panel plugins at every start, which needs the internet and a
            # writable plugin folder; the dashboards use built-in panels only.
        }
        grafana = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            env=[k8s.EnvVar(name=name, value=value) for name, value in env.items()],
            ports=[container_port("http", PORT)],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            readiness_probe=http_probe("/api/health", "http"),
            # Database migrations after an upgrade can take minutes.
            startup_probe=http_probe(
                "/api/health", "http", period_seconds=10, failure_threshold=30
            ),
            liveness_probe=http_probe("/api/health", "http", failure_threshold=6),
            volume_mounts=[
                mount("datasources", DATASOURCES_DIR),
                mount("dashboard-providers", PROVIDERS_DIR),
                mount("dashboards", DASHBOARDS_DIR),
                mount("admin", SECRETS_DIR),
                mount("storage", DATA_DIR, read_only=False),
                mount("tmp", TMP_DIR, read_only=False),
                *[volume_mount for _, volume_mount in self.extra_volumes],
            ],
        )
        return k8s.PodTemplateSpec(
            metadata=k8s.ObjectMeta(
                labels=dict(labels),
                annotations={
                    # Grafana reads datasources only at start; a changed
                    # file must roll the pod to take effect.
                    "checksum/config": config_checksum(
                        self.datasources, self.providers, self.dashboards
                    ),
                },
            ),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                automount_service_account_token=False,
                security_context=pod_security(
                    GRAFANA_USER, GRAFANA_USER, fs_group=GRAFANA_USER
                ),
                containers=[grafana],
                volumes=[
                    config_map_volume("datasources", f"{NAME}-datasources"),
                    config_map_volume(
                        "dashboard-providers", f"{NAME}-dashboard-providers"
                    ),
                    config_map_volume("dashboards", f"{NAME}-dashboards"),
                    secret_volume("admin", settings.admin_secret_name, SECRET_KEYS),
                    k8s.Volume(
                        name="storage",
                        persistent_volume_claim=k8s.PersistentVolumeClaimVolumeSource(
                            claim_name=claim_name
                        ),
                    ),
                    k8s.Volume(
                        name="tmp",
                        empty_dir=k8s.EmptyDirVolumeSource(
                            size_limit=k8s.Quantity.from_string("100Mi")
                        ),
                    ),
                    *[volume for volume, _ in self.extra_volumes],
                ],
            ),
        )
