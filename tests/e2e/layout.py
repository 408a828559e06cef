"""Lay out the rendered monitoring stack as local files and process specs.

Used by tests/test_end_to_end.py on the host side, before anything runs: it
reads the rendered manifest, writes the files each pod would see (ConfigMap
and Secret volumes with their modes and the pod's fsGroup, as the kubelet
does), expands the containers' arguments and environment as the kubelet does,
and rewrites only what cannot work outside a cluster. Every rewrite is noted
in ``Layout.notes``; the test module's docstring lists them.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

LOOPBACK = "127.0.0.1"
NODE_NAME = "e2e-node"
NAMESPACE_FALLBACK = "default"

# Sinks standing in for PagerDuty, Slack and the SMTP relay (inside the
# private network namespace, so these ports are free).
PAGERDUTY_PORT = 8081
SLACK_PORT = 8082
WEBHOOK_PORT = 8083
PAGERDUTY_PATH = "/v2/enqueue"  # the path of Alertmanager's default URL
SLACK_PATH = "/services/T00000000/B00000000/e2e"

# The workloads run locally, each one replica, with the Debian program that
# stands in for the container image. Everything else in the manifest needs a
# cluster or has no Debian package (Grafana, kube-state-metrics, Jaeger,
# Elasticsearch, ...).
LOCAL_WORKLOADS: dict[tuple[str, str], tuple[str, str]] = {
    ("DaemonSet", "node-exporter"): ("node-exporter", "prometheus-node-exporter"),
    ("Deployment", "postgres-exporter"): (
        "postgres-exporter",
        "prometheus-postgres-exporter",
    ),
    ("Deployment", "redis-exporter"): ("redis-exporter", "prometheus-redis-exporter"),
    ("StatefulSet", "alertmanager"): ("alertmanager", "prometheus-alertmanager"),
    ("StatefulSet", "prometheus"): ("prometheus", "prometheus"),
}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


class LayoutError(AssertionError):
    """The rendered manifest has something this test cannot run locally."""


class Layout:
    """The rendered manifest plus the local substitutions, collected."""

    def __init__(
        self,
        documents: list[dict[str, Any]],
        root: Path,
        local: Iterable[tuple[str, str]] | None = None,
    ) -> None:
        self.documents = documents
        self.root = root
        # The workloads that run locally in this run (all of LOCAL_WORKLOADS
        # unless a scenario needs fewer); the others count as cluster-only.
        self.local = set(LOCAL_WORKLOADS if local is None else local)
        unknown = self.local - set(LOCAL_WORKLOADS)
        if unknown:
            raise LayoutError(f"no local program for {sorted(unknown)}")
        self.notes: list[str] = []
        # Per discovery job, the instances its relabel_configs should yield.
        self.discovered: dict[str, list[str]] = {}

    # --- lookups -----------------------------------------------------------

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [
            d
            for d in self.documents
            if d["kind"] == kind and d["metadata"]["name"] == name
        ]
        if len(found) != 1:
            raise LayoutError(f"expected one {kind} {name!r}, found {len(found)}")
        return found[0]

    def config_map(self, name: str) -> dict[str, str]:
        return dict(self.get("ConfigMap", name).get("data") or {})

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] in WORKLOAD_KINDS]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # --- pods as local processes -------------------------------------------

    def _write_projected(
        self, doc: dict[str, Any], volume: dict[str, Any], directory: Path, group: int
    ) -> None:
        """A projected volume's files, the kubelet's way (the ServiceAccount token).

        The token and the cluster CA stand for what only a cluster issues:
        nothing in this run calls the Kubernetes API (the jobs that would are
        dropped), so the program just finds the files where it reads them.
        """
        projected = volume["projected"]
        files: dict[str, str] = {}
        for source in projected.get("sources", []):
            if "serviceAccountToken" in source:
                files[source["serviceAccountToken"]["path"]] = "e2e-stand-in-token"
                self.note(
                    f"{doc['kind']} {doc['metadata']['name']}: the projected "
                    "ServiceAccount token and kube-root-ca.crt are stand-in "
                    "files; no job that reads them runs here"
                )
            elif "configMap" in source:
                name = source["configMap"]["name"]
                data = (
                    {"ca.crt": "stand-in cluster CA\n"}
                    if name == "kube-root-ca.crt"
                    else self.config_map(name)
                )
                for item in source["configMap"].get("items") or [
                    {"key": k, "path": k} for k in data
                ]:
                    files[item["path"]] = data[item["key"]]
            elif "downwardAPI" in source:
                for item in source["downwardAPI"]["items"]:
                    field = item["fieldRef"]["fieldPath"]
                    if field != "metadata.namespace":
                        raise LayoutError(f"downwardAPI field {field} is not supported")
                    files[item["path"]] = doc["metadata"]["namespace"]
            else:
                raise LayoutError(f"projected source {sorted(source)} is not supported")
        directory.mkdir(mode=0o755)
        for relative, text in files.items():
            path = directory / relative
            path.write_text(text)
            path.chmod(projected.get("defaultMode", 0o644))
            os.chown(path, 0, group)

    def pod_process(
        self,
        kind: str,
        name: str,
        *,
        secrets_data: Callable[[dict[str, str]], dict[str, dict[str, str]]]
        | None = None,
        config_data: Callable[[dict[str, str]], dict[str, dict[str, str]]]
        | None = None,
        rewrite_env: Callable[[str, str], str] | None = None,
        rewrite_arg: Callable[[str], str | None] | None = None,
    ) -> dict[str, Any]:
        """The workload's main container as a process spec for the helper.

        ConfigMap and Secret volumes become directories of their keys (mode
        of the volume, owner root, group the pod's fsGroup); hostPath volumes
        are the host paths themselves; data volumes are fresh directories the
        fsGroup may write. ``$(VAR)`` references in arguments and environment
        are expanded as the kubelet expands them (``$$`` is a literal ``$``),
        then mount paths are replaced by the local directories.
        ``config_data(mounts)`` may replace the data of ConfigMaps (by name),
        ``secrets_data(mounts)`` gives each Secret's data.
        """
        doc = self.get(kind, name)
        container_name, binary = LOCAL_WORKLOADS[(kind, name)]
        pod = doc["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == container_name)
        context = {
            **pod.get("securityContext", {}),
            **container.get("securityContext", {}),
        }
        fs_group = pod.get("securityContext", {}).get("fsGroup")
        group = fs_group if fs_group is not None else 0
        pod_name = pod_name_of(doc)
        workdir = self.root / name
        workdir.mkdir(mode=0o711)
        mounts_dir = workdir / "mounts"
        mounts_dir.mkdir(mode=0o755)

        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {
            c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])
        }
        # Pass 1: where each mount lives locally.
        mounts: dict[str, str] = {}
        sources: list[tuple[Path, str, dict[str, Any]]] = []
        for mount in container.get("volumeMounts", []):
            if mount.get("subPath"):
                raise LayoutError(f"{kind} {name}: subPath mounts are not supported")
            volume = volumes.get(mount["name"], {})
            directory = mounts_dir / mount["name"]
            if "hostPath" in volume:
                mounts[mount["mountPath"]] = volume["hostPath"]["path"]
                continue
            if mount["name"] in claims or "emptyDir" in volume:
                kind_of = "data"
            elif "configMap" in volume or "secret" in volume:
                kind_of = "files"
            elif "projected" in volume:
                kind_of = "projected"
            else:
                raise LayoutError(
                    f"{kind} {name}: volume {mount['name']!r} is not supported"
                )
            mounts[mount["mountPath"]] = str(directory)
            sources.append((directory, kind_of, volume))

        # Pass 2: the files, as the kubelet writes them.
        configs = config_data(mounts) if config_data else {}
        secret_values = secrets_data(mounts) if secrets_data else {}
        for directory, kind_of, volume in sources:
            if kind_of == "data":
                # An fsGroup volume: group-owned, group-writable, set-gid.
                directory.mkdir()
                os.chown(directory, 0, group)
                directory.chmod(0o2770)
                continue
            if kind_of == "projected":
                self._write_projected(doc, volume, directory, group)
                continue
            if "configMap" in volume:
                source = volume["configMap"]
                data = configs.get(source["name"]) or self.config_map(source["name"])
            else:
                source = volume["secret"]
                if source["secretName"] not in secret_values:
                    raise LayoutError(
                        f"no test data for Secret {source['secretName']!r}"
                    )
                data = secret_values[source["secretName"]]
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            directory.mkdir(mode=0o755)
            for item in items:
                path = directory / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(data[item["key"]])
                path.chmod(item.get("mode", source.get("defaultMode", 0o644)))
                os.chown(path, 0, group)

        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                value = kubelet_expand(item["value"], env)
            else:
                field = item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                value = {
                    "metadata.name": pod_name,
                    "metadata.namespace": namespace_of(doc),
                    "status.podIP": LOOPBACK,
                    "status.hostIP": LOOPBACK,
                    "spec.nodeName": NODE_NAME,
                }.get(field or "")
                if value is None:
                    raise LayoutError(f"{kind} {name}: env {item} is not supported")
                self.note(
                    f"{name}: env {item['name']} from {field} = {value} "
                    "(what the kubelet would fill in for this local pod)"
                )
            if rewrite_env is not None:
                value = rewrite_env(item["name"], value)
            env[item["name"]] = localize(value, mounts)

        if container.get("command"):
            raise LayoutError(f"{kind} {name}: a command override is not supported")
        args: list[str] = []
        for arg in container.get("args", []):
            expanded = kubelet_expand(arg, env)
            local = loopback_listen(localize(expanded, mounts))
            if rewrite_arg is not None:
                rewritten = rewrite_arg(local)
                if rewritten is None:
                    self.note(f"{name}: argument {arg} dropped")
                    continue
                local = rewritten
            if local != expanded:
                self.note(f"{name}: argument {arg} -> {local}")
            args.append(local)

        port = next(
            p["containerPort"]
            for p in container.get("ports", [])
            if p.get("protocol", "TCP") == "TCP"
        )
        probe = container.get("readinessProbe", {}).get("httpGet", {})
        return {
            "name": name,
            "argv": [binary, *args],
            "env": {
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "LC_ALL": "C.UTF-8",
                **env,
            },
            "uid": context["runAsUser"],
            "gid": context["runAsGroup"],
            "groups": [fs_group] if fs_group is not None else None,
            "url": f"http://{LOOPBACK}:{port}",
            "ready_path": probe.get("path", "/"),
            "mounts": mounts,
            "cwd": str(workdir),
        }

    # --- addresses ---------------------------------------------------------

    def local_address(self, address: str) -> str | None:
        """Where ``host:port`` of the cluster is served locally, if anywhere.

        A Service name (or ``pod.headless-service`` of a StatefulSet pod)
        becomes 127.0.0.1 and the container port it leads to, when the
        workload behind it runs locally; a StatefulSet's replicas other than
        the first do not. ``localhost`` is the pod itself.
        """
        host, _, port_text = address.rpartition(":")
        port = int(port_text)
        if host in ("localhost", LOOPBACK):
            return f"{LOOPBACK}:{port}"
        labels = host.split(".")
        services = {
            d["metadata"]["name"]: d for d in self.documents if d["kind"] == "Service"
        }
        ordinal = None
        if labels[0] in services:
            service = services[labels[0]]
        elif len(labels) > 1 and labels[1] in services:
            service = services[labels[1]]
            match = re.fullmatch(r"(.+)-(\d+)", labels[0])
            if not match:
                return None
            ordinal = int(match.group(2))
        else:
            return None
        selector = service["spec"].get("selector") or {}
        for workload in self.workloads():
            template_labels = workload["spec"]["template"]["metadata"].get("labels", {})
            if not selector or any(
                template_labels.get(k) != v for k, v in selector.items()
            ):
                continue
            key = (workload["kind"], workload["metadata"]["name"])
            if key not in self.local:
                return None
            if ordinal is not None and (
                workload["kind"] != "StatefulSet"
                or not labels[0].startswith(workload["metadata"]["name"] + "-")
                or ordinal != 0
            ):
                return None
            containers = workload["spec"]["template"]["spec"]["containers"]
            ports = {
                p.get("name"): p["containerPort"]
                for c in containers
                for p in c.get("ports", [])
            }
            if ordinal is not None:
                return f"{LOOPBACK}:{port}"  # a pod's DNS name: the container port
            for service_port in service["spec"]["ports"]:
                if service_port["port"] == port:
                    target = service_port.get("targetPort", port)
                    target = (
                        ports.get(target, target) if isinstance(target, str) else target
                    )
                    return f"{LOOPBACK}:{target}"
            return None
        return None

    def discovered_pods(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        """Targets Kubernetes pod discovery would yield for the local pods.

        One target per container port, with the ``__meta_kubernetes_pod_*``
        labels Prometheus attaches, taken from the rendered pod template.
        """
        wanted = set(namespaces)
        groups = []
        for workload in self.workloads():
            key = (workload["kind"], workload["metadata"]["name"])
            namespace = namespace_of(workload)
            if key not in self.local or namespace not in wanted:
                continue
            template = workload["spec"]["template"]
            name = workload["metadata"]["name"]
            pod_name = pod_name_of(workload)
            base = {
                "__meta_kubernetes_namespace": namespace,
                "__meta_kubernetes_pod_name": pod_name,
                "__meta_kubernetes_pod_ip": LOOPBACK,
                "__meta_kubernetes_pod_host_ip": LOOPBACK,
                "__meta_kubernetes_pod_node_name": NODE_NAME,
                "__meta_kubernetes_pod_phase": "Running",
                "__meta_kubernetes_pod_ready": "true",
                "__meta_kubernetes_pod_controller_kind": workload["kind"],
                "__meta_kubernetes_pod_controller_name": name,
            }
            for kind, values in (
                ("label", template["metadata"].get("labels", {})),
                ("annotation", template["metadata"].get("annotations", {})),
            ):
                for label, value in values.items():
                    clean = re.sub(r"[^a-zA-Z0-9_]", "_", label)
                    base[f"__meta_kubernetes_pod_{kind}_{clean}"] = str(value)
                    base[f"__meta_kubernetes_pod_{kind}present_{clean}"] = "true"
            for container in template["spec"]["containers"]:
                for port in container.get("ports", []):
                    labels = {
                        **base,
                        "__meta_kubernetes_pod_container_name": container["name"],
                        "__meta_kubernetes_pod_container_image": container.get(
                            "image", ""
                        ),
                        "__meta_kubernetes_pod_container_init": "false",
                        "__meta_kubernetes_pod_container_port_name": port.get(
                            "name", ""
                        ),
                        "__meta_kubernetes_pod_container_port_number": str(
                            port["containerPort"]
                        ),
                        "__meta_kubernetes_pod_container_port_protocol": port.get(
                            "protocol", "TCP"
                        ),
                    }
                    groups.append(
                        {
                            "targets": [f"{LOOPBACK}:{port['containerPort']}"],
                            "labels": labels,
                        }
                    )
        return groups


def pod_name_of(workload: dict[str, Any]) -> str:
    """The local pod's name: replica 0 of a StatefulSet, else a made-up one."""
    name = workload["metadata"]["name"]
    return f"{name}-0" if workload["kind"] == "StatefulSet" else f"{name}-e2e"


def namespace_of(document: dict[str, Any]) -> str:
    return document["metadata"].get("namespace", NAMESPACE_FALLBACK)


# --- Prometheus ----------------------------------------------------------


def local_prometheus_config(
    layout: Layout, config: dict[str, Any], *, interval: str | None
) -> dict[str, Any]:
    """prometheus.yml with cluster-only parts replaced by local equivalents.

    ``interval`` replaces every scrape and evaluation interval (and drops
    the jobs' scrape timeouts, which may not exceed it); None keeps the
    rendered intervals and timeouts.
    """
    config = yaml.safe_load(yaml.safe_dump(config))
    glob = config["global"]
    for key in ("scrape_interval", "evaluation_interval"):
        if interval is None:
            layout.note(f"prometheus.yml: global {key} {glob.get(key)} (as rendered)")
            continue
        layout.note(
            f"prometheus.yml: global {key} {glob.get(key)} -> {interval} (speed)"
        )
        glob[key] = interval
    prometheus_ns = layout.get("StatefulSet", "prometheus")["metadata"].get(
        "namespace", NAMESPACE_FALLBACK
    )

    jobs = []
    for job in config.get("scrape_configs", []):
        name = job["job_name"]
        if interval is not None:
            if "scrape_interval" in job:
                job["scrape_interval"] = interval
            if "scrape_timeout" in job:
                job.pop("scrape_timeout")
        static_groups = []
        for block in job.pop("kubernetes_sd_configs", []) or []:
            if block.get("role") != "pod":
                layout.note(
                    f"job {name}: dropped, kubernetes_sd role {block.get('role')} "
                    "needs a cluster (Debian's Prometheus has no kubernetes_sd)"
                )
                continue
            namespaces = block.get("namespaces", {})
            names = list(namespaces.get("names") or [])
            if namespaces.get("own_namespace"):
                names.append(prometheus_ns)
            if not names:
                names = sorted({namespace_of(w) for w in layout.workloads()})
            candidates = layout.discovered_pods(names)
            relabels = job.get("relabel_configs") or []
            kept = [
                labels
                for group in candidates
                if (
                    labels := relabel(
                        {**group["labels"], "__address__": group["targets"][0]},
                        relabels,
                    )
                )
                is not None
            ]
            if kept:
                layout.discovered[name] = sorted(
                    labels.get("instance", labels["__address__"]) for labels in kept
                )
                layout.note(
                    f"job {name}: kubernetes_sd (role pod, namespaces {names}) -> "
                    f"static targets for the {len(candidates)} local container "
                    "ports, with the __meta_kubernetes_pod_* labels discovery "
                    "would attach; the rendered relabel_configs (kept) select "
                    f"{len(kept)}"
                )
                static_groups.extend(candidates)
            else:
                layout.note(
                    f"job {name}: dropped, its kubernetes_sd (role pod, namespaces "
                    f"{names}) with its relabel_configs keeps none of the local "
                    "pods: what it scrapes runs only in a cluster"
                )
        for group in job.pop("static_configs", []) or []:
            targets = []
            for target in group.get("targets", []):
                local = layout.local_address(target)
                if local is None:
                    layout.note(
                        f"job {name}: target {target} dropped (nothing runs it locally)"
                    )
                    continue
                layout.note(f"job {name}: target {target} -> {local}")
                targets.append(local)
            if targets:
                static_groups.append({**group, "targets": targets})
        if not static_groups:
            layout.note(f"job {name}: dropped (no local target)")
            continue
        job["static_configs"] = static_groups
        jobs.append(job)
    config["scrape_configs"] = jobs
    for key in ("remote_write", "remote_read"):
        if config.get(key):
            raise LayoutError(f"prometheus.yml {key}: the test has no sink for it")

    for alerting in config.get("alerting", {}).get("alertmanagers", []):
        if alerting.get("kubernetes_sd_configs"):
            raise LayoutError("alertmanagers by kubernetes_sd are not supported")
        for group in alerting.get("static_configs", []):
            kept = []
            for target in group.get("targets", []):
                local = layout.local_address(target)
                layout.note(
                    f"alerting: Alertmanager {target} -> "
                    + (local or "dropped (only replica 0 runs locally)")
                )
                if local:
                    kept.append(local)
            group["targets"] = kept
    return config


def local_rule_files(
    layout: Layout, files: dict[str, str], for_overrides: dict[str, str]
) -> dict[str, str]:
    """The rule files as rendered, except the ``for`` of the named alerts."""
    out = {}
    for file_name, text in files.items():
        document = yaml.safe_load(text)
        changed = False
        for group in document.get("groups", []):
            for rule in group.get("rules", []):
                alert = rule.get("alert")
                if alert in for_overrides:
                    layout.note(
                        f"rules {file_name}: {alert} for {rule.get('for')} -> "
                        f"{for_overrides[alert]} (speed; expression unchanged)"
                    )
                    rule["for"] = for_overrides[alert]
                    changed = True
        out[file_name] = yaml.safe_dump(document, sort_keys=False) if changed else text
    missing = set(for_overrides) - {
        rule.get("alert")
        for text in files.values()
        for group in yaml.safe_load(text).get("groups", [])
        for rule in group.get("rules", [])
    }
    if missing:
        raise LayoutError(f"rules {sorted(missing)} are not in the rendered rules")
    return out


def relabel(
    labels: dict[str, str], configs: list[dict[str, Any]]
) -> dict[str, str] | None:
    """Prometheus' relabelling of one target (None: dropped).

    Enough of it to predict which local pods a discovery job keeps: keep,
    drop, replace, labelmap, labeldrop and labelkeep, regexes anchored at
    both ends as Prometheus anchors them. Any other action ends the
    prediction with the target kept.
    """
    labels = dict(labels)
    for config in configs:
        action = config.get("action", "replace")
        regex = re.compile(f"(?:{config.get('regex', '(.*)')})")
        replacement = re.sub(
            r"\$\{?(\w+)\}?", r"\\g<\1>", str(config.get("replacement", "$1"))
        )
        value = config.get("separator", ";").join(
            labels.get(source, "") for source in config.get("source_labels", [])
        )
        if action == "keep" and not regex.fullmatch(value):
            return None
        if action == "drop" and regex.fullmatch(value):
            return None
        if action == "replace":
            match = regex.fullmatch(value)
            if match:
                target = match.expand(
                    re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", config["target_label"])
                )
                result = match.expand(replacement)
                if result:
                    labels[target] = result
                else:
                    labels.pop(target, None)
        elif action == "labelmap":
            for name, current in list(labels.items()):
                match = regex.fullmatch(name)
                if match:
                    labels[match.expand(replacement)] = current
        elif action in ("labeldrop", "labelkeep"):
            labels = {
                name: current
                for name, current in labels.items()
                if bool(regex.fullmatch(name)) == (action == "labelkeep")
            }
        elif action not in ("keep", "drop"):
            return labels
    return labels


def find_rule(files: dict[str, str], alert: str) -> dict[str, Any]:
    for text in files.values():
        for group in yaml.safe_load(text).get("groups", []):
            for rule in group.get("rules", []):
                if rule.get("alert") == alert:
                    return rule
    raise LayoutError(f"rule {alert} is not in the rendered rules")


def rule_threshold(rule: dict[str, Any]) -> float:
    """The constant a ``... > X`` alert expression compares against."""
    match = re.search(r">\s*([0-9.]+)\s*$", rule["expr"].strip())
    if not match:
        raise LayoutError(
            f"cannot read the threshold of {rule['alert']}: {rule['expr']}"
        )
    return float(match.group(1))


# --- Alertmanager --------------------------------------------------------


SUPPORTED_RECEIVERS = {
    "pagerduty_configs",
    "slack_configs",
    "email_configs",
    "webhook_configs",
}


def local_alertmanager_config(
    layout: Layout, config: dict[str, Any], *, smtp_port: int
) -> dict[str, Any]:
    """alertmanager.yml with every receiver endpoint pointed at a local sink."""
    config = yaml.safe_load(yaml.safe_dump(config))
    glob = config.setdefault("global", {})

    def local_smarthost(smarthost: str) -> str:
        host, _, port = smarthost.rpartition(":")
        local = f"{LOOPBACK}:{port or smtp_port}"
        layout.note(f"alertmanager.yml: smarthost {smarthost} -> {local} (SMTP sink)")
        return local

    if "smtp_smarthost" in glob:
        glob["smtp_smarthost"] = local_smarthost(glob["smtp_smarthost"])
    for key in glob:
        if key.endswith(("_api_url", "_api_url_file")) and not key.startswith("slack_"):
            raise LayoutError(f"global {key}: the test has no sink for it")
    if "slack_api_url" in glob:
        glob["slack_api_url"] = f"http://{LOOPBACK}:{SLACK_PORT}{SLACK_PATH}"
        layout.note("alertmanager.yml: global slack_api_url -> Slack sink")
    if "pagerduty_url" in glob:
        glob["pagerduty_url"] = f"http://{LOOPBACK}:{PAGERDUTY_PORT}/"
        layout.note("alertmanager.yml: global pagerduty_url -> PagerDuty sink")

    for receiver in config.get("receivers", []):
        kinds = set(receiver) - {"name"}
        unknown = kinds - SUPPORTED_RECEIVERS
        if unknown:
            raise LayoutError(
                f"receiver {receiver['name']}: no local sink for {sorted(unknown)}; "
                "teach tests/e2e a sink before running it"
            )
        for pd in receiver.get("pagerduty_configs", []):
            old = pd.get("url", "https://events.pagerduty.com/v2/enqueue (default)")
            pd["url"] = f"http://{LOOPBACK}:{PAGERDUTY_PORT}{PAGERDUTY_PATH}"
            layout.note(
                f"receiver {receiver['name']}: pagerduty url {old} -> {pd['url']}"
            )
        for slack in receiver.get("slack_configs", []):
            if "api_url" in slack:
                slack["api_url"] = f"http://{LOOPBACK}:{SLACK_PORT}{SLACK_PATH}"
                layout.note(f"receiver {receiver['name']}: slack api_url -> Slack sink")
        for webhook in receiver.get("webhook_configs", []):
            if "url" in webhook:
                local = f"http://{LOOPBACK}:{WEBHOOK_PORT}/{receiver['name']}"
                layout.note(
                    f"receiver {receiver['name']}: webhook url {webhook['url']} -> "
                    f"{local} (webhook sink)"
                )
                webhook["url"] = local
        for email in receiver.get("email_configs", []):
            if "smarthost" in email:
                email["smarthost"] = local_smarthost(email["smarthost"])
    return config


def file_fields(config: Any, prefix: str = "") -> dict[str, str]:
    """Every ``*_file`` setting in a config, as {dotted field: path}."""
    found: dict[str, str] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            where = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, str) and str(key).endswith("_file"):
                found[where] = value
            else:
                found.update(file_fields(value, where))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            found.update(file_fields(value, f"{prefix}[{index}]"))
    return found


