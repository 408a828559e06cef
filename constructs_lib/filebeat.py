"""Filebeat: the Sunday containers' and nginx's logs, shipped to Elasticsearch.

One Filebeat pod runs on every node. It reads the node's container logs (the
``container`` input, enriched with the pod's Kubernetes metadata) and the
nginx access and error logs (a ``filestream`` input, which replaces the
``log`` input deprecated in Filebeat 8), and writes them over HTTPS, as the
``filebeat_writer`` user, to one index per day: ``filebeat-sunday-YYYY.MM.DD``.

What Filebeat 8.5 needs for that daily index to really be used:

- ``setup.template.name`` and ``setup.template.pattern``: with a custom
  ``output.elasticsearch.index`` Filebeat exits at start unless both are set
  (libbeat's ``checkTemplateESSettings``), and the pattern must match the
  index or the template never applies.
- ``setup.ilm.enabled: false``: ILM is on by default in 8.x; it would load
  a ``filebeat`` lifecycle policy (which needs ``manage_ilm``) and attach it
  to every day's index, rolling over by size and age on top of the daily
  name. The Beats "change the index name" guide requires it off.
- A valid data stream name: every template Beats 8 loads is a data stream
  template (``"data_stream": {}``), so each day's name becomes a data
  stream, ``filebeat-sunday-YYYY.MM.DD``, whose backing index is
  ``.ds-filebeat-sunday-YYYY.MM.DD-<date>-000001``. Searches by the day's
  name or by ``filebeat-sunday-*`` (Grafana, Kibana) read it; old days are
  dropped with ``DELETE _data_stream/filebeat-sunday-<day>``.

Filebeat runs as root (user 0). This is the second exception to the stack's
hardened defaults, after node-exporter: the container runtime writes the
container log files under ``/var/log/pods`` as root with mode 0640, and
Filebeat must read them and keep its registry (which line of which file was
shipped) on the node, so that a restarted pod neither loses nor re-sends
logs. It still drops every capability (so root reads only what the user or
group permissions give it, and cannot override them; the ``adm`` group is
added for Debian's nginx logs), cannot gain privileges, has a read-only root
filesystem and mounts the host's log directories read-only. The only host
path it writes is its registry directory. Like node-exporter it tolerates
every taint, so no node's logs are missed.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection, Mapping
from typing import Any

from constructs import Construct
from pydantic import Field, field_validator

from constructs_lib.common import (
    Endpoint,
    Image,
    Resources,
    StrictModel,
    config_checksum,
    config_map_volume,
    container_port,
    declare_secret,
    dump_config,
    http_probe,
    image_tag,
    metadata,
    mount,
    pull_policy,
    scan_exceptions,
    selector_labels,
    service_account,
    standard_labels,
)
from constructs_lib.elastic import (
    CA_KEY,
    PASSWORD_KEY,
    ClientUser,
    ca_mount,
    ca_volume,
    credentials_volume,
)
from constructs_lib.elasticsearch import declare_certs_secret
from constructs_lib.errors import ConfigurationError
from imports import k8s

NAME = "filebeat"
HTTP_PORT = 5066
"""Filebeat's own HTTP endpoint, which the probes ask."""
ROOT = 0

# Where the docker.elastic.co/beats/filebeat image installs Filebeat.
HOME = "/usr/share/filebeat"
BINARY = f"{HOME}/filebeat"
DATA_DIR = f"{HOME}/data"
LOCK_FILE = f"{DATA_DIR}/filebeat.lock"

CONFIG_DIR = "/etc/filebeat/config"
CONFIG_FILE = f"{CONFIG_DIR}/filebeat.yml"
CA_DIR = "/etc/filebeat/ca"
CREDENTIALS_DIR = "/etc/filebeat/credentials"
PASSWORD_FILE = f"{CREDENTIALS_DIR}/{PASSWORD_KEY}"

# The kubelet's per-container symlinks, and the files they point to.
CONTAINER_LOGS_DIR = "/var/log/containers"
POD_LOGS_DIR = "/var/log/pods"

