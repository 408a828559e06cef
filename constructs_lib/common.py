"""Shared mechanics every component uses: value types, labels, hardened pods.

A component module builds its objects from these pieces, so that every pod in
the stack starts from the same secure defaults and every object carries the
same ``app.kubernetes.io`` labels. A component that needs more than these
defaults allow (node-exporter reads the host) says why where it asks for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from imports import k8s

PART_OF = "sunday-monitoring"
MANAGED_BY = "cdk8s"

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where Kubernetes mounts a pod's ServiceAccount token and cluster CA."""
SERVICE_ACCOUNT_FILES = ("token", "ca.crt", "namespace")
"""What in-cluster API clients read from :data:`SERVICE_ACCOUNT_DIR`."""
KUBE_ROOT_CA = "kube-root-ca.crt"
"""The ConfigMap Kubernetes keeps in every namespace: the API server's CA."""
KUBE_ROOT_CA_KEY = "ca.crt"
"""Its one key."""

# The numeric user of the "nobody" account in the upstream Prometheus images.
NOBODY = 65534


class StrictModel(BaseModel):
    """Base of every settings model: strict types, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- value types -----------------------------------------------------------

# An image reference as the OCI distribution spec spells it: an optional
# registry host (with a port), path components separated by '/', then a tag.
# The tag also becomes the app.kubernetes.io/version label, so it is held to
# the label rules too (at most 63 characters, alphanumeric at both ends).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    r"^(?P<repo>(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r":(?P<tag>[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
# Go's time.ParseDuration as Prometheus restricts it: each unit at most once,
# from the largest to the smallest.
_DURATION = re.compile(
    r"^(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?"
    r"(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?$"
)
# Prometheus keeps durations as signed 64-bit nanoseconds.
_MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
_QUANTITY = re.compile(r"^[0-9]+(?:\.[0-9]+)?(?:m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_SUFFIXES = {
    "": 1,
    "m": 0.001,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def _image(value: str) -> str:
    match = _IMAGE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"image {value!r} must be 'repository:tag' with a released tag, "
            "optionally pinned as 'repository:tag@sha256:<64 lowercase hex "
            "digits>', for example 'prom/prometheus:v2.42.0'"
        )
    if match.group("tag") == "latest":
        raise ValueError(
            f"image {value!r} uses the moving tag 'latest'; pin a released tag"
        )
    return value


def _duration_or_zero(value: str) -> str:
    if value == "0s":
        return value
    return _duration(value)


def _duration(value: str) -> str:
    if not value or not _DURATION.fullmatch(value) or set(value) <= set("0msdhwy"):
        raise ValueError(
            f"duration {value!r} is not a positive Prometheus duration such as "
            "'15s', '5m', '30d' or '1h30m' (units y, w, d, h, m, s, ms, each "
            "at most once, largest first)"
        )
    if duration_seconds(value) > _MAX_DURATION_SECONDS:
        raise ValueError(f"duration {value!r} is longer than Prometheus can hold")
    return value


def _quantity(value: str) -> str:
    if not _QUANTITY.fullmatch(value) or quantity_value(value) <= 0:
        raise ValueError(
            f"quantity {value!r} is not a positive Kubernetes quantity such as "
            "'500m', '2', '256Mi' or '100Gi'"
        )
    return value


def _dns_subdomain(value: str) -> str:
    if not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"name {value!r} is not a DNS subdomain (lower-case letters, digits, "
            "'-' and '.', at most 253 characters)"
        )
    return value


def quantity_value(quantity: str) -> float:
    """The number a Kubernetes quantity stands for (``2Gi`` is 2147483648)."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", quantity)
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"name {value!r} is not a DNS label (lower-case letters, digits and "
            "'-', at most 63 characters)"
        )
    return value


Image = Annotated[str, AfterValidator(_image)]
"""A container image pinned to a released tag, never ``latest``."""

Duration = Annotated[str, AfterValidator(_duration)]
"""A positive Prometheus duration: ``15s``, ``5m``, ``30d``."""

DurationOrZero = Annotated[str, AfterValidator(_duration_or_zero)]
"""A Prometheus duration that may also be ``0s``."""


def _storage_size(value: str) -> str:
    _quantity(value)
    if quantity_value(value) < 2**30:
        raise ValueError(
            f"volume size {value!r} is below 1Gi; give a size such as '10Gi'"
        )
    return value


Quantity = Annotated[str, AfterValidator(_quantity)]
"""A Kubernetes resource quantity: ``500m``, ``2Gi``."""

StorageSize = Annotated[str, AfterValidator(_storage_size)]
"""A volume size of at least 1Gi: ``20Gi``, ``100Gi``."""

