"""Elasticsearch 8.5: the log store, with security on and TLS on both layers.

Every node is master-eligible and holds data. A StatefulSet gives each node
a stable name (``elasticsearch-0`` ...) and its own volume; the headless
Service ``elasticsearch-headless`` lets the nodes find each other, and the
client Service ``elasticsearch`` is the address of the shared client
contract (``constructs_lib/elastic.py``). With one replica the node runs
with ``discovery.type: single-node``, which Elasticsearch refuses to combine
with ``cluster.initial_master_nodes``.

Decisions, each explained where it is made:

- **mmap.** ``allow_mmap`` defaults to false, which sets
  ``node.store.allow_mmap: false``: Elasticsearch then skips the bootstrap
  check that ``vm.max_map_count`` is at least 262144, so no privileged init
  container has to raise a kernel setting on the node. The cost is speed:
  index files are read through NIO instead of memory maps, which is slower
  on large indices. Set it true only on nodes the operator has prepared with
  ``sysctl -w vm.max_map_count=262144`` (persisted in ``/etc/sysctl.d/``);
  the setting is not namespaced, so no pod can set it for itself.
- **Read-only root.** The image's entrypoint writes the keystore into the
  config directory and bash writes a here-string file to ``/tmp``, and
  Elasticsearch writes its private temporary directory under ``/tmp`` and
  JVM error files under ``logs/``. An init container copies the image's
  config directory and ``elasticsearch.yml`` into an emptyDir, and ``/tmp``
  and ``logs/`` are emptyDirs; nothing else is written outside the data
  volume. GC logs go to stderr, not to 2 GB of files under ``logs/``.
- **Password file.** ``ELASTIC_PASSWORD_FILE`` is read by the image's
  ``elasticsearch-env-from-file``, which refuses any file whose mode is not
  400 or 600. A Secret volume in a pod with an ``fsGroup`` always has group
  read (mode 440), so the init container copies the password into a
  memory-backed emptyDir with mode 600, and the variable points there.
- **Probes.** Readiness runs ``readiness-probe.sh`` from the ConfigMap: curl
  with the cluster CA and the elastic password from that file (given to
  curl on its standard input, never on a command line), against
  ``/_cluster/health``. The first time a node becomes ready it waits for the
  cluster to be green (yellow for a single node), so a rolling restart moves
  to the next node only after the shards have recovered, as Elasticsearch's
  rolling-restart procedure asks; afterwards it asks the node's local state
  only. Liveness and startup are TCP checks on the HTTP port: restarting a
  busy node never helps it, so liveness only catches a dead listener.
- **Spreading.** With more than one replica the masters are spread over
  nodes with ``DoNotSchedule``: two masters on one node would lose quorum
  with that node. ``maxSkew`` 1 still lets pods double up, evenly, when the
  cluster has fewer eligible nodes than replicas, so the set never waits
  Pending for a node that does not exist.

The operator creates two Secrets: ``elasticsearch-certs`` (``ca.crt``,
``tls.crt``, ``tls.key``, PEM; the certificate names every DNS name in
:func:`certificate_sans`) and ``elasticsearch-elastic`` (``password``, the
bootstrap password of the built-in ``elastic`` user).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from constructs import Construct
from pydantic import AfterValidator, Field, field_validator, model_validator

from constructs_lib import elastic
from constructs_lib.common import (
    DnsLabel,
    DnsSubdomain,
    Image,
    Resources,
    StorageSize,
    StrictModel,
    claim_template,
    config_checksum,
    config_map_volume,
    container_port,
    container_security,
    declare_secret,
    disruption_budget,
    dump_config,
    image_tag,
    metadata,
    mount,
    pull_policy,
    secret_volume,
    selector_labels,
    service,
    service_account,
    standard_labels,
)
from constructs_lib.errors import ConfigurationError
from imports import k8s

NAME = "elasticsearch"
HEADLESS = f"{NAME}-headless"
HTTP_PORT = elastic.ELASTICSEARCH.port
TRANSPORT_PORT = 9300
HTTP_PORT_NAME = "https"
TRANSPORT_PORT_NAME = "transport"
# The image is built for uid 1000, but every file it needs is readable by
# anyone and everything it writes is a mounted volume, so it runs as a uid of
# its own above the range hosts hand out (>= 10000; docs/security.md).
ELASTICSEARCH_USER = 11000

HOME = "/usr/share/elasticsearch"
CONFIG_DIR = f"{HOME}/config"
CERTS_DIR = f"{CONFIG_DIR}/certs"
DATA_DIR = f"{HOME}/data"
LOGS_DIR = f"{HOME}/logs"
TMP_DIR = "/tmp"
TEMPLATE_DIR = "/mnt/elasticsearch-config"
"""Where the ConfigMap is mounted: the init container copies from it."""
INIT_CONFIG_DIR = "/mnt/config"
"""The config emptyDir as the init container sees it."""
ELASTIC_SECRET_DIR = "/mnt/elastic-password"
BOOTSTRAP_DIR = "/mnt/elastic-bootstrap"
BOOTSTRAP_PASSWORD_FILE = f"{BOOTSTRAP_DIR}/{elastic.PASSWORD_KEY}"
PROBE_SCRIPT = "readiness-probe.sh"
READY_MARKER = f"{TMP_DIR}/.elasticsearch-ready-once"

CONFIG_FILE = "elasticsearch.yml"
NODE_NAME = "${POD_NAME}"
"""``node.name``: Elasticsearch expands it from the pod's own name."""

