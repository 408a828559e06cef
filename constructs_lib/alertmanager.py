"""Alertmanager: routes alerts to PagerDuty, Slack and email.

Critical alerts page through PagerDuty, warnings go to Slack, everything else
to email. Alertmanager does not expand environment variables in its
configuration, so every credential is read from a file of the operator's
Secret through the ``*_file`` fields, and no secret value is ever rendered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from constructs import Construct
from pydantic import Field

from constructs_lib.common import (
    NOBODY,
    DnsLabel,
    DnsSubdomain,
    Duration,
    DurationOrZero,
    Endpoint,
    Image,
    Resources,
    StorageSize,
    StrictModel,
    claim_template,
    config_map_volume,
    container_port,
    container_security,
    declare_secret,
    disruption_budget,
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
    spread_across_nodes,
    standard_labels,
)
from constructs_lib.reloader import ReloaderSettings, reloader_container
from imports import k8s

NAME = "alertmanager"
PORT = 9093
CLUSTER_PORT = 9094
CONFIG_DIR = "/etc/alertmanager/config"
SECRETS_DIR = "/etc/alertmanager/secrets"
DATA_DIR = "/alertmanager"

PAGERDUTY_KEY = "pagerduty-routing-key"
SLACK_KEY = "slack-webhook-url"
SMTP_KEY = "smtp-password"
SECRET_KEYS = (PAGERDUTY_KEY, SLACK_KEY, SMTP_KEY)


class ReceiverSettings(StrictModel):
    """Where notifications go. Credentials live in the receivers Secret."""

    secret_name: DnsLabel = Field(
        default="alertmanager-receivers",
        description="Operator-created Secret with the keys "
        f"{', '.join(SECRET_KEYS)}. Defaults to 'alertmanager-receivers'.",
    )
    email_to: str = Field(
        default="devops@sunday.com",
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="Address that receives every alert not routed elsewhere.",
    )
    email_from: str = Field(
        default="alerts@sunday.com",
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="Sender address of alert email.",
    )
    smtp_smarthost: str = Field(
        default="smtp.sendgrid.net:587",
        pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$",
        description="SMTP relay as host:port. Defaults to SendGrid's.",
    )
    smtp_username: str = Field(
        default="apikey", description="SMTP user name. Defaults to 'apikey'."
    )
    heartbeat_url: str | None = Field(
        default=None,
        pattern=r"^https://[^\s]+$",
        description="HTTPS URL of an external dead man's switch that receives "
        "the always-firing Watchdog every 5 minutes and alarms when it stops. "
        "Defaults to none: the Watchdog is then dropped, not emailed.",
    )
    runbook_base_url: str | None = Field(
        default=None,
        pattern=r"^https://[^\s{}]+/$",
        description="Where this repository is browsable, ending in '/', e.g. "
        "'https://git.example.com/sunday/monitoring/blob/main/'. Prefixed to "
        "each alert's runbook path in notifications so that it is a link. "
        "Defaults to none: notifications name the path in the repository.",
    )
    slack_channel: str = Field(
        default="#alerts",
        pattern=r"^#[a-z0-9_-]+$",
        description="Slack channel for warnings. Defaults to '#alerts'.",
    )


class AlertmanagerSettings(StrictModel):
    """How Alertmanager runs in one environment."""

    image: Image = Field(
        default="prom/alertmanager:v0.25.0",
        description="Alertmanager image. Defaults to v0.25.0.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=7,
        description="Alertmanager peers; more than one forms a gossip cluster "
        "that deduplicates notifications. Defaults to 1.",
    )
    storage_size: StorageSize = Field(
        default="2Gi",
        description="Volume for silences and notification log. Defaults to 2Gi.",
    )
    storage_class: DnsSubdomain | None = Field(
        default=None, description="StorageClass. Defaults to the cluster default."
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="50m",
            memory_request="128Mi",
            cpu_limit="200m",
            memory_limit="256Mi",
        ),
        description="Alertmanager container resources.",
    )
    external_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="The URL people open this UI at (an ingress or a "
        "gateway). Links in notifications point there. Defaults to none: "
        "links then name the pod, which only works with a port-forward.",
    )
    receivers: ReceiverSettings = Field(
        default_factory=ReceiverSettings, description="Notification targets."
    )
    group_wait: DurationOrZero = Field(
        default="10s", description="Wait before a new group's first notice."
    )
    group_interval: Duration = Field(
        default="10s", description="Wait before notifying of a group's changes."
    )
    repeat_interval: Duration = Field(
        default="12h", description="Resend interval of an unchanged default alert."
    )


def alertmanager_config(settings: AlertmanagerSettings) -> dict[str, Any]:
    """The whole ``alertmanager.yml`` as data."""
    receivers = settings.receivers
    details = (
        "{{ range .Alerts }}\n"
        "Alert: {{ .Annotations.summary }}\n"
        "Description: {{ .Annotations.description }}\n"
        "Environment: {{ .Labels.environment }}\n"
        "Severity: {{ .Labels.severity }}\n"
        f"Runbook: {receivers.runbook_base_url or ''}{{{{ .Annotations.runbook }}}}\n"
        "{{ end }}"
    )
    return {
        "global": {
            "resolve_timeout": "5m",
            "smtp_smarthost": receivers.smtp_smarthost,
            "smtp_from": receivers.email_from,
            "smtp_auth_username": receivers.smtp_username,
            "smtp_auth_password_file": f"{SECRETS_DIR}/{SMTP_KEY}",
            "smtp_require_tls": True,
        },
        "route": {
            "receiver": "default",
            "group_by": ["alertname", "cluster", "service"],
            "group_wait": settings.group_wait,
            "group_interval": settings.group_interval,
            "repeat_interval": settings.repeat_interval,
            "routes": [
                # The always-firing Watchdog proves the whole path works; it
                # goes only to the dead man's switch, which alarms when the
                # heartbeats stop, and never to people.
                {
                    "matchers": ['alertname="Watchdog"'],
                    "receiver": "heartbeat",
                    "group_wait": "0s",
                    "group_interval": "1m",
                    "repeat_interval": "5m",
                },
                {
                    "matchers": ['severity="critical"'],
                    "receiver": "pagerduty-critical",
                    # Pages are grouped down to the instance: a second
                    # target going down must not wait out the group
                    # interval of the first one's page.
                    "group_by": [
                        "alertname",
                        "cluster",
                        "namespace",
                        "service",
                        "instance",
                    ],
                    "group_wait": "0s",
                    "group_interval": "5m",
                    "repeat_interval": "1h",
                },
                {
                    "matchers": ['severity="warning"'],
                    "receiver": "slack-warnings",
                    "group_interval": "5m",
                    "repeat_interval": "4h",
                },
            ],
        },
        "receivers": [
            {
                "name": "heartbeat",
                **(
                    {
                        "webhook_configs": [
                            {"url": receivers.heartbeat_url, "send_resolved": False}
                        ]
                    }
                    if receivers.heartbeat_url
                    else {}
                ),
            },
            {
                "name": "default",
                "email_configs": [
                    {
                        "to": receivers.email_to,
                        "send_resolved": True,
                        "headers": {
                            "Subject": "Sunday.com Alert: {{ .GroupLabels.alertname }}"
                        },
                        "text": details,
                    }
                ],
            },
            {
                "name": "pagerduty-critical",
                "pagerduty_configs": [
                    {
                        "routing_key_file": f"{SECRETS_DIR}/{PAGERDUTY_KEY}",
                        "description": "{{ .GroupLabels.alertname }}: "
                        "{{ .CommonAnnotations.summary }}",
                        "severity": "critical",
                        "send_resolved": True,
                    }
                ],
            },
            {
                "name": "slack-warnings",
                "slack_configs": [
                    {
                        "api_url_file": f"{SECRETS_DIR}/{SLACK_KEY}",
                        "channel": receivers.slack_channel,
                        "title": "Sunday.com Alert",
                        "send_resolved": True,
                        "text": details.replace("Alert:", "*Alert:*")
                        .replace("Description:", "*Description:*")
                        .replace("Environment:", "*Environment:*")
                        .replace("Severity:", "*Severity:*")
                        .replace("Runbook:", "*Runbook:*"),
                    }
                ],
            },
        ],
        # A page for a service makes its warnings noise until it is fixed.
        # Alert names are unique per severity, so the labels that say "the
        # same thing is broken" are where it runs, not the alert's name.
        "inhibit_rules": [
            {
                "source_matchers": ['severity="critical"'],
                "target_matchers": ['severity="warning"'],
                "equal": ["cluster", "namespace", "service", "instance"],
            }
        ],
    }


_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*')


def matcher_matches(matcher: str, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy one Alertmanager matcher such as ``a="b"``."""
    found = _MATCHER.fullmatch(matcher)
    if not found:
        raise ValueError(f"matcher {matcher!r} is not name, operator, value")
    name, op, value = found.groups()
    actual = labels.get(name, "")
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    hit = re.fullmatch(value, actual) is not None
    return hit if op == "=~" else not hit


