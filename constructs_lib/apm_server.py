"""Elastic APM Server: receives the backend's traces, errors and metrics.

The backend's elastic-apm-node agent sends to
``http://apm-server.<namespace>.svc:8200`` with the secret token from the
operator's ``apm-server-secret-token`` Secret; APM Server writes the events
over HTTPS, as the ``apm_writer`` user, to its data streams
(``traces-apm*``, ``metrics-apm*``, ``logs-apm*``).

APM Server 8 installs nothing in Elasticsearch: the index templates, ingest
pipelines and lifecycle policies of those data streams belong to the APM
integration package, which Kibana's Fleet installs (8.0 breaking changes:
"Fleet is now entirely responsible for setting up index templates, index
lifecycle policies, and index pipelines"; ``setup.*`` and
``output.elasticsearch.index`` are gone). An event written before the
package is installed creates its data stream, or a plain index, with the
wrong mappings, and the name stays taken. ``APM_SETUP_STEP`` installs the
package from the copy bundled with Kibana.

So that no event is written before that, APM Server keeps its default
``data_streams.wait_for_integration: true``: it checks that the package's
index templates exist before it sends anything, whatever order the setup
Job runs in. In 8.5 the check reads five index templates from
Elasticsearch, which takes the ``manage_index_templates`` cluster privilege;
the APM guide's writer role has no cluster privilege and would wait forever.
With ``wait_for_integration: false`` the writer role drops that privilege,
and the setup Job must then install the package before it creates
``apm_writer`` (until that user exists APM Server cannot write at all).

The secret token and the password are read from files by the launch script
and exist only in the process's environment, where APM Server expands
``${...}`` references. The token travels in plain HTTP inside the cluster,
as the design's ``http://`` URL has it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from constructs import Construct
from pydantic import Field

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
    disruption_budget,
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
    spread_across_nodes,
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
from constructs_lib.filebeat import (
    elasticsearch_output_problems,
    expand_dotted_keys,
    output_count_problems,
    reference_problems,
    setting_at,
)
from imports import k8s

NAME = "apm-server"
PORT = 8200
# The image is built for uid 1000; it runs as a uid of its own above the
# range hosts hand out (docs/security.md). It writes only to its data emptyDir.
APM_SERVER_USER = 11002

HOME = "/usr/share/apm-server"
BINARY = f"{HOME}/apm-server"
DATA_DIR = f"{HOME}/data"

CONFIG_DIR = "/etc/apm-server/config"
CONFIG_FILE = f"{CONFIG_DIR}/apm-server.yml"
CA_DIR = "/etc/apm-server/ca"
CREDENTIALS_DIR = "/etc/apm-server/credentials"
PASSWORD_FILE = f"{CREDENTIALS_DIR}/{PASSWORD_KEY}"
TOKEN_DIR = "/etc/apm-server/secret-token"
SECRET_TOKEN_KEY = "secret-token"
TOKEN_FILE = f"{TOKEN_DIR}/{SECRET_TOKEN_KEY}"

ENVIRONMENT_VARIABLES = frozenset({"ES_PASSWORD", "APM_SECRET_TOKEN"})
"""What the launch script exports, and so all the config may reference."""


def apm_user(wait_for_integration: bool = True) -> ClientUser:
    """The Elasticsearch user APM Server writes as.

    The APM guide's writer role for standalone 8.x servers creates the data
    streams from the package's templates (``auto_configure``) and adds
    documents to them (``create_doc``), and reads nothing back. Waiting for
    the package adds ``manage_index_templates``: APM Server 8.5 asks for the
    templates with ``GET _index_template/<name>``, which needs it.
    """
    return ClientUser(
        username="apm_writer",
        secret="apm-server-elasticsearch",
        role_name="apm_writer",
        role={
            "cluster": ["manage_index_templates"] if wait_for_integration else [],
            "indices": [
                {
                    "names": ["traces-apm*", "logs-apm*", "metrics-apm*"],
                    "privileges": ["auto_configure", "create_doc"],
                }
            ],
        },
    )


APM_USER = apm_user()
"""The user of the default settings, for the setup Job to create."""

_ENVIRONMENT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")


class ApmServerSettings(StrictModel):
    """How the APM Server runs in one environment."""

    image: Image = Field(
        default="docker.elastic.co/apm/apm-server:8.5.0",
        description="APM Server image. Defaults to 8.5.0, the design's release; "
        "the APM package of the same release is installed by the setup job "
        "through Kibana, so it must be the Elasticsearch release.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=10,
        description="APM Server pods. Each is stateless. Defaults to 1; "
        "production may run 2.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="100m",
            memory_request="256Mi",
            cpu_limit="500m",
            memory_limit="512Mi",
        ),
        description="Container resources. Defaults to 100m/256Mi requested, "
        "500m/512Mi limits (the design names none).",
    )
    wait_for_integration: bool = Field(
        default=True,
        description="Hold events until the APM package's index templates "
        "exist; gives apm_writer the manage_index_templates privilege. Set "
        "false only if the setup Job installs the package before it creates "
        "apm_writer. Defaults to true, APM Server's default.",
    )
    secret_token_secret: DnsLabel = Field(
        default="apm-server-secret-token",
        description="Operator-created Secret whose key "
        f"'{SECRET_TOKEN_KEY}' is the token agents send. Defaults to "
        "'apm-server-secret-token'.",
    )


def apm_server_config(
    *, environment: str, elasticsearch: Endpoint, wait_for_integration: bool = True
) -> dict[str, Any]:
    """The whole ``apm-server.yml`` as data."""
    return {
        "apm-server": {
            "host": f"0.0.0.0:{PORT}",
            "auth": {"secret_token": "${APM_SECRET_TOKEN}"},
            # Events from an agent that names no environment count as this one.
            "default_service_environment": environment,
            # See the module docstring; true is APM Server's default, and
            # written out because the writer role depends on it.
            "data_streams": {"wait_for_integration": wait_for_integration},
        },
        "output.elasticsearch": {
            "hosts": [elasticsearch.url],
            "username": apm_user(wait_for_integration).username,
            "password": "${ES_PASSWORD}",
            "ssl.certificate_authorities": [f"{CA_DIR}/{CA_KEY}"],
            "ssl.verification_mode": "full",
        },
        "path.data": DATA_DIR,
        "logging.level": "info",
    }


# --- what stops APM Server 8.5 from starting or from writing where intended --

# Settings APM Server 8.0 removed (APM breaking changes, 8.0). They no longer
# take effect, so a config that relies on one does not do what it says; the
# old secret_token and api_key places would leave the server open.
_REMOVED = {
    "apm-server.secret_token": "apm-server.auth.secret_token",
    "apm-server.api_key": "apm-server.auth.api_key",
    "apm-server.ilm": "the APM package's lifecycle policies",
    "apm-server.register": "the APM package's ingest pipelines",
    "apm-server.data_streams.enabled": "nothing: data streams are the only mode",
    "apm-server.jaeger": "OTLP or an agent",
    "apm-server.rum.allowed_service": "apm-server.auth.anonymous.allow_service",
    "apm-server.rum.event_rate": "apm-server.auth.anonymous.rate_limit",
    "setup": "the APM package, installed through Kibana",
    "output.elasticsearch.index": "nothing: APM Server writes its data streams",
    "output.elasticsearch.indices": "nothing: APM Server writes its data streams",
    "output.elasticsearch.pipeline": "the APM package's ingest pipelines",
    "output.elasticsearch.pipelines": "the APM package's ingest pipelines",
    "output.elasticsearch.bulk_max_size": "nothing: the output tunes itself",
    "output.elasticsearch.worker": "nothing: the output tunes itself",
    "queue": "nothing: the output tunes itself",
}
_NAMESPACE = re.compile(r"^[a-z0-9_.]{1,100}$")


def check_apm_server_config(
    config: Mapping[str, Any],
    *,
    environment_variables: Collection[str] | None = None,
) -> list[str]:
    """Why APM Server 8.5 would not start, or would not write where intended.

    ``config`` is ``apm-server.yml`` as data, dotted keys or nested. When
    ``environment_variables`` is given, ``${NAME}`` references are checked
    against it. Returns one line per problem; empty means none found.
    """
    config = expand_dotted_keys(config)
    problems = output_count_problems(config)
    output = setting_at(config, "output.elasticsearch")
    if isinstance(output, Mapping):
        problems += elasticsearch_output_problems(output)
    for setting, instead in _REMOVED.items():
        if setting_at(config, setting) is not None:
            problems.append(
                f"{setting} was removed in APM Server 8.0 and has no effect; "
                f"use {instead}"
            )
    host = setting_at(config, "apm-server.host")
    if host is not None and not re.fullmatch(r".*:[0-9]{1,5}", str(host)):
        problems.append(
            f"apm-server.host {host!r} must be 'address:port', such as '0.0.0.0:{PORT}'"
        )
    auth = setting_at(config, "apm-server.auth")
    auth = auth if isinstance(auth, Mapping) else {}
    token = auth.get("secret_token")
    # An empty token turns authorization off: every request is accepted.
    if token is not None and not str(token).strip():
        problems.append(
            "apm-server.auth.secret_token is empty, which accepts every agent"
        )
    if isinstance(token, str) and token and not token.startswith("${"):
        problems.append(
            "apm-server.auth.secret_token is a literal value; reference an "
            "environment variable filled from a Secret file"
        )
    if token is None and not setting_at(config, "apm-server.auth.api_key.enabled"):
        problems.append(
            "apm-server.auth sets neither secret_token nor api_key; every "
            "agent, and anyone else, can write"
        )
    namespace = setting_at(config, "apm-server.data_streams.namespace")
    # The data stream naming scheme: type-dataset-namespace.
    if namespace is not None and not _NAMESPACE.fullmatch(str(namespace)):
        problems.append(
            f"apm-server.data_streams.namespace {namespace!r} must be lower case "
            "without '-', at most 100 characters"
        )
    problems += reference_problems(config, environment_variables)
    return problems


# --- installing the APM package ----------------------------------------------


def apm_setup_step(
    package_version: str, *, wait_seconds: int = 300, poll_seconds: int = 5
) -> str:
    """A POSIX sh step that installs the APM package through Kibana's Fleet API.

    Kibana 8.x installs a package whose name and version match a package
    bundled in its distribution from that archive, without the package
    registry; Kibana 8.5 bundles ``apm`` at its own version. The step needs
    ``KIBANA_URL`` and ``ELASTIC_PASSWORD_FILE`` (the ``elastic`` user's
    password file), optionally ``KIBANA_CA_FILE``, and ``curl``. It waits at
    most ``wait_seconds`` for Kibana, retries the install a few times while
    Fleet finishes its own start, and exits non-zero with a message on
    failure. The password goes to curl on stdin, never on its command line.
    It runs under the setup Job's ``sh -eu`` and in the curlimages/curl
    image's BusyBox shell. Installing the same version again is harmless.
    """
    if not _VERSION.fullmatch(package_version):
        raise ConfigurationError(
            "APM package version",
            f"got {package_version!r}; it must be a release such as '8.5.0'",
        )
    if wait_seconds < 1 or poll_seconds < 1:
        raise ConfigurationError(
            "APM setup step", "wait_seconds and poll_seconds must be positive"
        )
    attempts = max(1, -(-wait_seconds // poll_seconds))
    path = f"/api/fleet/epm/packages/apm/{package_version}"
    return f"""\