# Paths in elasticsearch.yml are relative to the config directory, the only
# place Elasticsearch's security manager lets it read key material from.
TLS_SETTINGS = {
    "key": f"certs/{elastic.KEY_KEY}",
    "certificate": f"certs/{elastic.CERT_KEY}",
    "certificate_authorities": [f"certs/{elastic.CA_KEY}"],
}

_JAVA_SIZE = re.compile(r"^([1-9][0-9]*)([mMgG])$")
_JAVA_UNITS = {"m": 2**20, "g": 2**30}
_QUANTITY_UNITS = {
    "": 1,
    "m": 10**-3,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def _java_size(value: str) -> str:
    if not _JAVA_SIZE.fullmatch(value):
        raise ValueError(
            f"heap size {value!r} is not a JVM size such as '512m' or '2g' "
            "(a whole number of megabytes or gigabytes)"
        )
    return value


JavaSize = Annotated[str, AfterValidator(_java_size)]
"""A JVM memory size for ``-Xms``/``-Xmx``: ``512m``, ``2g``."""


def java_size_bytes(value: str) -> int:
    """``2g`` as bytes, as the JVM reads it (binary units)."""
    match = _JAVA_SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"not a JVM size: {value!r}")
    return int(match.group(1)) * _JAVA_UNITS[match.group(2).lower()]


def quantity_bytes(value: str) -> float:
    """A Kubernetes memory quantity (``4Gi``, ``4G``, ``512Mi``) as bytes."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", value)
    if match is None or match.group(2) not in _QUANTITY_UNITS:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(match.group(1)) * _QUANTITY_UNITS[match.group(2)]


def _cluster_name(value: str) -> str:
    # ClusterName refuses an empty name and a ':' (remote cluster syntax).
    if not value or ":" in value:
        raise ValueError(f"cluster name {value!r} must be non-empty and contain no ':'")
    return value


class ElasticsearchSettings(StrictModel):
    """How the Elasticsearch cluster runs in one environment."""

    image: Image = Field(
        default="docker.elastic.co/elasticsearch/elasticsearch:8.5.0",
        description="Elasticsearch image. Defaults to 8.5.0, the release the "
        "design names; Kibana must run the same version.",
    )
    setup_image: Image = Field(
        default="curlimages/curl:8.4.0",
        description="Image of the elasticsearch-setup CronJob, which creates "
        "the users, roles and index settings with curl. Any image with "
        "/bin/sh and curl works.",
    )
    replicas: int = Field(
        default=3,
        ge=1,
        le=25,
        description="Nodes, each master-eligible and holding data. Defaults "
        "to 3, which survives the loss of any one node; 1 runs a single-node "
        "cluster (staging). 2 keeps a replica of the data but not the "
        "cluster: losing either node loses the master quorum.",
    )
    heap_size: JavaSize = Field(
        default="2g",
        description="JVM heap, set as both -Xms and -Xmx. At most half the "
        "memory limit: Lucene needs the rest for the filesystem cache. "
        "Defaults to 2g.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="1",
            memory_request="4Gi",
            cpu_limit="2",
            memory_limit="4Gi",
        ),
        description="Elasticsearch container resources. Defaults to the "
        "design's: 1 CPU requested, 2 allowed, 4Gi of memory.",
    )
    storage_size: StorageSize = Field(
        default="100Gi", description="Each node's data volume. Defaults to 100Gi."
    )
    storage_class: DnsSubdomain | None = Field(
        default=None,
        description="StorageClass of the data volumes. Defaults to the "
        "cluster's default class.",
    )
    cluster_name: Annotated[str, AfterValidator(_cluster_name)] = Field(
        default="sunday-logs",
        description="cluster.name; nodes join only a cluster of this name. "
        "Defaults to 'sunday-logs'.",
    )
    credentials_secret: DnsLabel = Field(
        default="elasticsearch-elastic",
        description="Operator-created Secret whose key 'password' is the "
        "bootstrap password of the built-in 'elastic' user (the setup Job "
        "logs in with it). Defaults to 'elasticsearch-elastic'.",
    )
    allow_mmap: bool = Field(
        default=False,
        description="Let Elasticsearch memory-map index files. Faster on "
        "large indices, but every node that may run Elasticsearch must have "
        "vm.max_map_count >= 262144 (sysctl, set by the node's operator), or "
        "the node refuses to start. Defaults to false.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the pods must run on, for instance the "
        "label of nodes prepared for allow_mmap. Defaults to none.",
    )

    @field_validator("resources")
    @classmethod
    def _memory_is_bytes(cls, resources: Resources) -> Resources:
        for value in (resources.memory_request, resources.memory_limit):
            if value.endswith("m") or quantity_bytes(value) < 2**30:
                raise ValueError(
                    f"memory {value!r} is below 1Gi (or in millibytes); "
                    "Elasticsearch needs at least 1Gi"
                )
        return resources

    @model_validator(mode="after")
    def _heap_fits(self) -> ElasticsearchSettings:
        problem = heap_problem(self.heap_size, self.resources.memory_limit)
        if problem:
            raise ValueError(problem)
        return self


def heap_problem(heap_size: str, memory_limit: str) -> str | None:
    """Why a heap does not fit the container's memory limit, or None."""
    heap = java_size_bytes(heap_size)
    limit = quantity_bytes(memory_limit)
    if heap > limit:
        return (
            f"heap_size {heap_size} exceeds the memory limit {memory_limit}; "
            "the kernel would kill the JVM"
        )
    if heap > limit / 2:
        return (
            f"heap_size {heap_size} is more than half the memory limit "
            f"{memory_limit}; Elasticsearch needs the other half for off-heap "
            f"buffers and the filesystem cache: use at most "
            f"{int(limit / 2 // 2**20)}m or raise resources.memory_limit"
        )
    return None