DEFAULT_INDEX_PREFIX = "filebeat-sunday"
INDEX_PATTERN = f"{DEFAULT_INDEX_PREFIX}-*"
"""What the Grafana Elasticsearch datasource and Kibana search."""
TIME_FIELD = "@timestamp"
"""The event time of every document Filebeat writes."""

ADM_GROUP = 4
"""The group that may read the system's and nginx's logs on most distributions."""

NGINX_INPUT_ID = "sunday-nginx"
"""The nginx input's id. It keys the input's registry state: never change it."""

# Environment variables the container defines, and so the only ones the
# config may reference: NODE_NAME from the pod spec, ES_PASSWORD exported by
# the launch script from the credentials file.
ENVIRONMENT_VARIABLES = frozenset({"NODE_NAME", "ES_PASSWORD"})

_ENVIRONMENT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_INDEX_PREFIX = re.compile(r"^[a-z0-9][a-z0-9._-]{0,199}$")
_GLOB = re.compile(r"[*?\[]")


def filebeat_user(index_prefix: str = DEFAULT_INDEX_PREFIX) -> ClientUser:
    """The Elasticsearch user Filebeat writes as, for one index prefix.

    Filebeat reads the cluster's version (``monitor``) and loads its index
    template (``manage_index_templates``) when it connects, then creates
    documents in each day's data stream, which Elasticsearch creates on the
    first write (``auto_configure``). It cannot read logs back, manage
    lifecycle policies or write any other index. ``manage_index_templates``
    reaches every template of the cluster; it is the price of Filebeat
    loading its own, whose mappings only the Filebeat binary produces.
    """
    return ClientUser(
        username="filebeat_writer",
        secret="filebeat-elasticsearch",
        role_name="filebeat_writer",
        role={
            "cluster": ["monitor", "manage_index_templates"],
            "indices": [
                {
                    "names": [f"{index_prefix}-*"],
                    "privileges": ["create_doc", "auto_configure"],
                }
            ],
        },
    )


FILEBEAT_USER = filebeat_user()
"""The user of the default index prefix, for the setup Job to create."""


def _absolute_log_path(value: str) -> str:
    if not value.startswith("/") or posixpath.normpath(value) != value:
        raise ValueError(
            f"log path {value!r} must be an absolute, normalised path such as "
            "'/var/log/nginx/access.log'"
        )
    directory = posixpath.dirname(value)
    if _GLOB.search(directory) or directory == "/":
        raise ValueError(
            f"log path {value!r} must name its directory without wildcards, and "
            "not '/': the directory is mounted from the node"
        )
    return value