# Install the APM integration package {package_version}: the index templates,
# ingest pipelines and lifecycle policies of traces-apm*, metrics-apm* and
# logs-apm*. APM Server holds its events until they exist.
(
  set -eu
  : "${{KIBANA_URL:?KIBANA_URL is not set}}"
  : "${{ELASTIC_PASSWORD_FILE:?ELASTIC_PASSWORD_FILE is not set}}"
  password="$(cat "$ELASTIC_PASSWORD_FILE")"
  # A curl config line; backslashes and quotes in the password are escaped.
  escaped="$(printf '%s' "$password" | sed 's/[\\\\"]/\\\\&/g')"
  credentials="user = \\"elastic:$escaped\\""
  kibana() {{
    printf '%s\\n' "$credentials" | curl -q --silent --show-error --fail \\
      --connect-timeout 10 --config - ${{KIBANA_CA_FILE:+--cacert "$KIBANA_CA_FILE"}} \\
      -H 'kbn-xsrf: true' -H 'Content-Type: application/json' "$@"
  }}
  attempt=0
  until kibana --max-time 10 "$KIBANA_URL/api/status" >/dev/null 2>&1; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge {attempts} ]; then
      echo "APM setup: Kibana at $KIBANA_URL is not up after {attempts} tries" >&2
      exit 1
    fi
    sleep {poll_seconds}
  done
  attempt=0
  # Installing takes Fleet a while; a first try may meet its own start.
  until response="$(kibana --max-time 300 -X POST --data '{{}}' \\
    "$KIBANA_URL{path}" 2>&1)"; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge 5 ]; then
      echo "APM setup: installing apm {package_version} failed: $response" >&2
      exit 1
    fi
    sleep {poll_seconds}
  done
  case "$response" in
    *'"items"'*) echo "APM setup: apm {package_version} is installed" ;;
    *) echo "APM setup: unexpected answer from Kibana: $response" >&2; exit 1 ;;
  esac
) || exit 1
"""


APM_SETUP_STEP = apm_setup_step(
    image_tag(ApmServerSettings.model_fields["image"].default)
)
"""The step for the default image's version, for the setup Job to run."""