def pod_names(replicas: int) -> list[str]:
    """The StatefulSet's pod names, which are also the node names."""
    return [f"{NAME}-{index}" for index in range(replicas)]


def certificate_sans(
    namespace: str, cluster_domain: str = "cluster.local"
) -> list[str]:
    """DNS names the node certificate in ``elasticsearch-certs`` must carry.

    Clients verify the name they connect to: the Service ``elasticsearch``
    in every form a pod can write it, and each node by its stable name under
    the headless Service. The readiness probe connects to ``elasticsearch``
    on 127.0.0.1, so no IP address is needed. Node-to-node TLS verifies the
    certificate against the CA only (nodes publish IP addresses).
    """
    names = []
    for service_name in (NAME, HEADLESS):
        names += [
            service_name,
            f"{service_name}.{namespace}",
            f"{service_name}.{namespace}.svc",
            f"{service_name}.{namespace}.svc.{cluster_domain}",
        ]
    names += [
        f"*.{HEADLESS}.{namespace}",
        f"*.{HEADLESS}.{namespace}.svc",
        f"*.{HEADLESS}.{namespace}.svc.{cluster_domain}",
    ]
    return names


def openssl_subject_alt_name(
    namespace: str, cluster_domain: str = "cluster.local"
) -> str:
    """The ``subjectAltName`` value for ``openssl req -addext``/``x509 -extfile``.

    The certificate serves both layers: HTTP (clients) and transport, where
    each node is also a TLS client of the others. If the certificate lists
    extended key usages at all, it must list both ``serverAuth`` and
    ``clientAuth``.
    """
    return ",".join(
        f"DNS:{name}" for name in certificate_sans(namespace, cluster_domain)
    )


def declare_certs_secret(owner: Construct, namespace: str) -> None:
    """Declare ``elasticsearch-certs``, the same way wherever it is mounted.

    Kibana and the setup Job mount only ``ca.crt``; the declaration still
    lists every key, because it describes the Secret the operator creates.
    """
    declare_secret(
        owner,
        name=elastic.CERTS_SECRET,
        namespace=namespace,
        keys=(elastic.CA_KEY, elastic.CERT_KEY, elastic.KEY_KEY),
        purpose="the CA, and the node certificate and key of Elasticsearch's "
        "HTTP and transport TLS (PEM); the certificate names every DNS name "
        "of elasticsearch.certificate_sans(namespace)",
    )


