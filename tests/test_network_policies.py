"""NetworkPolicies derived from the charts, proven by evaluating them.

The policies are not compared with expected YAML: they are run through a
small NetworkPolicy evaluator with Kubernetes' semantics, against the pods
the charts render and pods of other namespaces. Every flow the stack needs
must be allowed, and every other connection to a pod of the namespace, on
any port it declares, must be refused.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
import cdk8s
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from charts.loader import load_environments
from charts.monitoring_chart import MonitoringChart
from constructs_lib.common import declared_secrets
from constructs_lib.errors import ConfigurationError
from constructs_lib.integrity import WORKLOAD_KINDS, check_references
from constructs_lib.network_policies import (
    DEFAULT_DENY,
    NAMESPACE_NAME_LABEL,
    Audience,
    Flow,
    NetworkPolicies,
    NetworkPolicySettings,
    Workload,
    derive_flows,
    scrape_namespaces,
)
from constructs_lib.stack import StackSettings
from tests.objects import pod_template

Doc = dict[str, Any]
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
}
OPS = "ops"  # a namespace given UI access in some tests
STRANGER = "somebody-else"  # a namespace no setting names


# --- a NetworkPolicy evaluator -------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """A running pod as policies see it: labels, namespace, declared ports."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    ports: tuple[tuple[str, int, str], ...] = ()
    """(name, containerPort, protocol) of every container port."""


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector matches; the empty selector matches all."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


class Cluster:
    """Ingress NetworkPolicies evaluated as the API documents them.

    A pod is isolated for ingress once any policy with Ingress in its
    policyTypes selects it; a connection to an isolated pod is allowed when
    some rule of some selecting policy matches both its source and its
    port. Named ports resolve against the destination's container ports.
    """

    def __init__(
        self, policies: Sequence[Doc], namespaces: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.policies = policies
        self.namespaces = namespaces

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        # Kubernetes sets the name label on every namespace itself.
        return {
            **self.namespaces.get(namespace, {}),
            NAMESPACE_NAME_LABEL: namespace,
        }

    def allows(self, source: Pod, destination: Pod, port: int, protocol: str) -> bool:
        selecting = [
            policy
            for policy in self.policies
            if policy["metadata"]["namespace"] == destination.namespace
            and "Ingress" in policy_types(policy)
            and selects(policy["spec"]["podSelector"], destination.labels)
        ]
        if not selecting:
            return True
        return any(
            self._from(rule, policy["metadata"]["namespace"], source)
            and self._ports(rule, destination, port, protocol)
            for policy in selecting
            for rule in policy["spec"].get("ingress", [])
        )

    def _from(self, rule: Doc, namespace: str, source: Pod) -> bool:
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            assert "ipBlock" not in peer, "the policies select pods, not addresses"
            if "namespaceSelector" in peer:
                in_namespace = selects(
                    peer["namespaceSelector"], self.namespace_labels(source.namespace)
                )
            else:
                in_namespace = source.namespace == namespace
            pod = selects(peer.get("podSelector", {}), source.labels)
            if in_namespace and pod:
                return True
        return False

    def _ports(self, rule: Doc, destination: Pod, port: int, protocol: str) -> bool:
        entries = rule.get("ports")
        if not entries:
            return True
        for entry in entries:
            if entry.get("protocol", "TCP") != protocol:
                continue
            wanted = entry.get("port")
            if wanted is None:
                return True
            if isinstance(wanted, str):
                if (wanted, port, protocol) in destination.ports:
                    return True
            elif wanted <= port <= entry.get("endPort", wanted):
                return True
        return False


def policy_types(policy: Doc) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


# --- the charts ----------------------------------------------------------------


@dataclass
class Rendered:
    settings: StackSettings
    documents: list[Doc]
    flows: list[Flow]

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def pods(self) -> dict[str, Pod]:
        """One pod of every workload, by workload name."""
        found = {}
        for doc in self.documents:
            if doc["kind"] not in WORKLOAD_KINDS:
                continue
            template = pod_template(doc)
            ports = tuple(
                (port.get("name", ""), port["containerPort"], port["protocol"])
                for container in template["spec"]["containers"]
                for port in container.get("ports", [])
            )
            name = doc["metadata"]["name"]
            found[name] = Pod(
                name, self.namespace, template["metadata"]["labels"], ports
            )
        return found

    def cluster(self, policies: Sequence[Doc]) -> Cluster:
        [namespace] = [d for d in self.documents if d["kind"] == "Namespace"]
        return Cluster(policies, {self.namespace: namespace["metadata"]["labels"]})


def render(settings: StackSettings) -> Rendered:
    chart = MonitoringChart(cdk8s.Testing.app(), settings=settings)
    documents = chart.to_json()
    return Rendered(settings, documents, derive_flows(documents))


def policies(rendered: Rendered, settings: NetworkPolicySettings) -> list[Doc]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "policies")
    NetworkPolicies(
        chart,
        "network-policies",
        settings=settings,
        namespace=rendered.namespace,
        flows=rendered.flows,
    )
    return chart.to_json()