DnsLabel = Annotated[str, AfterValidator(_dns_label)]
"""A Kubernetes namespace or object name."""

DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]
"""A Kubernetes object name that may contain dots, such as a StorageClass."""


def duration_seconds(value: str) -> float:
    """Return a Prometheus duration in seconds (``1h30m`` is 5400.0)."""
    units = {
        "ms": 0.001,
        "s": 1,
        "m": 60,
        "h": 3600,
        "d": 86400,
        "w": 604800,
        "y": 31536000,
    }
    return sum(
        int(number) * units[unit]
        for number, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", value)
    )


class Resources(StrictModel):
    """CPU and memory a container asks for and may not exceed."""

    cpu_request: Quantity = Field(description="CPU the scheduler reserves.")
    memory_request: Quantity = Field(description="Memory the scheduler reserves.")
    cpu_limit: Quantity = Field(description="CPU the container is throttled at.")
    memory_limit: Quantity = Field(
        description="Memory past which the container is killed."
    )

    @model_validator(mode="after")
    def _requests_fit_limits(self) -> Resources:
        for kind in ("memory_request", "memory_limit"):
            if quantity_value(getattr(self, kind)) < 4 * 2**20:
                raise ValueError(
                    f"{kind} {getattr(self, kind)!r} is below 4Mi; memory is "
                    "counted in bytes, so write e.g. '256Mi' ('m' means 1/1000)"
                )
        # The API server refuses a pod whose request exceeds its limit.
        for kind in ("cpu", "memory"):
            request = getattr(self, f"{kind}_request")
            limit = getattr(self, f"{kind}_limit")
            if quantity_value(request) > quantity_value(limit):
                raise ValueError(
                    f"{kind}_request {request!r} exceeds {kind}_limit {limit!r}; "
                    "a request must not be larger than its limit"
                )
        return self

    def to_k8s(self) -> k8s.ResourceRequirements:
        """Return the container ``resources`` block."""
        return k8s.ResourceRequirements(
            requests={
                "cpu": k8s.Quantity.from_string(self.cpu_request),
                "memory": k8s.Quantity.from_string(self.memory_request),
            },
            limits={
                "cpu": k8s.Quantity.from_string(self.cpu_limit),
                "memory": k8s.Quantity.from_string(self.memory_limit),
            },
        )


# --- identity --------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A Service's DNS name and port, as other components' configs use it."""

    host: str
    port: int
    scheme: str = "http"

    @property
    def address(self) -> str:
        """``host:port``, the form Prometheus targets take."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``scheme://host:port``, the form Grafana datasources take."""
        return f"{self.scheme}://{self.host}:{self.port}"


def image_tag(image: str) -> str:
    """Return the tag of a pinned image, used as the version label."""
    return image.split("@")[0].rsplit(":", 1)[1]


def pull_policy(image: str) -> str:
    """How the kubelet fetches ``image``: once for a digest, at each start for a tag.

    A digest names fixed content, so a cached copy is that content. A tag can
    be pushed again; ``Always`` makes the kubelet resolve it to a digest at
    every container start (layers it already has are not fetched again), so
    every node runs what the tag names now, and the registry checks the
    node's pull credentials each time. The price is that starting a pod needs
    the registry; pinning digests (docs/security.md) removes it.
    """
    return "IfNotPresent" if "@sha256:" in image else "Always"


def selector_labels(name: str) -> dict[str, str]:
    """Labels a Service or workload selects its pods by. Never changes."""
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name}


def standard_labels(name: str, component: str, version: str) -> dict[str, str]:
    """The ``app.kubernetes.io`` labels every object of a component carries."""
    return {
        **selector_labels(name),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": version,
    }