def elasticsearch_config(settings: ElasticsearchSettings) -> dict[str, Any]:
    """The whole ``elasticsearch.yml`` as data, with flat dotted keys."""
    config: dict[str, Any] = {
        "cluster.name": settings.cluster_name,
        "node.name": NODE_NAME,
        # The default binds loopback only; the Services reach the pod's IP.
        "network.host": "0.0.0.0",
        "http.port": HTTP_PORT,
        "transport.port": TRANSPORT_PORT,
    }
    if settings.replicas == 1:
        config["discovery.type"] = "single-node"
    else:
        # The headless Service resolves to every pod, ready or not.
        config["discovery.seed_hosts"] = [HEADLESS]
        # The very first election counts exactly these nodes' votes.
        config["cluster.initial_master_nodes"] = pod_names(settings.replicas)
    if not settings.allow_mmap:
        config["node.store.allow_mmap"] = False
    config["xpack.security.enabled"] = True
    for layer in ("transport", "http"):
        prefix = f"xpack.security.{layer}.ssl"
        config[f"{prefix}.enabled"] = True
        if layer == "transport":
            # Nodes connect to each other's published IP addresses, which no
            # certificate names; the CA alone decides who is a node.
            config[f"{prefix}.verification_mode"] = "certificate"
        for key, value in TLS_SETTINGS.items():
            config[f"{prefix}.{key}"] = value
    return config


# --- the rules Elasticsearch 8.5 enforces ------------------------------------

