"""Reference checks on rendered manifests, run at every synth.

A manifest can be schema-valid and still fail in a cluster: a Service that
selects no pod, a volume of a ConfigMap key nobody renders, a scrape target
with a misspelled Service name. ``check_references`` reads the manifests of
one chart the way the cluster and the programs in it would, and returns one
line per reference that does not resolve, naming the object and the
reference.

What the chart deliberately leaves to the operator is declared, not assumed:
Secrets are accepted only when a construct declared them with
``common.declare_secret``, and addresses outside the chart (the
application's own pods, database and cache) are never written as Service
names of this namespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import yaml

from constructs_lib.common import (
    KUBE_ROOT_CA,
    KUBE_ROOT_CA_KEY,
    SERVICE_ACCOUNT_DIR,
    SERVICE_ACCOUNT_FILES,
    OperatorSecret,
)

Doc = dict[str, Any]

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
SELF = {"localhost", "127.0.0.1", "0.0.0.0"}
POD_DNS = re.compile(
    r"^(?P<set>[a-z0-9-]+)-(?P<index>[0-9]+)\.(?P<service>[a-z0-9-]+)$"
)
URL = re.compile(r"\bhttps?://[A-Za-z0-9.-]+(?::[0-9]+)?")
_FILE_REFERENCE = re.compile(r"\$__file\{([^}]+)\}")


def check_references(
    documents: Sequence[Doc], secrets: Iterable[OperatorSecret]
) -> list[str]:
    """Every unresolved reference in one chart's documents, one line each."""
    chart = ChartIndex(documents, secrets)
    return (
        chart.services()
        + chart.pods()
        + chart.rbac()
        + chart.statefulsets()
        + chart.config_addresses()
    )