def app_pod(namespace: str) -> Pod:
    return Pod("backend", namespace, {"app": "backend"}, (("http", 8000, "TCP"),))


def keys(flows: Sequence[Flow]) -> set[tuple[str, str, int, str]]:
    return {flow.key for flow in flows}


@pytest.fixture(scope="module")
def environments() -> dict[str, StackSettings]:
    return {settings.environment: settings for settings in load_environments()}


@pytest.fixture(scope="module")
def charts(environments: dict[str, StackSettings]) -> dict[str, Rendered]:
    return {name: render(settings) for name, settings in environments.items()}


@pytest.fixture(params=["production", "staging"])
def rendered(request: pytest.FixtureRequest, charts: dict[str, Rendered]) -> Rendered:
    return charts[request.param]


# --- the evaluator itself --------------------------------------------------------


def test_the_evaluator_follows_kubernetes_semantics() -> None:
    server = Pod("server", "a", {"role": "server"}, (("web", 8080, "TCP"),))
    client = Pod("client", "a", {"role": "client"})
    remote = Pod("client", "b", {"role": "client"})

    def policy(spec: Doc, namespace: str = "a") -> Doc:
        return {"metadata": {"name": "p", "namespace": namespace}, "spec": spec}

    # No policy selects the server: everything is allowed.
    assert Cluster([], {}).allows(client, server, 8080, "TCP")
    # A policy for another namespace does not isolate it either.
    deny = {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert Cluster([policy(deny, "b")], {}).allows(client, server, 8080, "TCP")
    assert not Cluster([policy(deny)], {}).allows(client, server, 8080, "TCP")
    # A named port resolves against the destination's container ports.
    named = {
        "podSelector": {"matchLabels": {"role": "server"}},
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                "ports": [{"port": "web"}],
            }
        ],
    }
    cluster = Cluster([policy(deny), policy(named)], {})
    assert cluster.allows(client, server, 8080, "TCP")
    assert not cluster.allows(client, server, 8080, "UDP")
    assert not cluster.allows(client, server, 9090, "TCP")
    # A bare podSelector means this namespace only.
    assert not cluster.allows(remote, server, 8080, "TCP")
    # namespaceSelector and podSelector in one peer: both must match.
    both = {
        "podSelector": {},
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {"matchLabels": {"team": "x"}},
                        "podSelector": {"matchLabels": {"role": "other"}},
                    }
                ]
            }
        ],
    }
    cluster = Cluster([policy(both)], {"b": {"team": "x"}})
    assert not cluster.allows(remote, server, 8080, "TCP")
    assert cluster.allows(Pod("other", "b", {"role": "other"}), server, 8080, "TCP")


# --- derivation --------------------------------------------------------------------