# docs/reference/migration/migrate_8_0/cluster-node-setting-changes.asciidoc:
# each of these is removed in 8.0, and "specifying [it] in elasticsearch.yml
# will result in an error on startup".
REMOVED_SETTINGS = frozenset(
    {
        "cluster.routing.allocation.disk.include_relocations",
        "cluster.join.timeout",
        "http.content_type.required",
        "http.tcp_no_delay",
        "network.tcp.connect_timeout",
        "node.max_local_storage_nodes",
        "xpack.security.authc.accept_default_password",
        "xpack.security.authz.store.roles.index.cache.max_size",
        "xpack.security.authz.store.roles.index.cache.ttl",
        "pidfile",
        "processors",
        "cluster.remote.connect",
        "node.local_storage",
        # Settings that disabled basic-license features.
        "xpack.enrich.enabled",
        "xpack.flattened.enabled",
        "xpack.ilm.enabled",
        "xpack.monitoring.enabled",
        "xpack.rollup.enabled",
        "xpack.slm.enabled",
        "xpack.sql.enabled",
        "xpack.transform.enabled",
        "xpack.vectors.enabled",
        # Recovery deferred on master counts.
        "gateway.expected_nodes",
        "gateway.expected_master_nodes",
        "gateway.recover_after_nodes",
        "gateway.recover_after_master_nodes",
        "gateway.auto_import_dangling_indices",
        # Legacy role settings, replaced by node.roles.
        "node.data",
        "node.ingest",
        "node.master",
        "node.ml",
        "node.remote_cluster_client",
        "node.transform",
        "node.voting_only",
        "bootstrap.system_call_filter",
        "cluster.routing.allocation.include._tier",
        "cluster.routing.allocation.exclude._tier",
        "cluster.routing.allocation.require._tier",
        "transport.tcp.port",
        "transport.tcp.compress",
        "transport.tcp.connect_timeout",
        "transport.tcp_no_delay",
    }
)
REMOVED_PREFIXES = (
    "discovery.zen.",  # all of them, "only for BWC reasons in 7.x"
    "search.remote.",  # replaced by cluster.remote.*
    "thread_pool.listener.",  # the listener thread pool is gone
)
_REMOVED_PROFILE_SETTING = re.compile(
    r"^transport\.profiles\.[^.]+\.(tcp_no_delay|tcp_keep_alive|reuse_address|"
    r"send_buffer_size|receive_buffer_size|xpack\.security\.type)$"
)
_LOOPBACK = {"_local_", "localhost", "127.0.0.1", "::1", "[::1]", "_lo_"}
_VERIFICATION_MODES = {"full", "certificate", "none"}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``, the way Elasticsearch reads YAML."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return list(value)


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def check_elasticsearch_config(
    config: Mapping[str, Any],
    replicas: int,
    *,
    heap_size: str | None = None,
    memory_limit: str | None = None,
) -> list[str]:
    """Why Elasticsearch 8.5 would refuse this config, or fail to cluster.

    ``config`` is ``elasticsearch.yml`` as data (nested or dotted keys) for
    a StatefulSet of ``replicas`` pods named ``elasticsearch-N``, whose
    ``node.name`` is ``${POD_NAME}``. Each rule names the setting it is
    about; an empty list means no rule found a problem.
    """
    flat = flatten(config)
    problems: list[str] = []

    # An unknown or removed setting stops the node at startup.
    for key in sorted(flat):
        if (
            key in REMOVED_SETTINGS
            or key.startswith(REMOVED_PREFIXES)
            or _REMOVED_PROFILE_SETTING.match(key)
        ):
            problems.append(
                f"{key} was removed in Elasticsearch 8.0; a node with it in "
                "elasticsearch.yml refuses to start"
            )

    # cluster.name: ClusterName refuses an empty name and ':'.
    name = flat.get("cluster.name")
    if name is not None and (not str(name) or ":" in str(name)):
        problems.append(f"cluster.name {name!r} must be non-empty and contain no ':'")

    discovery = flat.get("discovery.type", "multi-node")
    initial = _as_list(flat.get("cluster.initial_master_nodes"))
    roles = flat.get("node.roles")
    if discovery not in ("multi-node", "single-node"):
        # DiscoveryModule: "Unknown discovery type [...]".
        problems.append(
            f"discovery.type {discovery!r} is unknown; Elasticsearch accepts "
            "'multi-node' (the default) or 'single-node'"
        )
    if roles is not None and "master" not in _as_list(roles):
        # Every pod runs this config: a single node must be master-eligible,
        # and initial_master_nodes must name master-eligible nodes.
        problems.append(
            f"node.roles {roles!r} has no 'master'; this StatefulSet's nodes "
            "must be master-eligible or no master is ever elected"
        )
    if discovery == "single-node":
        if initial:
            # Coordinator: "setting [cluster.initial_master_nodes] is not
            # allowed when [discovery.type] is set to [single-node]".
            problems.append(
                "cluster.initial_master_nodes is not allowed with "
                "discovery.type single-node; Elasticsearch refuses to start"
            )
        if replicas > 1:
            problems.append(
                f"discovery.type single-node with {replicas} replicas: each pod "
                "would form a one-node cluster of its own"
            )
    if discovery == "multi-node":
        seeds = _as_list(flat.get("discovery.seed_hosts"))
        if replicas > 1 and not seeds and not flat.get("discovery.seed_providers"):
            # Without seeds a node only probes ports 9300-9305 on loopback;
            # the discovery-configuration bootstrap check also asks for one.
            problems.append(
                "discovery.seed_hosts is empty; the nodes could not find each other"
            )
        expected = pod_names(replicas)
        if replicas > 1 and initial != expected:
            # Bootstrapping waits for the named nodes: a name no node has
            # stalls it forever, a missing node could bootstrap twice.
            problems.append(
                f"cluster.initial_master_nodes is {initial}, not the pod names "
                f"{expected}; the first election would never complete"
            )
        if replicas > 1 and flat.get("node.name") != NODE_NAME:
            problems.append(
                f"node.name is {flat.get('node.name')!r}, not {NODE_NAME!r}; "
                "cluster.initial_master_nodes names nodes by their pod names"
            )
        if replicas == 1 and not initial and not seeds:
            # Discovery-configuration bootstrap check: a production-mode
            # multi-node node needs seeds or initial masters.
            problems.append(
                "a single multi-node replica needs cluster.initial_master_nodes "
                "(or discovery.type single-node) to bootstrap"
            )

    host = flat.get("network.host", "_local_")
    binds = [flat.get("http.host", host), flat.get("transport.host", host)]
    if any(str(bind) in _LOOPBACK for bind in binds):
        problems.append(
            "network.host (or http.host/transport.host) binds loopback only; "
            "no Service and no other node could reach the node"
        )

    security = _true(flat.get("xpack.security.enabled", True))
    if not security:
        problems.append(
            "xpack.security.enabled is false; every client of the stack "
            "(constructs_lib/elastic.py) logs in over HTTPS"
        )
    for layer in ("transport", "http"):
        problems += _ssl_problems(flat, layer)
    transport_tls = _true(flat.get("xpack.security.transport.ssl.enabled"))
    if security and discovery != "single-node" and not transport_tls:
        # TLS bootstrap check: "Transport SSL must be enabled if security is
        # enabled" outside single-node discovery.
        problems.append(
            "xpack.security.transport.ssl.enabled must be true when security "
            "is on and the cluster is not single-node"
        )
    if not _true(flat.get("xpack.security.http.ssl.enabled")):
        if _true(flat.get("xpack.security.authc.token.enabled")):
            # Token SSL bootstrap check.
            problems.append(
                "xpack.security.authc.token.enabled needs "
                "xpack.security.http.ssl.enabled"
            )
        problems.append(
            "xpack.security.http.ssl.enabled is not true; the clients connect "
            "to https://elasticsearch:9200"
        )
    if _true(flat.get("bootstrap.memory_lock")):
        # Memory lock bootstrap check: locking needs RLIMIT_MEMLOCK, which a
        # container without capabilities cannot raise.
        problems.append(
            "bootstrap.memory_lock cannot succeed without privileges; the "
            "memory-lock bootstrap check would stop the node"
        )

    if heap_size is not None and memory_limit is not None:
        problem = heap_problem(heap_size, memory_limit)
        if problem:
            problems.append(problem)
    return problems