def receiver_secret_values(field: str) -> str:
    """What an operator stores for a credential, pointed at the local sinks."""
    name = field.rsplit(".", 1)[-1]
    if name in ("routing_key_file", "service_key_file"):
        return secrets.token_hex(16)  # a PagerDuty integration key is 32 characters
    if name in ("api_url_file", "slack_api_url_file"):
        return f"http://{LOOPBACK}:{SLACK_PORT}{SLACK_PATH}"
    if name == "url_file" and "webhook_configs" in field:
        return f"http://{LOOPBACK}:{WEBHOOK_PORT}/from-file"
    if name in ("smtp_auth_password_file", "auth_password_file"):
        return "e2e-" + secrets.token_urlsafe(18)
    raise LayoutError(f"{field}: the test does not know what this file holds")


# --- kubelet-like helpers -----------------------------------------------


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $$ is a literal $, unknown refs stay."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i)) != -1:
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def localize(text: str, mounts: dict[str, str]) -> str:
    """Replace container paths under a mount by the local ones (longest first).

    A mount path counts only as a whole path: at the start of the text or
    after a character that cannot be part of a path, and followed by ``/`` or
    the end (so ``/alertmanager`` does not match inside
    ``/etc/alertmanager/config``).
    """
    for mount_path in sorted(mounts, key=len, reverse=True):
        local = mounts[mount_path].rstrip("/") or "/"
        pattern = re.compile(rf"(?<![\w/.-]){re.escape(mount_path.rstrip('/'))}(?=/|$)")
        text = pattern.sub(lambda _, local=local: local, text)
    return text