class ChartIndex:
    """The documents of one chart, indexed for reference lookups."""

    def __init__(self, documents: Sequence[Doc], secrets: Iterable[OperatorSecret]):
        self.documents = [doc for doc in documents if doc]
        self.secrets: dict[tuple[str, str], set[str]] = {}
        for secret in secrets:
            # Several constructs may mount one Secret: their keys add up.
            key = (secret.namespace, secret.name)
            self.secrets.setdefault(key, set()).update(secret.keys)

    # --- lookups -----------------------------------------------------------

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def named(self, kind: str) -> dict[tuple[str, str], Doc]:
        return {
            (doc["metadata"].get("namespace", ""), doc["metadata"]["name"]): doc
            for doc in self.of_kind(kind)
        }

    def pod_templates(self) -> list[tuple[Doc, Doc]]:
        """(owner, pod template) of every workload, CronJobs included."""
        found = []
        for doc in self.documents:
            if doc["kind"] == "CronJob":
                found.append((doc, doc["spec"]["jobTemplate"]["spec"]["template"]))
            elif doc["kind"] in WORKLOAD_KINDS:
                found.append((doc, doc["spec"]["template"]))
        return found

    # --- checks ------------------------------------------------------------

    def services(self) -> list[str]:
        problems = []
        for service in self.of_kind("Service"):
            name = _name(service)
            namespace = service["metadata"].get("namespace", "")
            selector = service["spec"].get("selector") or {}
            pods = [
                template
                for owner, template in self.pod_templates()
                if owner["metadata"].get("namespace", "") == namespace
                and selector
                and selector.items() <= template["metadata"].get("labels", {}).items()
            ]
            if not pods:
                problems.append(f"{name}: selects no pod template ({selector})")
                continue
            for port in service["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                for template in pods:
                    if not _declares_port(template["spec"], target):
                        problems.append(
                            f"{name}: port {port['port']} targets {target!r}, "
                            "which the selected containers do not expose"
                        )
                        break
        return problems

    def pods(self) -> list[str]:
        problems = []
        config_maps = self.named("ConfigMap")
        claims = self.named("PersistentVolumeClaim")
        accounts = self.named("ServiceAccount")
        for owner, template in self.pod_templates():
            name = _name(owner)
            namespace = owner["metadata"].get("namespace", "")
            spec = template["spec"]
            claim_templates = {
                t["metadata"]["name"]
                for t in owner["spec"].get("volumeClaimTemplates", [])
            }
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            account = spec.get("serviceAccountName")
            if account and (namespace, account) not in accounts:
                problems.append(f"{name}: ServiceAccount {account!r} is not rendered")
            for volume in volumes.values():
                problems += self._volume(name, namespace, volume, config_maps, claims)
            containers = spec["containers"] + spec.get("initContainers", [])
            for container in containers:
                where = f"{name} container {container['name']}"
                for mount in container.get("volumeMounts", []):
                    if (
                        mount["name"] not in volumes
                        and mount["name"] not in claim_templates
                    ):
                        problems.append(
                            f"{where}: mounts {mount['name']!r}, which is no "
                            "volume of the pod"
                        )
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    port = _probe_port(container.get(probe))
                    if port is not None and not _container_port(container, port):
                        problems.append(
                            f"{where}: {probe} uses port {port!r}, which the "
                            "container does not expose"
                        )
                problems += self._files(where, spec, container, volumes)
            problems += self._rollout(owner, volumes, claims)
        return problems

    def _volume(
        self,
        owner: str,
        namespace: str,
        volume: Doc,
        config_maps: Mapping[tuple[str, str], Doc],
        claims: Mapping[tuple[str, str], Doc],
    ) -> list[str]:
        where = f"{owner} volume {volume['name']}"
        if "projected" in volume:
            problems = []
            for source in volume["projected"].get("sources", []):
                if "configMap" in source:
                    config_map = source["configMap"]
                    problems += self._config_map(
                        where, namespace, config_map["name"], config_map, config_maps
                    )
                if "secret" in source:
                    secret = source["secret"]
                    problems += self._secret(where, namespace, secret["name"], secret)
            return problems
        if "configMap" in volume:
            config_map = volume["configMap"]
            return self._config_map(
                where, namespace, config_map["name"], config_map, config_maps
            )
        if "secret" in volume:
            secret = volume["secret"]
            return self._secret(where, namespace, secret["secretName"], secret)
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            if (namespace, claim) not in claims:
                return [f"{where}: claim {claim!r} is not rendered"]
        return []

    @staticmethod
    def _config_map(
        where: str,
        namespace: str,
        name: str,
        source: Doc,
        config_maps: Mapping[tuple[str, str], Doc],
    ) -> list[str]:
        """The ConfigMap a volume or projection names exists, with its items."""
        if name == KUBE_ROOT_CA:
            # Kubernetes itself keeps this one in every namespace.
            keys = {KUBE_ROOT_CA_KEY}
        elif (namespace, name) in config_maps:
            keys = set(config_maps[(namespace, name)].get("data", {}))
        else:
            return [f"{where}: ConfigMap {name!r} is not rendered"]
        return [
            f"{where}: ConfigMap {name!r} has no key {item['key']!r}"
            for item in source.get("items", [])
            if item["key"] not in keys
        ]

    def _secret(self, where: str, namespace: str, name: str, source: Doc) -> list[str]:
        """The Secret a volume or projection names is declared, with its items."""
        keys = self.secrets.get((namespace, name))
        if keys is None:
            return [
                f"{where}: Secret {name!r} is neither "
                "rendered nor declared as one the operator creates"
            ]
        return [
            f"{where}: Secret {name!r} is not declared with the key {item['key']!r}"
            for item in source.get("items", [])
            if item["key"] not in keys
        ]

    def _files(
        self, where: str, spec: Doc, container: Doc, volumes: Mapping[str, Doc]
    ) -> list[str]:
        """Files a container is told to read must come from a mount."""
        provided = _provided_files(spec, container, volumes)
        paths = [
            env["value"]
            for env in container.get("env", [])
            if env["name"].endswith("_FILE") and "value" in env
        ]
        paths += [
            arg.split("=", 1)[1]
            for arg in container.get("args", [])
            if arg.startswith("--") and "=" in arg and _is_file_flag(arg)
        ]
        problems = []
        for path in paths:
            if not _covered(path, provided):
                problems.append(f"{where}: reads {path}, which no mount provides")
        return problems

    def _rollout(
        self, owner: Doc, volumes: Mapping[str, Doc], claims: Mapping[Any, Doc]
    ) -> list[str]:
        """A rolling Deployment must not share a ReadWriteOnce claim."""
        if owner["kind"] != "Deployment":
            return []
        strategy = owner["spec"].get("strategy", {}).get("type", "RollingUpdate")
        if strategy != "RollingUpdate":
            return []
        namespace = owner["metadata"].get("namespace", "")
        problems = []
        for volume in volumes.values():
            if "persistentVolumeClaim" not in volume:
                continue
            claim = claims.get(
                (namespace, volume["persistentVolumeClaim"]["claimName"])
            )
            if claim and "ReadWriteOnce" in claim["spec"].get("accessModes", []):
                problems.append(
                    f"{_name(owner)}: a RollingUpdate with the ReadWriteOnce "
                    f"claim {claim['metadata']['name']!r} deadlocks when the new "
                    "pod lands on another node; use the Recreate strategy"
                )
        return problems

    def rbac(self) -> list[str]:
        problems = []
        accounts = self.named("ServiceAccount")
        roles = self.named("Role")
        cluster_roles = {name for _, name in self.named("ClusterRole")}
        for binding in self.of_kind("RoleBinding") + self.of_kind("ClusterRoleBinding"):
            name = _name(binding)
            ref = binding["roleRef"]
            namespace = binding["metadata"].get("namespace", "")
            if ref["kind"] == "Role" and (namespace, ref["name"]) not in roles:
                problems.append(f"{name}: Role {ref['name']!r} is not rendered")
            if ref["kind"] == "ClusterRole" and ref["name"] not in cluster_roles:
                problems.append(f"{name}: ClusterRole {ref['name']!r} is not rendered")
            for subject in binding.get("subjects", []):
                key = (subject.get("namespace", ""), subject["name"])
                if subject["kind"] == "ServiceAccount" and key not in accounts:
                    problems.append(
                        f"{name}: ServiceAccount {subject['name']!r} in "
                        f"{key[0]!r} is not rendered"
                    )
        return problems

    def statefulsets(self) -> list[str]:
        problems = []
        services = self.named("Service")
        for statefulset in self.of_kind("StatefulSet"):
            namespace = statefulset["metadata"].get("namespace", "")
            governing = services.get((namespace, statefulset["spec"]["serviceName"]))
            if governing is None or governing["spec"].get("clusterIP") != "None":
                problems.append(
                    f"{_name(statefulset)}: serviceName "
                    f"{statefulset['spec']['serviceName']!r} is not a headless "
                    "Service of the chart"
                )
        return problems

    def config_addresses(self) -> list[str]:
        """Addresses inside configs, args and env resolve to Services and ports.

        Prometheus targets are ``host:port``; everything else (datasource
        URLs, Elasticsearch hosts, Kibana, flags such as
        ``--es.server-urls``) is a URL, whose scheme must also match the
        port: a port named ``https`` takes ``https://`` and no other does.
        """
        problems = []
        for config_map in self.of_kind("ConfigMap"):
            namespace = config_map["metadata"].get("namespace", "")
            for key, text in (config_map.get("data") or {}).items():
                where = f"ConfigMap {config_map['metadata']['name']} {key}"
                for address in prometheus_targets(key, text):
                    problem = self.resolve(namespace, address)
                    if problem:
                        problems.append(f"{where}: {problem}")
                for url in URL.findall(text):
                    problem = self.resolve_url(namespace, url)
                    if problem:
                        problems.append(f"{where}: {problem}")
                problems += self._config_files(config_map, key, text)
        for owner, template in self.pod_templates():
            namespace = owner["metadata"].get("namespace", "")
            spec = template["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                values = list(container.get("args", []))
                values += list(container.get("command", []))
                values += [env.get("value", "") for env in container.get("env", [])]
                for url in URL.findall("\n".join(values)):
                    problem = self.resolve_url(namespace, url)
                    if problem:
                        problems.append(
                            f"{_name(owner)} container {container['name']}: {problem}"
                        )
        return problems

    def resolve_url(self, namespace: str, url: str) -> str | None:
        """Why a URL names nothing the chart deploys, or a wrong scheme."""
        parsed = urlparse(url)
        if not parsed.hostname:
            return None
        address = url_address(url)
        problem = self.resolve(namespace, address)
        if problem:
            return problem
        service = self.named("Service").get((namespace, parsed.hostname.split(".")[0]))
        if service is None:
            return None
        port_names = {
            p["port"]: p.get("name", "") for p in service["spec"].get("ports", [])
        }
        secure = port_names.get(parsed.port or 0, "") == "https"
        if secure != (parsed.scheme == "https"):
            return (
                f"{url}: port {parsed.port} of Service "
                f"{service['metadata']['name']!r} speaks "
                f"{'https' if secure else 'plain http'}"
            )
        return None

    def _config_files(self, config_map: Doc, key: str, text: str) -> list[str]:
        """Files a config tells its program to read come from the pod's mounts."""
        paths = _file_paths(text)
        if not paths:
            return []
        problems = []
        name = config_map["metadata"]["name"]
        for owner, template in self.pod_templates():
            spec = template["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            uses = {
                v["name"]
                for v in volumes.values()
                if v.get("configMap", {}).get("name") == name
            }
            readers = [
                container
                for container in spec["containers"]
                if uses & {m["name"] for m in container.get("volumeMounts", [])}
            ]
            if not readers:
                continue
            # Sidecars mount the same config only to watch it. A container
            # that names the config file in its command line is the one that
            # reads it; otherwise any container mounting it may be.
            named = [
                reader
                for reader in readers
                if _names_file(reader, {_mount_path(reader, v) for v in uses}, key)
            ]
            readers = named or readers
            for path in paths:
                if not any(
                    _covered(path, _provided_files(spec, reader, volumes))
                    for reader in readers
                ):
                    who = ", ".join(sorted(r["name"] for r in readers))
                    problems.append(
                        f"ConfigMap {name} {key}: {path} is read in "
                        f"{_name(owner)}, but no mount of the container that "
                        f"reads the config ({who}) provides it"
                    )
        return problems

    def resolve(self, namespace: str, address: str) -> str | None:
        """Why ``host:port`` names nothing the chart deploys, or None.

        A bare name, or one qualified with this namespace, can only be a
        Service of this namespace; ``pod-N.governing`` is replica N of a
        StatefulSet. A name qualified with another namespace is outside the
        chart (another team's target) and is not checked.
        """
        host, _, port_text = address.rpartition(":")
        if host in SELF:
            return None
        labels = host.split(".")
        services = self.named("Service")
        pod = POD_DNS.match(".".join(labels[:2]))
        if (
            pod
            and (namespace, pod["service"]) in services
            and is_local(labels[2:], namespace)
        ):
            governing = services[(namespace, pod["service"])]
            statefulset = self.named("StatefulSet").get((namespace, pod["set"]))
            if (
                statefulset is None
                or statefulset["spec"]["serviceName"] != pod["service"]
            ):
                return (
                    f"{address}: no StatefulSet {pod['set']!r} governed by "
                    f"{pod['service']!r}"
                )
            if int(pod["index"]) >= statefulset["spec"].get("replicas", 1):
                return (
                    f"{address}: StatefulSet {pod['set']!r} has no replica "
                    f"{pod['index']}"
                )
            service = governing
        elif is_local(labels[1:], namespace):
            service = services.get((namespace, labels[0]))
            if service is None:
                return f"{address}: no Service {labels[0]!r} in {namespace!r}"
        else:
            return None
        ports = [p["port"] for p in service["spec"].get("ports", [])]
        if int(port_text) not in ports:
            return (
                f"{address}: Service {service['metadata']['name']!r} exposes "
                f"{ports}, not {port_text}"
            )
        return None


def is_local(suffix: Sequence[str], namespace: str) -> bool:
    """Whether a DNS suffix keeps a name inside ``namespace``."""
    return list(suffix) in (
        [],
        [namespace],
        [namespace, "svc"],
        [namespace, "svc", "cluster", "local"],
    )


# --- reading configs ---------------------------------------------------------


def prometheus_targets(key: str, text: str) -> list[str]:
    """The in-cluster addresses a known config file refers to."""
    if key == "prometheus.yml":
        config = yaml.safe_load(text) or {}
        targets = [
            target
            for job in config.get("scrape_configs", [])
            for static in job.get("static_configs", [])
            for target in static.get("targets", [])
        ]
        targets += [
            target
            for am in config.get("alerting", {}).get("alertmanagers", [])
            for static in am.get("static_configs", [])
            for target in static.get("targets", [])
        ]
        return targets
    return []


def _file_paths(text: str) -> list[str]:
    """Paths under ``*_file`` keys of a YAML config, and Grafana file refs."""
    paths = _FILE_REFERENCE.findall(text)
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return paths

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if str(key).endswith("_file") and isinstance(value, str):
                    paths.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return paths


def url_address(url: str) -> str:
    parsed = urlparse(url)
    default = 443 if parsed.scheme == "https" else 80
    return f"{parsed.hostname}:{parsed.port or default}"


def _declares_port(spec: Doc, target: Any) -> bool:
    return any(_container_port(container, target) for container in spec["containers"])


def _container_port(container: Doc, port: Any) -> bool:
    for declared in container.get("ports", []):
        if port in (declared.get("name"), declared["containerPort"]):
            return True
    return False


def _probe_port(probe: Doc | None) -> Any:
    if not probe:
        return None
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if handler in probe:
            return probe[handler]["port"]
    return None


def _is_file_flag(arg: str) -> bool:
    flag = arg.split("=", 1)[0]
    return flag.endswith(("-file", ".file", "_file", "-path", ".ca")) and (
        "config" not in flag or flag.endswith("config.file")
    )


def _provided_files(
    spec: Doc, container: Doc, volumes: Mapping[str, Doc]
) -> list[tuple[str, set[str] | None]]:
    """(mount path, the file names it provides or None for any) pairs."""
    provided: list[tuple[str, set[str] | None]] = []
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        provided.append((mount["mountPath"].rstrip("/"), _volume_files(volume)))
    if spec.get("automountServiceAccountToken"):
        provided.append((SERVICE_ACCOUNT_DIR, set(SERVICE_ACCOUNT_FILES)))
    return provided


def _volume_files(volume: Doc) -> set[str] | None:
    """The file names a volume provides, or None when it may hold any."""
    for kind in ("secret", "configMap"):
        if kind in volume and volume[kind].get("items"):
            return {item["path"] for item in volume[kind]["items"]}
    if "projected" in volume:
        files: set[str] = set()
        for source in volume["projected"].get("sources", []):
            for kind in ("secret", "configMap", "downwardAPI"):
                items = source.get(kind, {}).get("items")
                if kind in source and not items:
                    if source[kind].get("name") == KUBE_ROOT_CA:
                        files.add(KUBE_ROOT_CA_KEY)
                        continue
                    return None  # every key of a ConfigMap or Secret
                files |= {item["path"] for item in items or []}
            if "serviceAccountToken" in source:
                files.add(source["serviceAccountToken"]["path"])
        return files
    return None


def _mount_path(container: Doc, volume: str) -> str | None:
    for mount in container.get("volumeMounts", []):
        if mount["name"] == volume:
            return mount["mountPath"].rstrip("/")
    return None


def _names_file(container: Doc, directories: set[str | None], key: str) -> bool:
    """Whether the container's command, args or env name ``<dir>/<key>``."""
    words = [
        *container.get("command", []),
        *container.get("args", []),
        *(e.get("value", "") for e in container.get("env", [])),
    ]
    files = {f"{d}/{key}" for d in directories if d}
    return any(file in word for word in words for file in files)


def _covered(path: str, provided: Sequence[tuple[str, set[str] | None]]) -> bool:
    for directory, names in provided:
        if path == directory:
            return True
        if path.startswith(directory + "/"):
            rest = path[len(directory) + 1 :]
            return names is None or rest in names
    return False


def _name(doc: Doc) -> str:
    return f"{doc['kind']} {doc['metadata']['name']}"