def _ssl_problems(flat: Mapping[str, Any], layer: str) -> list[str]:
    prefix = f"xpack.security.{layer}.ssl."
    settings = {
        key[len(prefix) :]: v for key, v in flat.items() if key.startswith(prefix)
    }
    if not settings:
        return []
    problems = []
    if "enabled" not in settings:
        # 8.0: "It is now an error to configure any SSL settings for
        # xpack.security.<layer>.ssl without also configuring ...enabled".
        problems.append(
            f"{prefix}* settings need an explicit {prefix}enabled (8.0 refuses "
            "them without it)"
        )
    mode = settings.get("verification_mode")
    if mode is not None and mode not in _VERIFICATION_MODES:
        problems.append(
            f"{prefix}verification_mode {mode!r} is not one of "
            f"{sorted(_VERIFICATION_MODES)}"
        )
    if not _true(settings.get("enabled")):
        return problems
    has_pem = "key" in settings or "certificate" in settings
    has_keystore = "keystore.path" in settings
    if has_pem and has_keystore:
        problems.append(
            f"{prefix}key/certificate and {prefix}keystore.path exclude each other"
        )
    if has_pem and not ("key" in settings and "certificate" in settings):
        problems.append(f"{prefix}key and {prefix}certificate must be set together")
    if not has_pem and not has_keystore:
        # 8.0: enabling SSL without a certificate and key is an error.
        problems.append(
            f"{prefix}enabled is true but no certificate and key are set; "
            "Elasticsearch refuses to start"
        )
    if (
        layer == "transport"
        and mode != "none"
        and "certificate_authorities" not in settings
        and "truststore.path" not in settings
    ):
        # Nodes would not trust each other's certificates from a private CA.
        problems.append(
            f"{prefix}certificate_authorities is not set; nodes could not "
            "verify each other's certificates and never form a cluster"
        )
    return problems


# --- the readiness probe -------------------------------------------------------


def readiness_script(replicas: int) -> str:
    """``readiness-probe.sh``: ready once the cluster is healthy, then alive.

    The password is read from the pod's own copy of the bootstrap password
    and handed to curl as a config on standard input, so it is on no
    command line. curl connects to 127.0.0.1 under the Service name, which
    the certificate names.
    """
    status = "yellow" if replicas == 1 else "green"
    host = elastic.ELASTICSEARCH.host
    ca = f"{CERTS_DIR}/{elastic.CA_KEY}"
    return f"""#!/bin/sh
# Readiness of one Elasticsearch node. No credential is in the pod spec: the
# elastic password is read from a file and reaches curl on standard input.
set -eu
if [ -f {READY_MARKER} ]; then
  # Once ready, the node is ready while it answers from its local state.
  path='/_cluster/health?local=true'
else
  # A (re)started node waits for a {status} cluster, so a rolling restart
  # moves to the next node only once the shards have recovered.
  path='/_cluster/health?wait_for_status={status}&timeout=1s'
fi
password=$(cat {BOOTSTRAP_PASSWORD_FILE})
escaped=$(printf '%s' "$password" | sed 's/[\\\\"]/\\\\&/g')
code=$(printf 'user = "elastic:%s"\\n' "$escaped" |
  curl -q --silent --config - --max-time 8 --cacert {ca} \\
    --resolve {host}:{HTTP_PORT}:127.0.0.1 --output /dev/null \\
    --write-out '%{{http_code}}' "https://{host}:{HTTP_PORT}$path") || true
if [ "$code" != 200 ]; then
  echo "not ready: GET $path answered ${{code:-nothing}}" >&2
  exit 1
fi
touch {READY_MARKER}
"""


def spread_masters(selector: Mapping[str, str]) -> list[k8s.TopologySpreadConstraint]:
    """One master per node where the nodes exist, evenly where they do not.

    ``DoNotSchedule`` because two masters on one node lose quorum with it;
    tainted nodes are left out of the count (``Honor``), or an untolerated
    control-plane node would count as an empty domain and hold a pod Pending.
    """
    return [
        k8s.TopologySpreadConstraint(
            max_skew=1,
            topology_key="kubernetes.io/hostname",
            when_unsatisfiable="DoNotSchedule",
            node_taints_policy="Honor",
            label_selector=k8s.LabelSelector(match_labels=dict(selector)),
        )
    ]