class FilebeatSettings(StrictModel):
    """How Filebeat runs on every node of one environment."""

    image: Image = Field(
        default="docker.elastic.co/beats/filebeat:8.5.0",
        description="Filebeat image. Defaults to 8.5.0, the design's release.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="100m",
            memory_request="200Mi",
            cpu_limit="200m",
            memory_limit="400Mi",
        ),
        description="Container resources. Defaults to the design's.",
    )
    log_paths: list[str] = Field(
        default_factory=lambda: [f"{CONTAINER_LOGS_DIR}/*sunday*.log"],
        min_length=1,
        description="Container log files to ship, as globs under "
        f"{CONTAINER_LOGS_DIR}/. Defaults to the design's "
        f"'{CONTAINER_LOGS_DIR}/*sunday*.log'.",
    )
    nginx_log_paths: list[str] = Field(
        default_factory=lambda: [
            "/var/log/nginx/access.log",
            "/var/log/nginx/error.log",
        ],
        description="nginx log files on the node; their directories are "
        "mounted read-only. Empty to ship none. Defaults to the design's "
        "access.log and error.log in /var/log/nginx.",
    )
    index_prefix: str = Field(
        default=DEFAULT_INDEX_PREFIX,
        description="Name of the daily index before '-YYYY.MM.DD', and of its "
        f"template. Defaults to '{DEFAULT_INDEX_PREFIX}'.",
    )
    log_reader_groups: list[int] = Field(
        default_factory=lambda: [ADM_GROUP],
        description="Extra groups of the Filebeat process, for log files its "
        "capability-less root cannot otherwise read. Defaults to [4], the "
        "'adm' group of Debian, Ubuntu and RHEL: Debian's nginx writes its "
        "logs as www-data:adm with mode 0640.",
    )
    registry_host_path: str = Field(
        default="/var/lib/filebeat-data",
        description="Directory on each node that keeps Filebeat's registry "
        "across restarts. Defaults to the design's '/var/lib/filebeat-data'.",
    )

    @field_validator("log_paths")
    @classmethod
    def _container_logs(cls, paths: list[str]) -> list[str]:
        for path in paths:
            _absolute_log_path(path)
            # The metadata matcher reads the pod from the symlink's name,
            # which only the kubelet's directory carries.
            if posixpath.dirname(path) != CONTAINER_LOGS_DIR:
                raise ValueError(
                    f"container log path {path!r} must be a file glob directly "
                    f"in {CONTAINER_LOGS_DIR}/, whose names carry the pod"
                )
        return paths

    @field_validator("nginx_log_paths")
    @classmethod
    def _nginx_logs(cls, paths: list[str]) -> list[str]:
        for path in paths:
            _absolute_log_path(path)
        return paths

    @field_validator("index_prefix")
    @classmethod
    def _index_name(cls, prefix: str) -> str:
        if not _INDEX_PREFIX.fullmatch(prefix):
            raise ValueError(
                f"index prefix {prefix!r} must be lower case letters, digits, "
                "'.', '_' or '-', starting with a letter or digit"
            )
        return prefix

    @field_validator("log_reader_groups")
    @classmethod
    def _groups(cls, groups: list[int]) -> list[int]:
        for group in groups:
            if not 1 <= group <= 65535:
                raise ValueError(f"group {group} must be a numeric id from 1 to 65535")
        return groups

    @field_validator("registry_host_path")
    @classmethod
    def _registry(cls, path: str) -> str:
        if not path.startswith("/") or posixpath.normpath(path) != path or path == "/":
            raise ValueError(
                f"registry path {path!r} must be an absolute, normalised "
                "directory other than '/'"
            )
        return path


def host_log_directories(settings: FilebeatSettings) -> list[str]:
    """The node directories Filebeat reads, each mounted once, read-only.

    ``/var/log/containers`` holds only symlinks into ``/var/log/pods``,
    where containerd writes the files, so both are mounted at their own
    paths for the links to resolve.
    """
    wanted = {CONTAINER_LOGS_DIR, POD_LOGS_DIR}
    wanted |= {posixpath.dirname(path) for path in settings.nginx_log_paths}
    # A directory inside another mounted one is already visible.
    return sorted(
        path
        for path in wanted
        if not any(path.startswith(other + "/") for other in wanted)
    )


def filebeat_config(
    settings: FilebeatSettings, *, environment: str, elasticsearch: Endpoint
) -> dict[str, Any]:
    """The whole ``filebeat.yml`` as data."""
    prefix = settings.index_prefix
    inputs: list[dict[str, Any]] = [
        {
            "type": "container",
            "paths": list(settings.log_paths),
            "fields": {"environment": environment},
            # The one metadata processor: it runs only on container logs,
            # scoped to this node's pods, and finds each pod from the
            # symlink's name in the kubelet's directory.
            "processors": [
                {
                    "add_kubernetes_metadata": {
                        "host": "${NODE_NAME}",
                        "matchers": [
                            {"logs_path": {"logs_path": f"{CONTAINER_LOGS_DIR}/"}}
                        ],
                    }
                }
            ],
        }
    ]
    if settings.nginx_log_paths:
        inputs.append(
            {
                "type": "filestream",
                "id": NGINX_INPUT_ID,
                "paths": list(settings.nginx_log_paths),
                # Under "fields", not the event root: "service" is an ECS
                # object there, and a string would be rejected by the mapping.
                "fields": {"service": "nginx", "environment": environment},
            }
        )
    return {
        # agent.name: the node, rather than the pod's generated name.
        "name": "${NODE_NAME}",
        "filebeat.inputs": inputs,
        # No add_docker_metadata: containerd nodes have no Docker socket.
        "processors": [{"add_host_metadata": {"when.not.contains.tags": "forwarded"}}],
        "output.elasticsearch": {
            "hosts": [elasticsearch.url],
            "username": filebeat_user(prefix).username,
            # Expanded from the environment; see the launch script.
            "password": "${ES_PASSWORD}",
            "ssl.certificate_authorities": [f"{CA_DIR}/{CA_KEY}"],
            "ssl.verification_mode": "full",
            "index": f"{prefix}-%{{+yyyy.MM.dd}}",
        },
        "setup.ilm.enabled": False,
        "setup.template.enabled": True,
        "setup.template.name": prefix,
        "setup.template.pattern": f"{prefix}-*",
        "path.data": DATA_DIR,
        # The probes connect to the pod's IP, so the endpoint cannot be bound
        # to localhost. It serves read-only counters and no Service exposes it.
        "http.enabled": True,
        "http.host": "0.0.0.0",
        "http.port": HTTP_PORT,
        # Logs go to stderr (the -e flag); the root filesystem is read-only.
        "logging.level": "info",
    }


