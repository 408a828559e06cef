"""NetworkPolicies of the monitoring namespace, derived from the rendered chart.

Ingress into the namespace is denied by default; each workload then admits
exactly the connections some other workload's configuration makes to it.
The connections are not listed by hand: ``derive_flows`` reads the rendered
documents the way the programs in the pods read them (Prometheus' targets,
the URLs in ConfigMaps, args and env, Elasticsearch's seed hosts, the
Alertmanager gossip peers), so a component that starts talking to another
one gets its policy rule from the same settings that make it talk.

What NetworkPolicy does not cover, and why no rule is written for it:

* Egress. Only ingress is isolated, so pods of the namespace keep reaching
  DNS, the Kubernetes API, the nodes' kubelets (Prometheus'
  ``kubernetes-nodes`` job), the application's pods (Prometheus' scrapes of
  the backend, the Postgres and Redis exporters' connections) and the
  internet (Alertmanager's SMTP, Slack and PagerDuty). An application
  namespace that isolates its own ingress must admit Prometheus from this
  namespace itself; ``scrape_namespaces`` lists which namespaces those are.
* Connections from the pod's own node. Kubernetes always allows traffic
  between a pod and the node it runs on, so the kubelet's liveness,
  readiness and startup probes need no rule. ``kubectl port-forward`` enters
  the pod through the kubelet as well and is not subject to policy either;
  ``kubectl proxy`` to a Service is: the API server connects from outside
  the pod network, which only ``ui_namespaces`` or an ipBlock could admit.
* Connections inside a pod (the config reloaders and Elasticsearch's
  readiness probe call 127.0.0.1), which no policy can see.
* Host-network pods (node-exporter). Kubernetes leaves policy for them
  undefined: most network plugins cannot tell their traffic from the
  node's, ignore them when selecting pods, and treat a connection to them
  as one to the node's address, which ingress isolation here does not
  restrict. The rule admitting Prometheus to node-exporter is still
  written, for the plugins that do enforce policy on host-network pods.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from constructs import Construct
from pydantic import Field, field_validator

from constructs_lib import alertmanager, apm_server, grafana, jaeger, kibana
from constructs_lib import prometheus as prom
from constructs_lib.common import (
    DnsLabel,
    StrictModel,
    metadata,
    selector_labels,
    standard_labels,
)
from constructs_lib.errors import ConfigurationError
from constructs_lib.integrity import (
    POD_DNS,
    SELF,
    URL,
    ChartIndex,
    is_local,
    url_address,
)
from imports import k8s

NAME = "network-policies"
DEFAULT_DENY = "default-deny-ingress"
# NetworkPolicies run no image; the version label names the API they use.
VERSION = "networking-v1"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by Kubernetes on every namespace, so a policy can select it by name."""

Doc = dict[str, Any]
AudienceSetting = Literal["ui_namespaces", "app_namespaces"]

# The ports people open in a browser or call with curl, as Service name and
# port: who may do so is a setting, not something a config reveals.
UI_PORTS = (
    (grafana.NAME, grafana.PORT),
    (kibana.NAME, kibana.PORT),
    (jaeger.QUERY, jaeger.QUERY_PORT),
    (prom.NAME, prom.PORT),
    (alertmanager.NAME, alertmanager.PORT),
)
# The ports the application's agents send traces and APM events to. The
# collector's admin port is left out: only Prometheus reads it. Zipkin
# counts only where the collector Service exposes it.
INGEST_PORTS = (
    (apm_server.NAME, apm_server.PORT),
    (jaeger.COLLECTOR, jaeger.OTLP_GRPC_PORT),
    (jaeger.COLLECTOR, jaeger.OTLP_HTTP_PORT),
    (jaeger.COLLECTOR, jaeger.JAEGER_GRPC_PORT),
    (jaeger.COLLECTOR, jaeger.JAEGER_THRIFT_PORT),
    (jaeger.COLLECTOR, jaeger.ZIPKIN_PORT),
)

# curl --resolve host:port:127.0.0.1 sends a URL's request to the pod itself.
_LOOPBACK_PIN = re.compile(
    r"--resolve[= ]([A-Za-z0-9.-]+):([0-9]+):(?:127\.0\.0\.1|localhost|\[?::1\]?)"
)
# host:port in an arg or env value (--cluster.peer=am-0.am-headless:9094); a
# URL's host follows '/', and listen addresses such as ':9093' have no host.
_HOST_PORT = re.compile(
    r"(?<![A-Za-z0-9./@-])([A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})\b"
)
# The address Prometheus' pod discovery gives a target, before relabelling.
_POD_IP = "192.0.2.1"


