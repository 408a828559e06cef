"""Jaeger: receives the application's traces and serves them to Grafana.

Two shapes, chosen per environment by ``JaegerSettings.mode``:

* ``production``: a replicated ``jaeger-collector`` Deployment writes spans
  into the shared Elasticsearch as the ``jaeger`` user, a ``jaeger-query``
  Deployment reads them back, and a nightly ``jaeger-es-index-cleaner``
  CronJob deletes the daily ``jaeger-*`` indices past the retention.
* ``all-in-one``: one ``jaeger`` pod keeps the spans itself (memory, or
  badger on an emptyDir). Meant for staging.

Either way the application sends to the Service ``jaeger-collector`` and
Grafana reads from the Service ``jaeger-query``, with the same port names and
numbers, so neither the application's exporter settings nor the Grafana
datasource differ between environments.

Everything is pinned to Jaeger 1.57.0, whose CLI reference
(jaegertracing.io/docs/1.57/cli) the flags below and the rules in
``check_jaeger_args`` follow. The Elasticsearch password is read from the
operator's Secret as a file (``--es.password-file``); no secret value is
rendered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from constructs import Construct
from pydantic import Field, model_validator

from constructs_lib.common import (
    Endpoint,
    Image,
    Quantity,
    Resources,
    StrictModel,
    container_port,
    container_security,
    disruption_budget,
    http_probe,
    image_tag,
    metadata,
    mount,
    pod_security,
    pull_policy,
    selector_labels,
    service,
    service_account,
    spread_across_nodes,
    standard_labels,
)
from constructs_lib.elastic import (
    CA_KEY,
    CA_VOLUME,
    PASSWORD_KEY,
    ClientUser,
    ca_mount,
    ca_volume,
    credentials_volume,
)
from constructs_lib.errors import ConfigurationError
from imports import k8s

VERSION = "1.57.0"
"""The one Jaeger release every image is pinned to (see JaegerSettings)."""

NAME = "jaeger"
"""The all-in-one workload, and the ServiceAccount every Jaeger pod uses."""
COLLECTOR = "jaeger-collector"
QUERY = "jaeger-query"
CLEANER = "jaeger-es-index-cleaner"

# The user and group the upstream images run as since Jaeger 1.50
# (jaegertracing/jaeger#4783); set explicitly so the pod does not depend on it.
JAEGER_UID = 10001

OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
JAEGER_GRPC_PORT = 14250
JAEGER_THRIFT_PORT = 14268
ZIPKIN_PORT = 9411
COLLECTOR_ADMIN_PORT = 14269
"""Health check at ``/`` and Prometheus metrics at ``/metrics``; all-in-one's
only admin port."""
QUERY_PORT = 16686
QUERY_ADMIN_PORT = 16687

CONFIG_DIR = "/etc/jaeger"
ES_CA_DIR = f"{CONFIG_DIR}/elasticsearch-ca"
ES_CREDENTIALS_DIR = f"{CONFIG_DIR}/elasticsearch-credentials"
CREDENTIALS_VOLUME = "elasticsearch-credentials"
TMP_DIR = "/tmp"
BADGER_DIR = "/badger"

# Where the es-index-cleaner image keeps its binary (its Dockerfile's
# ENTRYPOINT), and the shell its Alpine base image provides.
CLEANER_BINARY = "/go/bin/es-index-cleaner-linux"
SHELL = "/bin/sh"

JAEGER_ROLE: dict[str, Any] = {
    # monitor: the client's start-up health check and version detection call
    # GET / (cluster:monitor/main); it is read-only.
    # manage_index_templates: the collector installs the jaeger-span and
    # jaeger-service index templates at start (--es.create-index-templates).
    # Elasticsearch cannot scope this privilege to template names.
    "cluster": ["monitor", "manage_index_templates"],
    "indices": [
        {
            # The index prefix stays empty, so every Jaeger index is
            # jaeger-span-YYYY-MM-DD, jaeger-service-..., jaeger-dependencies-...
            "names": ["jaeger-*"],
            "privileges": [
                # The collector creates each day's index on its first write.
                "create_index",
                # ...and bulk-indexes spans and services into it.
                "index",
                # The query searches them.
                "read",
                # The index cleaner lists the jaeger-* indices with their
                # creation dates before choosing what to delete...
                "view_index_metadata",
                # ...and deletes whole indices past the retention, never
                # single documents.
                "delete_index",
            ],
        }
    ],
}

JAEGER_USER = ClientUser("jaeger", "jaeger-elasticsearch", "jaeger_writer", JAEGER_ROLE)
"""The Elasticsearch user collector, query and index cleaner log in as."""

_CRON = re.compile(r"^[0-9*/,-]+( [0-9*/,-]+){4}$")

# Settings that only one mode uses; setting them in the other mode is an error
# rather than silently ignored.
_PRODUCTION_ONLY = {
    "collector_image",
    "query_image",
    "index_cleaner_image",
    "collector_replicas",
    "query_replicas",
    "index_cleaner_schedule",
    "collector_resources",
    "query_resources",
    "index_cleaner_resources",
}
_ALL_IN_ONE_ONLY = {
    "all_in_one_image",
    "all_in_one_storage",
    "max_traces",
    "badger_size",
    "all_in_one_resources",
}


class JaegerSettings(StrictModel):
    """How Jaeger runs in one environment."""

    mode: Literal["production", "all-in-one"] = Field(
        default="production",
        description="'production' runs a replicated jaeger-collector and a "
        "jaeger-query that store spans in the shared Elasticsearch, with a "
        "nightly index cleaner. 'all-in-one' runs one jaeger pod that keeps "
        "spans itself, for staging: staging traces are disposable, and it "
        "saves an Elasticsearch user, its Secret and the daily jaeger-* "
        "index churn on the shared cluster. What all-in-one gives up: traces "
        "do not survive the pod (memory storage loses them on any restart), "
        "only the newest max_traces are kept, ingest has one replica and no "
        "disruption budget, so spans sent while it restarts are lost once the "
        "SDKs' retries give up, and staging no longer exercises the "
        "Elasticsearch path production uses. The Services are named and "
        "numbered the same in both modes. Defaults to 'production'.",
    )
    collector_image: Image = Field(
        default=f"jaegertracing/jaeger-collector:{VERSION}",
        description=f"Collector image (production). Defaults to {VERSION}: "
        "Elasticsearch 8 is supported since 1.52, --es.password-file exists "
        "and the images run as user 10001. Keep all four images on one "
        "release.",
    )
    query_image: Image = Field(
        default=f"jaegertracing/jaeger-query:{VERSION}",
        description=f"Query image (production). Defaults to {VERSION}.",
    )
    index_cleaner_image: Image = Field(
        default=f"jaegertracing/jaeger-es-index-cleaner:{VERSION}",
        description=f"Index cleaner image (production). Defaults to {VERSION}. "
        f"Must keep {SHELL} and {CLEANER_BINARY}: the cleaner has no password "
        "file flag, so a shell reads the password file for it.",
    )
    all_in_one_image: Image = Field(
        default=f"jaegertracing/all-in-one:{VERSION}",
        description=f"All-in-one image (all-in-one). Defaults to {VERSION}.",
    )
    collector_replicas: int = Field(
        default=2,
        ge=1,
        le=20,
        description="Collector pods (production). Defaults to 2, so a node "
        "drain or a rollout never stops ingest; more than 1 also gets a "
        "disruption budget.",
    )
    query_replicas: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Query pods (production). Defaults to 1: only people and "
        "Grafana read traces, and a restart there loses nothing.",
    )
    retention_days: int = Field(
        default=7,
        ge=1,
        le=90,
        description="Days of spans kept. Production: the index cleaner deletes "
        "daily indices older than this and the query searches this far back. "
        "All-in-one with badger: the span TTL. Not used by memory storage, "
        "which keeps the newest max_traces instead. Defaults to 7.",
    )
    index_cleaner_schedule: str = Field(
        default="55 23 * * *",
        pattern=_CRON.pattern,
        description="When the index cleaner runs (production), as a five-field "
        "cron schedule of numbers, in UTC. Defaults to '55 23 * * *', just "
        "before the collector opens the next day's indices.",
    )
    zipkin: bool = Field(
        default=False,
        description=f"Also accept Zipkin spans on port {ZIPKIN_PORT}. Defaults "
        "to off: the application sends OTLP.",
    )
    all_in_one_storage: Literal["memory", "badger"] = Field(
        default="memory",
        description="Where the all-in-one pod keeps spans (all-in-one). "
        "'memory' keeps the newest max_traces traces in RAM: nothing touches "
        "the node's disk and the bound is a number you can size against the "
        "memory limit. 'badger' writes to an emptyDir of badger_size with "
        "retention_days as TTL: it survives container restarts (not pod "
        "moves) at the cost of node disk and compaction. Defaults to 'memory': "
        "staging traces are disposable, so surviving a container restart is "
        "not worth the disk.",
    )
    max_traces: int = Field(
        default=10000,
        ge=1,
        description="Traces the memory storage keeps before dropping the "
        "oldest (all-in-one, memory). Defaults to 10000, which fits the "
        "default 1Gi limit for traces of a few dozen spans. Jaeger's own "
        "default is unbounded, which ends in an out-of-memory kill.",
    )
    badger_size: Quantity = Field(
        default="2Gi",
        description="Size limit of the badger emptyDir (all-in-one, badger). "
        "Defaults to 2Gi; past it the kubelet evicts the pod.",
    )
    collector_resources: Resources = Field(
        default=Resources(
            cpu_request="200m",
            memory_request="256Mi",
            cpu_limit="1",
            memory_limit="512Mi",
        ),
        description="Collector container resources (production). Defaults to "
        "200m CPU and 256Mi requested, 1 CPU and 512Mi at most.",
    )
    query_resources: Resources = Field(
        default=Resources(
            cpu_request="100m",
            memory_request="128Mi",
            cpu_limit="500m",
            memory_limit="256Mi",
        ),
        description="Query container resources (production). Defaults to "
        "100m CPU and 128Mi requested, 500m CPU and 256Mi at most.",
    )
    index_cleaner_resources: Resources = Field(
        default=Resources(
            cpu_request="50m",
            memory_request="32Mi",
            cpu_limit="200m",
            memory_limit="128Mi",
        ),
        description="Index cleaner container resources (production). Defaults "
        "to 50m CPU and 32Mi requested, 200m CPU and 128Mi at most.",
    )
    all_in_one_resources: Resources = Field(
        default=Resources(
            cpu_request="100m",
            memory_request="512Mi",
            cpu_limit="500m",
            memory_limit="1Gi",
        ),
        description="All-in-one container resources (all-in-one). Defaults to "
        "100m CPU and 512Mi requested, 500m CPU and 1Gi at most; the memory "
        "limit must hold max_traces traces.",
    )

    @model_validator(mode="after")
    def _settings_fit_the_mode(self) -> JaegerSettings:
        unused = (
            _ALL_IN_ONE_ONLY if self.mode == "production" else _PRODUCTION_ONLY
        ) & self.model_fields_set
        if unused:
            raise ValueError(
                f"{', '.join(sorted(unused))} do not apply in mode {self.mode!r}"
            )
        if self.mode == "all-in-one":
            if self.all_in_one_storage == "memory" and (
                "retention_days" in self.model_fields_set
            ):
                raise ValueError(
                    "retention_days does not apply to memory storage, which "
                    "keeps the newest max_traces traces; use max_traces"
                )
            if self.all_in_one_storage == "badger" and (
                "max_traces" in self.model_fields_set
            ):
                raise ValueError("max_traces applies to memory storage only")
        return self


def grafana_datasource(query: Endpoint) -> dict[str, Any]:
    """The Grafana 9.3 provisioning entry of the Jaeger datasource.

    The uid is fixed so that dashboards and trace links can name it.
    """
    return {
        "name": "Jaeger",
        "uid": "jaeger",
        "type": "jaeger",
        "access": "proxy",
        "url": query.url,
        "editable": False,
    }


# --- what the pinned Jaeger accepts ------------------------------------------

Binary = Literal["collector", "query", "all-in-one", "es-index-cleaner"]

# Kinds of flag values, each checked the way the binary parses it.
_BOOL, _INT, _DURATION, _HOSTPORT, _URLS, _FILE, _DIR, _STR = (
    "bool",
    "int",
    "duration",
    "host:port",
    "urls",
    "file",
    "dir",
    "str",
)

_COMMON_FLAGS = {
    "admin.http.host-port": _HOSTPORT,
    "log-level": ("debug", "info", "warn", "error", "dpanic", "panic", "fatal"),
    # expvar was deprecated for removal in 1.53.
    "metrics-backend": ("prometheus", "none"),
    "metrics-http-route": _STR,
}
_COLLECTOR_FLAGS = {
    "collector.otlp.enabled": _BOOL,
    "collector.otlp.grpc.host-port": _HOSTPORT,
    "collector.otlp.http.host-port": _HOSTPORT,
    "collector.grpc-server.host-port": _HOSTPORT,
    "collector.http-server.host-port": _HOSTPORT,
    "collector.zipkin.host-port": _HOSTPORT,
    "collector.queue-size": _INT,
    "collector.num-workers": _INT,
    "collector.tags": _STR,
}
_QUERY_FLAGS = {
    "query.http-server.host-port": _HOSTPORT,
    "query.grpc-server.host-port": _HOSTPORT,
    "query.base-path": _STR,
    "query.max-clock-skew-adjustment": _DURATION,
}
_TLS_CLIENT_FLAGS = {
    "es.tls.enabled": _BOOL,
    "es.tls.ca": _FILE,
    "es.tls.cert": _FILE,
    "es.tls.key": _FILE,
    "es.tls.server-name": _STR,
    "es.tls.skip-host-verify": _BOOL,
}
_ES_FLAGS = {
    **_TLS_CLIENT_FLAGS,
    "es.server-urls": _URLS,
    "es.username": _STR,
    "es.password": _STR,
    "es.password-file": _FILE,
    "es.index-prefix": _STR,
    "es.index-date-separator": _STR,
    "es.num-shards": _INT,
    "es.num-replicas": _INT,
    "es.max-doc-count": _INT,
    "es.max-span-age": _DURATION,
    "es.timeout": _DURATION,
    # 0 detects the version from the cluster; 1.57 supports 5.x to 8.x.
    "es.version": ("0", "5", "6", "7", "8"),
    "es.create-index-templates": _BOOL,
    "es.use-aliases": _BOOL,
    "es.use-ilm": _BOOL,
    "es.sniffer": _BOOL,
    "es.log-level": ("debug", "info", "error"),
}
_MEMORY_FLAGS = {"memory.max-traces": _INT}
_BADGER_FLAGS = {
    "badger.ephemeral": _BOOL,
    "badger.directory-key": _DIR,
    "badger.directory-value": _DIR,
    "badger.span-store-ttl": _DURATION,
    "badger.consistency": _BOOL,
    "badger.maintenance-interval": _DURATION,
}
_CLEANER_FLAGS = {
    **_TLS_CLIENT_FLAGS,
    "es.username": _STR,
    "es.password": _STR,
    "archive": _BOOL,
    "rollover": _BOOL,
    "timeout": _INT,
    "index-date-separator": _STR,
}
# Flags a storage backend registers only when SPAN_STORAGE_TYPE selects it.
_STORAGE_FLAGS = {
    "elasticsearch": _ES_FLAGS,
    "memory": _MEMORY_FLAGS,
    "badger": _BADGER_FLAGS,
}
# Every SPAN_STORAGE_TYPE Jaeger 1.57 knows (plugin/storage/factory.go).
_STORAGE_TYPES = (
    "cassandra",
    "opensearch",
    "elasticsearch",
    "memory",
    "kafka",
    "badger",
    "blackhole",
    "grpc-plugin",
)
# The storage types this library deploys each binary with.
_ALLOWED_STORAGE: dict[str, tuple[str, ...]] = {
    "collector": ("elasticsearch",),
    "query": ("elasticsearch",),
    "all-in-one": ("memory", "badger"),
}
# Listeners each binary opens, with their defaults, to find port clashes.
_DEFAULT_LISTENERS: dict[str, dict[str, int]] = {
    "collector": {
        "admin.http.host-port": COLLECTOR_ADMIN_PORT,
        "collector.grpc-server.host-port": JAEGER_GRPC_PORT,
        "collector.http-server.host-port": JAEGER_THRIFT_PORT,
        "collector.otlp.grpc.host-port": OTLP_GRPC_PORT,
        "collector.otlp.http.host-port": OTLP_HTTP_PORT,
    },
    "query": {
        "admin.http.host-port": QUERY_ADMIN_PORT,
        "query.http-server.host-port": QUERY_PORT,
        "query.grpc-server.host-port": 16685,
    },
}
_DEFAULT_LISTENERS["all-in-one"] = {
    **_DEFAULT_LISTENERS["collector"],
    **_DEFAULT_LISTENERS["query"],
    "admin.http.host-port": COLLECTOR_ADMIN_PORT,
    # jaeger-agent's sampling endpoint, built into all-in-one.
    "http-server.host-port": 5778,
}

# strconv.ParseBool, which pflag uses for boolean flags.
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_BOOL = _GO_TRUE | {"0", "f", "F", "FALSE", "false", "False"}
_GO_DURATION = re.compile(r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]*:([0-9]{1,5})$")


def known_flags(mode: Binary, storage_type: str | None) -> dict[str, Any]:
    """The flags ``mode``'s binary registers with this storage type selected."""
    if mode == "es-index-cleaner":
        return dict(_CLEANER_FLAGS)
    flags = dict(_COMMON_FLAGS)
    if mode in ("collector", "all-in-one"):
        flags.update(_COLLECTOR_FLAGS)
    if mode in ("query", "all-in-one"):
        flags.update(_QUERY_FLAGS)
    if mode == "all-in-one":
        flags["http-server.host-port"] = _HOSTPORT
    flags.update(_STORAGE_FLAGS.get(storage_type or "", {}))
    return flags


