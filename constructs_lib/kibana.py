"""Kibana 8.5: the log explorer, logged in to Elasticsearch as kibana_system.

Kibana 8 refuses to log in as the ``elastic`` superuser, so it uses the
built-in ``kibana_system`` user, whose password the ``elasticsearch-setup``
Job sets from the same Secret Kibana reads (:data:`KIBANA_USER`).

Kibana expands ``${VAR}`` in ``kibana.yml`` from its environment, and the
image's ``kibana-docker`` launcher turns every environment variable named
after a setting (``ELASTICSEARCH_PASSWORD`` for ``elasticsearch.password``)
into a ``--setting=value`` command-line flag, readable by anyone who can
list processes. So no secret travels as such a variable, and none as a
``secretKeyRef``: ``start.sh`` reads the password and the three encryption
keys from their Secret files into variables whose names no setting has
(``KBN_*``), and ``kibana.yml`` refers to them.

The encryption keys keep saved objects (alerting connectors), sessions and
reports readable across restarts and between replicas; Kibana generates
throw-away keys when they are missing, which logs every user out at each
restart. The operator creates ``kibana-encryption-keys`` with the keys
``saved-objects``, ``security`` and ``reporting``, each at least 32
characters (``bin/kibana-encryption-keys generate`` prints suitable ones).

Kibana writes its data directory (a UUID, and the extracted Chromium that
reporting uses), ``/tmp`` (Chromium's profile) and possibly ``logs/``;
these are emptyDirs and the root filesystem is read-only. Readiness asks
``/login``, which answers 200 without credentials once Kibana serves (and
503 while it starts or migrates saved objects); ``/api/status`` needs a
login in 8.5 unless ``status.allowAnonymous`` exposes it to everyone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from constructs import Construct
from pydantic import Field, field_validator

from constructs_lib import elastic
from constructs_lib.common import (
    DnsLabel,
    Endpoint,
    Image,
    Resources,
    StrictModel,
    config_checksum,
    config_map_volume,
    container_port,
    container_security,
    declare_secret,
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
    standard_labels,
)
from constructs_lib.elasticsearch import (
    declare_certs_secret,
    flatten,
    quantity_bytes,
)
from constructs_lib.errors import ConfigurationError
from imports import k8s

NAME = "kibana"
PORT = 5601
PORT_NAME = "http"
# The image is built for uid 1000; it runs as a uid of its own above the
# range hosts hand out (docs/security.md). Its files are readable by anyone and
# it writes only to the mounted emptyDirs.
KIBANA_UID = 11001

KIBANA = Endpoint(NAME, PORT)
"""The Service other components (the setup Job's extra steps) reach Kibana at."""

KIBANA_USER = elastic.ClientUser("kibana_system", "kibana-elasticsearch")
"""The built-in user Kibana logs in as; the setup Job sets its password."""

HOME = "/usr/share/kibana"
CONFIG_FILE = "kibana.yml"
START_SCRIPT = "start.sh"
CONFIG_PATH = f"{HOME}/config/{CONFIG_FILE}"
TEMPLATE_DIR = "/mnt/kibana-config"
CA_DIR = "/mnt/elasticsearch-ca"
CREDENTIALS_DIR = "/mnt/kibana-elasticsearch"
KEYS_DIR = "/mnt/kibana-encryption-keys"
DATA_DIR = f"{HOME}/data"
LOGS_DIR = f"{HOME}/logs"
TMP_DIR = "/tmp"
LAUNCHER = "/usr/local/bin/kibana-docker"
"""The image's own start command, which ``start.sh`` ends by exec-ing."""

MIN_KEY_LENGTH = 32
# Secret key -> (kibana.yml setting, environment variable start.sh sets).
ENCRYPTION_KEYS = {
    "saved-objects": (
        "xpack.encryptedSavedObjects.encryptionKey",
        "KBN_SAVED_OBJECTS_KEY",
    ),
    "security": ("xpack.security.encryptionKey", "KBN_SECURITY_KEY"),
    "reporting": ("xpack.reporting.encryptionKey", "KBN_REPORTING_KEY"),
}
PASSWORD_VARIABLE = "KBN_ELASTICSEARCH_PASSWORD"


def _public_base_url(value: str | None) -> str | None:
    if value is None:
        return value
    parts = urlsplit(value)
    # Kibana's http config: an http(s) URI with only protocol, host, port
    # and a path equal to server.basePath (none here, so "/" or nothing).
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"public_base_url {value!r} is not an http(s) URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(
            f"public_base_url {value!r} may only contain a protocol, host, "
            "port and path"
        )
    if parts.path not in ("", "/"):
        raise ValueError(
            f"public_base_url {value!r} has a path; Kibana requires the path "
            "to equal server.basePath, which this chart does not set"
        )
    return value