class NetworkPolicySettings(StrictModel):
    """Who outside the monitoring namespace may open a connection into it."""

    ui_namespaces: list[DnsLabel] = Field(
        default_factory=list,
        description="Namespaces whose pods may reach the UIs and APIs people "
        "use: Grafana, Kibana, the Jaeger query UI, Prometheus and "
        "Alertmanager (for example the ingress controller's namespace). "
        "Defaults to none: reach them with kubectl port-forward, which enters "
        "the pod through the kubelet and is not subject to NetworkPolicy. "
        "kubectl proxy to a Service is refused, as is any ingress not listed.",
    )
    app_namespaces: list[DnsLabel] | None = Field(
        default=None,
        description="Namespaces whose pods may send traces and APM events to "
        "the APM Server and the Jaeger collector. Defaults to the namespaces "
        "Prometheus discovers the application's pods in (prometheus."
        "app_namespaces, read from the rendered Prometheus config); [] "
        "admits none.",
    )

    @field_validator("ui_namespaces", "app_namespaces")
    @classmethod
    def _dedupe(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(dict.fromkeys(value))


# --- flows -------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The pods of one workload of the chart, as a policy selects them."""

    name: str
    selector: tuple[tuple[str, str], ...]
    host_network: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.selector)


@dataclass(frozen=True)
class Audience:
    """Every pod of the namespaces a setting names, rather than the chart."""

    setting: AudienceSetting
    derived: tuple[str, ...] = ()
    """The namespaces used while the setting is left at None."""

    @property
    def name(self) -> str:
        return self.setting


@dataclass(frozen=True)
class Flow:
    """One connection the stack needs: who opens it, to which pods and port."""

    source: Workload | Audience
    destination: Workload
    port: int
    protocol: str
    reason: str = field(compare=False)

    @property
    def key(self) -> tuple[str, str, int, str]:
        """(source name, destination name, port, protocol), for tables."""
        return (self.source.name, self.destination.name, self.port, self.protocol)


def derive_flows(
    documents: Sequence[Doc], *, default_app_namespaces: Sequence[str] | None = None
) -> list[Flow]:
    """Every connection into the chart's namespace that its configs make.

    ``documents`` are the rendered objects of one chart (``chart.to_json()``
    before synth). The flows come back merged (one per source, destination,
    port and protocol, the reasons joined) and sorted.

    ``default_app_namespaces`` are the application's namespaces, used for
    ``app_namespaces`` while that setting is left unset (the stack passes
    ``prometheus.app_namespaces``). Without it they are read from the
    Prometheus job ``sunday-backend``, the one that scrapes the
    application's pods; namespaces other jobs discover (kube-system, say)
    never count.
    """
    return _Traffic(documents, default_app_namespaces).flows()


def scrape_namespaces(documents: Sequence[Doc]) -> list[str]:
    """Namespaces other than the chart's whose pods Prometheus discovers.

    These are the application's namespaces: Prometheus connects into them,
    which is egress here and ingress there, and their own policies (out of
    this chart's reach) must admit it. A job that discovers in every
    namespace names none, so it adds nothing here.
    """
    return list(_Traffic(documents).scrape_namespaces())