def required_flows(settings: StackSettings) -> set[tuple[str, str, int, str]]:
    """The flows every environment needs, whatever its sizes."""
    es = "elasticsearch"
    # Staging's all-in-one Jaeger is one workload behind both Services.
    collector, query = (
        ("jaeger-collector", "jaeger-query")
        if settings.jaeger.mode == "production"
        else ("jaeger", "jaeger")
    )
    flows = {
        ("prometheus", "alertmanager", 9093, "TCP"),
        ("prometheus", "grafana", 3000, "TCP"),
        ("prometheus", "kube-state-metrics", 8080, "TCP"),
        ("prometheus", "postgres-exporter", 9187, "TCP"),
        ("prometheus", "redis-exporter", 9121, "TCP"),
        ("prometheus", collector, 14269, "TCP"),
        ("prometheus", "node-exporter", 9100, "TCP"),
        ("grafana", "prometheus", 9090, "TCP"),
        ("grafana", es, 9200, "TCP"),
        ("grafana", query, 16686, "TCP"),
        ("kibana", es, 9200, "TCP"),
        ("filebeat", es, 9200, "TCP"),
        ("apm-server", es, 9200, "TCP"),
        ("elasticsearch-setup", es, 9200, "TCP"),
        ("elasticsearch-setup", "kibana", 5601, "TCP"),
        ("ui_namespaces", "grafana", 3000, "TCP"),
        ("ui_namespaces", "kibana", 5601, "TCP"),
        ("ui_namespaces", query, 16686, "TCP"),
        ("ui_namespaces", "prometheus", 9090, "TCP"),
        ("ui_namespaces", "alertmanager", 9093, "TCP"),
        ("app_namespaces", "apm-server", 8200, "TCP"),
    }
    flows |= {
        ("app_namespaces", collector, port, "TCP") for port in (4317, 4318, 14250)
    }
    if settings.jaeger.mode == "production":
        flows |= {
            ("prometheus", query, 16687, "TCP"),
            ("jaeger-collector", es, 9200, "TCP"),
            ("jaeger-query", es, 9200, "TCP"),
            ("jaeger-es-index-cleaner", es, 9200, "TCP"),
        }
    if settings.elasticsearch.replicas > 1:
        flows.add((es, es, 9300, "TCP"))
    if settings.alertmanager.replicas > 1:
        flows |= {
            ("alertmanager", "alertmanager", 9094, "TCP"),
            ("alertmanager", "alertmanager", 9094, "UDP"),
        }
    return flows


def test_derivation_finds_every_flow_the_stack_needs(rendered: Rendered) -> None:
    missing = required_flows(rendered.settings) - keys(rendered.flows)
    assert not missing, f"not derived: {sorted(missing)}"


def test_prometheus_reaches_exactly_its_targets(charts: dict[str, Rendered]) -> None:
    production = charts["production"]
    # Pod discovery keeps node-exporter alone, though the exporters also
    # name a port "metrics"; each replica scrapes itself on localhost.
    assert {
        (flow.destination.name, flow.port)
        for flow in production.flows
        if flow.source == workload(production, "prometheus")
    } == {
        ("alertmanager", 9093),
        ("grafana", 3000),
        ("kube-state-metrics", 8080),
        ("postgres-exporter", 9187),
        ("redis-exporter", 9121),
        ("jaeger-collector", 14269),
        ("jaeger-query", 16687),
        ("node-exporter", 9100),
    }


def test_in_pod_and_client_only_connections_are_not_flows(rendered: Rendered) -> None:
    derived = keys(rendered.flows)
    # The readiness probe asks https://elasticsearch:9200 pinned to
    # 127.0.0.1: the node answers it itself.
    assert ("elasticsearch", "elasticsearch", 9200, "TCP") not in derived
    destinations = {flow.destination.name for flow in rendered.flows}
    # Clients only: nothing connects to them.
    for client in ("filebeat", "elasticsearch-setup"):
        assert client not in destinations


def workload(rendered: Rendered, name: str) -> Workload:
    [found] = {
        flow.source
        for flow in rendered.flows
        if isinstance(flow.source, Workload) and flow.source.name == name
    } | {flow.destination for flow in rendered.flows if flow.destination.name == name}
    return found


def test_flows_select_pods_by_stable_labels_only(rendered: Rendered) -> None:
    for flow in rendered.flows:
        for end in (flow.source, flow.destination):
            if isinstance(end, Workload):
                assert dict(end.selector) == {
                    "app.kubernetes.io/name": end.name,
                    "app.kubernetes.io/instance": end.name,
                }, end
    node_exporter = workload(rendered, "node-exporter")
    assert node_exporter.host_network


def test_app_namespaces_default_to_the_namespaces_prometheus_scrapes(
    rendered: Rendered,
) -> None:
    expected = list(rendered.settings.prometheus.app_namespaces)
    assert scrape_namespaces(rendered.documents) == expected
    audiences = {f.source for f in rendered.flows if isinstance(f.source, Audience)}
    assert Audience("app_namespaces", tuple(expected)) in audiences


def test_clustered_alertmanager_gossips_over_tcp_and_udp(
    environments: dict[str, StackSettings],
) -> None:
    staging = environments["staging"]
    assert staging.alertmanager.replicas == 1  # the lone case
    alone = render(staging)
    assert not [flow for flow in alone.flows if flow.port == 9094]

    clustered = render(
        staging.model_copy(
            update={
                "alertmanager": staging.alertmanager.model_copy(update={"replicas": 3})
            }
        )
    )
    mesh = {key for key in keys(clustered.flows) if key[2] == 9094}
    assert mesh == {
        ("alertmanager", "alertmanager", 9094, "TCP"),
        ("alertmanager", "alertmanager", 9094, "UDP"),
    }
    pods = clustered.pods()
    cluster = clustered.cluster(policies(clustered, NetworkPolicySettings()))
    peer = pods["alertmanager"]
    for protocol in ("TCP", "UDP"):
        assert cluster.allows(peer, peer, 9094, protocol)
        assert not cluster.allows(pods["prometheus"], peer, 9094, protocol)