# --- the construct -----------------------------------------------------------


def launch_script(
    *, password_file: str, token_file: str, binary: str, config_file: str
) -> str:
    """The shell that starts APM Server with its two secrets in the environment.

    ``set -e`` stops the container with an error if either file is missing.
    """
    return "\n".join(
        [
            "set -eu",
            f'ES_PASSWORD="$(cat {password_file})"',
            f'APM_SECRET_TOKEN="$(cat {token_file})"',
            "export ES_PASSWORD APM_SECRET_TOKEN",
            f"exec {binary} -e -c {config_file}",
        ]
    )


class ApmServer(Construct):
    """APM Server: Deployment, Service, configuration and identity."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: ApmServerSettings,
        namespace: str,
        elasticsearch: Endpoint,
        environment: str,
    ) -> None:
        super().__init__(scope, id)
        if not _ENVIRONMENT.fullmatch(environment):
            raise ConfigurationError(
                "apm-server environment",
                f"got {environment!r}; it must be a DNS label such as 'production'",
            )
        if elasticsearch.scheme != "https":
            raise ConfigurationError(
                "apm-server elasticsearch",
                f"got {elasticsearch.url!r}; APM Server sends a password, so the "
                "endpoint must be https",
            )
        self.settings = settings
        self.namespace = namespace
        self.endpoint = Endpoint(NAME, PORT)
        self.agent_url = f"http://{NAME}.{namespace}.svc:{PORT}"
        """ELASTIC_APM_SERVER_URL for the backend, from any namespace."""
        self.user = apm_user(settings.wait_for_integration)
        self.config = apm_server_config(
            environment=environment,
            elasticsearch=elasticsearch,
            wait_for_integration=settings.wait_for_integration,
        )
        problems = check_apm_server_config(
            self.config, environment_variables=ENVIRONMENT_VARIABLES
        )
        if problems:
            raise ConfigurationError("apm-server config", "; ".join(problems))

        labels = standard_labels(NAME, "apm", image_tag(settings.image))
        selector = selector_labels(NAME)
        # APM Server does not call the Kubernetes API; its pod gets no token.
        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        config_map = k8s.KubeConfigMap(
            self,
            "config",
            metadata=metadata(f"{NAME}-config", labels, namespace),
            data={"apm-server.yml": dump_config(self.config)},
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
        declare_secret(
            self,
            name=settings.secret_token_secret,
            namespace=namespace,
            keys=[SECRET_TOKEN_KEY],
            purpose="the secret token APM agents send (ELASTIC_APM_SECRET_TOKEN)",
        )
        self.deployment = k8s.KubeDeployment(
            self,
            "deployment",
            metadata=metadata(NAME, labels, namespace),
            spec=k8s.DeploymentSpec(
                replicas=settings.replicas,
                selector=k8s.LabelSelector(match_labels=selector),
                template=self._pod_template(labels, selector),
            ),
        )
        self.deployment.add_dependency(config_map)
        self.service = service(
            self,
            "service",
            name=NAME,
            namespace=namespace,
            labels=labels,
            ports=[("http", PORT)],
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
        script = launch_script(
            password_file=PASSWORD_FILE,
            token_file=TOKEN_FILE,
            binary=BINARY,
            config_file=CONFIG_FILE,
        )
        apm = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            # "$$" is Kubernetes' escape for a literal "$" in a command.
            command=["/bin/sh", "-c", script.replace("$(", "$$(")],
            ports=[container_port("http", PORT)],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            # GET / answers 200 without the token (with no details), so the
            # probes need no secret.
            readiness_probe=http_probe("/", "http"),
            liveness_probe=http_probe("/", "http", failure_threshold=6),
            volume_mounts=[
                mount("config", CONFIG_DIR),
                ca_mount(CA_DIR),
                mount("credentials", CREDENTIALS_DIR),
                mount("secret-token", TOKEN_DIR),
                mount("data", DATA_DIR, read_only=False),
            ],
        )
        return k8s.PodTemplateSpec(
            metadata=k8s.ObjectMeta(
                labels=dict(labels),
                annotations={
                    # APM Server reads its config only at start.
                    "checksum/config": config_checksum(self.config),
                },
            ),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                automount_service_account_token=False,
                # fsGroup lets the server's user read the 0440 Secret files.
                security_context=pod_security(
                    APM_SERVER_USER, APM_SERVER_USER, fs_group=APM_SERVER_USER
                ),
                topology_spread_constraints=(
                    spread_across_nodes(selector) if settings.replicas > 1 else None
                ),
                containers=[apm],
                volumes=[
                    config_map_volume("config", f"{NAME}-config"),
                    ca_volume(),
                    credentials_volume("credentials", self.user),
                    secret_volume(
                        "secret-token", settings.secret_token_secret, [SECRET_TOKEN_KEY]
                    ),
                    # Its data path holds only the instance's identity; the
                    # root filesystem is read-only.
                    k8s.Volume(
                        name="data",
                        empty_dir=k8s.EmptyDirVolumeSource(
                            size_limit=k8s.Quantity.from_string("100Mi")
                        ),
                    ),
                ],
            ),
        )