# --- what stops Filebeat 8.5 from starting or from writing where intended ----

_DATE_TOKENS = (("yyyy", "2024"), ("yy", "24"), ("MM", "01"), ("dd", "31"))
_FORMAT = re.compile(r"%\{(\+?)([^}]*)\}")
_REFERENCE = re.compile(r"\$\{([^}:]+)(:[^}]*)?\}")
_INDEX_FORBIDDEN = set('\\/*?"<>| ,#:')


def expand_dotted_keys(node: Any) -> Any:
    """The config as a Beat reads it: ``a.b: 1`` is ``a: {b: 1}``."""
    if isinstance(node, list):
        return [expand_dotted_keys(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    result: dict[str, Any] = {}
    for key, value in node.items():
        *parents, leaf = str(key).split(".")
        target = result
        for part in parents:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[leaf] = _merge(target.get(leaf), expand_dotted_keys(value))
    return result


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        merged = dict(old)
        for key, value in new.items():
            merged[key] = _merge(merged.get(key), value)
        return merged
    return new


def setting_at(config: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """The value at a dotted path of an expanded config, or ``default``."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _sample_index(index: str) -> str:
    """An index name as one day's events would expand it."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "+":
            text = match.group(2)
            for token, value in _DATE_TOKENS:
                text = text.replace(token, value)
            return text
        return "8.5.0" if match.group(2) == "[agent.version]" else "value"

    return _FORMAT.sub(replace, index)


def _matches(pattern: str, name: str) -> bool:
    """Whether an index template pattern (only ``*`` is special) matches."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, name) is not None


def _processors(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, processor name) of every processor, global and per input."""
    found = []
    chains = [("processors", config.get("processors") or [])]
    for number, item in enumerate(setting_at(config, "filebeat.inputs") or [], start=1):
        if isinstance(item, Mapping):
            chains.append((f"input #{number}", item.get("processors") or []))
    for where, chain in chains:
        for processor in chain:
            if isinstance(processor, Mapping):
                found += [(where, name) for name in processor]
    return found


def _references(node: Any, path: str = "") -> list[tuple[str, str, bool]]:
    """(where, name, has default) of every ``${...}`` reference."""
    if isinstance(node, Mapping):
        return [
            ref
            for key, value in node.items()
            for ref in _references(value, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(node, list):
        return [
            ref
            for number, value in enumerate(node)
            for ref in _references(value, f"{path}[{number}]")
        ]
    if isinstance(node, str):
        return [
            (path, match.group(1), match.group(2) is not None)
            for match in _REFERENCE.finditer(node)
        ]
    return []


def elasticsearch_output_problems(
    output: Mapping[str, Any], where: str = "output.elasticsearch"
) -> list[str]:
    """Connection rules every Beat's Elasticsearch output shares."""
    problems = []
    hosts = output.get("hosts") or []
    if isinstance(hosts, str):
        hosts = [hosts]
    if not hosts:
        problems.append(f"{where}.hosts is empty; the output has nowhere to send")
    protocol = output.get("protocol", "http")
    https = any(
        str(host).startswith("https://")
        or (protocol == "https" and "://" not in str(host))
        for host in hosts
    )
    ssl = output.get("ssl") or {}
    # Without a CA the TLS handshake fails on the cluster's own certificate,
    # and the Beat retries forever without sending anything.
    if (
        https
        and ssl.get("verification_mode", "full") != "none"
        and not ssl.get("certificate_authorities")
        and not ssl.get("ca_trusted_fingerprint")
    ):
        problems.append(
            f"{where} sends over https but sets no ssl.certificate_authorities; "
            "the cluster's certificate cannot be verified"
        )
    if https and ssl.get("verification_mode") == "none":
        problems.append(
            f"{where}.ssl.verification_mode is 'none'; the password would go to "
            "whoever answers. Set the CA instead"
        )
    username, password = output.get("username"), output.get("password")
    # libbeat refuses both ways of logging in at once.
    if output.get("api_key") and (username or password):
        problems.append(f"{where} sets both api_key and username/password")
    if bool(username) != bool(password):
        problems.append(f"{where} needs both username and password, or neither")
    # The project's rule: credentials are files, never rendered values.
    for key in ("password", "api_key"):
        value = output.get(key)
        if isinstance(value, str) and value and not _REFERENCE.fullmatch(value):
            problems.append(
                f"{where}.{key} is a literal value; reference an environment "
                "variable filled from a Secret file, such as '${ES_PASSWORD}'"
            )
    return problems


def output_count_problems(config: Mapping[str, Any]) -> list[str]:
    """libbeat starts with exactly one enabled output."""
    outputs = [
        name
        for name, body in (config.get("output") or {}).items()
        if not (isinstance(body, Mapping) and body.get("enabled") is False)
    ]
    if not outputs:
        return ["no output is configured; the Beat exits at start"]
    if len(outputs) > 1:
        return [
            f"outputs {', '.join(sorted(outputs))} are all enabled; the Beat "
            "exits at start unless exactly one is"
        ]
    return []


def reference_problems(
    config: Mapping[str, Any], environment_variables: Collection[str] | None
) -> list[str]:
    """``${NAME}`` must name a setting, a defined variable, or carry a default."""
    if environment_variables is None:
        return []
    problems = []
    for where, name, has_default in _references(config):
        if has_default or name in environment_variables:
            continue
        if setting_at(config, name) is not None:
            continue
        problems.append(
            f"{where} references ${{{name}}}, which is neither a setting nor "
            "an environment variable of the container; the Beat exits at start"
        )
    return problems


def check_filebeat_config(
    config: Mapping[str, Any],
    *,
    environment_variables: Collection[str] | None = None,
) -> list[str]:
    """Why Filebeat 8.5 would not start, or would not write where intended.

    ``config`` is ``filebeat.yml`` as data, dotted keys or nested. When
    ``environment_variables`` is given, ``${NAME}`` references are checked
    against it. Returns one line per problem; empty means none found.
    """
    config = expand_dotted_keys(config)
    problems = output_count_problems(config)
    output = setting_at(config, "output.elasticsearch")
    if isinstance(output, Mapping):
        problems += elasticsearch_output_problems(output)
        problems += _index_problems(config, output)
    problems += _input_problems(config)
    problems += _processor_problems(config)
    problems += reference_problems(config, environment_variables)
    return problems


def _index_problems(config: Mapping[str, Any], output: Mapping[str, Any]) -> list[str]:
    index = output.get("index")
    if not index:
        return []
    problems = []
    template_enabled = setting_at(config, "setup.template.enabled", True) is not False
    name = setting_at(config, "setup.template.name")
    pattern = setting_at(config, "setup.template.pattern")
    # libbeat's checkTemplateESSettings: Filebeat exits at start.
    if template_enabled and not (name and pattern):
        problems.append(
            "output.elasticsearch.index is set, so setup.template.name and "
            "setup.template.pattern must both be set; Filebeat exits at start"
        )
    sample = _sample_index(str(index))
    # A template that matches no day's index never applies: the data would
    # land in an unmapped index, or in another template's data stream.
    if template_enabled and pattern and not _matches(str(pattern), sample.lower()):
        problems.append(
            f"setup.template.pattern {pattern!r} does not match the index "
            f"{sample!r} that output.elasticsearch.index {index!r} writes"
        )
    # Every Beats 8 template makes a data stream, named after the index.
    if (
        sample != sample.lower()
        or sample[0] in "-_+."
        or _INDEX_FORBIDDEN & set(sample)
        or len(sample.encode()) > 255
    ):
        problems.append(
            f"output.elasticsearch.index {index!r} is no valid data stream "
            "name: lower case, not starting with '-', '_', '+' or '.', without "
            'spaces or any of \\ / * ? " < > | , # :'
        )
    # ILM is on by default in 8.x and its policy would roll each day's data
    # stream over by size and age; the daily name already does that job.
    if setting_at(config, "setup.ilm.enabled", True) is not False:
        problems.append(
            "output.elasticsearch.index is a custom index, so setup.ilm.enabled "
            "must be false"
        )
    # A name without the date is one data stream forever: not the daily
    # index the design, the Grafana datasource and retention by day expect.
    if "%{+" not in str(index):
        problems.append(
            f"output.elasticsearch.index {index!r} has no %{{+yyyy.MM.dd}}; "
            "every day would write to the same data stream"
        )
    return problems


def _input_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    inputs = setting_at(config, "filebeat.inputs") or []
    for number, item in enumerate(inputs, start=1):
        if not isinstance(item, Mapping):
            problems.append(f"input #{number} is {item!r}, not a mapping")
            continue
        kind = item.get("type")
        # An input without paths reads nothing, and Filebeat refuses it.
        if not item.get("paths") and kind in ("filestream", "container", "log"):
            problems.append(f"input #{number} ({kind}) has no paths")
        # Deprecated in 8 and off by default in 9; filestream replaces it.
        if kind == "log":
            problems.append(
                f"input #{number} uses the deprecated 'log' input; use "
                "'filestream' with a unique id"
            )
        if kind != "filestream":
            continue
        # The id keys the input's registry state: without one, or with one
        # shared, inputs resend or skip each other's files.
        input_id = item.get("id")
        if not input_id:
            problems.append(
                f"input #{number} (filestream) has no id; every filestream "
                "input needs a unique, stable id"
            )
        elif input_id in seen:
            problems.append(
                f"input #{number} (filestream) reuses the id {input_id!r} of "
                f"input #{seen[input_id]}"
            )
        else:
            seen[input_id] = number
        # filestream skips symlinks unless told, and the kubelet's directory
        # holds nothing else.
        symlinks = setting_at(item, "prospector.scanner.symlinks", False)
        for path in item.get("paths") or []:
            if str(path).startswith(CONTAINER_LOGS_DIR + "/") and symlinks is not True:
                problems.append(
                    f"input #{number} (filestream) reads {path}, which holds "
                    "symlinks, without prospector.scanner.symlinks: true"
                )
    return problems


def _processor_problems(config: Mapping[str, Any]) -> list[str]:
    problems = []
    found = _processors(config)
    kubernetes = [where for where, name in found if name == "add_kubernetes_metadata"]
    # Each instance opens its own watches on the API server; a second one
    # (the design's global one, without a node or a matcher) adds load and
    # nothing else.
    if len(kubernetes) > 1:
        problems.append(
            "add_kubernetes_metadata is configured "
            f"{len(kubernetes)} times ({', '.join(kubernetes)}); keep one"
        )
    for where, name in found:
        if name == "add_docker_metadata":
            problems.append(
                f"{where}: add_docker_metadata needs the Docker socket, which "
                "containerd nodes do not have and the pod does not mount"
            )
    return problems


# --- the construct -----------------------------------------------------------


def launch_script(
    *, password_file: str, lock_file: str, binary: str, config_file: str
) -> str:
    """The shell that starts Filebeat with its password in the environment.

    Beats expand ``${ES_PASSWORD}`` from the environment only, and a Secret
    reference in the pod spec would show the value to anyone who can read
    the pod; the file stays the only copy. ``set -e`` stops the container
    with an error if the file is missing.
    """
    return "\n".join(
        [
            "set -eu",
            f'ES_PASSWORD="$(cat {password_file})"',
            "export ES_PASSWORD",
            # Filebeat 8.5 refuses to start over a lock file left by an
            # unclean exit when it is given the same PID again, which in a
            # container it always is (elastic/beats#31670, fixed by #34194
            # in 8.6). One pod per node uses this directory.
            f"rm -f {lock_file}",
            f"exec {binary} -e -c {config_file}",
        ]
    )


def _root_security() -> k8s.SecurityContext:
    """``container_security`` for user 0; see the module docstring."""
    return k8s.SecurityContext(
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        run_as_non_root=False,
        run_as_user=ROOT,
        run_as_group=ROOT,
        capabilities=k8s.Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault"),
    )


class Filebeat(Construct):
    """A Filebeat DaemonSet with its RBAC and configuration."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: FilebeatSettings,
        namespace: str,
        environment: str,
        elasticsearch: Endpoint,
    ) -> None:
        super().__init__(scope, id)
        if not _ENVIRONMENT.fullmatch(environment):
            raise ConfigurationError(
                "filebeat environment",
                f"got {environment!r}; it must be a DNS label such as 'production'",
            )
        if elasticsearch.scheme != "https":
            raise ConfigurationError(
                "filebeat elasticsearch",
                f"got {elasticsearch.url!r}; Filebeat sends a password, so the "
                "endpoint must be https",
            )
        self.settings = settings
        self.namespace = namespace
        self.user = filebeat_user(settings.index_prefix)
        self.index_pattern = f"{settings.index_prefix}-*"
        self.time_field = TIME_FIELD
        self.config = filebeat_config(
            settings, environment=environment, elasticsearch=elasticsearch
        )
        problems = check_filebeat_config(
            self.config, environment_variables=ENVIRONMENT_VARIABLES
        )
        if problems:
            raise ConfigurationError("filebeat config", "; ".join(problems))

        labels = standard_labels(NAME, "log-shipper", image_tag(settings.image))
        self._access(labels)
        config_map = k8s.KubeConfigMap(
            self,
            "config",
            metadata=metadata(f"{NAME}-config", labels, namespace),
            data={"filebeat.yml": dump_config(self.config)},
        )
        # Declared the one way every mounter of the certificates Secret does;
        # only ca.crt is mounted here.
        declare_certs_secret(self, namespace)
        declare_secret(
            self,
            name=self.user.secret,
            namespace=namespace,
            keys=[PASSWORD_KEY],
            purpose=f"the password of the Elasticsearch user {self.user.username}",
        )
        self.daemonset = k8s.KubeDaemonSet(
            self,
            "daemonset",
            metadata=metadata(
                NAME,
                labels,
                namespace,
                scan_exceptions(
                    {
                        "CKV_K8S_23": "Filebeat runs as root to read the node's "
                        "root-owned container and nginx log files, with every "
                        "capability dropped",
                        "CKV_K8S_40": "Filebeat runs as uid 0 for the same reason "
                        "as CKV_K8S_23, so no high uid applies",
                        "CKV_K8S_38": "the Kubernetes metadata processor reads "
                        "pods, namespaces and nodes through the API with this token",
                    }
                ),
            ),
            spec=k8s.DaemonSetSpec(
                selector=k8s.LabelSelector(match_labels=selector_labels(NAME)),
                update_strategy=k8s.DaemonSetUpdateStrategy(
                    type="RollingUpdate",
                    rolling_update=k8s.RollingUpdateDaemonSet(
                        max_unavailable=k8s.IntOrString.from_number(1)
                    ),
                ),
                template=self._pod_template(labels),
            ),
        )
        self.daemonset.add_dependency(config_map)

    def _access(self, labels: Mapping[str, str]) -> None:
        namespace = self.namespace
        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        # Exactly what add_kubernetes_metadata 8.5 watches: the node's pods,
        # their namespaces and the node, plus the ReplicaSets and Jobs whose
        # owners (Deployment, CronJob) its add_resource_metadata defaults add.
        # Its lookup of kube-system's kubeadm-config for the cluster name is
        # not granted; it fails quietly and the name is left out.
        read = ["get", "list", "watch"]
        cluster_role = f"{NAME}-{namespace}"
        k8s.KubeClusterRole(
            self,
            "clusterrole",
            metadata=metadata(cluster_role, labels),
            rules=[
                k8s.PolicyRule(
                    api_groups=[""],
                    resources=["namespaces", "nodes", "pods"],
                    verbs=read,
                ),
                k8s.PolicyRule(
                    api_groups=["apps"], resources=["replicasets"], verbs=read
                ),
                k8s.PolicyRule(api_groups=["batch"], resources=["jobs"], verbs=read),
            ],
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
            subjects=[
                k8s.Subject(kind="ServiceAccount", name=NAME, namespace=namespace)
            ],
        )

    def _pod_template(self, labels: Mapping[str, str]) -> k8s.PodTemplateSpec:
        settings = self.settings
        host_dirs = host_log_directories(settings)
        log_volumes = _volume_names(host_dirs)
        script = launch_script(
            password_file=PASSWORD_FILE,
            lock_file=LOCK_FILE,
            binary=BINARY,
            config_file=CONFIG_FILE,
        )
        filebeat = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            # "$$" is Kubernetes' escape for a literal "$" in a command.
            command=["/bin/sh", "-c", script.replace("$(", "$$(")],
            env=[
                k8s.EnvVar(
                    name="NODE_NAME",
                    value_from=k8s.EnvVarSource(
                        field_ref=k8s.ObjectFieldSelector(field_path="spec.nodeName")
                    ),
                )
            ],
            ports=[container_port("http", HTTP_PORT)],
            resources=settings.resources.to_k8s(),
            security_context=_root_security(),
            readiness_probe=http_probe("/", "http"),
            liveness_probe=http_probe("/", "http", failure_threshold=6),
            volume_mounts=[
                mount("config", CONFIG_DIR),
                ca_mount(CA_DIR),
                mount("credentials", CREDENTIALS_DIR),
                mount("registry", DATA_DIR, read_only=False),
                *[mount(name, path) for name, path in log_volumes],
            ],
        )
        return k8s.PodTemplateSpec(
            metadata=k8s.ObjectMeta(
                labels=dict(labels),
                annotations={
                    # Filebeat reads its config only at start.
                    "checksum/config": config_checksum(self.config),
                },
            ),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                # add_kubernetes_metadata reads the API with this token.
                automount_service_account_token=True,
                # User 0; see the module docstring.
                security_context=k8s.PodSecurityContext(
                    run_as_non_root=False,
                    run_as_user=ROOT,
                    run_as_group=ROOT,
                    # Without capabilities root reads only what its user or
                    # groups may; see log_reader_groups.
                    supplemental_groups=list(settings.log_reader_groups) or None,
                    seccomp_profile=k8s.SeccompProfile(type="RuntimeDefault"),
                ),
                # Every node, tainted control-plane nodes included.
                tolerations=[k8s.Toleration(operator="Exists")],
                containers=[filebeat],
                volumes=[
                    config_map_volume("config", f"{NAME}-config"),
                    ca_volume(),
                    credentials_volume("credentials", self.user),
                    _host_volume(
                        "registry", settings.registry_host_path, "DirectoryOrCreate"
                    ),
                    *[
                        _host_volume(
                            name,
                            path,
                            # The kubelet's directories exist on every node;
                            # nginx's may not, and an empty one is harmless.
                            "Directory"
                            if path in (CONTAINER_LOGS_DIR, POD_LOGS_DIR)
                            else "DirectoryOrCreate",
                        )
                        for name, path in log_volumes
                    ],
                ],
            ),
        )


def _volume_names(paths: list[str]) -> list[tuple[str, str]]:
    """(volume name, path) pairs: ``/var/log/pods`` is ``host-var-log-pods``."""
    named: list[tuple[str, str]] = []
    for path in paths:
        base = "host-" + re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")
        name, number = base[:60].rstrip("-"), 1
        # Distinct paths can fold to one name, such as /a.b and /a-b.
        while name in {taken for taken, _ in named}:
            number += 1
            name = f"{base[:57].rstrip('-')}-{number}"
        named.append((name, path))
    return named


def _host_volume(name: str, path: str, type: str) -> k8s.Volume:
    return k8s.Volume(
        name=name, host_path=k8s.HostPathVolumeSource(path=path, type=type)
    )