def test_addresses_resolve_to_the_pods_port() -> None:
    """A Service port maps to its target; headless names reach the pod as is."""

    def deployment(name: str, ports: list[Doc], env: list[Doc]) -> Doc:
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name}
        container = {"name": name, "image": "x:1", "ports": ports, "env": env}
        return {
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {
                        "labels": {**labels, "app.kubernetes.io/version": "1"}
                    },
                    "spec": {"containers": [container]},
                },
            },
        }

    def service(name: str, port: int, target: Any, headless: bool = False) -> Doc:
        spec: Doc = {
            "selector": {"app.kubernetes.io/name": "web"},
            "ports": [{"port": port, "targetPort": target}],
        }
        if headless:
            spec["clusterIP"] = "None"
        return {
            "kind": "Service",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": spec,
        }

    addresses = [
        "http://web:80/api",
        "--peer=web-headless:7946",
        "http://web.ns.svc:80",
        "http://web.elsewhere:80",  # another namespace: egress
        "http://localhost:80",  # inside the pod
    ]
    documents = [
        deployment("web", [{"name": "http", "containerPort": 8080}], []),
        deployment(
            "client",
            [],
            [{"name": f"X{i}", "value": v} for i, v in enumerate(addresses)],
        ),
        service("web", 80, "http"),
        service("web-headless", 8080, 8080, headless=True),
    ]
    assert keys(derive_flows(documents)) == {
        ("client", "web", 8080, "TCP"),
        ("client", "web", 7946, "TCP"),
    }


def test_discovery_the_policies_cannot_resolve_stops_the_synth(
    charts: dict[str, Rendered],
) -> None:
    documents = copy.deepcopy(charts["production"].documents)
    [config_map] = [
        d
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "prometheus-config"
    ]
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    config["scrape_configs"].append(
        {
            "job_name": "services",
            "kubernetes_sd_configs": [
                {"role": "endpoints", "namespaces": {"names": ["monitoring"]}}
            ],
        }
    )
    config_map["data"]["prometheus.yml"] = yaml.safe_dump(config)
    with pytest.raises(ConfigurationError, match="'endpoints' targets"):
        derive_flows(documents)


# --- the policies, evaluated ----------------------------------------------------


def test_every_flow_is_allowed(rendered: Rendered) -> None:
    settings = NetworkPolicySettings(ui_namespaces=[OPS])
    cluster = rendered.cluster(policies(rendered, settings))
    pods = rendered.pods()
    for flow in rendered.flows:
        destination = pods[flow.destination.name]
        if isinstance(flow.source, Workload):
            sources = [pods[flow.source.name]]
        else:
            namespaces = (
                [OPS] if flow.source.setting == "ui_namespaces" else flow.source.derived
            )
            sources = [app_pod(namespace) for namespace in namespaces]
        assert sources, flow
        for source in sources:
            assert cluster.allows(source, destination, flow.port, flow.protocol), (
                f"{flow.key} refused ({flow.reason})"
            )


def test_nothing_but_the_flows_is_allowed(rendered: Rendered) -> None:
    """Every source, every pod of the namespace, every port it declares."""
    settings = NetworkPolicySettings(ui_namespaces=[OPS])
    cluster = rendered.cluster(policies(rendered, settings))
    pods = rendered.pods()
    apps = list(rendered.settings.prometheus.app_namespaces)
    outsiders = [app_pod(namespace) for namespace in [*apps, OPS, STRANGER]]
    allowed = keys(rendered.flows)

    def expected(source: Pod, destination: Pod, port: int, protocol: str) -> bool:
        if source.namespace == rendered.namespace:
            name = source.name
        elif source.namespace == OPS:
            name = "ui_namespaces"
        elif source.namespace in apps:
            name = "app_namespaces"
        else:
            return False
        return (name, destination.name, port, protocol) in allowed

    checked = 0
    for source in [*pods.values(), *outsiders]:
        for destination in pods.values():
            ports = {(number, protocol) for _, number, protocol in destination.ports}
            # A port nobody declares is refused like any other.
            for port, protocol in ports | {(2222, "TCP"), (2222, "UDP")}:
                assert cluster.allows(source, destination, port, protocol) == expected(
                    source, destination, port, protocol
                ), (
                    f"{source.namespace}/{source.name} -> {destination.name} "
                    f"{port}/{protocol}"
                )
                checked += 1
    assert checked > 500


