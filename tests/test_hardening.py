"""Secure by default: every pod, every container, every object's labels."""

from __future__ import annotations

import re

from constructs_lib.integrity import WORKLOAD_KINDS
from tests.conftest import Manifest

STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
}
# The workloads allowed to reach into the host, and why (docs/security.md):
# node-exporter measures the node itself; Filebeat reads the node's log files
# and keeps its registry on the node so that a restart does not resend logs.
HOST_ACCESS = {"node-exporter", "filebeat"}
# Filebeat alone runs as root: container logs are root-owned files.
ROOT_ALLOWED = {"filebeat"}
HIGH_UID = 10000


def workloads(manifest: Manifest) -> list[dict]:
    """Every workload, with CronJobs' pod templates lifted to spec.template."""
    found = []
    for kind in WORKLOAD_KINDS:
        for doc in manifest.of_kind(kind):
            if kind == "CronJob":
                doc = {**doc, "spec": doc["spec"]["jobTemplate"]["spec"]}
            found.append(doc)
    return found


def test_every_pod_runs_as_a_numeric_non_root_user(manifest: Manifest) -> None:
    for doc in workloads(manifest):
        context = doc["spec"]["template"]["spec"]["securityContext"]
        if doc["metadata"]["name"] in ROOT_ALLOWED:
            assert context["runAsUser"] == 0
            continue
        assert context["runAsNonRoot"] is True, doc["metadata"]["name"]
        # Above the uids hosts hand out to their own users and daemons, so a
        # container escape does not land as a host account (docs/security.md).
        assert isinstance(context["runAsUser"], int), doc["metadata"]["name"]
        assert context["runAsUser"] >= HIGH_UID, doc["metadata"]["name"]
        assert context["runAsGroup"] >= HIGH_UID, doc["metadata"]["name"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_container_is_locked_down(manifest: Manifest) -> None:
    for doc in workloads(manifest):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            context = container["securityContext"]
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["privileged"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            if doc["metadata"]["name"] not in ROOT_ALLOWED:
                assert context["runAsNonRoot"] is True, where


def test_tags_are_resolved_at_every_start_and_digests_once(
    manifest: Manifest,
) -> None:
    for doc in workloads(manifest):
        pod = doc["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{doc['metadata']['name']}/{container['name']}"
            expected = "IfNotPresent" if "@sha256:" in container["image"] else "Always"
            assert container["imagePullPolicy"] == expected, where


def test_every_container_has_requests_limits_and_probes(manifest: Manifest) -> None:
    # Run-to-completion pods (the setup Job, the index cleaner) have no
    # probes: nothing would restart or route to them.
    for doc in workloads(manifest):
        if doc["kind"] in ("Job", "CronJob"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert set(container["resources"]["limits"]) == {"cpu", "memory"}
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            where = f"{doc['metadata']['name']}/{container['name']}"
            resources = container["resources"]
            assert set(resources["requests"]) == {"cpu", "memory"}, where
            assert set(resources["limits"]) == {"cpu", "memory"}, where
            assert "livenessProbe" in container, where
            assert "readinessProbe" in container, where
            ports = {p["name"] for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                handler = container.get(probe, {})
                for kind in ("httpGet", "tcpSocket"):
                    if kind in handler:
                        port = handler[kind]["port"]
                        assert port in ports, f"{where} {probe}: port {port}"


def test_only_node_exporter_shares_the_hosts_namespaces(manifest: Manifest) -> None:
    sharing = set()
    for doc in workloads(manifest):
        pod = doc["spec"]["template"]["spec"]
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            sharing.add(doc["metadata"]["name"])
        for volume in pod.get("volumes", []):
            if "hostPath" in volume:
                sharing.add(doc["metadata"]["name"])

    assert sharing == HOST_ACCESS


def test_every_object_carries_the_standard_labels(manifest: Manifest) -> None:
    for doc in manifest.documents:
        if doc["kind"] == "Namespace":
            continue
        labels = doc["metadata"].get("labels", {})
        assert STANDARD_LABELS <= set(labels), (
            f"{doc['kind']}/{doc['metadata']['name']}"
        )
        assert labels["app.kubernetes.io/part-of"] == "sunday-monitoring"


def test_selectors_use_only_stable_labels(manifest: Manifest) -> None:
    for doc in workloads(manifest):
        if doc["kind"] in ("Job", "CronJob"):
            continue
        selector = doc["spec"]["selector"]["matchLabels"]
        assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
        template_labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template_labels.items()


def test_no_secret_value_is_rendered(manifest: Manifest) -> None:
    assert not manifest.of_kind("Secret")
    suspicious = re.compile(
        r"(password|api_key|service_key|routing_key|token|secret)\s*[:=]\s*"
        r"['\"]?[A-Za-z0-9+/_-]{12,}",
        re.IGNORECASE,
    )
    for line in manifest.text.splitlines():
        match = suspicious.search(line)
        assert match is None or "_file" in line or "/" in match.group(0), line


def test_every_replicated_workload_has_a_budget_and_spreads(manifest: Manifest) -> None:
    budgets = manifest.of_kind("PodDisruptionBudget")
    for kind in ("Deployment", "StatefulSet"):
        for doc in manifest.of_kind(kind):
            if doc["spec"].get("replicas", 1) < 2:
                continue
            labels = doc["spec"]["template"]["metadata"]["labels"]
            name = doc["metadata"]["name"]
            covering = [
                b
                for b in budgets
                if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
            ]
            assert covering, f"{kind} {name} has replicas but no PodDisruptionBudget"
            spread = doc["spec"]["template"]["spec"].get("topologySpreadConstraints")
            assert spread, f"{kind} {name} does not spread its replicas"
            assert spread[0]["topologyKey"] == "kubernetes.io/hostname"