class KibanaSettings(StrictModel):
    """How Kibana runs in one environment."""

    image: Image = Field(
        default="docker.elastic.co/kibana/kibana:8.5.0",
        description="Kibana image. Defaults to 8.5.0; it must match the "
        "Elasticsearch version.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Kibana pods; they share the encryption keys. Defaults to 1.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="500m",
            memory_request="1Gi",
            cpu_limit="1",
            memory_limit="2Gi",
        ),
        description="Kibana container resources. Defaults to 500m/1Gi "
        "requested, 1 CPU/2Gi limit; the Node.js heap is sized to 60% of "
        "the memory limit.",
    )
    encryption_secret: DnsLabel = Field(
        default="kibana-encryption-keys",
        description="Operator-created Secret with the keys "
        f"{', '.join(ENCRYPTION_KEYS)}, each at least {MIN_KEY_LENGTH} "
        "characters. Defaults to 'kibana-encryption-keys'.",
    )
    public_base_url: str | None = Field(
        default=None,
        description="The URL users reach Kibana at (server.publicBaseUrl), "
        "used in links Kibana sends. Defaults to none.",
    )

    @field_validator("public_base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _public_base_url(value)

    @field_validator("resources")
    @classmethod
    def _enough_memory(cls, resources: Resources) -> Resources:
        if quantity_bytes(resources.memory_limit) < 2**30:
            raise ValueError(
                f"memory_limit {resources.memory_limit!r} is below 1Gi, too "
                "little for Kibana 8"
            )
        return resources


def kibana_config(settings: KibanaSettings, elasticsearch: Endpoint) -> dict[str, Any]:
    """The whole ``kibana.yml`` as data; secrets are ``${VAR}`` references."""
    config: dict[str, Any] = {
        # The image's own kibana.yml, which this file replaces, sets these.
        "server.host": "0.0.0.0",
        "server.port": PORT,
        "server.name": NAME,
        "server.shutdownTimeout": "5s",
        "elasticsearch.hosts": [elasticsearch.url],
        "elasticsearch.username": KIBANA_USER.username,
        "elasticsearch.password": f"${{{PASSWORD_VARIABLE}}}",
    }
    if elasticsearch.scheme == "https":
        config["elasticsearch.ssl.certificateAuthorities"] = [
            f"{CA_DIR}/{elastic.CA_KEY}"
        ]
        config["elasticsearch.ssl.verificationMode"] = "full"
    for setting, variable in ENCRYPTION_KEYS.values():
        config[setting] = f"${{{variable}}}"
    if settings.public_base_url:
        config["server.publicBaseUrl"] = settings.public_base_url
    config.update(
        {
            "monitoring.ui.container.elasticsearch.enabled": True,
            # No outbound calls: the cluster reaches no telemetry, news
            # or map tile service.
            "telemetry.optIn": False,
            "telemetry.allowChangingOptInStatus": False,
            "newsfeed.enabled": False,
            "map.includeElasticMapsService": False,
        }
    )
    return config


def _placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def check_kibana_config(config: Mapping[str, Any]) -> list[str]:
    """Why Kibana 8.5 would refuse this ``kibana.yml``, or fail to log in.

    ``${VAR}`` values are expanded by Kibana at start and cannot be judged
    here; ``start.sh`` checks the lengths of the keys it reads.
    """
    flat = flatten(config)
    problems: list[str] = []
    username = flat.get("elasticsearch.username")
    if username == "elastic":
        # 8.0+: "[config validation of [elasticsearch].username]: value of
        # "elastic" is forbidden".
        problems.append(
            "elasticsearch.username 'elastic' is forbidden in Kibana 8; use "
            "kibana_system"
        )
    if username == "kibana":
        # Elasticsearch 8.0 replaced the built-in 'kibana' user.
        problems.append(
            "elasticsearch.username 'kibana' no longer exists in 8.x; use kibana_system"
        )
    if username is not None and flat.get("elasticsearch.serviceAccountToken"):
        problems.append(
            "elasticsearch.serviceAccountToken cannot be specified when "
            "elasticsearch.username is also set"
        )
    if (username is None) != (flat.get("elasticsearch.password") is None):
        problems.append(
            "elasticsearch.username and elasticsearch.password must be set together"
        )

    hosts = flat.get("elasticsearch.hosts")
    host_list = [hosts] if isinstance(hosts, str) else list(hosts or [])
    if not host_list:
        problems.append("elasticsearch.hosts is empty; Kibana needs Elasticsearch")
    schemes = {urlsplit(str(host)).scheme for host in host_list}
    if not schemes <= {"http", "https"}:
        problems.append(f"elasticsearch.hosts {host_list} must be http(s) URLs")
    mode = flat.get("elasticsearch.ssl.verificationMode", "full")
    if mode not in ("none", "certificate", "full"):
        problems.append(
            f"elasticsearch.ssl.verificationMode {mode!r} is not none, "
            "certificate or full"
        )
    if (
        "https" in schemes
        and mode != "none"
        and not flat.get("elasticsearch.ssl.certificateAuthorities")
        and not flat.get("elasticsearch.ssl.truststore.path")
    ):
        problems.append(
            "elasticsearch.hosts uses https but no "
            "elasticsearch.ssl.certificateAuthorities is set; Kibana could "
            "not verify the cluster's private CA"
        )
    if flat.get("elasticsearch.ssl.key") and flat.get(
        "elasticsearch.ssl.keystore.path"
    ):
        problems.append("cannot use [key] when [keystore.path] is specified")

    for setting, _ in ENCRYPTION_KEYS.values():
        value = flat.get(setting)
        if value is None:
            problems.append(
                f"{setting} is not set; Kibana would use a random key per start"
            )
        elif not _placeholder(value) and len(str(value)) < MIN_KEY_LENGTH:
            problems.append(
                f"{setting} is {len(str(value))} characters; Kibana requires "
                f"at least {MIN_KEY_LENGTH}"
            )

    url = flat.get("server.publicBaseUrl")
    if url is not None:
        parts = urlsplit(str(url))
        base_path = flat.get("server.basePath") or "/"
        if parts.scheme not in ("http", "https"):
            problems.append(f"server.publicBaseUrl {url!r} is not an http(s) URL")
        if parts.query or parts.fragment or parts.username:
            problems.append(
                "[publicBaseUrl] may only contain a protocol, host, port, and pathname"
            )
        if (parts.path or "/") != base_path:
            problems.append(
                f"[publicBaseUrl] must contain the [basePath]: "
                f"{parts.path or '/'} !== {base_path}"
            )
    host = flat.get("server.host", "localhost")
    if host in ("localhost", "127.0.0.1", "::1"):
        problems.append(
            f"server.host {host!r} binds loopback only; the Service could not "
            "reach Kibana"
        )
    return problems


def start_script() -> str:
    """``start.sh``: secret files into ``KBN_*`` variables, then Kibana.

    The variables' names match no Kibana setting, so ``kibana-docker`` does
    not turn them into command-line flags. Command substitution drops a
    trailing newline, as the setup Job's reading of the same files does.
    """
    reads = [
        f"{PASSWORD_VARIABLE}=$(read_secret {CREDENTIALS_DIR}/{elastic.PASSWORD_KEY} 1)"
    ]
    for key, (_, variable) in ENCRYPTION_KEYS.items():
        reads.append(f"{variable}=$(read_secret {KEYS_DIR}/{key} {MIN_KEY_LENGTH})")
    variables = [PASSWORD_VARIABLE] + [v for _, v in ENCRYPTION_KEYS.values()]
    return (
        "#!/bin/sh\n"
        "# Kibana's secrets come from files; kibana.yml refers to them as\n"
        "# ${KBN_*}. Nothing secret is on a command line or in the pod spec.\n"
        "set -eu\n"
        "read_secret() {\n"
        '  value=$(cat "$1")\n'
        '  if [ "${#value}" -lt "$2" ]; then\n'
        '    echo "start.sh: $1 holds ${#value} characters; at least $2 are '
        'needed" >&2\n'
        "    exit 1\n"
        "  fi\n"
        "  printf '%s' \"$value\"\n"
        "}\n"
        + "".join(f"{line}\n" for line in reads)
        + f"export {' '.join(variables)}\n"
        + f"exec {LAUNCHER}\n"
    )


class Kibana(Construct):
    """Kibana with its config, Deployment and Service."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: KibanaSettings,
        namespace: str,
        elasticsearch: Endpoint,
    ) -> None:
        super().__init__(scope, id)
        self.settings = settings
        self.namespace = namespace
        self.endpoint = KIBANA
        labels = standard_labels(NAME, "logs-ui", image_tag(settings.image))
        selector = selector_labels(NAME)

        self.config = kibana_config(settings, elasticsearch)
        problems = check_kibana_config(self.config)
        if problems:
            raise ConfigurationError("kibana config", "; ".join(problems))
        self.start_script = start_script()

        # Kibana does not call the Kubernetes API; no token.
        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        declare_secret(
            self,
            name=KIBANA_USER.secret,
            namespace=namespace,
            keys=(elastic.PASSWORD_KEY,),
            purpose="the password of Elasticsearch's built-in kibana_system user",
        )
        declare_secret(
            self,
            name=settings.encryption_secret,
            namespace=namespace,
            keys=tuple(ENCRYPTION_KEYS),
            purpose="Kibana's encryption keys for saved objects, sessions and "
            f"reports, each at least {MIN_KEY_LENGTH} characters",
        )
        if elasticsearch.scheme == "https":
            declare_certs_secret(self, namespace)

        config_map = k8s.KubeConfigMap(
            self,
            "config",
            metadata=metadata(f"{NAME}-config", labels, namespace),
            data={
                CONFIG_FILE: dump_config(self.config),
                START_SCRIPT: self.start_script,
            },
        )
        self.deployment = k8s.KubeDeployment(
            self,
            "deployment",
            metadata=metadata(NAME, labels, namespace),
            spec=k8s.DeploymentSpec(
                replicas=settings.replicas,
                selector=k8s.LabelSelector(match_labels=selector),
                # Kibana does not support two versions running at once: an
                # upgrade migrates its saved-object indices, so every old pod
                # stops before a new one starts.
                strategy=k8s.DeploymentStrategy(type="Recreate"),
                template=self._pod_template(labels, elasticsearch),
            ),
        )
        self.deployment.add_dependency(config_map)

        self.service = service(
            self,
            "service",
            name=NAME,
            namespace=namespace,
            labels=labels,
            ports=[(PORT_NAME, PORT)],
            selector=selector,
        )

    def _pod_template(
        self, labels: Mapping[str, str], elasticsearch: Endpoint
    ) -> k8s.PodTemplateSpec:
        settings = self.settings
        # Node.js sizes its heap from the host's memory, not the container's.
        heap_mb = int(quantity_bytes(settings.resources.memory_limit) * 0.6 // 2**20)
        mounts = [
            # Only kibana.yml: the image's config/node.options stays in place.
            k8s.VolumeMount(
                name="config",
                mount_path=CONFIG_PATH,
                sub_path=CONFIG_FILE,
                read_only=True,
            ),
            mount("config", TEMPLATE_DIR),
            mount("credentials", CREDENTIALS_DIR),
            mount("encryption-keys", KEYS_DIR),
            mount("data", DATA_DIR, read_only=False),
            mount("logs", LOGS_DIR, read_only=False),
            mount("tmp", TMP_DIR, read_only=False),
        ]
        volumes = [
            config_map_volume("config", f"{NAME}-config", [CONFIG_FILE, START_SCRIPT]),
            elastic.credentials_volume("credentials", KIBANA_USER),
            secret_volume(
                "encryption-keys", settings.encryption_secret, list(ENCRYPTION_KEYS)
            ),
            _empty_dir("data", "1Gi"),
            _empty_dir("logs", "256Mi"),
            _empty_dir("tmp", "1Gi"),
        ]
        if elasticsearch.scheme == "https":
            mounts.append(elastic.ca_mount(CA_DIR))
            volumes.append(elastic.ca_volume())
        kibana = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            # The image's entrypoint (tini) stays; the command becomes the
            # wrapper, which ends by exec-ing the image's own command.
            args=["/bin/sh", f"{TEMPLATE_DIR}/{START_SCRIPT}"],
            env=[
                k8s.EnvVar(name="NODE_OPTIONS", value=f"--max-old-space-size={heap_mb}")
            ],
            ports=[container_port(PORT_NAME, PORT)],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            readiness_probe=http_probe("/login", PORT_NAME),
            # Saved-object migrations after an upgrade can take minutes.
            startup_probe=http_probe(
                "/login", PORT_NAME, period_seconds=10, failure_threshold=60
            ),
            liveness_probe=http_probe(
                "/login", PORT_NAME, period_seconds=20, failure_threshold=6
            ),
            volume_mounts=mounts,
        )
        return k8s.PodTemplateSpec(
            metadata=k8s.ObjectMeta(
                labels=dict(labels),
                annotations={
                    # kibana.yml is read only at start, and a subPath mount
                    # never sees a changed ConfigMap.
                    "checksum/config": config_checksum(self.config, self.start_script),
                },
            ),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                automount_service_account_token=False,
                # kibana-docker reads settings from the environment; Service
                # links would add variables nobody asked for.
                enable_service_links=False,
                security_context=pod_security(
                    KIBANA_UID, KIBANA_UID, fs_group=KIBANA_UID
                ),
                containers=[kibana],
                volumes=volumes,
            ),
        )


def _empty_dir(name: str, size: str) -> k8s.Volume:
    return k8s.Volume(
        name=name,
        empty_dir=k8s.EmptyDirVolumeSource(size_limit=k8s.Quantity.from_string(size)),
    )