def test_named_non_flows_are_refused(charts: dict[str, Rendered]) -> None:
    production = charts["production"]
    cluster = production.cluster(policies(production, NetworkPolicySettings()))
    pods = production.pods()
    app = app_pod("sunday-production")

    assert not cluster.allows(pods["grafana"], pods["alertmanager"], 9093, "TCP")
    assert not cluster.allows(pods["kibana"], pods["prometheus"], 9090, "TCP")
    assert not cluster.allows(app, pods["elasticsearch"], 9200, "TCP")
    # No UI namespace is set: an application pod cannot open Grafana.
    assert not cluster.allows(app, pods["grafana"], 3000, "TCP")
    # Only Prometheus reads postgres-exporter.
    exporter = pods["postgres-exporter"]
    for name, source in [*pods.items(), ("app", app)]:
        assert cluster.allows(source, exporter, 9187, "TCP") == (name == "prometheus")


def test_audiences_follow_their_settings(charts: dict[str, Rendered]) -> None:
    production = charts["production"]
    pods = production.pods()
    app, ops = app_pod("sunday-production"), app_pod(OPS)
    ingest = [("apm-server", 8200)] + [
        ("jaeger-collector", port) for port in (4317, 4318, 14250, 14268)
    ]
    ui = [
        ("grafana", 3000),
        ("kibana", 5601),
        ("jaeger-query", 16686),
        ("prometheus", 9090),
        ("alertmanager", 9093),
    ]

    default = production.cluster(policies(production, NetworkPolicySettings()))
    for name, port in ingest:
        assert default.allows(app, pods[name], port, "TCP"), name
        assert not default.allows(ops, pods[name], port, "TCP"), name
    for name, port in ui:
        assert not default.allows(ops, pods[name], port, "TCP"), name
    # The collector's admin port is Prometheus' alone.
    assert not default.allows(app, pods["jaeger-collector"], 14269, "TCP")

    opened = production.cluster(
        policies(production, NetworkPolicySettings(ui_namespaces=[OPS]))
    )
    for name, port in ui:
        assert opened.allows(ops, pods[name], port, "TCP"), name
        assert not opened.allows(app, pods[name], port, "TCP"), name
    assert not opened.allows(ops, pods["elasticsearch"], 9200, "TCP")

    closed = production.cluster(
        policies(production, NetworkPolicySettings(app_namespaces=[]))
    )
    for name, port in ingest:
        assert not closed.allows(app, pods[name], port, "TCP"), name


# --- the objects -----------------------------------------------------------------


def test_policies_are_schema_valid_and_labelled(rendered: Rendered) -> None:
    for settings in (
        NetworkPolicySettings(),
        NetworkPolicySettings(ui_namespaces=[OPS], app_namespaces=["a", "b"]),
    ):
        rendered_policies = policies(rendered, settings)
        names = [p["metadata"]["name"] for p in rendered_policies]
        assert len(names) == len(set(names))
        for policy in rendered_policies:
            kubernetes_validate.validate(policy, "1.27.0", strict=True)
            assert policy["metadata"]["namespace"] == rendered.namespace
            assert STANDARD_LABELS <= set(policy["metadata"]["labels"])
            # Egress stays open: isolating it would need rules for DNS,
            # the API server, the kubelets and the internet.
            assert policy["spec"]["policyTypes"] == ["Ingress"]
        [deny] = [p for p in rendered_policies if p["metadata"]["name"] == DEFAULT_DENY]
        assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
        destinations = {flow.destination.name for flow in rendered.flows}
        assert set(names) == {DEFAULT_DENY} | {f"{d}-ingress" for d in destinations}