def _empty_dir(name: str, size: str, *, memory: bool = False) -> k8s.Volume:
    return k8s.Volume(
        name=name,
        empty_dir=k8s.EmptyDirVolumeSource(
            medium="Memory" if memory else None,
            size_limit=k8s.Quantity.from_string(size),
        ),
    )


class Elasticsearch(Construct):
    """The Elasticsearch StatefulSet, its Services, config and budget."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: ElasticsearchSettings,
        namespace: str,
    ) -> None:
        super().__init__(scope, id)
        self.settings = settings
        self.namespace = namespace
        self.endpoint = elastic.ELASTICSEARCH
        labels = standard_labels(NAME, "logs", image_tag(settings.image))
        selector = selector_labels(NAME)

        self.config = elasticsearch_config(settings)
        problems = check_elasticsearch_config(
            self.config,
            settings.replicas,
            heap_size=settings.heap_size,
            memory_limit=settings.resources.memory_limit,
        )
        if problems:
            raise ConfigurationError("elasticsearch config", "; ".join(problems))
        self.probe_script = readiness_script(settings.replicas)

        # Elasticsearch does not call the Kubernetes API; no token.
        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        declare_certs_secret(self, namespace)
        declare_secret(
            self,
            name=settings.credentials_secret,
            namespace=namespace,
            keys=(elastic.PASSWORD_KEY,),
            purpose="the bootstrap password of Elasticsearch's 'elastic' user",
        )

        config_map = k8s.KubeConfigMap(
            self,
            "config",
            metadata=metadata(f"{NAME}-config", labels, namespace),
            data={
                CONFIG_FILE: dump_config(self.config),
                PROBE_SCRIPT: self.probe_script,
            },
        )
        governing = service(
            self,
            "headless",
            name=HEADLESS,
            namespace=namespace,
            labels=labels,
            ports=[(HTTP_PORT_NAME, HTTP_PORT), (TRANSPORT_PORT_NAME, TRANSPORT_PORT)],
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
                # The first election needs a majority of the initial masters
                # running at once; OrderedReady would wait for elasticsearch-0
                # to be ready, which it cannot be alone. Rolling updates still
                # replace one pod at a time, waiting for readiness.
                pod_management_policy="Parallel",
                selector=k8s.LabelSelector(match_labels=selector),
                update_strategy=k8s.StatefulSetUpdateStrategy(type="RollingUpdate"),
                template=self._pod_template(labels, selector),
                volume_claim_templates=[
                    claim_template(
                        "data", settings.storage_size, settings.storage_class, labels
                    )
                ],
            ),
        )
        self.statefulset.add_dependency(config_map)
        self.statefulset.add_dependency(governing)

        self.service = service(
            self,
            "service",
            name=self.endpoint.host,
            namespace=namespace,
            labels=labels,
            ports=[(HTTP_PORT_NAME, HTTP_PORT)],
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

    def _pod_template(
        self, labels: Mapping[str, str], selector: Mapping[str, str]
    ) -> k8s.PodTemplateSpec:
        settings = self.settings
        heap = settings.heap_size
        java_opts = " ".join(
            [
                f"-Xms{heap}",
                f"-Xmx{heap}",
                # GC logs to stderr instead of up to 2 GB of files in logs/.
                "-Xlog:disable",
                "-Xlog:all=warning:stderr:utctime,level,tags",
            ]
        )
        prepare = k8s.Container(
            name="prepare-config",
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            command=["/bin/sh", "-c"],
            args=[
                "set -eu\n"
                # The image's config directory (jvm.options, log4j2) is the
                # base; elasticsearch.yml comes from the ConfigMap.
                f"cp -R {CONFIG_DIR}/. {INIT_CONFIG_DIR}/\n"
                f"cp {TEMPLATE_DIR}/{CONFIG_FILE} {INIT_CONFIG_DIR}/{CONFIG_FILE}\n"
                # elasticsearch-env-from-file accepts only mode 400 or 600.
                "umask 077\n"
                f"cat {ELASTIC_SECRET_DIR}/{elastic.PASSWORD_KEY} > "
                f"{BOOTSTRAP_PASSWORD_FILE}\n"
            ],
            resources=k8s.ResourceRequirements(
                requests={
                    "cpu": k8s.Quantity.from_string("50m"),
                    "memory": k8s.Quantity.from_string("64Mi"),
                },
                limits={
                    "cpu": k8s.Quantity.from_string("200m"),
                    "memory": k8s.Quantity.from_string("128Mi"),
                },
            ),
            security_context=container_security(),
            volume_mounts=[
                mount("config-template", TEMPLATE_DIR),
                mount("elastic-password", ELASTIC_SECRET_DIR),
                mount("config", INIT_CONFIG_DIR, read_only=False),
                mount("bootstrap", BOOTSTRAP_DIR, read_only=False),
            ],
        )
        elasticsearch = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            # The image's entrypoint and command stay: they create the
            # keystore with the bootstrap password and start the node.
            env=[
                k8s.EnvVar(
                    name="POD_NAME",
                    value_from=k8s.EnvVarSource(
                        field_ref=k8s.ObjectFieldSelector(field_path="metadata.name")
                    ),
                ),
                k8s.EnvVar(name="ES_JAVA_OPTS", value=java_opts),
                k8s.EnvVar(name="ELASTIC_PASSWORD_FILE", value=BOOTSTRAP_PASSWORD_FILE),
            ],
            ports=[
                container_port(HTTP_PORT_NAME, HTTP_PORT),
                container_port(TRANSPORT_PORT_NAME, TRANSPORT_PORT),
            ],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            readiness_probe=k8s.Probe(
                exec=k8s.ExecAction(
                    command=["/bin/sh", f"{TEMPLATE_DIR}/{PROBE_SCRIPT}"]
                ),
                period_seconds=10,
                timeout_seconds=10,
                failure_threshold=3,
            ),
            # Recovering a node's indices before HTTP binds can take minutes.
            startup_probe=k8s.Probe(
                tcp_socket=k8s.TcpSocketAction(
                    port=k8s.IntOrString.from_string(HTTP_PORT_NAME)
                ),
                period_seconds=10,
                failure_threshold=60,
                timeout_seconds=5,
            ),
            liveness_probe=k8s.Probe(
                tcp_socket=k8s.TcpSocketAction(
                    port=k8s.IntOrString.from_string(HTTP_PORT_NAME)
                ),
                period_seconds=20,
                failure_threshold=6,
                timeout_seconds=5,
            ),
            volume_mounts=[
                mount("config", CONFIG_DIR, read_only=False),
                mount("certs", CERTS_DIR),
                mount("config-template", TEMPLATE_DIR),
                mount("bootstrap", BOOTSTRAP_DIR),
                mount("data", DATA_DIR, read_only=False),
                mount("logs", LOGS_DIR, read_only=False),
                mount("tmp", TMP_DIR, read_only=False),
            ],
        )
        return k8s.PodTemplateSpec(
            metadata=k8s.ObjectMeta(
                labels=dict(labels),
                annotations={
                    # elasticsearch.yml is read only at start.
                    "checksum/config": config_checksum(self.config, self.probe_script),
                },
            ),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                automount_service_account_token=False,
                # Service links would put every Service's address into the
                # environment of a program that reads it for settings.
                enable_service_links=False,
                security_context=_pod_security(),
                # Time to hand shards off and leave the cluster cleanly.
                termination_grace_period_seconds=120,
                node_selector=dict(settings.node_selector) or None,
                topology_spread_constraints=spread_masters(selector)
                if settings.replicas > 1
                else None,
                init_containers=[prepare],
                containers=[elasticsearch],
                volumes=[
                    config_map_volume(
                        "config-template", f"{NAME}-config", [CONFIG_FILE, PROBE_SCRIPT]
                    ),
                    secret_volume(
                        "certs",
                        elastic.CERTS_SECRET,
                        [elastic.CA_KEY, elastic.CERT_KEY, elastic.KEY_KEY],
                    ),
                    secret_volume(
                        "elastic-password",
                        settings.credentials_secret,
                        [elastic.PASSWORD_KEY],
                    ),
                    _empty_dir("config", "64Mi"),
                    # In memory: the bootstrap password never touches a disk.
                    _empty_dir("bootstrap", "1Mi", memory=True),
                    _empty_dir("logs", "512Mi"),
                    _empty_dir("tmp", "1Gi"),
                ],
            ),
        )


def _pod_security() -> k8s.PodSecurityContext:
    """``common.pod_security`` for its own uid, changing volume ownership once.

    ``OnRootMismatch``: a 100Gi data volume is re-owned by ``fsGroup`` only
    when its root is not already, not file by file at every start.
    """
    return k8s.PodSecurityContext(
        run_as_non_root=True,
        run_as_user=ELASTICSEARCH_USER,
        run_as_group=ELASTICSEARCH_USER,
        fs_group=ELASTICSEARCH_USER,
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault"),
    )