def _truthy(value: str | None) -> bool:
    return value in _GO_TRUE


def _value_problem(flag: str, kind: Any, value: str) -> str | None:
    """Why ``value`` does not parse as ``kind``, the way Jaeger parses it."""
    if isinstance(kind, tuple):
        if value not in kind:
            return f"--{flag}={value!r} is not one of {', '.join(kind)}"
    elif kind == _BOOL and value not in _GO_BOOL:
        return f"--{flag}={value!r} is not a boolean (true or false)"
    elif kind == _INT and not re.fullmatch(r"-?[0-9]+", value):
        return f"--{flag}={value!r} is not an integer"
    elif kind == _DURATION and not _GO_DURATION.fullmatch(value):
        return f"--{flag}={value!r} is not a Go duration such as '72h' or '5m'"
    elif kind == _HOSTPORT:
        match = _HOST_PORT.fullmatch(value)
        if not match or not 0 < int(match.group(1)) < 65536:
            return f"--{flag}={value!r} is not host:port or :port"
    elif kind == _URLS:
        for url in value.split(","):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return (
                    f"--{flag}: {url!r} is not a full http(s) URL such as "
                    "https://elasticsearch:9200"
                )
    elif kind in (_FILE, _DIR) and not value.startswith("/"):
        return f"--{flag}={value!r} is not an absolute path"
    return None