def metadata(
    name: str,
    labels: Mapping[str, str],
    namespace: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> k8s.ObjectMeta:
    """Object metadata; cluster-scoped objects pass no namespace."""
    return k8s.ObjectMeta(
        name=name,
        namespace=namespace,
        labels=dict(labels),
        annotations=dict(annotations) if annotations else None,
    )


def scan_exceptions(reasons: Mapping[str, str]) -> dict[str, str]:
    """Annotations that exempt one workload from named checkov checks.

    Each check gets its own ``checkov.io/skip<N>: <check>=<reason>``, the form
    checkov reads from a workload's own metadata. Only a workload that truly
    needs what a check forbids carries one; docs/security.md lists them all.
    """
    annotations = {}
    for number, (check, reason) in enumerate(sorted(reasons.items()), start=1):
        if not re.fullmatch(r"CKV2?_K8S_[0-9]+", check) or "=" in reason:
            # checkov splits the value on '=' and fails on a second one.
            raise ValueError(f"scan exception {check}={reason!r} is malformed")
        annotations[f"checkov.io/skip{number}"] = f"{check}={reason}"
    return annotations


def config_checksum(*documents: Any) -> str:
    """A digest of configuration, put on pod templates so edits roll pods."""
    text = json.dumps(documents, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- hardened pods ---------------------------------------------------------


def pod_security(
    user: int, group: int | None = None, fs_group: int | None = None
) -> k8s.PodSecurityContext:
    """Pod-level defaults: a numeric non-root user and the runtime's seccomp."""
    return k8s.PodSecurityContext(
        run_as_non_root=True,
        run_as_user=user,
        run_as_group=group if group is not None else user,
        fs_group=fs_group,
        seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault"),
    )


def container_security() -> k8s.SecurityContext:
    """Container defaults: read-only root, no capabilities, no escalation."""
    return k8s.SecurityContext(
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=k8s.Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault"),
    )


def http_probe(
    path: str,
    port: str,
    *,
    initial_delay_seconds: int = 5,
    period_seconds: int = 10,
    failure_threshold: int = 3,
    timeout_seconds: int = 5,
) -> k8s.Probe:
    """An HTTP GET probe against a named container port."""
    return k8s.Probe(
        http_get=k8s.HttpGetAction(path=path, port=k8s.IntOrString.from_string(port)),
        initial_delay_seconds=initial_delay_seconds,
        period_seconds=period_seconds,
        failure_threshold=failure_threshold,
        timeout_seconds=timeout_seconds,
    )


def container_port(name: str, port: int) -> k8s.ContainerPort:
    """A named TCP container port."""
    return k8s.ContainerPort(name=name, container_port=port, protocol="TCP")


def config_map_volume(
    name: str, config_map: str, items: Sequence[str] | None = None
) -> k8s.Volume:
    """A volume of a ConfigMap's keys, read-only to the owner."""
    return k8s.Volume(
        name=name,
        config_map=k8s.ConfigMapVolumeSource(
            name=config_map,
            default_mode=0o444,
            items=[k8s.KeyToPath(key=key, path=key) for key in items]
            if items
            else None,
        ),
    )


def secret_volume(name: str, secret: str, keys: Sequence[str]) -> k8s.Volume:
    """A volume of named keys of an operator-created Secret.

    Listing the keys makes a missing key fail the pod's start with a clear
    event instead of a later, quieter failure inside the program.
    """
    return k8s.Volume(
        name=name,
        secret=k8s.SecretVolumeSource(
            secret_name=secret,
            default_mode=0o440,
            items=[k8s.KeyToPath(key=key, path=key) for key in keys],
        ),
    )


def service_account_token_volume(name: str) -> k8s.Volume:
    """The files ``automountServiceAccountToken`` gives, as a volume.

    Mounted at :data:`SERVICE_ACCOUNT_DIR` in only the container that calls
    the API, it keeps the token out of the pod's other containers, which
    automounting would give it to. The token is the bound, hour-long one the
    kubelet rotates; clients re-read the file.
    """
    token, ca, namespace = SERVICE_ACCOUNT_FILES
    return k8s.Volume(
        name=name,
        projected=k8s.ProjectedVolumeSource(
            default_mode=0o440,
            sources=[
                k8s.VolumeProjection(
                    service_account_token=k8s.ServiceAccountTokenProjection(path=token)
                ),
                k8s.VolumeProjection(
                    config_map=k8s.ConfigMapProjection(
                        name=KUBE_ROOT_CA,
                        items=[k8s.KeyToPath(key=KUBE_ROOT_CA_KEY, path=ca)],
                    )
                ),
                k8s.VolumeProjection(
                    downward_api=k8s.DownwardApiProjection(
                        items=[
                            k8s.DownwardApiVolumeFile(
                                path=namespace,
                                field_ref=k8s.ObjectFieldSelector(
                                    api_version="v1", field_path="metadata.namespace"
                                ),
                            )
                        ]
                    )
                ),
            ],
        ),
    )


def mount(name: str, path: str, *, read_only: bool = True) -> k8s.VolumeMount:
    """A volume mount, read-only unless the program writes there."""
    return k8s.VolumeMount(name=name, mount_path=path, read_only=read_only)


def service(
    scope: Any,
    id: str,
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    ports: Sequence[tuple[str, int]],
    selector: Mapping[str, str],
    headless: bool = False,
) -> k8s.KubeService:
    """A Service whose named ports forward to the same-named container ports."""
    return k8s.KubeService(
        scope,
        id,
        metadata=metadata(name, labels, namespace),
        spec=k8s.ServiceSpec(
            type="ClusterIP",
            cluster_ip="None" if headless else None,
            # Peers of a headless governing Service must find each other
            # before they are ready, or a clustered set never forms.
            publish_not_ready_addresses=True if headless else None,
            selector=dict(selector),
            ports=[
                k8s.ServicePort(
                    name=port_name,
                    port=port,
                    target_port=k8s.IntOrString.from_string(port_name),
                    protocol="TCP",
                )
                for port_name, port in ports
            ],
        ),
    )


def rules_by_api_group(
    resources: Iterable[tuple[str, str]], verbs: Sequence[str]
) -> list[k8s.PolicyRule]:
    """RBAC rules granting ``verbs`` on ``(api group, resource)`` pairs.

    One rule per API group: a single rule listing several groups and
    resources would grant every resource in every one of those groups.
    """
    by_group: dict[str, list[str]] = {}
    for group, resource in sorted(set(resources)):
        by_group.setdefault(group, []).append(resource)
    return [
        k8s.PolicyRule(api_groups=[group], resources=names, verbs=list(verbs))
        for group, names in sorted(by_group.items())
    ]


def service_account(
    scope: Any,
    id: str,
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
) -> k8s.KubeServiceAccount:
    """A ServiceAccount whose token is mounted only into pods that ask."""
    return k8s.KubeServiceAccount(
        scope,
        id,
        metadata=metadata(name, labels, namespace),
        automount_service_account_token=False,
    )


def disruption_budget(
    scope: Any,
    id: str,
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    selector: Mapping[str, str],
) -> k8s.KubePodDisruptionBudget:
    """Let voluntary evictions take at most one pod of a replicated set."""
    return k8s.KubePodDisruptionBudget(
        scope,
        id,
        metadata=metadata(name, labels, namespace),
        spec=k8s.PodDisruptionBudgetSpec(
            max_unavailable=k8s.IntOrString.from_number(1),
            selector=k8s.LabelSelector(match_labels=dict(selector)),
        ),
    )


def spread_across_nodes(
    selector: Mapping[str, str], *, required: bool = False
) -> list[k8s.TopologySpreadConstraint]:
    """One pod of a replicated set per node: preferred, or ``required``.

    Required spreading leaves a replica Pending rather than doubling up, for
    sets whose point is to survive the loss of a node (the alerting path).
    """
    return [
        k8s.TopologySpreadConstraint(
            max_skew=1,
            topology_key="kubernetes.io/hostname",
            when_unsatisfiable="DoNotSchedule" if required else "ScheduleAnyway",
            label_selector=k8s.LabelSelector(match_labels=dict(selector)),
        )
    ]


def claim_template(
    name: str, size: str, storage_class: str | None, labels: Mapping[str, str]
) -> k8s.KubePersistentVolumeClaimProps:
    """A ReadWriteOnce volume claim template for a StatefulSet."""
    return k8s.KubePersistentVolumeClaimProps(
        metadata=k8s.ObjectMeta(name=name, labels=dict(labels)),
        spec=k8s.PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            storage_class_name=storage_class,
            resources=k8s.ResourceRequirements(
                requests={"storage": k8s.Quantity.from_string(size)}
            ),
        ),
    )


# --- secrets the operator creates -------------------------------------------


@dataclass(frozen=True)
class OperatorSecret:
    """A Secret the chart mounts but never renders: the operator creates it."""

    name: str
    namespace: str
    keys: tuple[str, ...]
    purpose: str


def declare_secret(
    owner: Any, *, name: str, namespace: str, keys: Sequence[str], purpose: str
) -> OperatorSecret:
    """Record that ``owner`` mounts an operator-created Secret.

    The synth-time reference check accepts a Secret volume only when its
    Secret and keys are declared, and the README's list of Secrets to
    create is tested against the declarations of the built-in charts.
    """
    secret = OperatorSecret(name, namespace, tuple(keys), purpose)
    declared = getattr(owner, "operator_secrets", None)
    if declared is None:
        declared = []
        owner.operator_secrets = declared
    declared.append(secret)
    return secret


def declared_secrets(scope: Any) -> list[OperatorSecret]:
    """Every operator Secret declared by a construct under ``scope``."""
    found: list[OperatorSecret] = []
    for construct in scope.node.find_all():
        found += getattr(construct, "operator_secrets", [])
    return found


# --- configuration files ----------------------------------------------------


class _PlainDumper(yaml.SafeDumper):
    """A safe dumper that writes repeated values out instead of aliasing.

    PyYAML turns a list used twice into an ``&id001`` anchor and an alias;
    not every program's YAML reader follows aliases, and a reader of the
    rendered file should not have to.
    """

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_config(data: Any) -> str:
    """A program's YAML configuration file, keys in the order given."""
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False)