def localize_tree(value: Any, mounts: dict[str, str]) -> Any:
    if isinstance(value, str):
        return localize(value, mounts)
    if isinstance(value, list):
        return [localize_tree(v, mounts) for v in value]
    if isinstance(value, dict):
        return {k: localize_tree(v, mounts) for k, v in value.items()}
    return value


_LISTEN = re.compile(
    r"^(--(?:web|cluster)\.listen-address=)(?:0\.0\.0\.0|\[::\])?(:\d+)$"
)


def loopback_listen(arg: str) -> str:
    """``--web.listen-address=:9090`` -> ``--web.listen-address=127.0.0.1:9090``."""
    return _LISTEN.sub(rf"\g<1>{LOOPBACK}\g<2>", arg)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (the SMTP sink's STARTTLS)."""
    key, cert = directory / "smtp-sink.key", directory / "smtp-sink.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", f"/CN={LOOPBACK}", "-addext", f"subjectAltName=IP:{LOOPBACK}",
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    cert.chmod(0o644)
    return cert, key


# --- Grafana dashboards ----------------------------------------------------

# Grafana's built-in interval variables, as Grafana would fill them in.
GRAFANA_BUILTINS = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "1h",
    "${__range}": "1h",
}
LOCAL_METRIC_PREFIXES = ("node_", "pg_", "redis_")
_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip


def dashboard_queries(dashboards: dict[str, str]) -> list[dict[str, Any]]:
    """Every Prometheus target expression of the dashboard JSON files."""
    import json

    queries = []

    def walk(node: Any, title: str, dashboard: str) -> None:
        if isinstance(node, dict):
            title = node.get("title", title) if "targets" in node else title
            for target in (
                node.get("targets", []) if isinstance(node.get("targets"), list) else []
            ):
                expr = target.get("expr") if isinstance(target, dict) else None
                source = (
                    (target.get("datasource") or {}) if isinstance(target, dict) else {}
                )
                if expr and source.get("type", "prometheus") == "prometheus":
                    queries.append(
                        {"dashboard": dashboard, "panel": title, "expr": expr}
                    )
            for key, value in node.items():
                if key != "targets":
                    walk(value, title, dashboard)
        elif isinstance(node, list):
            for value in node:
                walk(value, title, dashboard)

    for name, text in sorted(dashboards.items()):
        if name.endswith(".json"):
            walk(json.loads(text), "", name)
    for query in queries:
        expr = query["expr"]
        for variable, value in GRAFANA_BUILTINS.items():
            expr = expr.replace(variable, value)
        query["query"] = expr
        query["metrics"] = sorted(metric_names(expr))
        query["local"] = bool(query["metrics"]) and all(
            m.startswith(LOCAL_METRIC_PREFIXES) for m in query["metrics"]
        )
    return queries


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a lexical approximation)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