def _parse(args: Sequence[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """Split ``args`` into ``--flag=value`` options and positionals."""
    options: dict[str, str] = {}
    positionals: list[str] = []
    problems: list[str] = []
    for arg in args:
        if not arg.startswith("--"):
            positionals.append(arg)
            continue
        name, sep, value = arg[2:].partition("=")
        # A bare "--flag" means true only for booleans and swallows the next
        # argument otherwise; writing every option as --flag=value keeps the
        # meaning independent of the flag's type.
        if not sep:
            problems.append(f"{arg!r} has no '=value'; write --flag=value")
            continue
        # pflag keeps the last of repeated flags without a word.
        if name in options:
            problems.append(f"--{name} is given twice")
        options[name] = value
    return options, positionals, problems


def check_jaeger_args(
    args: Sequence[str],
    mode: Binary,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The reasons Jaeger 1.57's ``mode`` binary would not start or not store.

    ``mode`` names the binary the arguments are for: ``collector``,
    ``query``, ``all-in-one`` or ``es-index-cleaner``. ``env`` is the
    container's environment, where ``SPAN_STORAGE_TYPE`` selects the storage.
    Returns an empty list when nothing is wrong.
    """
    if mode not in get_args(Binary):
        return [f"unknown binary {mode!r}; one of {', '.join(get_args(Binary))}"]
    env = env or {}
    options, positionals, problems = _parse(args)
    storage = env.get("SPAN_STORAGE_TYPE")

    if mode == "es-index-cleaner":
        # The cleaner takes exactly NUM_OF_DAYS and the Elasticsearch URL,
        # and exits with "wrong number of arguments" otherwise.
        if len(positionals) != 2:
            problems.append(
                "the index cleaner takes exactly two arguments, NUM_OF_DAYS "
                f"and the Elasticsearch URL; got {positionals!r}"
            )
        else:
            days, url = positionals
            # Zero days deletes today's indices too, the ones being written.
            if not days.isdigit() or int(days) < 1:
                problems.append(f"NUM_OF_DAYS {days!r} is not a whole number >= 1")
            problem = _value_problem("server-urls", _URLS, url)
            if problem:
                problems.append(problem)
    else:
        # The binaries take no positional arguments; a stray one is usually a
        # flag that lost its "--".
        problems += [f"unexpected argument {arg!r}" for arg in positionals]
        # Unset, collector and query fall back to Cassandra on localhost and
        # never start here; all-in-one falls back to memory.
        if storage is None:
            problems.append("SPAN_STORAGE_TYPE is not set")
        elif storage not in _STORAGE_TYPES:
            # plugin/storage/factory.go: "unknown storage type".
            problems.append(
                f"SPAN_STORAGE_TYPE {storage!r} is unknown to Jaeger {VERSION}; "
                f"valid types are {', '.join(_STORAGE_TYPES)}"
            )
        elif storage not in _ALLOWED_STORAGE[mode]:
            # memory and badger live inside one process: a collector writing
            # there is invisible to a separate query. And this library keeps
            # all-in-one off Elasticsearch: it exists so that staging needs
            # no Elasticsearch user and makes no index churn.
            problems.append(
                f"{mode} runs with SPAN_STORAGE_TYPE "
                f"{' or '.join(_ALLOWED_STORAGE[mode])} here, not {storage!r}"
            )

    # Jaeger registers a storage backend's flags only when that backend is
    # selected, so e.g. --es.* with memory storage is "unknown flag" and the
    # binary exits before it starts.
    flags = known_flags(mode, storage)
    for name, value in options.items():
        if name not in flags:
            problems.append(
                f"--{name} is not a flag of {mode} {VERSION}"
                + (f" with {storage} storage" if storage else "")
            )
            continue
        problem = _value_problem(name, flags[name], value)
        if problem:
            problems.append(problem)

    # The cleaner's URL is its second argument; the TLS rules apply to it
    # as to --es.server-urls.
    server_urls = options.get("es.server-urls")
    if mode == "es-index-cleaner" and len(positionals) == 2:
        server_urls = positionals[1]
    problems += _tls_problems(options, server_urls)
    problems += _credential_problems(options)
    if mode != "es-index-cleaner":
        problems += _storage_problems(options, storage)
        problems += _port_clashes(options, mode)
    return problems


def _tls_problems(options: Mapping[str, str], server_urls: str | None) -> list[str]:
    problems = []
    tls = _truthy(options.get("es.tls.enabled"))
    if not tls:
        # pkg/config/tlscfg: "es.tls.* options cannot be used when
        # es.tls.enabled is false"; the binary exits at start.
        stray = sorted(
            name
            for name in options
            if name.startswith("es.tls.") and name != "es.tls.enabled"
        )
        if stray:
            problems.append(
                f"--{', --'.join(stray)} need --es.tls.enabled=true; Jaeger "
                "refuses es.tls.* options while TLS is off"
            )
    schemes = {urlsplit(url).scheme for url in (server_urls or "").split(",")}
    if "https" in schemes and not tls:
        # Without TLS options the client trusts only the system store, which
        # does not hold the cluster's own CA: the health check fails with an
        # unknown authority and the collector exits.
        problems.append(
            "--es.server-urls is https but --es.tls.enabled is not true, so "
            "the cluster's CA is never loaded"
        )
    if "http" in schemes and tls:
        # TLS settings do not apply to an http:// URL: the password would
        # travel in clear to a cluster that only speaks HTTPS.
        problems.append("--es.tls.enabled=true with an http:// --es.server-urls")
    if _truthy(options.get("es.tls.skip-host-verify")):
        problems.append(
            "--es.tls.skip-host-verify turns off certificate checks; mount "
            "the cluster CA and set --es.tls.ca instead"
        )
    return problems


def _credential_problems(options: Mapping[str, str]) -> list[str]:
    problems = []
    if "es.password" in options:
        # A literal password would be rendered into the manifest.
        problems.append(
            "--es.password puts the password into the manifest; use "
            "--es.password-file (or, for the index cleaner, ES_PASSWORD read "
            "from the mounted file)"
        )
        if "es.password-file" in options:
            # The Elasticsearch client refuses "both Password and
            # PasswordFilePath are set".
            problems.append("--es.password and --es.password-file are both set")
    # Basic auth is sent only with a user name and a password: one without
    # the other reaches a secured cluster anonymously and gets 401.
    if "es.password-file" in options and not options.get("es.username"):
        problems.append("--es.password-file without --es.username")
    return problems


def _storage_problems(options: Mapping[str, str], storage: str | None) -> list[str]:
    problems = []
    if storage == "elasticsearch":
        if "es.server-urls" not in options:
            # The default is http://127.0.0.1:9200, which nothing serves.
            problems.append("--es.server-urls is not set")
        if options.get("es.username") and "es.password-file" not in options:
            problems.append("--es.username without --es.password-file")
        if options.get("es.index-prefix"):
            # A prefix makes "<prefix>-jaeger-*" indices, outside the
            # jaeger-* indices the jaeger user may write, and which the
            # index cleaner (run without the prefix) never deletes.
            problems.append(
                f"--es.index-prefix={options['es.index-prefix']!r} moves the "
                "indices outside jaeger-*, where the jaeger role cannot write"
            )
        for flag in ("es.use-aliases", "es.use-ilm"):
            if _truthy(options.get(flag)):
                # Both need an es-rollover init job to create the aliases
                # before start; nothing here runs one, so writes fail.
                problems.append(
                    f"--{flag} needs the jaeger-es-rollover init job, which is "
                    "not deployed"
                )
    if storage == "memory":
        # Jaeger's default of 0 is unbounded: memory grows until the
        # container is killed and every trace is lost.
        max_traces = options.get("memory.max-traces", "0")
        if not max_traces.isdigit() or int(max_traces) < 1:
            problems.append("memory storage needs --memory.max-traces >= 1")
    if storage == "badger" and not _truthy(options.get("badger.ephemeral", "true")):
        # Persistent badger defaults to /go/bin/data, inside the image's
        # read-only root filesystem, and fails to open.
        for flag in ("badger.directory-key", "badger.directory-value"):
            if flag not in options:
                problems.append(f"--badger.ephemeral=false needs --{flag}")
    return problems


def _port_clashes(options: Mapping[str, str], mode: Binary) -> list[str]:
    # Two listeners on one port: the second bind fails and the binary exits.
    listeners = dict(_DEFAULT_LISTENERS[mode])
    if not _truthy(options.get("collector.otlp.enabled", "true")):
        listeners.pop("collector.otlp.grpc.host-port", None)
        listeners.pop("collector.otlp.http.host-port", None)
    for flag, value in options.items():
        match = _HOST_PORT.fullmatch(value) if flag.endswith("host-port") else None
        if match:
            listeners[flag] = int(match.group(1))
    owners: dict[int, list[str]] = {}
    for flag, port in listeners.items():
        owners.setdefault(port, []).append(flag)
    return [
        f"port {port} is used by --{' and --'.join(sorted(flags))}"
        for port, flags in sorted(owners.items())
        if len(flags) > 1
    ]


# --- the mounted files the flags point at -------------------------------------


def _mount_problems(
    args: Sequence[str],
    mode: Binary,
    storage: str | None,
    mounts: Sequence[tuple[str, str, bool]],
    volumes: Mapping[str, frozenset[str] | None],
    extra_files: Sequence[str] = (),
) -> list[str]:
    """Every file flag names a file a mounted volume provides, every
    directory flag a writable emptyDir.

    ``mounts`` are (volume, path, read_only); ``volumes`` map a volume to
    the keys it provides, or ``None`` for an emptyDir.
    """
    flags = known_flags(mode, storage)
    options, _, _ = _parse(args)
    files = [v for k, v in options.items() if flags.get(k) == _FILE]
    dirs = [v for k, v in options.items() if flags.get(k) == _DIR]
    problems = []
    for path in [*files, *extra_files]:
        provided = False
        for volume, mount_path, _ in mounts:
            if path.startswith(mount_path.rstrip("/") + "/"):
                keys = volumes.get(volume)
                relative = path[len(mount_path.rstrip("/")) + 1 :]
                provided = provided or keys is None or relative in keys
        if not provided:
            problems.append(f"{path} is not a file any mounted volume provides")
    for path in dirs:
        writable = any(
            (path + "/").startswith(mount_path.rstrip("/") + "/")
            and not read_only
            and volumes.get(volume) is None
            for volume, mount_path, read_only in mounts
        )
        if not writable:
            problems.append(f"{path} is not on a writable emptyDir mount")
    return problems


# --- the construct ---------------------------------------------------------------


class Jaeger(Construct):
    """Jaeger in one of two modes, behind the same two Services.

    ``collector`` maps each ingest port name to its Endpoint on the
    ``jaeger-collector`` Service: ``otlp-grpc`` (4317), ``otlp-http`` (4318),
    ``jaeger-grpc`` (14250), ``jaeger-thrift`` (14268) and, when enabled,
    ``zipkin`` (9411). ``query`` is the ``jaeger-query`` UI and HTTP API
    (16686) Grafana reads. ``metrics`` lists the admin ports Prometheus
    scrapes at ``/metrics``, each process once.
    """

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: JaegerSettings,
        namespace: str,
        elasticsearch: Endpoint,
    ) -> None:
        super().__init__(scope, id)
        self.settings = settings
        self.namespace = namespace
        self.elasticsearch = elasticsearch
        self.user = JAEGER_USER

        self.collector: dict[str, Endpoint] = {
            name: Endpoint(COLLECTOR, port) for name, port in self._ingest_ports()
        }
        self.query = Endpoint(QUERY, QUERY_PORT)
        self.metrics: list[Endpoint] = []

        tag = image_tag(
            settings.all_in_one_image
            if settings.mode == "all-in-one"
            else settings.collector_image
        )
        service_account(
            self,
            "sa",
            name=NAME,
            namespace=namespace,
            labels=standard_labels(NAME, "tracing", tag),
        )
        if settings.mode == "production":
            self._production()
        else:
            self._all_in_one()

    # The ports the application may send to; the same in both modes.
    def _ingest_ports(self) -> list[tuple[str, int]]:
        ports = [
            ("otlp-grpc", OTLP_GRPC_PORT),
            ("otlp-http", OTLP_HTTP_PORT),
            ("jaeger-grpc", JAEGER_GRPC_PORT),
            ("jaeger-thrift", JAEGER_THRIFT_PORT),
        ]
        if self.settings.zipkin:
            ports.append(("zipkin", ZIPKIN_PORT))
        return ports

    def _ingest_args(self) -> list[str]:
        args = [
            "--collector.otlp.enabled=true",
            f"--collector.otlp.grpc.host-port=:{OTLP_GRPC_PORT}",
            f"--collector.otlp.http.host-port=:{OTLP_HTTP_PORT}",
            f"--collector.grpc-server.host-port=:{JAEGER_GRPC_PORT}",
            f"--collector.http-server.host-port=:{JAEGER_THRIFT_PORT}",
        ]
        if self.settings.zipkin:
            # Zipkin is off unless given a port.
            args.append(f"--collector.zipkin.host-port=:{ZIPKIN_PORT}")
        return args

    def _es_args(self) -> list[str]:
        return [
            f"--es.server-urls={self.elasticsearch.url}",
            "--es.tls.enabled=true",
            f"--es.tls.ca={ES_CA_DIR}/{CA_KEY}",
            f"--es.username={JAEGER_USER.username}",
            # Read at start and watched, so a rotated Secret takes effect
            # without a restart.
            f"--es.password-file={ES_CREDENTIALS_DIR}/{PASSWORD_KEY}",
        ]

    def _es_volumes(self) -> tuple[list[k8s.Volume], dict[str, frozenset | None]]:
        return (
            [ca_volume(), credentials_volume(CREDENTIALS_VOLUME, JAEGER_USER)],
            {
                CA_VOLUME: frozenset({CA_KEY}),
                CREDENTIALS_VOLUME: frozenset({PASSWORD_KEY}),
            },
        )

    def _es_mounts(self) -> list[k8s.VolumeMount]:
        return [ca_mount(ES_CA_DIR), mount(CREDENTIALS_VOLUME, ES_CREDENTIALS_DIR)]

    def _check(
        self,
        where: str,
        mode: Binary,
        args: Sequence[str],
        env: Mapping[str, str],
        mounts: Sequence[k8s.VolumeMount],
        volumes: Mapping[str, frozenset[str] | None],
        extra_files: Sequence[str] = (),
    ) -> None:
        problems = check_jaeger_args(args, mode, env)
        problems += _mount_problems(
            args,
            mode,
            env.get("SPAN_STORAGE_TYPE"),
            [(m.name, m.mount_path, bool(m.read_only)) for m in mounts],
            volumes,
            extra_files,
        )
        if problems:
            raise ConfigurationError(where, "; ".join(problems))

    # --- production ---------------------------------------------------------

    def _production(self) -> None:
        settings = self.settings
        if self.elasticsearch.scheme != "https":
            raise ConfigurationError(
                "jaeger elasticsearch",
                f"got {self.elasticsearch.url!r}; the jaeger user's password "
                "only travels over https",
            )
        env = {"SPAN_STORAGE_TYPE": "elasticsearch"}
        volumes, provides = self._es_volumes()

        collector_args = [
            *self._ingest_args(),
            f"--admin.http.host-port=:{COLLECTOR_ADMIN_PORT}",
            *self._es_args(),
            # Installs the jaeger-span and jaeger-service templates (ES 8
            # composable templates; the version is detected from the cluster).
            "--es.create-index-templates=true",
        ]
        collector_ports = [*self._ingest_ports(), ("admin", COLLECTOR_ADMIN_PORT)]
        self._check(
            "jaeger collector",
            "collector",
            collector_args,
            env,
            self._es_mounts(),
            provides,
        )
        self._deployment(
            "collector",
            name=COLLECTOR,
            component="tracing-ingest",
            image=settings.collector_image,
            replicas=settings.collector_replicas,
            args=collector_args,
            env=env,
            ports=collector_ports,
            resources=settings.collector_resources,
            mounts=self._es_mounts(),
            volumes=volumes,
        )
        self._service(
            "collector-service",
            name=COLLECTOR,
            ports=collector_ports,
            workload=COLLECTOR,
            image=settings.collector_image,
            component="tracing-ingest",
        )

        query_args = [
            f"--query.http-server.host-port=:{QUERY_PORT}",
            f"--admin.http.host-port=:{QUERY_ADMIN_PORT}",
            *self._es_args(),
            # The default lookback is 72h; search everything the index
            # cleaner keeps.
            f"--es.max-span-age={settings.retention_days * 24}h",
        ]
        query_ports = [("http", QUERY_PORT), ("admin", QUERY_ADMIN_PORT)]
        self._check(
            "jaeger query", "query", query_args, env, self._es_mounts(), provides
        )
        self._deployment(
            "query",
            name=QUERY,
            component="tracing-query",
            image=settings.query_image,
            replicas=settings.query_replicas,
            args=query_args,
            env=env,
            ports=query_ports,
            resources=settings.query_resources,
            mounts=self._es_mounts(),
            volumes=volumes,
        )
        self._service(
            "query-service",
            name=QUERY,
            ports=query_ports,
            workload=QUERY,
            image=settings.query_image,
            component="tracing-query",
        )

        self.metrics = [
            Endpoint(COLLECTOR, COLLECTOR_ADMIN_PORT),
            Endpoint(QUERY, QUERY_ADMIN_PORT),
        ]
        self._index_cleaner(provides)

    def _index_cleaner(self, provides: Mapping[str, frozenset | None]) -> None:
        settings = self.settings
        labels = standard_labels(
            CLEANER, "tracing-retention", image_tag(settings.index_cleaner_image)
        )
        args = [
            f"--es.username={JAEGER_USER.username}",
            "--es.tls.enabled=true",
            f"--es.tls.ca={ES_CA_DIR}/{CA_KEY}",
            str(settings.retention_days),
            self.elasticsearch.url,
        ]
        password_file = f"{ES_CREDENTIALS_DIR}/{PASSWORD_KEY}"
        # The cleaner has no password-file flag: it reads the password only
        # from --es.password or ES_PASSWORD. A flag would show the password
        # in the process list and an env var from the Secret would put it
        # into the container's runtime config on the node, so a shell from
        # the image's Alpine base reads the mounted file into ES_PASSWORD and
        # hands over to the cleaner. "$$(" is Kubernetes' escape for "$(".
        script = (
            "set -eu; "
            f'ES_PASSWORD="$$(cat {password_file})"; '
            "export ES_PASSWORD; "
            f'exec {CLEANER_BINARY} "$@"'
        )
        mounts = self._es_mounts()
        self._check(
            "jaeger index cleaner",
            "es-index-cleaner",
            args,
            {},
            mounts,
            provides,
            extra_files=[password_file],
        )
        volumes, _ = self._es_volumes()
        cleaner = k8s.Container(
            name=CLEANER,
            image=settings.index_cleaner_image,
            image_pull_policy=pull_policy(settings.index_cleaner_image),
            command=[SHELL, "-c", script, CLEANER],
            args=args,
            resources=settings.index_cleaner_resources.to_k8s(),
            security_context=container_security(),
            volume_mounts=mounts,
        )
        k8s.KubeCronJob(
            self,
            "index-cleaner",
            metadata=metadata(CLEANER, labels, self.namespace),
            spec=k8s.CronJobSpec(
                schedule=settings.index_cleaner_schedule,
                # Jaeger names indices by UTC date; so is the schedule.
                time_zone="Etc/UTC",
                # Two cleaners deleting the same indices race each other.
                concurrency_policy="Forbid",
                # A run missed by more than an hour waits for the next night.
                starting_deadline_seconds=3600,
                successful_jobs_history_limit=1,
                failed_jobs_history_limit=3,
                job_template=k8s.JobTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=dict(labels)),
                    spec=k8s.JobSpec(
                        backoff_limit=2,
                        active_deadline_seconds=900,
                        template=k8s.PodTemplateSpec(
                            metadata=k8s.ObjectMeta(labels=dict(labels)),
                            spec=self._pod_spec(
                                [cleaner], volumes, restart_policy="Never"
                            ),
                        ),
                    ),
                ),
            ),
        )

    # --- all-in-one -------------------------------------------------------------

    def _all_in_one(self) -> None:
        settings = self.settings
        storage = settings.all_in_one_storage
        env = {"SPAN_STORAGE_TYPE": storage}
        args = [
            *self._ingest_args(),
            f"--query.http-server.host-port=:{QUERY_PORT}",
            # All-in-one has one admin port for everything it contains.
            f"--admin.http.host-port=:{COLLECTOR_ADMIN_PORT}",
        ]
        # The image declares /tmp a volume; ephemeral badger writes there.
        volumes = [_empty_dir("tmp", "64Mi")]
        mounts = [mount("tmp", TMP_DIR, read_only=False)]
        provides: dict[str, frozenset | None] = {"tmp": None}
        if storage == "memory":
            args.append(f"--memory.max-traces={settings.max_traces}")
        else:
            args += [
                # Persistent within the pod's emptyDir: survives container
                # restarts, not the pod.
                "--badger.ephemeral=false",
                f"--badger.directory-key={BADGER_DIR}/key",
                f"--badger.directory-value={BADGER_DIR}/data",
                f"--badger.span-store-ttl={settings.retention_days * 24}h",
            ]
            volumes.append(_empty_dir("badger", settings.badger_size))
            mounts.append(mount("badger", BADGER_DIR, read_only=False))
            provides["badger"] = None
        self._check("jaeger all-in-one", "all-in-one", args, env, mounts, provides)

        ports = [
            *self._ingest_ports(),
            ("http", QUERY_PORT),
            ("admin", COLLECTOR_ADMIN_PORT),
        ]
        self._deployment(
            "all-in-one",
            name=NAME,
            component="tracing",
            image=settings.all_in_one_image,
            replicas=1,
            args=args,
            env=env,
            ports=ports,
            resources=settings.all_in_one_resources,
            mounts=mounts,
            volumes=volumes,
        )
        # Both Services select the one pod, with production's names and port
        # numbers. The query Service's admin port 16687 forwards to the pod's
        # single admin port, so scrape only self.metrics, not both Services.
        self._service(
            "collector-service",
            name=COLLECTOR,
            ports=[*self._ingest_ports(), ("admin", COLLECTOR_ADMIN_PORT)],
            workload=NAME,
            image=settings.all_in_one_image,
            component="tracing",
        )
        self._service(
            "query-service",
            name=QUERY,
            ports=[("http", QUERY_PORT), ("admin", QUERY_ADMIN_PORT)],
            workload=NAME,
            image=settings.all_in_one_image,
            component="tracing",
        )
        self.metrics = [Endpoint(COLLECTOR, COLLECTOR_ADMIN_PORT)]

    # --- shared pieces ------------------------------------------------------------

    def _service(
        self,
        id: str,
        *,
        name: str,
        ports: Sequence[tuple[str, int]],
        workload: str,
        image: str,
        component: str,
    ) -> k8s.KubeService:
        return service(
            self,
            id,
            name=name,
            namespace=self.namespace,
            labels=standard_labels(workload, component, image_tag(image)),
            ports=ports,
            selector=selector_labels(workload),
        )

    def _pod_spec(
        self,
        containers: list[k8s.Container],
        volumes: list[k8s.Volume],
        **extra: Any,
    ) -> k8s.PodSpec:
        return k8s.PodSpec(
            service_account_name=NAME,
            # Jaeger does not call the Kubernetes API.
            automount_service_account_token=False,
            # Jaeger reads any environment variable named like one of its
            # flags (ES_SERVER_URLS is --es.server-urls); the FOO_PORT
            # variables Kubernetes adds for every Service must never be
            # able to collide with one.
            enable_service_links=False,
            security_context=pod_security(JAEGER_UID, JAEGER_UID, fs_group=JAEGER_UID),
            containers=containers,
            volumes=volumes,
            **extra,
        )

    def _deployment(
        self,
        id: str,
        *,
        name: str,
        component: str,
        image: str,
        replicas: int,
        args: list[str],
        env: Mapping[str, str],
        ports: Sequence[tuple[str, int]],
        resources: Resources,
        mounts: list[k8s.VolumeMount],
        volumes: list[k8s.Volume],
    ) -> k8s.KubeDeployment:
        labels = standard_labels(name, component, image_tag(image))
        selector = selector_labels(name)
        container = k8s.Container(
            name=name,
            image=image,
            image_pull_policy=pull_policy(image),
            args=args,
            env=[k8s.EnvVar(name=key, value=value) for key, value in env.items()],
            ports=[container_port(port_name, port) for port_name, port in ports],
            resources=resources.to_k8s(),
            security_context=container_security(),
            # The admin port answers 200 on / once storage is initialised and
            # 503 before; the collector exits if Elasticsearch is unreachable.
            readiness_probe=http_probe("/", "admin"),
            liveness_probe=http_probe("/", "admin", failure_threshold=6),
            volume_mounts=mounts,
        )
        deployment = k8s.KubeDeployment(
            self,
            id,
            metadata=metadata(name, labels, self.namespace),
            spec=k8s.DeploymentSpec(
                replicas=replicas,
                selector=k8s.LabelSelector(match_labels=selector),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=dict(labels)),
                    spec=self._pod_spec(
                        [container],
                        volumes,
                        topology_spread_constraints=(
                            spread_across_nodes(selector) if replicas > 1 else None
                        ),
                    ),
                ),
            ),
        )
        if replicas > 1:
            disruption_budget(
                self,
                f"{id}-pdb",
                name=name,
                namespace=self.namespace,
                labels=labels,
                selector=selector,
            )
        return deployment


def _empty_dir(name: str, size: str) -> k8s.Volume:
    return k8s.Volume(
        name=name,
        empty_dir=k8s.EmptyDirVolumeSource(size_limit=k8s.Quantity.from_string(size)),
    )