def route_for(config: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """Where Alertmanager sends an alert with ``labels``.

    Walks the routing tree as Alertmanager does, first matching child at
    each level (this configuration uses no ``continue``), and returns the
    receiver, the inherited ``group_wait`` and the path taken.
    """
    route = dict(config["route"])
    group_wait = route.get("group_wait", "30s")
    path = ["route"]
    while True:
        for index, child in enumerate(route.get("routes", [])):
            if all(matcher_matches(m, labels) for m in child.get("matchers", [])):
                group_wait = child.get("group_wait", group_wait)
                route = {**child, "receiver": child.get("receiver", route["receiver"])}
                path.append(f"routes[{index}]")
                break
        else:
            return {
                "receiver": route["receiver"],
                "group_wait": group_wait,
                "path": path,
            }


class Alertmanager(Construct):
    """Alertmanager with its config, StatefulSet and Services."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: AlertmanagerSettings,
        namespace: str,
        reloader: ReloaderSettings,
    ) -> None:
        super().__init__(scope, id)
        self.settings = settings
        self.namespace = namespace
        self.config = alertmanager_config(settings)
        self.secret_name = settings.receivers.secret_name
        self.governing_service = f"{NAME}-headless"
        self.endpoint = Endpoint(NAME, PORT)
        labels = standard_labels(NAME, "alerting", image_tag(settings.image))
        selector = selector_labels(NAME)

        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        declare_secret(
            self,
            name=self.secret_name,
            namespace=namespace,
            keys=SECRET_KEYS,
            purpose="Alertmanager: PagerDuty Events v2 routing key, Slack "
            "incoming-webhook URL, SMTP password",
        )

        config_map = k8s.KubeConfigMap(
            self,
            "config",
            metadata=metadata(f"{NAME}-config", labels, namespace),
            data={"alertmanager.yml": dump_config(self.config)},
        )

        service(
            self,
            "headless",
            name=self.governing_service,
            namespace=namespace,
            labels=labels,
            ports=[("web", PORT)]
            + ([("mesh-tcp", CLUSTER_PORT)] if settings.replicas > 1 else []),
            selector=selector,
            headless=True,
        )
        statefulset = k8s.KubeStatefulSet(
            self,
            "statefulset",
            metadata=metadata(NAME, labels, namespace),
            spec=k8s.StatefulSetSpec(
                service_name=self.governing_service,
                replicas=settings.replicas,
                pod_management_policy="Parallel",
                selector=k8s.LabelSelector(match_labels=selector),
                template=self._pod_template(labels, selector, reloader),
                volume_claim_templates=[
                    claim_template(
                        "data", settings.storage_size, settings.storage_class, labels
                    )
                ],
            ),
        )
        statefulset.add_dependency(config_map)

        service(
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

    @property
    def peers(self) -> list[Endpoint]:
        """Each replica by its stable DNS name under the headless Service.

        Prometheus must send every alert to every peer: the peers then agree
        on who notifies. Sending through the load-balanced Service would
        reach only one of them.
        """
        return [
            Endpoint(f"{NAME}-{index}.{self.governing_service}", PORT)
            for index in range(self.settings.replicas)
        ]

    def _pod_template(
        self,
        labels: Mapping[str, str],
        selector: Mapping[str, str],
        reloader: ReloaderSettings,
    ) -> k8s.PodTemplateSpec:
        settings = self.settings
        args = [
            f"--config.file={CONFIG_DIR}/alertmanager.yml",
            f"--storage.path={DATA_DIR}",
            f"--web.listen-address=:{PORT}",
            # Routes stay at / whatever path the external URL has, so the
            # probes and the reloader need no prefix.
            "--web.route-prefix=/",
        ]
        if settings.external_url:
            args.append(f"--web.external-url={settings.external_url}")
        ports = [container_port("web", PORT)]
        env = None
        if settings.replicas > 1:
            args += [
                f"--cluster.listen-address=0.0.0.0:{CLUSTER_PORT}",
                f"--cluster.advertise-address=$(POD_IP):{CLUSTER_PORT}",
            ] + [f"--cluster.peer={peer.address}" for peer in self._mesh_peers()]
            ports += [
                container_port("mesh-tcp", CLUSTER_PORT),
                k8s.ContainerPort(
                    name="mesh-udp", container_port=CLUSTER_PORT, protocol="UDP"
                ),
            ]
            env = [
                k8s.EnvVar(
                    name="POD_IP",
                    value_from=k8s.EnvVarSource(
                        field_ref=k8s.ObjectFieldSelector(field_path="status.podIP")
                    ),
                )
            ]
        else:
            # A lone Alertmanager has no peers; an empty address turns the
            # gossip listener off instead of leaving it waiting for them.
            args.append("--cluster.listen-address=")
        alertmanager = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            args=args,
            env=env,
            ports=ports,
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            readiness_probe=http_probe("/-/ready", "web"),
            liveness_probe=http_probe("/-/healthy", "web", failure_threshold=6),
            volume_mounts=[
                mount("config", CONFIG_DIR),
                mount("secrets", SECRETS_DIR),
                mount("data", DATA_DIR, read_only=False),
            ],
        )
        sidecar = reloader_container(
            reloader,
            watched_dirs=[CONFIG_DIR],
            reload_url=f"http://127.0.0.1:{PORT}/-/reload",
            mounts=[mount("config", CONFIG_DIR)],
        )
        return k8s.PodTemplateSpec(
            # No config checksum here: the reloader applies config edits in
            # place, and a checksum would restart the pods for each of them.
            metadata=k8s.ObjectMeta(labels=dict(labels)),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                automount_service_account_token=False,
                security_context=pod_security(NOBODY, fs_group=NOBODY),
                topology_spread_constraints=spread_across_nodes(
                    selector, required=True
                ),
                containers=[alertmanager, sidecar],
                volumes=[
                    config_map_volume("config", f"{NAME}-config"),
                    secret_volume("secrets", self.secret_name, SECRET_KEYS),
                ],
            ),
        )

    def _mesh_peers(self) -> list[Endpoint]:
        return [Endpoint(peer.host, CLUSTER_PORT) for peer in self.peers]