def test_policies_added_to_the_chart_keep_its_references_whole(
    environments: dict[str, StackSettings],
) -> None:
    """MonitoringChart adds the policies last; the synth-time check holds."""
    settings = environments["production"]
    chart = MonitoringChart(cdk8s.Testing.app(), settings=settings)
    documents = chart.to_json()
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    expected_chart = cdk8s.Chart(cdk8s.Testing.app(), "expected")
    NetworkPolicies(
        expected_chart,
        "network-policies",
        settings=settings.network_policies,
        namespace=settings.namespace,
        flows=derive_flows([d for d in documents if d["kind"] != "NetworkPolicy"]),
    )
    expected = expected_chart.to_json()

    assert len(policies) > 2
    assert [(p["metadata"]["name"], p["spec"]) for p in policies] == [
        (p["metadata"]["name"], p["spec"]) for p in expected
    ]
    assert check_references(documents, declared_secrets(chart)) == []


def test_settings_are_strict() -> None:
    assert NetworkPolicySettings().ui_namespaces == []
    assert NetworkPolicySettings().app_namespaces is None
    with pytest.raises(ValidationError, match="DNS label"):
        NetworkPolicySettings(ui_namespaces=["Ops_Team"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        NetworkPolicySettings.model_validate({"egress": True})


# --- hostile inputs ----------------------------------------------------------------


def with_prometheus(
    charts: dict[str, Rendered], *jobs: Doc, alertmanagers: Sequence[Doc] = ()
) -> list[Doc]:
    """Production's documents with jobs added to the Prometheus config."""
    documents = copy.deepcopy(charts["production"].documents)
    [config_map] = [
        d
        for d in documents
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "prometheus-config"
    ]
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    config["scrape_configs"].extend(copy.deepcopy(list(jobs)))
    config["alerting"]["alertmanagers"].extend(copy.deepcopy(list(alertmanagers)))
    config_map["data"]["prometheus.yml"] = yaml.safe_dump(config)
    return documents


def scraped(documents: Sequence[Doc]) -> set[tuple[str, int]]:
    return {
        (flow.destination.name, flow.port)
        for flow in derive_flows(documents)
        if isinstance(flow.source, Workload) and flow.source.name == "prometheus"
    }


def pod_job(name: str, *relabel: Doc) -> Doc:
    return {
        "job_name": name,
        "kubernetes_sd_configs": [
            {"role": "pod", "namespaces": {"names": ["monitoring"]}}
        ],
        "relabel_configs": list(relabel),
    }


KEEP_KIBANA = {
    "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
    "action": "keep",
    "regex": "kibana",
}


def test_static_targets_parse_like_prometheus(charts: dict[str, Rendered]) -> None:
    baseline = scraped(charts["production"].documents)
    outside = {
        "job_name": "outside",
        "static_configs": [
            {
                "targets": [
                    "payments-api.sunday-production.svc",  # no port: 80
                    "https://sunday.com",
                    "[2001:db8::1]:9100",
                    "10.0.0.1",
                ]
            }
        ],
    }
    assert scraped(with_prometheus(charts, outside)) == baseline

    # Portless in-namespace targets take the scheme's port, in any spelling.
    portless = {
        "job_name": "portless",
        "scheme": "https",
        "static_configs": [{"targets": ["Grafana.Monitoring.svc.cluster.local."]}],
    }
    # grafana's Service has no 443, so nothing is admitted for it; kibana's
    # 5601 is reached through a mixed-case, fully qualified name.
    spelled = {
        "job_name": "spelled",
        "static_configs": [
            {"targets": ["Kibana:5601", "kibana.monitoring.svc.cluster.local.:5601"]}
        ],
    }
    assert scraped(with_prometheus(charts, portless, spelled)) == baseline | {
        ("kibana", 5601)
    }

    # A URL target handed to a prober: the prober is what Prometheus
    # reaches, the URL is opaque (here the in-namespace Kibana).
    blackbox = {
        "job_name": "blackbox",
        "metrics_path": "/probe",
        "params": {"module": ["http_2xx"]},
        "static_configs": [
            {"targets": ["https://sunday.com", "http://grafana:3000/api/health"]}
        ],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target"},
            {"target_label": "__address__", "replacement": "kibana:5601"},
        ],
    }
    flows = derive_flows(with_prometheus(charts, blackbox))
    assert {
        (f.destination.name, f.port) for f in flows if f.source.name == "prometheus"
    } == baseline | {("kibana", 5601)}
    # The probed URL is no connection of Prometheus to Grafana.
    [grafana] = [f for f in flows if f.key[:2] == ("prometheus", "grafana")]
    assert "api/health" not in grafana.reason


@pytest.mark.parametrize("target", ["grafana:http", "grafana:0", "grafana:3000/x"])
def test_an_in_namespace_target_without_a_usable_port_names_job_and_target(
    charts: dict[str, Rendered], target: str
) -> None:
    job = {"job_name": "broken", "static_configs": [{"targets": [target]}]}
    with pytest.raises(ConfigurationError, match=rf"job broken target {target}"):
        derive_flows(with_prometheus(charts, job))


@pytest.mark.parametrize(
    ("mechanism", "configs"),
    [
        ("dns_sd_configs", [{"names": ["kibana.monitoring.svc"], "type": "A"}]),
        ("dns_sd_configs", [{"names": ["_http._tcp.kibana.monitoring.svc."]}]),
        ("file_sd_configs", [{"files": ["/etc/prometheus/targets/*.json"]}]),
        ("http_sd_configs", [{"url": "http://example.com/targets"}]),
        ("consul_sd_configs", [{"server": "consul:8500"}]),
    ],
)
def test_discovery_the_derivation_cannot_follow_stops_the_synth(
    charts: dict[str, Rendered], mechanism: str, configs: list[Doc]
) -> None:
    job = {"job_name": "opaque", mechanism: configs}
    with pytest.raises(ConfigurationError, match=rf"'opaque'.*{mechanism}.*deny"):
        derive_flows(with_prometheus(charts, job))
    # The same discovery for Alertmanagers, too.
    with pytest.raises(ConfigurationError, match=mechanism):
        derive_flows(with_prometheus(charts, alertmanagers=[{mechanism: configs}]))


def test_discovery_that_stays_outside_is_egress(charts: dict[str, Rendered]) -> None:
    baseline = scraped(charts["production"].documents)
    jobs = [
        {
            "job_name": "dns-outside",
            "dns_sd_configs": [
                {"names": ["_metrics._tcp.payments.sunday-production.svc"]}
            ],
            "relabel_configs": [{"action": "hashmod", "modulus": 2}],
        },
        {"job_name": "vms", "ec2_sd_configs": [{"region": "eu-west-1"}]},
        # A proxy in the namespace fronts the nodes: that one is a flow.
        {
            "job_name": "nodes-via-grafana",
            "kubernetes_sd_configs": [{"role": "node"}],
            "relabel_configs": [
                {"action": "labelmap", "regex": "__meta_kubernetes_node_label_(.+)"},
                {"target_label": "__address__", "replacement": "grafana:3000"},
            ],
        },
    ]
    assert scraped(with_prometheus(charts, *jobs)) == baseline | {("grafana", 3000)}


def test_relabel_actions_are_followed_or_refused(charts: dict[str, Rendered]) -> None:
    baseline = scraped(charts["production"].documents)
    # labelmap, lowercase and labelkeep are followed to the pods they keep.
    followed = pod_job(
        "followed",
        {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_app_(.+)"},
        {
            "source_labels": ["kubernetes_io_name"],
            "target_label": "n",
            "action": "uppercase",
        },
        {"source_labels": ["n"], "action": "keep", "regex": "KIBANA"},
        {"source_labels": ["n"], "target_label": "n", "action": "lowercase"},
        {"source_labels": ["n"], "action": "keep", "regex": "kibana"},
    )
    assert scraped(with_prometheus(charts, followed)) == baseline | {("kibana", 5601)}

    # hashmod shards by the pod's IP, which no template tells.
    sharded = pod_job(
        "sharded",
        KEEP_KIBANA,
        {
            "source_labels": ["__address__"],
            "action": "hashmod",
            "modulus": 2,
            "target_label": "__tmp_shard",
        },
        {"source_labels": ["__tmp_shard"], "action": "keep", "regex": "0"},
    )
    with pytest.raises(ConfigurationError, match=r"'sharded'.*'hashmod'.*deny"):
        derive_flows(with_prometheus(charts, sharded))
    # An action the pods never reach is no reason to stop.
    unreached = pod_job(
        "unreached",
        {
            "source_labels": ["__meta_kubernetes_pod_label_app"],
            "action": "keep",
            "regex": "nothing-here",
        },
        {
            "action": "hashmod",
            "source_labels": ["__address__"],
            "modulus": 2,
            "target_label": "__tmp_shard",
        },
    )
    assert scraped(with_prometheus(charts, unreached)) == baseline


def test_keepequal_does_not_over_admit(charts: dict[str, Rendered]) -> None:
    baseline = scraped(charts["production"].documents)
    port_annotation = "__meta_kubernetes_pod_annotation_prometheus_io_port"
    # Kibana has no prometheus.io/port annotation: nothing is kept.
    annotated = pod_job(
        "annotated",
        KEEP_KIBANA,
        {
            "source_labels": ["__meta_kubernetes_pod_container_port_number"],
            "action": "keepequal",
            "target_label": port_annotation,
        },
    )
    assert scraped(with_prometheus(charts, annotated)) == baseline
    # Equal values are kept, dropequal drops them.
    equal = pod_job(
        "equal",
        KEEP_KIBANA,
        {"target_label": "__tmp_want", "replacement": "5601"},
        {
            "source_labels": ["__meta_kubernetes_pod_container_port_number"],
            "action": "keepequal",
            "target_label": "__tmp_want",
        },
    )
    assert scraped(with_prometheus(charts, equal)) == baseline | {("kibana", 5601)}
    equal["relabel_configs"][2]["action"] = "dropequal"
    assert scraped(with_prometheus(charts, equal)) == baseline
    # Two values a template cannot tell would compare equal (both empty):
    # refused rather than keeping every pod.
    unknowable = pod_job(
        "unknowable",
        {
            "source_labels": ["__meta_kubernetes_pod_name"],
            "action": "keepequal",
            "target_label": "__meta_kubernetes_pod_node_name",
        },
    )
    with pytest.raises(ConfigurationError, match=r"'unknowable'.*keepequal"):
        derive_flows(with_prometheus(charts, unknowable))


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (
            {
                "source_labels": ["__address__"],
                "regex": "(.*)",
                "replacement": "$2",
                "target_label": "x",
            },
            r"group '\$2'",
        ),
        (
            {
                "source_labels": ["__address__"],
                "regex": "(.*)",
                "replacement": "${port}",
                "target_label": "x",
            },
            r"group '\$\{port\}'",
        ),
        (
            {"source_labels": ["__address__"], "regex": r"(.*)\z", "target_label": "x"},
            "cannot be evaluated",
        ),
        (
            {"source_labels": ["__address__"], "action": "keep", "regex": "("},
            "cannot be evaluated",
        ),
    ],
)
def test_bad_relabel_rules_name_the_job(
    charts: dict[str, Rendered], rule: Doc, problem: str
) -> None:
    for job in (
        pod_job("bad-rule", rule),
        {
            "job_name": "bad-rule",
            "static_configs": [{"targets": ["grafana:3000"]}],
            "relabel_configs": [rule],
        },
    ):
        with pytest.raises(ConfigurationError, match=rf"'bad-rule'.*{problem}"):
            derive_flows(with_prometheus(charts, job))