class _Traffic:
    def __init__(
        self, documents: Sequence[Doc], app_namespaces: Sequence[str] | None = None
    ) -> None:
        self.app_namespaces = app_namespaces
        self.chart = ChartIndex(documents, ())
        namespaces = {
            owner["metadata"].get("namespace", "")
            for owner, _ in self.chart.pod_templates()
        }
        if len(namespaces) != 1:
            raise ConfigurationError(
                "network policies",
                f"expected the workloads of one namespace, found {sorted(namespaces)}",
            )
        [self.namespace] = namespaces
        self.services = {
            name: doc
            for (namespace, name), doc in self.chart.named("Service").items()
            if namespace == self.namespace
        }
        self.templates = self.chart.pod_templates()

    # --- the flows ---------------------------------------------------------

    def flows(self) -> list[Flow]:
        found: dict[tuple, tuple[Flow, set[str]]] = {}
        for flow in self._all():
            key = (flow.source, flow.destination, flow.port, flow.protocol)
            if key not in found:
                found[key] = (flow, set())
            found[key][1].add(flow.reason)
        merged = [
            Flow(f.source, f.destination, f.port, f.protocol, "; ".join(sorted(r)))
            for f, r in found.values()
        ]
        return sorted(merged, key=lambda f: (f.destination.name, f.key))

    def _all(self) -> Iterator[Flow]:
        for config_map in self.chart.of_kind("ConfigMap"):
            if config_map["metadata"].get("namespace", "") != self.namespace:
                continue
            readers = self._readers(config_map["metadata"]["name"])
            for key, text in (config_map.get("data") or {}).items():
                where = f"ConfigMap {config_map['metadata']['name']} {key}"
                for source in readers:
                    yield from self._config_flows(source, where, key, text)
        for owner, template in self.templates:
            source = self._workload(owner, template)
            spec = template["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                where = f"{owner['kind']} {_name(owner)} container {container['name']}"
                values = list(container.get("command", []))
                values += list(container.get("args", []))
                values += [e["value"] for e in container.get("env", []) if "value" in e]
                for value in values:
                    yield from self._text_flows(source, where, value, host_port=True)
        yield from self._audience_flows()

    def _config_flows(
        self, source: Workload, where: str, key: str, text: str
    ) -> Iterator[Flow]:
        if key == "prometheus.yml":
            config = yaml.safe_load(text) or {}
            yield from self._prometheus(source, where, config)
            # Targets are read per job above; their text may be a URL a
            # relabel rule hands to an exporter, which is no connection.
            text = yaml.safe_dump(_without_targets(config))
        if key == "elasticsearch.yml":
            yield from self._seed_hosts(source, where, yaml.safe_load(text) or {})
        yield from self._text_flows(source, where, text, host_port=False)

    def _text_flows(
        self, source: Workload, where: str, text: str, *, host_port: bool
    ) -> Iterator[Flow]:
        """URLs, and in args and env also bare ``host:port`` addresses."""
        pinned = {
            (_normal_host(host), int(port))
            for host, port in _LOOPBACK_PIN.findall(text)
        }
        addresses = {url_address(url) for url in URL.findall(text)}
        if host_port:
            addresses |= {f"{h}:{p}" for h, p in _HOST_PORT.findall(text)}
        for address in sorted(addresses):
            host, _, port = address.rpartition(":")
            # The request is answered inside the pod, whatever the URL says.
            if (_normal_host(host), int(port)) in pinned:
                continue
            yield from self._to(source, address, f"{where}: {address}")

    def _seed_hosts(self, source: Workload, where: str, config: Doc) -> Iterator[Flow]:
        """Elasticsearch nodes find and join each other on the transport port."""
        hosts = _setting(config, "discovery.seed_hosts") or []
        if isinstance(hosts, str):
            hosts = [host.strip() for host in hosts.split(",")]
        transport = _setting(config, "transport.port")
        # A port range ("9300-9400") listens on its first free port.
        default = int(str(transport).split("-")[0]) if transport else 9300
        for host in hosts:
            address = host if ":" in host else f"{host}:{default}"
            yield from self._to(source, address, f"{where}: seed host {address}")

    def _prometheus(self, source: Workload, where: str, config: Doc) -> Iterator[Flow]:
        """Prometheus' scrapes and its Alertmanagers, job by job."""
        for job in config.get("scrape_configs") or []:
            yield from self._job(source, where, str(job.get("job_name")), job)
        alerting = config.get("alerting") or {}
        for index, am in enumerate(alerting.get("alertmanagers") or []):
            name = f"alerting.alertmanagers[{index}]"
            yield from self._job(source, where, name, am)

    def _job(self, source: Workload, where: str, name: str, job: Doc) -> Iterator[Flow]:
        """The pods of this namespace one job connects to.

        Static targets and pod discovery are followed through the job's
        relabelling. Discovery or relabelling that cannot be followed stops
        the synth, unless every target it can yield is outside the namespace:
        the default deny would otherwise block the scrapes silently.
        """
        reason = f"{where}: job {name}"
        relabel = job.get("relabel_configs") or []
        scheme = str(job.get("scheme", "http"))
        base = {
            "job": name,
            "__scheme__": scheme,
            "__metrics_path__": str(job.get("metrics_path", "/metrics")),
        }
        for param, values in (job.get("params") or {}).items():
            if values:
                base[f"__param_{param}"] = str(values[0])
        mechanisms = sorted(
            key
            for key in job
            if key.endswith("_sd_configs") and key != "kubernetes_sd_configs"
        )
        for mechanism in mechanisms:
            if not job[mechanism]:
                continue
            if not self._sd_outside(mechanism, job[mechanism]):
                raise ConfigurationError(
                    f"network policies, {where}",
                    f"job {name!r} discovers targets with {mechanism}, which "
                    "derive_flows cannot resolve to pods, and some may be in "
                    f"{self.namespace!r}: the default deny ingress policy would "
                    "block their scrapes; scrape them by kubernetes_sd_configs "
                    "role 'pod' or by static targets",
                )
            yield from self._literal_addresses(source, relabel, scheme, reason)
        may_readdress = _may_write_address(relabel)
        for static in job.get("static_configs") or []:
            extra = {str(k): str(v) for k, v in (static.get("labels") or {}).items()}
            for target in static.get("targets") or []:
                target = str(target)
                host, _ = _split_address(target)
                if not may_readdress and not self._is_local(_normal_host(host)):
                    continue  # outside the namespace, and stays there
                labels = {**base, **extra, "__address__": target}
                kept = _relabel(labels, relabel, name)
                if kept is None:
                    continue
                address = kept.get("__address__", "")
                why = f"{reason} target {target}"
                if address != target:
                    why += f" scraped at {address}"
                port = _default_port(kept.get("__scheme__", scheme))
                yield from self._to(source, address, why, port)
        for sd in job.get("kubernetes_sd_configs") or []:
            role = sd.get("role")
            if role == "node" or not self._covers(sd):
                # Node addresses, or other namespaces: egress.
                yield from self._literal_addresses(source, relabel, scheme, reason)
                continue
            if role != "pod":
                raise ConfigurationError(
                    f"network policies, {where}",
                    f"job {name!r} discovers {role!r} "
                    f"targets in {self.namespace!r}, which derive_flows "
                    "cannot resolve to pods; scrape them by role 'pod' "
                    "or a static target",
                )
            why = f"{reason} discovers pods"
            for owner, template in self.templates:
                for address, target_scheme in _pod_targets(
                    self.namespace, template, relabel, base, name
                ):
                    yield from self._scrape(
                        source, owner, template, address, target_scheme, why
                    )

    def _sd_outside(self, mechanism: str, configs: list[Doc]) -> bool:
        """Whether a discovery mechanism only yields targets outside."""
        kind = mechanism.removesuffix("_sd_configs")
        if kind in _VM_DISCOVERY:
            return True  # machines of a cloud, never pods
        if kind != "dns":
            return False  # files, HTTP, registries: could name anything
        for config in configs:
            for name in config.get("names") or []:
                # _service._proto.host for SRV records.
                labels = [label for label in str(name).split(".") if label]
                while labels and labels[0].startswith("_"):
                    labels.pop(0)
                if self._is_local(_normal_host(".".join(labels))):
                    return False
        return True

    def _literal_addresses(
        self, source: Workload, relabel: list[Doc], scheme: str, reason: str
    ) -> Iterator[Flow]:
        """Fixed addresses relabelling sends a job's outside targets to."""
        for config in relabel:
            action = str(config.get("action", "replace")).lower()
            replacement = str(config.get("replacement", "$1"))
            if (
                action == "replace"
                and config.get("target_label") == "__address__"
                and "$" not in replacement
            ):
                yield from self._to(
                    source,
                    replacement,
                    f"{reason}: relabelled to {replacement}",
                    _default_port(scheme),
                )

    def _scrape(
        self,
        source: Workload,
        owner: Doc,
        template: Doc,
        address: str,
        scheme: str,
        reason: str,
    ) -> Iterator[Flow]:
        host, port = _split_address(address, _default_port(scheme))
        if host != _POD_IP:
            # Relabelling sent the scrape elsewhere (an exporter, a proxy).
            yield from self._to(
                source, address, f"{reason}: {address}", _default_port(scheme)
            )
            return
        if not _valid_port(port):
            raise ConfigurationError(
                f"network policies, {reason}",
                f"the scrape of {_name(owner)} goes to {address!r}, whose port "
                "derive_flows cannot tell",
            )
        assert port is not None
        destination = self._workload(owner, template)
        for protocol in _protocols(template, int(port)):
            yield Flow(source, destination, int(port), protocol, reason)

    def _covers(self, sd: Doc) -> bool:
        namespaces = sd.get("namespaces") or {}
        if not namespaces.get("names") and not namespaces.get("own_namespace"):
            return True  # every namespace
        # own_namespace is Prometheus', which is in this chart.
        return bool(namespaces.get("own_namespace")) or self.namespace in (
            namespaces.get("names") or []
        )

    def scrape_namespaces(self) -> list[str]:
        found: set[str] = set()
        for config_map in self.chart.of_kind("ConfigMap"):
            text = (config_map.get("data") or {}).get("prometheus.yml")
            if text is None:
                continue
            for job in (yaml.safe_load(text) or {}).get("scrape_configs", []):
                for sd in job.get("kubernetes_sd_configs") or []:
                    if sd["role"] != "node":
                        names = (sd.get("namespaces") or {}).get("names") or []
                        found.update(names)
        return sorted(found - {self.namespace})

    def _app_namespaces(self) -> tuple[str, ...]:
        """The application's namespaces: the stack's setting, else its job."""
        if self.app_namespaces is not None:
            return tuple(sorted(set(self.app_namespaces)))
        found: set[str] = set()
        for config_map in self.chart.of_kind("ConfigMap"):
            text = (config_map.get("data") or {}).get("prometheus.yml")
            if text is None:
                continue
            for job in (yaml.safe_load(text) or {}).get("scrape_configs") or []:
                if job.get("job_name") != APP_JOB:
                    continue
                for sd in job.get("kubernetes_sd_configs") or []:
                    if sd.get("role") == "pod":
                        names = (sd.get("namespaces") or {}).get("names") or []
                        found.update(names)
        return tuple(sorted(found))

    def _audience_flows(self) -> Iterator[Flow]:
        audiences = (
            (Audience("ui_namespaces"), UI_PORTS),
            (Audience("app_namespaces", self._app_namespaces()), INGEST_PORTS),
        )
        for audience, ports in audiences:
            for service, port in ports:
                if service not in self.services:
                    continue
                reason = f"{audience.setting}: Service {service} port {port}"
                yield from self._to(audience, f"{service}:{port}", reason)

    # --- resolving addresses -----------------------------------------------

    def _is_local(self, host: str) -> bool:
        """Whether a (normalised) host name resolves inside this namespace."""
        labels = host.split(".")
        if POD_DNS.match(".".join(labels[:2])) and is_local(labels[2:], self.namespace):
            return True
        return is_local(labels[1:], self.namespace)

    def _to(
        self,
        source: Workload | Audience,
        address: str,
        reason: str,
        default_port: int | None = None,
    ) -> Iterator[Flow]:
        """Flows to whatever ``address`` reaches in this namespace, if anything.

        ``name:port`` of a Service reaches the target port of the pods it
        selects. A headless Service, and ``pod-N.governing`` of a
        StatefulSet, resolve to pod addresses: the port is the pod's own.
        Host names are matched the way DNS does: in any case, with or without
        the root's trailing dot. ``default_port`` is used where the address
        names none (a Prometheus target, by its scheme).
        """
        raw_host, port_text = _split_address(address)
        host = _normal_host(raw_host)
        if host in SELF or host in ("::1", "[::1]"):
            return  # inside the pod
        if port_text is None:
            port_text = None if default_port is None else str(default_port)
        if not _valid_port(port_text):
            if self._is_local(host):
                raise ConfigurationError(
                    f"network policies, {reason}",
                    f"cannot tell which port {address!r} reaches in "
                    f"{self.namespace!r}; give it as host:port with a port "
                    "number",
                )
            return  # outside the namespace: egress, not ours to admit
        assert port_text is not None
        labels = host.split(".")
        port = int(port_text)
        pod = POD_DNS.match(".".join(labels[:2]))
        if (
            pod
            and pod["service"] in self.services
            and is_local(labels[2:], self.namespace)
        ):
            for owner, template in self.templates:
                if owner["kind"] == "StatefulSet" and _name(owner) == pod["set"]:
                    destination = self._workload(owner, template)
                    for protocol in _protocols(template, port):
                        yield Flow(source, destination, port, protocol, reason)
            return
        if not is_local(labels[1:], self.namespace) or labels[0] not in self.services:
            return  # outside the chart: egress, not ours to admit
        service = self.services[labels[0]]
        selector = service["spec"].get("selector") or {}
        headless = service["spec"].get("clusterIP") == "None"
        for owner, template in self.templates:
            if not selector or not selector.items() <= _labels(template).items():
                continue
            destination = self._workload(owner, template)
            if headless:
                for protocol in _protocols(template, port):
                    yield Flow(source, destination, port, protocol, reason)
                continue
            for service_port in service["spec"].get("ports", []):
                if service_port["port"] != port:
                    continue
                target = _target_port(template, service_port)
                if target is not None:
                    protocol = service_port.get("protocol", "TCP")
                    yield Flow(source, destination, target, protocol, reason)

    def _readers(self, config_map: str) -> list[Workload]:
        """The workloads that mount a ConfigMap or take values from it."""
        readers = []
        for owner, template in self.templates:
            if config_map in _config_maps_used(template["spec"]):
                readers.append(self._workload(owner, template))
        return readers

    def _workload(self, owner: Doc, template: Doc) -> Workload:
        selector = owner["spec"].get("selector", {}).get("matchLabels")
        if not selector:
            # Jobs are selected by the stable labels their pods carry; never
            # by version, or an upgrade would cut off pods still running.
            stable = selector_labels("")
            selector = {
                k: v for k, v in _labels(template).items() if k in stable
            } or _labels(template)
        return Workload(
            _name(owner),
            tuple(sorted(selector.items())),
            bool(template["spec"].get("hostNetwork")),
        )


def _setting(config: Doc, dotted: str) -> Any:
    """An Elasticsearch setting written flat (``a.b: 1``) or nested."""
    if dotted in config:
        return config[dotted]
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _name(doc: Doc) -> str:
    return doc["metadata"]["name"]


def _labels(template: Doc) -> dict[str, str]:
    return template.get("metadata", {}).get("labels", {})


def _container_ports(template: Doc) -> list[Doc]:
    return [p for c in template["spec"]["containers"] for p in c.get("ports", [])]


def _protocols(template: Doc, port: int) -> list[str]:
    """Protocols the pod declares on a port; TCP where it declares none.

    Alertmanager's gossip declares 9094 twice, for TCP and UDP, and needs
    both.
    """
    declared = {
        p.get("protocol", "TCP")
        for p in _container_ports(template)
        if p["containerPort"] == port
    }
    return sorted(declared) or ["TCP"]


def _target_port(template: Doc, service_port: Doc) -> int | None:
    target = service_port.get("targetPort", service_port["port"])
    if isinstance(target, int):
        return target
    for declared in _container_ports(template):
        if declared.get("name") == target:
            return declared["containerPort"]
    return None  # the reference check reports it


def _config_maps_used(spec: Doc) -> set[str]:
    used = set()
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            used.add(volume["configMap"]["name"])
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                used.add(source["configMap"]["name"])
    for container in spec["containers"] + spec.get("initContainers", []):
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                used.add(source["configMapRef"]["name"])
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                used.add(ref["name"])
    return used


# --- Prometheus' pod discovery ------------------------------------------------

APP_JOB = "sunday-backend"
"""The Prometheus job that scrapes the application's pods."""

# Cloud discovery yields machines, never pods of the namespace.
_VM_DISCOVERY = frozenset(
    {
        "azure",
        "digitalocean",
        "ec2",
        "gce",
        "hetzner",
        "ionos",
        "lightsail",
        "linode",
        "openstack",
        "ovhcloud",
        "scaleway",
        "vultr",
    }
)
_RELABEL_ACTIONS = frozenset(
    {
        "replace",
        "keep",
        "drop",
        "keepequal",
        "dropequal",
        "lowercase",
        "uppercase",
        "labelmap",
        "labeldrop",
        "labelkeep",
    }
)
"""The relabel actions derive_flows follows; hashmod shards by values it
cannot know (the pod's IP and name), and others are unknown to it."""
# Pod facts a template cannot tell; __address__ carries a made-up IP.
_UNKNOWN_POD_LABELS = frozenset(
    {
        "__address__",
        "__meta_kubernetes_pod_name",
        "__meta_kubernetes_pod_ip",
        "__meta_kubernetes_pod_uid",
        "__meta_kubernetes_pod_node_name",
        "__meta_kubernetes_pod_host_ip",
        "__meta_kubernetes_pod_controller_kind",
        "__meta_kubernetes_pod_controller_name",
        "__meta_kubernetes_pod_container_id",
        "__meta_kubernetes_pod_container_image",
    }
)


def _normal_host(host: str) -> str:
    """A host name as DNS compares it: any case, the root's dot optional."""
    host = host.strip().lower()
    return host[:-1] if host.endswith(".") else host


def _default_port(scheme: str) -> int:
    """The port Prometheus uses for a target that names none."""
    return 443 if scheme.lower() == "https" else 80


def _valid_port(text: str | None) -> bool:
    return (
        text is not None
        and re.fullmatch(r"[0-9]{1,5}", text) is not None
        and 0 < int(text) < 65536
    )


def _split_address(
    address: str, default_port: int | None = None
) -> tuple[str, str | None]:
    """(host, port text) of ``host[:port]``, ``[v6]:port`` or a URL.

    The port is None where the address has none and no default applies; it
    is returned unchecked otherwise.
    """
    text = address.strip()
    default = None if default_port is None else str(default_port)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        text = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
        default = str(_default_port(scheme))
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = text, None
    return host, default if port is None else port


def _may_write_address(configs: list[Doc]) -> bool:
    """Whether relabelling may give a target another address."""
    for config in configs:
        action = str(config.get("action", "replace")).lower()
        if action == "labelmap" or config.get("target_label") == "__address__":
            return True
        if action not in _RELABEL_ACTIONS:
            return True
    return False


def _without_targets(config: Doc) -> Doc:
    """A Prometheus config without what a job sends, rather than connects to.

    Static targets, probe parameters and relabel rules may name addresses
    an exporter connects to; ``_job`` follows them to where Prometheus does.
    """
    config = copy.deepcopy(config)
    alerting = config.get("alerting") or {}
    jobs = [
        *(config.get("scrape_configs") or []),
        *(alerting.get("alertmanagers") or []),
    ]
    for job in jobs:
        if isinstance(job, dict):
            for key in ("static_configs", "params", "relabel_configs"):
                job.pop(key, None)
    return config


def _pod_targets(
    namespace: str, template: Doc, relabel: list[Doc], job: Doc, name: str
) -> list[tuple[str, str]]:
    """The addresses (and schemes) Prometheus keeps for one pod.

    Discovery makes one target per declared container port (and one without
    a port per container that declares none); the relabel rules then keep,
    drop or rewrite them. Facts a template cannot tell (pod name, IP, node)
    are empty, except that the pod is taken to be Running and ready.
    ``job`` holds the job's own labels (job, __scheme__, __param_*).
    """
    base = {
        **job,
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
    }
    for kind, values in (
        ("label", _labels(template)),
        ("annotation", template.get("metadata", {}).get("annotations", {})),
    ):
        for key, value in values.items():
            label = re.sub(r"[^a-zA-Z0-9_]", "_", key)
            base[f"__meta_kubernetes_pod_{kind}_{label}"] = value
            base[f"__meta_kubernetes_pod_{kind}present_{label}"] = "true"
    targets = []
    for container in template["spec"]["containers"]:
        ports = container.get("ports") or [None]
        for port in ports:
            labels = {**base, "__meta_kubernetes_pod_container_name": container["name"]}
            labels["__address__"] = _POD_IP
            if port is not None:
                labels["__address__"] = f"{_POD_IP}:{port['containerPort']}"
                labels["__meta_kubernetes_pod_container_port_name"] = port.get(
                    "name", ""
                )
                labels["__meta_kubernetes_pod_container_port_number"] = str(
                    port["containerPort"]
                )
                labels["__meta_kubernetes_pod_container_port_protocol"] = port.get(
                    "protocol", "TCP"
                )
            kept = _relabel(labels, relabel, name, unknown=_UNKNOWN_POD_LABELS)
            if kept is not None:
                scheme = kept.get("__scheme__", "http")
                targets.append((kept.get("__address__", ""), scheme))
    return targets


def _relabel(
    labels: dict[str, str],
    configs: list[Doc],
    job: str,
    *,
    unknown: frozenset[str] = frozenset(),
) -> dict[str, str] | None:
    """Prometheus' relabelling of one target; None where it is dropped.

    ``unknown`` names labels whose value here is made up or missing: an
    equality test on them cannot be decided, and stops the synth rather
    than guess (keepequal would otherwise keep every target).
    """
    where = f"network policies, Prometheus job {job!r}"
    labels = dict(labels)
    for config in configs:
        action = str(config.get("action", "replace")).lower()
        if action not in _RELABEL_ACTIONS:
            raise ConfigurationError(
                where,
                f"relabel action {action!r} is not one derive_flows can follow, "
                "so it cannot tell which pods of the namespace the job scrapes "
                "and the default deny ingress policy would block them; use "
                f"{sorted(_RELABEL_ACTIONS)} or scrape static targets",
            )
        pattern = str(config.get("regex", "(.*)"))
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ConfigurationError(
                where,
                f"relabel regex {pattern!r} cannot be evaluated ({error}); "
                "write it in the syntax RE2 and Python share",
            ) from error
        source_labels = [str(n) for n in config.get("source_labels") or []]
        value = str(config.get("separator", ";")).join(
            labels.get(n, "") for n in source_labels
        )
        target = config.get("target_label")
        target = None if target is None else str(target)
        if action in ("keep", "drop"):
            if (regex.fullmatch(value) is None) == (action == "keep"):
                return None
        elif action in ("keepequal", "dropequal"):
            involved = {*source_labels, target or ""} & unknown
            if involved:
                raise ConfigurationError(
                    where,
                    f"relabel action {action!r} compares {sorted(involved)}, "
                    "whose values derive_flows cannot know, so it cannot tell "
                    "which pods the job scrapes",
                )
            if (value == labels.get(target or "", "")) != (action == "keepequal"):
                return None
        elif action in ("lowercase", "uppercase"):
            if target:
                labels[target] = (
                    value.lower() if action == "lowercase" else value.upper()
                )
        elif action == "replace":
            match = regex.fullmatch(value)
            if match is None or target is None:
                continue
            name = _expand(match, target, where)
            result = _expand(match, str(config.get("replacement", "$1")), where)
            if result:
                labels[name] = result
            else:
                labels.pop(name, None)
        elif action == "labelmap":
            replacement = str(config.get("replacement", "$1"))
            for key, label_value in list(labels.items()):
                match = regex.fullmatch(key)
                if match is not None:
                    labels[_expand(match, replacement, where)] = label_value
        else:  # labeldrop, labelkeep
            for key in list(labels):
                if (regex.fullmatch(key) is None) == (action == "labelkeep"):
                    del labels[key]
    return labels


def _expand(match: re.Match[str], replacement: str, where: str) -> str:
    """A relabel replacement with ``$1``, ``${name}`` and ``$$`` filled in."""

    def group(ref: re.Match[str]) -> str:
        if ref[0] == "$$":
            return "$"
        name = ref[1] or ref[2]
        try:
            return match.group(int(name) if name.isdigit() else name) or ""
        except IndexError:
            raise ConfigurationError(
                where,
                f"relabel replacement {replacement!r} refers to group "
                f"{ref[0]!r}, which the regex {match.re.pattern!r} does not "
                "have",
            ) from None

    return re.sub(r"\$(?:\{(\w+)\}|(\w+)|\$)", group, replacement)


# --- the policies -------------------------------------------------------------


class NetworkPolicies(Construct):
    """Deny ingress by default, then admit each flow to its destination."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: NetworkPolicySettings,
        namespace: str,
        flows: Sequence[Flow],
    ) -> None:
        """Render the policies.

        ``flows`` come from ``derive_flows(chart.to_json())``, taken once
        every component of the namespace is in the chart: a workload added
        later would get no rule and be cut off by the default deny.
        """
        super().__init__(scope, id)
        self.settings = settings
        self.flows = list(flows)
        self.namespace = namespace
        for audience in {
            f.source for f in self.flows if isinstance(f.source, Audience)
        }:
            if namespace in self.namespaces(audience):
                raise ConfigurationError(
                    f"network_policies.{audience.setting}",
                    f"names {namespace!r}, the stack's own namespace, which "
                    "would open the ports it guards to every pod of the stack "
                    "(Filebeat, the setup Job); its own flows are derived, "
                    "list only other namespaces",
                )
        if namespace in settings.ui_namespaces:
            raise ConfigurationError(
                "network_policies.ui_namespaces",
                f"names {namespace!r}, the stack's own namespace, which would "
                "open every UI and API to every pod of the stack (Filebeat, "
                "the setup Job); list only other namespaces",
            )
        labels = standard_labels(NAME, "network-policy", VERSION)
        self.policies: dict[str, k8s.KubeNetworkPolicy] = {}
        # Selects every pod and admits nothing: a pod no rule below names
        # (Filebeat, the setup Job) then accepts no connection at all.
        self.policies[DEFAULT_DENY] = k8s.KubeNetworkPolicy(
            self,
            DEFAULT_DENY,
            metadata=metadata(DEFAULT_DENY, labels, namespace),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(), policy_types=["Ingress"]
            ),
        )
        destinations = sorted(
            {flow.destination for flow in self.flows}, key=lambda w: w.name
        )
        for destination in destinations:
            rules = self._rules(destination)
            if not rules:
                continue  # only an unset audience would reach it
            name = f"{destination.name}-ingress"
            self.policies[name] = k8s.KubeNetworkPolicy(
                self,
                name,
                metadata=metadata(name, labels, namespace),
                spec=k8s.NetworkPolicySpec(
                    pod_selector=k8s.LabelSelector(match_labels=destination.labels),
                    policy_types=["Ingress"],
                    ingress=rules,
                ),
            )

    def namespaces(self, audience: Audience) -> list[str]:
        """The namespaces an audience stands for under these settings."""
        chosen = getattr(self.settings, audience.setting)
        return sorted(set(audience.derived if chosen is None else chosen))

    def _rules(self, destination: Workload) -> list[k8s.NetworkPolicyIngressRule]:
        """One rule per source: from it, on the ports it uses and no others."""
        ports: dict[Workload | Audience, set[tuple[int, str]]] = {}
        for flow in self.flows:
            if flow.destination == destination:
                ports.setdefault(flow.source, set()).add((flow.port, flow.protocol))
        rules = []
        for source in sorted(ports, key=lambda s: (isinstance(s, Audience), s.name)):
            if isinstance(source, Audience):
                peers = [
                    k8s.NetworkPolicyPeer(
                        namespace_selector=k8s.LabelSelector(
                            match_labels={NAMESPACE_NAME_LABEL: name}
                        )
                    )
                    for name in self.namespaces(source)
                ]
                if not peers:
                    continue
            else:
                peers = [
                    k8s.NetworkPolicyPeer(
                        pod_selector=k8s.LabelSelector(match_labels=source.labels)
                    )
                ]
            rules.append(
                k8s.NetworkPolicyIngressRule(
                    from_=peers,
                    ports=[
                        k8s.NetworkPolicyPort(
                            port=k8s.IntOrString.from_number(port), protocol=protocol
                        )
                        for port, protocol in sorted(ports[source])
                    ],
                )
            )
        return rules