# --- the whole stack -------------------------------------------------------

# The test's speed-ups (documented in tests/test_end_to_end.py).
FAST_INTERVAL = "2s"
FOR_OVERRIDES = {"HighDatabaseConnections": "10s"}
TEST_MAX_CONNECTIONS = 20
SMTP_PORT = 587
MONITOR_USER = "sunday_monitor"
WARNING_ALERT = "HighDatabaseConnections"
CRITICAL_ALERT = "DatabaseDown"


def build_spec(
    documents: list[dict[str, Any]],
    root: Path,
    *,
    interval: str | None = FAST_INTERVAL,
    for_overrides: dict[str, str] | None = None,
    workloads: Iterable[tuple[str, str]] | None = None,
) -> tuple[dict, Layout]:
    """Every file and process spec of the local stack, and what was changed.

    The defaults are the end-to-end test's: every local workload, the
    intervals shortened to ``FAST_INTERVAL`` and the ``FOR_OVERRIDES``.
    ``interval=None`` and ``for_overrides={}`` keep the rendered timing;
    ``workloads`` names the (kind, name) pairs to run, the rest being
    treated like cluster-only workloads (their scrape targets dropped).
    """
    if for_overrides is None:
        for_overrides = FOR_OVERRIDES
    layout = Layout(documents, root, workloads)
    required = {
        ("Deployment", "postgres-exporter"),
        ("StatefulSet", "alertmanager"),
        ("StatefulSet", "prometheus"),
    }
    if not required <= layout.local:
        raise LayoutError(f"every run needs {sorted(required)} locally")
    sinks_dir = root / "sinks"
    sinks_dir.mkdir(mode=0o711)  # Alertmanager (uid 65534) reads the certificate
    cert, key = self_signed_certificate(sinks_dir)

    # postgres-exporter: the Secret's two files; the DSN's host is loopback.
    pg: dict[str, Any] = {
        "monitor_user": MONITOR_USER,
        "monitor_password": secrets.token_urlsafe(18),
        "max_connections": TEST_MAX_CONNECTIONS,
    }

    def pg_env(name: str, value: str) -> str:
        if name == "DATA_SOURCE_NAME":
            raise LayoutError("DATA_SOURCE_NAME (a full DSN) is not supported")
        if name != "DATA_SOURCE_URI":
            return value
        match = re.fullmatch(r"([^:/?]+)(?::(\d+))?/([^?]+)(\?.*)?", value)
        if not match:
            raise LayoutError(f"cannot read DATA_SOURCE_URI {value!r}")
        pg["port"] = int(match.group(2) or 5432)
        pg["database"] = match.group(3)
        local = f"{LOOPBACK}:{pg['port']}/{pg['database']}{match.group(4) or ''}"
        layout.note(f"postgres-exporter: DATA_SOURCE_URI {value} -> {local}")
        return local

    def pg_secrets(mounts: dict[str, str]) -> dict[str, dict[str, str]]:
        pod = layout.get("Deployment", "postgres-exporter")["spec"]["template"]["spec"]
        names = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
        return {
            name: {"username": MONITOR_USER, "password": pg["monitor_password"]}
            for name in names
        }

    redis: dict[str, Any] = {}

    def redis_arg(arg: str) -> str:
        match = re.fullmatch(r"--redis\.addr=(redis://)?([^:/]+)(?::(\d+))?", arg)
        if not match:
            return arg
        redis["port"] = int(match.group(3) or 6379)
        local = f"--redis.addr={match.group(1) or ''}{LOOPBACK}:{redis['port']}"
        return local

    exporter_options: dict[tuple[str, str], dict[str, Any]] = {
        ("DaemonSet", "node-exporter"): {},
        ("Deployment", "postgres-exporter"): {
            "secrets_data": pg_secrets,
            "rewrite_env": pg_env,
        },
        ("Deployment", "redis-exporter"): {"rewrite_arg": redis_arg},
    }
    exporters = [
        layout.pod_process(kind, name, **options)
        for (kind, name), options in exporter_options.items()
        if (kind, name) in layout.local
    ]
    if "port" not in pg or (
        ("Deployment", "redis-exporter") in layout.local and "port" not in redis
    ):
        raise LayoutError("the exporters' server addresses were not found")

    # Alertmanager: endpoints to the sinks, credentials in the Secret files.
    am_rendered = yaml.safe_load(
        layout.config_map("alertmanager-config")["alertmanager.yml"]
    )
    am_local = local_alertmanager_config(layout, am_rendered, smtp_port=SMTP_PORT)
    credentials: dict[str, str] = {}

    def am_secrets(mounts: dict[str, str]) -> dict[str, dict[str, str]]:
        pod = layout.get("StatefulSet", "alertmanager")["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "alertmanager")
        volumes = {v["name"]: v for v in pod["volumes"]}
        fields = file_fields(am_rendered)
        out: dict[str, dict[str, str]] = {}
        for mount in container.get("volumeMounts", []):
            source = volumes.get(mount["name"], {}).get("secret")
            if not source:
                continue
            data = out.setdefault(source["secretName"], {})
            for item in source.get("items", []):
                path = f"{mount['mountPath']}/{item['path']}"
                users = [f for f, p in fields.items() if p == path]
                if not users:
                    data[item["key"]] = "unused by alertmanager.yml"
                    layout.note(f"Secret key {item['key']} is mounted but not used")
                    continue
                value = receiver_secret_values(users[0])
                for field in users:
                    credentials[field] = value
                data[item["key"]] = value
        unset = set(fields) - set(credentials)
        if unset:
            raise LayoutError(
                f"alertmanager.yml reads files no Secret provides: {unset}"
            )
        return out

    def am_configs(mounts: dict[str, str]) -> dict[str, dict[str, str]]:
        local = localize_tree(am_local, mounts)
        return {"alertmanager-config": {"alertmanager.yml": yaml.safe_dump(local)}}

    def am_arg(arg: str) -> str | None:
        return None if arg.startswith("--cluster.peer=") else arg

    alertmanager = layout.pod_process(
        "StatefulSet",
        "alertmanager",
        secrets_data=am_secrets,
        config_data=am_configs,
        rewrite_arg=am_arg,
    )
    # Go reads SSL_CERT_FILE: Alertmanager trusts the SMTP sink's certificate
    # the way a real relay's would be trusted, with the config unchanged.
    alertmanager["env"]["SSL_CERT_FILE"] = str(cert)
    layout.note("alertmanager: SSL_CERT_FILE = the SMTP sink's self-signed certificate")

    # Prometheus: loopback targets, the rules as rendered but one `for`.
    rules = layout.config_map("prometheus-rules")
    prom_rendered = yaml.safe_load(
        layout.config_map("prometheus-config")["prometheus.yml"]
    )
    prom_local = local_prometheus_config(layout, prom_rendered, interval=interval)
    expected_jobs = [job["job_name"] for job in prom_local["scrape_configs"]]

    def prom_configs(mounts: dict[str, str]) -> dict[str, dict[str, str]]:
        local = dict(prom_local)
        local["rule_files"] = [
            localize(f, mounts) for f in prom_local.get("rule_files", [])
        ]
        return {
            "prometheus-config": {
                "prometheus.yml": yaml.safe_dump(local, sort_keys=False)
            },
            "prometheus-rules": local_rule_files(layout, rules, for_overrides),
        }

    prometheus = layout.pod_process(
        "StatefulSet", "prometheus", config_data=prom_configs
    )

    queries = yaml.safe_load(
        layout.config_map("postgres-exporter-queries")["queries.yaml"]
    )
    custom_metrics = [
        f"{prefix}_{name}"
        for prefix, query in queries.items()
        for column in query["metrics"]
        for name, detail in column.items()
        if detail["usage"] != "LABEL"
    ]

    inhibit = next(
        rule
        for rule in am_rendered.get("inhibit_rules", [])
        if 'severity="critical"' in rule.get("source_matchers", [])
        and 'severity="warning"' in rule.get("target_matchers", [])
    )
    external = prom_rendered["global"].get("external_labels", {})
    spec = {
        "root": str(root),
        "postgres": pg,
        "redis": redis,
        "exporters": exporters,
        "alertmanager": alertmanager,
        "prometheus": prometheus,
        "sinks": {
            "pagerduty": {
                "port": PAGERDUTY_PORT,
                "record": str(sinks_dir / "pagerduty.jsonl"),
            },
            "slack": {"port": SLACK_PORT, "record": str(sinks_dir / "slack.jsonl")},
            "webhook": {
                "port": WEBHOOK_PORT,
                "record": str(sinks_dir / "webhook.jsonl"),
            },
            "smtp": {
                "port": SMTP_PORT,
                "record": str(sinks_dir / "smtp.jsonl"),
                "cert": str(cert),
                "key": str(key),
            },
        },
        "expected_jobs": expected_jobs,
        "custom_metrics": custom_metrics,
        "dashboards": dashboard_queries(layout.config_map("grafana-dashboards")),
        "connections": {
            "alert": WARNING_ALERT,
            "threshold": rule_threshold(find_rule(rules, WARNING_ALERT)),
        },
        "database_down": {"alert": CRITICAL_ALERT},
        "inhibition": {
            "source_alert": CRITICAL_ALERT,
            "equal": inhibit.get("equal", []),
            "external_labels": [k for k, v in external.items() if "$" not in str(v)],
            "target_labels": {"severity": "warning"},
            "probe": "InhibitionProbe",
            "control": "InhibitionControl",
        },
        "email_probe": {
            "labels": {
                "alertname": "EmailRouteProbe",
                "severity": "info",
                **{k: v for k, v in external.items() if "$" not in str(v)},
            },
            "annotations": {
                "summary": "an alert no severity route takes",
                "description": "posted by tests/test_end_to_end.py",
            },
        },
        "credentials": credentials,
        "rendered": {
            "alertmanager": am_rendered,
            "prometheus": prom_rendered,
            "rules": {
                name: find_rule(rules, name) for name in (WARNING_ALERT, CRITICAL_ALERT)
            },
            "alert_names": [
                rule.get("alert") or rule.get("record")
                for text in rules.values()
                for group in yaml.safe_load(text).get("groups", [])
                for rule in group.get("rules", [])
            ],
        },
        "notes": layout.notes,
    }
    spec["discovered_instances"] = layout.discovered
    assert_loopback_only(prom_local, "prometheus.yml")
    assert_loopback_only(am_local, "alertmanager.yml")
    return spec, layout


_ADDRESS_KEYS = re.compile(r"(^|_)(url|smarthost|targets|proxy_url|api_url)$")


def assert_loopback_only(config: Any, where: str, key: str = "") -> None:
    """Refuse to run a config that would reach anything but 127.0.0.1."""
    if isinstance(config, dict):
        for name, value in config.items():
            if str(name).startswith("__meta_"):
                continue
            assert_loopback_only(value, f"{where}.{name}", str(name))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            assert_loopback_only(value, f"{where}[{index}]", key)
    elif isinstance(config, str) and _ADDRESS_KEYS.search(key):
        host = re.sub(r"^[a-z]+://", "", config).split("/")[0].rsplit(":", 1)[0]
        if host != LOOPBACK:
            raise LayoutError(f"{where} = {config!r} is not on {LOOPBACK}")