def test_other_scrape_jobs_do_not_widen_the_app_namespaces(
    charts: dict[str, Rendered],
) -> None:
    kube_system = {
        "job_name": "kube-system-pods",
        "kubernetes_sd_configs": [
            {"role": "pod", "namespaces": {"names": ["kube-system"]}}
        ],
    }
    documents = with_prometheus(charts, kube_system)
    # Prometheus does reach into kube-system (egress) ...
    assert "kube-system" in scrape_namespaces(documents)
    # ... but only the application's namespaces may send traces.
    [app] = {
        f.source
        for f in derive_flows(documents)
        if isinstance(f.source, Audience) and f.source.setting == "app_namespaces"
    }
    assert app.derived == ("sunday-production",)
    # What the stack passes wins, deduplicated.
    [app] = {
        f.source
        for f in derive_flows(
            documents, default_app_namespaces=["b-ns", "a-ns", "b-ns"]
        )
        if isinstance(f.source, Audience) and f.source.setting == "app_namespaces"
    }
    assert app.derived == ("a-ns", "b-ns")


def test_audiences_exclude_the_own_namespace_and_duplicates(
    charts: dict[str, Rendered],
) -> None:
    production = charts["production"]
    for settings in (
        NetworkPolicySettings(ui_namespaces=[OPS, production.namespace]),
        NetworkPolicySettings(app_namespaces=[production.namespace]),
    ):
        with pytest.raises(ConfigurationError, match="the stack's own namespace"):
            policies(production, settings)

    settings = NetworkPolicySettings(
        ui_namespaces=[OPS, OPS], app_namespaces=["a", "a"]
    )
    assert settings.ui_namespaces == [OPS]
    assert settings.app_namespaces == ["a"]
    for policy in policies(production, settings):
        for rule in policy["spec"].get("ingress", []):
            peers = [yaml.safe_dump(peer) for peer in rule["from"]]
            assert len(peers) == len(set(peers)), policy["metadata"]["name"]
