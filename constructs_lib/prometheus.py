"""Prometheus: scrapes every target of the stack and evaluates the alert rules.

It runs as a StatefulSet so that each replica keeps its own TSDB volume across
restarts and upgrades, with a sidecar that asks Prometheus to reload when its
configuration or rule ConfigMaps change. Its ServiceAccount may read exactly
what its service discovery watches, derived from the scrape configs it is
given, and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from constructs import Construct
from pydantic import Field, field_validator

from constructs_lib.common import (
    NOBODY,
    SERVICE_ACCOUNT_DIR,
    DnsLabel,
    DnsSubdomain,
    Duration,
    Endpoint,
    Image,
    Resources,
    StorageSize,
    StrictModel,
    claim_template,
    config_map_volume,
    container_port,
    container_security,
    disruption_budget,
    dump_config,
    duration_seconds,
    http_probe,
    image_tag,
    metadata,
    mount,
    pod_security,
    pull_policy,
    rules_by_api_group,
    selector_labels,
    service,
    service_account,
    service_account_token_volume,
    spread_across_nodes,
    standard_labels,
)
from constructs_lib.errors import ConfigurationError
from constructs_lib.reloader import ReloaderSettings, reloader_container
from constructs_lib.rules import find_promtool
from imports import k8s

NAME = "prometheus"
PORT = 9090
TOKEN_VOLUME = "serviceaccount-token"
CONFIG_DIR = "/etc/prometheus/config"
RULES_DIR = "/etc/prometheus/rules"
REPLICA_LABEL = "replica"
DATA_DIR = "/prometheus"

# The keys a kubernetes_sd_config accepts in Prometheus 2.40, and its roles.
_KUBERNETES_SD_KEYS = {
    "api_server",
    "role",
    "kubeconfig_file",
    "namespaces",
    "selectors",
    "attach_metadata",
    "basic_auth",
    "authorization",
    "oauth2",
    "tls_config",
    "proxy_url",
    "follow_redirects",
    "enable_http2",
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_KUBERNETES_SD_ROLES = {
    "node",
    "service",
    "pod",
    "endpoints",
    "endpointslice",
    "ingress",
}

# Kubernetes API groups and resources each service-discovery role watches.
_DISCOVERY_RESOURCES: dict[str, list[str]] = {
    "pod": ["pods"],
    "service": ["services"],
    "endpoints": ["endpoints", "services", "pods"],
    "endpointslice": ["endpointslices", "services", "pods"],
    "ingress": ["ingresses"],
}


class PrometheusSettings(StrictModel):
    """How Prometheus runs in one environment."""

    image: Image = Field(
        default="prom/prometheus:v2.42.0",
        description="Prometheus image. Defaults to v2.42.0, the release of the "
        "promtool that checks the config and rules at every synth.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Identical Prometheus replicas. Defaults to 1.",
    )
    scrape_interval: Duration = Field(
        default="15s", description="How often targets are scraped. Defaults to 15s."
    )
    evaluation_interval: Duration = Field(
        default="15s", description="How often rules are evaluated. Defaults to 15s."
    )
    retention: Duration = Field(
        default="30d", description="How long samples are kept. Defaults to 30d."
    )
    storage_size: StorageSize = Field(
        default="100Gi",
        description="Size of each replica's TSDB volume. Defaults to 100Gi.",
    )
    storage_class: DnsSubdomain | None = Field(
        default=None,
        description="StorageClass of the TSDB volume. Defaults to the "
        "cluster's default class.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="500m",
            memory_request="2Gi",
            cpu_limit="2",
            memory_limit="4Gi",
        ),
        description="Prometheus container resources. Defaults to the design's.",
    )
    external_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="The URL people open this UI at (an ingress or a "
        "gateway). Links in notifications point there. Defaults to none: "
        "links then name the pod, which only works with a port-forward.",
    )
    app_namespaces: list[DnsLabel] = Field(
        min_length=1,
        description="Required: the namespaces whose backend pods are scraped "
        "by annotation, e.g. ['sunday-production']. No default, so that a new "
        "environment never watches another environment's application.",
    )
    backend_app_label: str = Field(
        default="backend",
        description="Value of the 'app' label that marks backend pods.",
    )
    kubelet_insecure_skip_verify: bool = Field(
        default=True,
        description="Skip verifying the kubelet's serving certificate. Most "
        "clusters serve the kubelet with a self-signed certificate; set false "
        "where kubelet certificates are signed by the cluster CA. The token "
        "is still sent only over TLS. Defaults to true.",
    )
    extra_scrape_configs: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Further Prometheus scrape configs, appended as given. "
        "Each needs a unique job_name. Defaults to none.",
    )

    @field_validator("extra_scrape_configs")
    @classmethod
    def _jobs_are_named(cls, configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, config in enumerate(configs):
            if not isinstance(config.get("job_name"), str) or not config["job_name"]:
                raise ValueError(
                    f"scrape config #{index + 1} has no job_name; every scrape "
                    "config needs a unique, non-empty job_name"
                )
        problems = kubernetes_sd_problems({"scrape_configs": configs})
        problems += _literal_secrets(configs)
        if problems:
            raise ValueError(problems[0])
        return configs

    @field_validator("scrape_interval", "evaluation_interval")
    @classmethod
    def _fits_the_rules(cls, value: str) -> str:
        # The rules take rate() over 5m windows; rate() needs two samples in
        # the window, so a scrape or evaluation slower than a minute leaves
        # the alerts blind.
        if not 1 <= duration_seconds(value) <= 60:
            raise ValueError(
                f"interval {value!r} must be between 1s and 1m: the alert rules "
                "use 5m rate windows, which need several samples each"
            )
        return value

    @field_validator("retention")
    @classmethod
    def _holds_a_block(cls, value: str) -> str:
        # The TSDB cuts blocks of two hours; less is dropped before it lands.
        if duration_seconds(value) < 2 * 3600:
            raise ValueError(f"retention {value!r} must be at least 2h")
        return value


_SECRET_KEYS = {"password", "bearer_token", "credentials", "client_secret"}


def _literal_secrets(configs: Sequence[Any]) -> list[str]:
    """Secret values written into a scrape config instead of a file path."""
    problems = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _SECRET_KEYS:
                    problems.append(
                        f"{path}.{key} holds a secret in the rendered config; "
                        f"use {key}_file with a file mounted from a Secret"
                    )
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    for config in configs:
        walk(config, f"job {config.get('job_name')!r}")
    return problems


def static_job(job: str, endpoint: Endpoint, **extra: Any) -> dict[str, Any]:
    """A scrape job for one Service the chart deploys, by its DNS name."""
    return {
        "job_name": job,
        "static_configs": [{"targets": [endpoint.address]}],
        **extra,
    }


def backend_pods_job(settings: PrometheusSettings) -> dict[str, Any]:
    """Backend pods that opt in with ``prometheus.io/*`` annotations."""
    annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return {
        "job_name": "sunday-backend",
        "kubernetes_sd_configs": [
            {"role": "pod", "namespaces": {"names": list(settings.app_namespaces)}}
        ],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_label_app"],
                "action": "keep",
                "regex": settings.backend_app_label,
            },
            {
                "source_labels": [f"{annotation}scrape"],
                "action": "keep",
                "regex": "true",
            },
            # Pods that have finished still appear in discovery for a while.
            {
                "source_labels": ["__meta_kubernetes_pod_phase"],
                "action": "drop",
                "regex": "Pending|Succeeded|Failed",
            },
            {
                "source_labels": [f"{annotation}path"],
                "action": "replace",
                "target_label": "__metrics_path__",
                "regex": "(.+)",
            },
            # Without this, every declared container port becomes a target.
            {
                "source_labels": ["__address__", f"{annotation}port"],
                "action": "replace",
                "regex": r"([^:]+)(?::\d+)?;(\d+)",
                "replacement": "$1:$2",
                "target_label": "__address__",
            },
            {
                "source_labels": ["__meta_kubernetes_namespace"],
                "target_label": "namespace",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {
                "source_labels": ["__meta_kubernetes_pod_label_app"],
                "target_label": "service",
            },
        ],
    }


def kubelet_job(settings: PrometheusSettings) -> dict[str, Any]:
    """The kubelet's own metrics, over HTTPS with the pod's token.

    The kubelet refuses plain HTTP and anonymous requests; the token's
    ServiceAccount is allowed ``get`` on ``nodes/metrics`` and nothing more.
    """
    return {
        "job_name": "kubernetes-nodes",
        "scheme": "https",
        "kubernetes_sd_configs": [{"role": "node"}],
        "authorization": {"credentials_file": f"{SERVICE_ACCOUNT_DIR}/token"},
        "tls_config": {
            "ca_file": f"{SERVICE_ACCOUNT_DIR}/ca.crt",
            "insecure_skip_verify": settings.kubelet_insecure_skip_verify,
        },
        "relabel_configs": [
            {"action": "labelmap", "regex": "__meta_kubernetes_node_label_(.+)"},
            {"source_labels": ["__meta_kubernetes_node_name"], "target_label": "node"},
        ],
    }


def pods_by_label_job(
    job: str,
    namespace: str,
    name: str,
    port_name: str,
    instance_from: str = "__meta_kubernetes_pod_node_name",
) -> dict[str, Any]:
    """Every pod of one workload, one target per pod, named after its node.

    Used where each pod is its own target and a Service would balance
    scrapes across pods: node-exporter (one per node, named after its node)
    and replicated workloads such as the Jaeger collector (named after the
    pod, with ``instance_from="__meta_kubernetes_pod_name"``). ``name`` is a
    regular expression over the pods' ``app.kubernetes.io/name`` label.
    """
    return {
        "job_name": job,
        "kubernetes_sd_configs": [
            {"role": "pod", "namespaces": {"names": [namespace]}}
        ],
        "relabel_configs": [
            {
                "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                "action": "keep",
                "regex": name,
            },
            {
                "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                "action": "keep",
                "regex": port_name,
            },
            {"source_labels": [instance_from], "target_label": "instance"},
        ],
    }


def prometheus_config(
    settings: PrometheusSettings,
    *,
    external_labels: Mapping[str, str],
    scrape_configs: Sequence[Mapping[str, Any]],
    alertmanagers: Sequence[Endpoint],
) -> dict[str, Any]:
    """The whole ``prometheus.yml`` as data."""
    jobs = [dict(job) for job in scrape_configs] + [
        dict(job) for job in settings.extra_scrape_configs
    ]
    names = [job["job_name"] for job in jobs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(
            "field prometheus.extra_scrape_configs",
            f"job_name {duplicates[0]!r} is used twice; built-in jobs are "
            f"{', '.join(names[: len(scrape_configs)])}",
        )
    return {
        "global": {
            "scrape_interval": settings.scrape_interval,
            "evaluation_interval": settings.evaluation_interval,
            # Each replica names itself, so that anything reading from both
            # (a federation, remote storage) can tell them apart; the pod
            # name is expanded at start (--enable-feature below).
            "external_labels": {**dict(external_labels), REPLICA_LABEL: "${POD_NAME}"},
        },
        "rule_files": [f"{RULES_DIR}/*.yml"],
        "alerting": {
            # Replicas send identical alerts; without their replica label the
            # alerts are equal too, and Alertmanager notifies once.
            "alert_relabel_configs": [{"action": "labeldrop", "regex": REPLICA_LABEL}],
            "alertmanagers": [
                {"static_configs": [{"targets": [am.address for am in alertmanagers]}]}
            ],
        },
        "scrape_configs": jobs,
    }


def discovery_rules(
    scrape_configs: Sequence[Mapping[str, Any]], own_namespace: str
) -> tuple[dict[str, set[str]], set[str]]:
    """What the service discovery of these jobs reads from the Kubernetes API.

    Returns the namespaced resources to list and watch, by namespace, and the
    cluster-wide ones: nodes, ``nodes/metrics`` for the kubelet, and the
    resources of any job that names no namespaces, because Prometheus then
    watches every namespace.
    """
    namespaced: dict[str, set[str]] = {}
    cluster: set[str] = set()
    for job in scrape_configs:
        for sd in job.get("kubernetes_sd_configs", []):
            role = sd["role"]
            if role == "node":
                cluster.add("nodes")
                if job.get("scheme") == "https":
                    cluster.add("nodes/metrics")
                continue
            namespaces = sd.get("namespaces") or {}
            names = list(namespaces.get("names") or [])
            if namespaces.get("own_namespace"):
                names.append(own_namespace)
            if not names:
                cluster.update(_DISCOVERY_RESOURCES[role])
            for namespace in names:
                namespaced.setdefault(namespace, set()).update(
                    _DISCOVERY_RESOURCES[role]
                )
    return namespaced, cluster


def checkable_config(
    config: Mapping[str, Any], rule_files: Mapping[str, str], workdir: Path
) -> Path:
    """Write ``config`` and its rules under ``workdir`` in a form promtool reads.

    Debian's promtool is built without Kubernetes service discovery and
    rejects ``kubernetes_sd_configs``, so each such block becomes a loopback
    static target; the blocks themselves are checked by
    :func:`kubernetes_sd_problems`. The ServiceAccount token and CA paths point
    at stand-in files, because promtool insists that referenced files exist,
    and the rule glob points at the rule files written beside the config.
    Everything else is checked exactly as rendered.
    """
    sa_dir = workdir / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text("stand-in token\n")
    (sa_dir / "ca.crt").write_text("")
    rules_dir = workdir / "rules"
    rules_dir.mkdir()
    for name, text in rule_files.items():
        (rules_dir / name).write_text(text)

    text = yaml.safe_dump(dict(config)).replace(SERVICE_ACCOUNT_DIR, str(sa_dir))
    checkable = yaml.safe_load(text.replace(RULES_DIR, str(rules_dir)))
    for job in checkable["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(checkable))
    return path


def kubernetes_sd_problems(config: Mapping[str, Any]) -> list[str]:
    """What upstream Prometheus would reject in the Kubernetes discovery blocks."""
    problems = []
    for job in config.get("scrape_configs", []):
        for sd in job.get("kubernetes_sd_configs", []):
            where = f"job {job.get('job_name')!r} kubernetes_sd_configs"
            if not isinstance(sd, dict):
                problems.append(f"{where}: {sd!r} is not a mapping")
                continue
            unknown = sorted(set(sd) - _KUBERNETES_SD_KEYS)
            if unknown:
                problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
            if sd.get("role") not in _KUBERNETES_SD_ROLES:
                problems.append(
                    f"{where}: role {sd.get('role')!r} is not one of "
                    f"{', '.join(sorted(_KUBERNETES_SD_ROLES))}"
                )
            namespaces = sd.get("namespaces", {})
            if not isinstance(namespaces, dict) or set(namespaces) - {
                "names",
                "own_namespace",
            }:
                problems.append(
                    f"{where}: namespaces takes only 'names' and 'own_namespace'"
                )
                continue
            for name in namespaces.get("names") or []:
                if not isinstance(name, str) or not _DNS_LABEL.fullmatch(name):
                    problems.append(f"{where}: namespace {name!r} is not a DNS label")
    return problems


def check_config_with_promtool(
    config: Mapping[str, Any], rule_files: Mapping[str, str], where: str
) -> None:
    """Run the real ``promtool check config`` on a rendered configuration.

    Raises :class:`ConfigurationError` with promtool's first error line, so
    a scrape config another team adds fails synth instead of the pod.
    """
    problems = kubernetes_sd_problems(config)
    if problems:
        raise ConfigurationError(f"{where}, prometheus.yml", problems[0])
    promtool = find_promtool(where)
    with tempfile.TemporaryDirectory(prefix="prometheus-check-") as tmp:
        path = checkable_config(config, rule_files, Path(tmp))
        result = subprocess.run(
            [promtool, "check", "config", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        lines = [
            line.strip()
            for line in (result.stdout + "\n" + result.stderr).splitlines()
            if line.strip() and not line.startswith("Checking")
        ]
        detail = " ".join(lines[:2]).replace(str(path), "prometheus.yml")
        raise ConfigurationError(
            f"{where}, prometheus.yml", f"promtool check config failed: {detail}"
        )


class Prometheus(Construct):
    """Prometheus with its config, rules, RBAC, StatefulSet and Service."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: PrometheusSettings,
        namespace: str,
        external_labels: Mapping[str, str],
        scrape_configs: Sequence[Mapping[str, Any]],
        alertmanagers: Sequence[Endpoint],
        rule_files: Mapping[str, str],
        reloader: ReloaderSettings,
    ) -> None:
        super().__init__(scope, id)
        self.settings = settings
        self.namespace = namespace
        self.endpoint = Endpoint(NAME, PORT)
        labels = standard_labels(NAME, "metrics", image_tag(settings.image))
        selector = selector_labels(NAME)

        self.config = prometheus_config(
            settings,
            external_labels=external_labels,
            scrape_configs=scrape_configs,
            alertmanagers=alertmanagers,
        )
        self.rule_files = dict(rule_files)

        self._access(labels, namespace)

        config_map = k8s.KubeConfigMap(
            self,
            "config",
            metadata=metadata(f"{NAME}-config", labels, namespace),
            data={"prometheus.yml": dump_config(self.config)},
        )
        rules_map = k8s.KubeConfigMap(
            self,
            "rules",
            metadata=metadata(f"{NAME}-rules", labels, namespace),
            data=self.rule_files,
        )

        governing = service(
            self,
            "headless",
            name=f"{NAME}-headless",
            namespace=namespace,
            labels=labels,
            ports=[("web", PORT)],
            selector=selector,
            headless=True,
        )
        self.statefulset = k8s.KubeStatefulSet(
            self,
            "statefulset",
            metadata=metadata(NAME, labels, namespace),
            spec=k8s.StatefulSetSpec(
                service_name=governing.name,
                replicas=settings.replicas,
                pod_management_policy="Parallel",
                selector=k8s.LabelSelector(match_labels=selector),
                update_strategy=k8s.StatefulSetUpdateStrategy(type="RollingUpdate"),
                template=self._pod_template(labels, selector, reloader),
                volume_claim_templates=[
                    claim_template(
                        "data", settings.storage_size, settings.storage_class, labels
                    )
                ],
            ),
        )
        self.statefulset.add_dependency(config_map)
        self.statefulset.add_dependency(rules_map)

        self.service = service(
            self,
            "service",
            name=NAME,
            namespace=namespace,
            labels=labels,
            ports=[("web", PORT)],
            selector=selector,
        )
        if settings.replicas > 1:
            disruption_budget(
                self,
                "pdb",
                name=NAME,
                namespace=namespace,
                labels=labels,
                selector=selector,
            )

    def _access(self, labels: Mapping[str, str], namespace: str) -> None:
        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        subject = k8s.Subject(kind="ServiceAccount", name=NAME, namespace=namespace)
        namespaced, cluster = discovery_rules(self.config["scrape_configs"], namespace)
        for target_namespace in sorted(namespaced):
            role_name = f"{NAME}-discovery"
            k8s.KubeRole(
                self,
                f"role-{target_namespace}",
                metadata=metadata(role_name, labels, target_namespace),
                rules=_read_rules(namespaced[target_namespace]),
            )
            k8s.KubeRoleBinding(
                self,
                f"binding-{target_namespace}",
                metadata=metadata(role_name, labels, target_namespace),
                role_ref=k8s.RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name=role_name
                ),
                subjects=[subject],
            )
        if cluster:
            cluster_role = f"{NAME}-{namespace}"
            rules = _read_rules(cluster - {"nodes/metrics"})
            if "nodes/metrics" in cluster:
                rules.append(
                    k8s.PolicyRule(
                        api_groups=[""], resources=["nodes/metrics"], verbs=["get"]
                    )
                )
            k8s.KubeClusterRole(
                self,
                "clusterrole",
                metadata=metadata(cluster_role, labels),
                rules=rules,
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
                subjects=[subject],
            )

    def _pod_template(
        self,
        labels: Mapping[str, str],
        selector: Mapping[str, str],
        reloader: ReloaderSettings,
    ) -> k8s.PodTemplateSpec:
        settings = self.settings
        prometheus = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            args=[
                f"--config.file={CONFIG_DIR}/prometheus.yml",
                f"--storage.tsdb.path={DATA_DIR}",
                f"--storage.tsdb.retention.time={settings.retention}",
                f"--web.listen-address=:{PORT}",
                "--web.enable-lifecycle",
                "--enable-feature=expand-external-labels",
                # Routes stay at / whatever path the external URL has, so the
                # probes and the reloader need no prefix.
                "--web.route-prefix=/",
            ]
            + (
                [f"--web.external-url={settings.external_url}"]
                if settings.external_url
                else []
            ),
            env=[
                k8s.EnvVar(
                    name="POD_NAME",
                    value_from=k8s.EnvVarSource(
                        field_ref=k8s.ObjectFieldSelector(field_path="metadata.name")
                    ),
                )
            ],
            ports=[container_port("web", PORT)],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            readiness_probe=http_probe("/-/ready", "web"),
            # Replaying a large write-ahead log can take minutes after a crash.
            startup_probe=http_probe(
                "/-/ready", "web", period_seconds=15, failure_threshold=60
            ),
            liveness_probe=http_probe("/-/healthy", "web", failure_threshold=6),
            volume_mounts=[
                mount("config", CONFIG_DIR),
                mount("rules", RULES_DIR),
                mount("data", DATA_DIR, read_only=False),
                # Service discovery and the kubelet scrape read the API with
                # this token; the reloader beside it gets none.
                mount(TOKEN_VOLUME, SERVICE_ACCOUNT_DIR),
            ],
        )
        sidecar = reloader_container(
            reloader,
            watched_dirs=[CONFIG_DIR, RULES_DIR],
            reload_url=f"http://127.0.0.1:{PORT}/-/reload",
            mounts=[mount("config", CONFIG_DIR), mount("rules", RULES_DIR)],
        )
        return k8s.PodTemplateSpec(
            # No config checksum here: the reloader applies config edits in
            # place, and a checksum would restart the pods for each of them.
            metadata=k8s.ObjectMeta(labels=dict(labels)),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                # The token is mounted into the prometheus container alone.
                automount_service_account_token=False,
                security_context=pod_security(NOBODY, fs_group=NOBODY),
                termination_grace_period_seconds=120,
                topology_spread_constraints=spread_across_nodes(
                    selector, required=True
                ),
                containers=[prometheus, sidecar],
                volumes=[
                    config_map_volume("config", f"{NAME}-config"),
                    config_map_volume("rules", f"{NAME}-rules"),
                    service_account_token_volume(TOKEN_VOLUME),
                ],
            ),
        )


def _read_rules(resources: set[str]) -> list[k8s.PolicyRule]:
    """Read-only rules on the resources service discovery watches."""
    return rules_by_api_group(
        [(_API_GROUP.get(resource, ""), resource) for resource in resources],
        ["get", "list", "watch"],
    )


_API_GROUP = {"endpointslices": "discovery.k8s.io", "ingresses": "networking.k8s.io"}
