"""APM Server alone in a chart, and the step that installs its APM package."""

from __future__ import annotations

import base64
import copy
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
import cdk8s
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from constructs_lib import apm_server as apm_module
from constructs_lib.apm_server import (
    APM_SERVER_USER,
    APM_SETUP_STEP,
    APM_USER,
    CA_DIR,
    CREDENTIALS_DIR,
    DATA_DIR,
    TOKEN_DIR,
    ApmServer,
    ApmServerSettings,
    apm_server_config,
    apm_setup_step,
    apm_user,
    check_apm_server_config,
    launch_script,
)
from constructs_lib.common import Endpoint, declared_secrets
from constructs_lib.elastic import CERTS_SECRET, ELASTICSEARCH
from constructs_lib.errors import ConfigurationError
from constructs_lib.filebeat import Filebeat, FilebeatSettings
from constructs_lib.integrity import check_references
from tests.conftest import elasticsearch_and_kibana, find_program
from tests.objects import get, pod_volume, shell_script
from tests.objects import secret_file as objects_secret_file

NAMESPACE = "monitoring"
VARIABLES = {"ES_PASSWORD", "APM_SECRET_TOKEN"}


def build(**kwargs: Any) -> tuple[cdk8s.Chart, ApmServer]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    apm = ApmServer(
        chart,
        "apm-server",
        settings=kwargs.pop("settings", ApmServerSettings()),
        namespace=NAMESPACE,
        elasticsearch=kwargs.pop("elasticsearch", ELASTICSEARCH),
        environment=kwargs.pop("environment", "production"),
    )
    return chart, apm


def synth(**kwargs: Any) -> list[dict[str, Any]]:
    chart, _ = build(**kwargs)
    return cdk8s.Testing.synth(chart)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return synth()


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return get(objects, "Deployment", "apm-server")["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (apm,) = pod(objects)["containers"]
    return apm


def config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    text = get(objects, "ConfigMap", "apm-server-config")["data"]["apm-server.yml"]
    return yaml.safe_load(text)


def volume(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return pod_volume(pod(objects), name)


def secret_file(objects: list[dict[str, Any]], path: str) -> tuple[str, str]:
    return objects_secret_file(pod(objects), container(objects), path)


def script(objects: list[dict[str, Any]]) -> str:
    return shell_script(container(objects))


# --- every object ------------------------------------------------------------


def test_every_object_is_valid_kubernetes_1_27(objects: list[dict]) -> None:
    assert {obj["kind"] for obj in objects} == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
    }
    for obj in objects + synth(settings=ApmServerSettings(replicas=2)):
        kubernetes_validate.validate(obj, "1.27.0", strict=True)


def test_every_reference_resolves_within_the_chart() -> None:
    chart, _ = build()

    servers, server_secrets = elasticsearch_and_kibana()
    assert (
        check_references(
            chart.to_json() + servers, declared_secrets(chart) + server_secrets
        )
        == []
    )


def test_filebeat_and_apm_server_share_one_chart_cleanly() -> None:
    chart, _ = build()
    Filebeat(
        chart,
        "filebeat",
        settings=FilebeatSettings(),
        namespace=NAMESPACE,
        environment="production",
        elasticsearch=ELASTICSEARCH,
    )
    certs = {s.keys for s in declared_secrets(chart) if s.name == CERTS_SECRET}

    servers, server_secrets = elasticsearch_and_kibana()
    assert (
        check_references(
            chart.to_json() + servers, declared_secrets(chart) + server_secrets
        )
        == []
    )
    assert len(certs) == 1


def test_the_operator_secrets_are_declared() -> None:
    chart, _ = build()

    assert {(s.name, s.keys) for s in declared_secrets(chart)} == {
        (CERTS_SECRET, ("ca.crt", "tls.crt", "tls.key")),
        ("apm-server-elasticsearch", ("password",)),
        ("apm-server-secret-token", ("secret-token",)),
    }


# --- configuration -----------------------------------------------------------


def test_the_server_listens_on_8200_behind_the_secret_token(
    objects: list[dict],
) -> None:
    server = config(objects)["apm-server"]

    assert server["host"] == "0.0.0.0:8200"
    assert server["auth"] == {"secret_token": "${APM_SECRET_TOKEN}"}
    token_file = f"{TOKEN_DIR}/secret-token"
    assert f'APM_SECRET_TOKEN="$(cat {token_file})"' in script(objects)
    assert secret_file(objects, token_file) == (
        "apm-server-secret-token",
        "secret-token",
    )


def test_output_is_https_with_the_ca_and_the_writer_password(
    objects: list[dict],
) -> None:
    output = config(objects)["output.elasticsearch"]
    (ca_file,) = output["ssl.certificate_authorities"]
    password_file = f"{CREDENTIALS_DIR}/password"

    assert output["hosts"] == ["https://elasticsearch:9200"]
    assert output["ssl.verification_mode"] == "full"
    assert ca_file == f"{CA_DIR}/ca.crt"
    assert secret_file(objects, ca_file) == (CERTS_SECRET, "ca.crt")
    assert output["username"] == "apm_writer"
    assert output["password"] == "${ES_PASSWORD}"
    assert f'ES_PASSWORD="$(cat {password_file})"' in script(objects)
    assert secret_file(objects, password_file) == (
        "apm-server-elasticsearch",
        "password",
    )
    assert "index" not in output


def test_the_environment_names_unlabelled_services(objects: list[dict]) -> None:
    assert config(objects)["apm-server"]["default_service_environment"] == "production"
    staging = config(synth(environment="staging"))

    assert staging["apm-server"]["default_service_environment"] == "staging"


def test_the_server_waits_for_the_package_templates(objects: list[dict]) -> None:
    _, apm = build()

    assert config(objects)["apm-server"]["data_streams"] == {
        "wait_for_integration": True
    }
    assert apm.user == APM_USER
    assert APM_USER.role["cluster"] == ["manage_index_templates"]


def test_without_the_wait_the_writer_needs_no_cluster_privilege() -> None:
    settings = ApmServerSettings(wait_for_integration=False)
    _, apm = build(settings=settings)
    objects = synth(settings=settings)

    assert config(objects)["apm-server"]["data_streams"] == {
        "wait_for_integration": False
    }
    assert apm.user == apm_user(False)
    assert apm.user.role == {
        "cluster": [],
        "indices": [
            {
                "names": ["traces-apm*", "logs-apm*", "metrics-apm*"],
                "privileges": ["auto_configure", "create_doc"],
            }
        ],
    }
    assert (
        check_apm_server_config(config(objects), environment_variables=VARIABLES) == []
    )


def test_the_rendered_config_passes_every_check(objects: list[dict]) -> None:
    assert (
        check_apm_server_config(config(objects), environment_variables=VARIABLES) == []
    )


def test_the_writer_role_only_creates_apm_documents() -> None:
    assert (APM_USER.username, APM_USER.secret, APM_USER.role_name) == (
        "apm_writer",
        "apm-server-elasticsearch",
        "apm_writer",
    )
    assert APM_USER.role == {
        "cluster": ["manage_index_templates"],
        "indices": [
            {
                "names": ["traces-apm*", "logs-apm*", "metrics-apm*"],
                "privileges": ["auto_configure", "create_doc"],
            }
        ],
    }


def test_no_secret_value_is_rendered(objects: list[dict]) -> None:
    text = yaml.safe_dump(objects)

    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    assert "env" not in container(objects)
    assert "secretKeyRef" not in text


def test_an_http_elasticsearch_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be https"):
        synth(elasticsearch=Endpoint("elasticsearch", 9200))


@pytest.mark.parametrize("environment", ["", "Staging", "pre prod"])
def test_a_bad_environment_is_refused(environment: str) -> None:
    with pytest.raises(ConfigurationError, match="apm-server environment"):
        synth(environment=environment)


def test_a_config_problem_stops_the_construct(monkeypatch: pytest.MonkeyPatch) -> None:
    real = apm_module.apm_server_config

    def broken(**kwargs: Any) -> dict[str, Any]:
        loaded = real(**kwargs)
        loaded["apm-server"]["secret_token"] = "${APM_SECRET_TOKEN}"
        return loaded

    monkeypatch.setattr(apm_module, "apm_server_config", broken)
    with pytest.raises(ConfigurationError, match="removed in APM Server 8.0"):
        synth()


# --- workload ----------------------------------------------------------------


def test_the_launch_script_exports_both_secrets_and_starts_the_server(
    objects: list[dict],
) -> None:
    lines = script(objects).splitlines()

    assert lines[0] == "set -eu"
    assert "export ES_PASSWORD APM_SECRET_TOKEN" in lines
    assert lines[-1] == (
        "exec /usr/share/apm-server/apm-server -e -c "
        "/etc/apm-server/config/apm-server.yml"
    )


def launch(tmp_path: Path, *, token: bool = True) -> subprocess.CompletedProcess:
    """Run the launch script in dash with a stand-in for the apm-server binary."""
    sh = find_program("sh")
    binary = tmp_path / "apm-server"
    binary.write_text(
        '#!/bin/sh\nprintf "%s|" "$ES_PASSWORD" "$APM_SECRET_TOKEN" "$@"\n'
    )
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "password").write_text("pa$$word\n")
    if token:
        (tmp_path / "token").write_text("t0ken")
    text = launch_script(
        password_file=str(tmp_path / "password"),
        token_file=str(tmp_path / "token"),
        binary=str(binary),
        config_file="/etc/apm-server/config/apm-server.yml",
    )
    return subprocess.run(
        [sh, "-c", text],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=30,
        check=False,
    )


def test_launch_passes_both_secrets_through_the_environment(tmp_path: Path) -> None:
    done = launch(tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "pa$$word|t0ken|-e|-c|/etc/apm-server/config/apm-server.yml|"


def test_launch_stops_when_the_token_file_is_missing(tmp_path: Path) -> None:
    done = launch(tmp_path, token=False)

    assert done.returncode != 0
    assert done.stdout == ""


def test_pod_runs_as_its_own_high_uid_with_a_read_only_root(
    objects: list[dict],
) -> None:
    spec = pod(objects)
    assert APM_SERVER_USER >= 10000
    context = container(objects)["securityContext"]

    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": APM_SERVER_USER,
        "runAsGroup": APM_SERVER_USER,
        "fsGroup": APM_SERVER_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    writable = {
        m["mountPath"] for m in container(objects)["volumeMounts"] if not m["readOnly"]
    }
    assert writable == {DATA_DIR}
    assert "emptyDir" in volume(objects, "data")
    assert not any("hostPath" in v for v in spec["volumes"])


def test_probes_ask_the_root_path_which_needs_no_token(objects: list[dict]) -> None:
    apm = container(objects)

    assert apm["ports"] == [{"name": "http", "containerPort": 8200, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert apm[probe]["httpGet"] == {"path": "/", "port": "http"}


def test_service_is_where_the_backend_agent_sends(objects: list[dict]) -> None:
    spec = get(objects, "Service", "apm-server")["spec"]
    _, apm = build()

    assert spec["ports"] == [
        {"name": "http", "port": 8200, "targetPort": "http", "protocol": "TCP"}
    ]
    assert (
        spec["selector"]
        == get(objects, "Deployment", "apm-server")["spec"]["selector"]["matchLabels"]
    )
    assert apm.agent_url == "http://apm-server.monitoring.svc:8200"
    assert apm.endpoint == Endpoint("apm-server", 8200)


def test_one_replica_by_default_and_spread_when_more(objects: list[dict]) -> None:
    two = synth(settings=ApmServerSettings(replicas=2))

    assert get(objects, "Deployment", "apm-server")["spec"]["replicas"] == 1
    assert "topologySpreadConstraints" not in pod(objects)
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert get(two, "Deployment", "apm-server")["spec"]["replicas"] == 2
    assert pod(two)["topologySpreadConstraints"][0]["topologyKey"] == (
        "kubernetes.io/hostname"
    )
    assert get(two, "PodDisruptionBudget", "apm-server")["spec"]["maxUnavailable"] == 1


def test_image_and_resources_default(objects: list[dict]) -> None:
    apm = container(objects)

    assert apm["image"] == "docker.elastic.co/apm/apm-server:8.5.0"
    assert apm["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    }


# --- check_apm_server_config -------------------------------------------------


def good_config() -> dict[str, Any]:
    return copy.deepcopy(
        apm_server_config(environment="production", elasticsearch=ELASTICSEARCH)
    )


def change(path: str, value: Any) -> Any:
    def breaker(loaded: dict[str, Any]) -> dict[str, Any]:
        *parents, leaf = path.split("/")
        node = loaded
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
        return loaded

    return breaker


BROKEN: dict[str, tuple[Any, str]] = {
    "old-secret-token-place": (
        change("apm-server/secret_token", "${APM_SECRET_TOKEN}"),
        "apm-server.secret_token was removed in APM Server 8.0",
    ),
    "custom-index": (
        change("output.elasticsearch/index", "apm-%{+yyyy.MM.dd}"),
        "output.elasticsearch.index was removed",
    ),
    "setup-template": (
        change("setup.template.name", "apm"),
        "setup was removed",
    ),
    "ilm-settings": (
        change("apm-server/ilm", {"enabled": True}),
        "apm-server.ilm was removed",
    ),
    "no-auth": (
        change("apm-server/auth", None),
        "neither secret_token nor api_key",
    ),
    "empty-token": (
        change("apm-server/auth", {"secret_token": ""}),
        "secret_token is empty",
    ),
    "literal-token": (
        change("apm-server/auth", {"secret_token": "abcdef123456"}),
        "secret_token is a literal value",
    ),
    "host-without-port": (
        change("apm-server/host", "0.0.0.0"),
        "must be 'address:port'",
    ),
    "bad-namespace": (
        change("apm-server/data_streams", {"namespace": "sunday-prod"}),
        "data_streams.namespace 'sunday-prod'",
    ),
    "https-without-ca": (
        change("output.elasticsearch/ssl.certificate_authorities", None),
        "sets no ssl.certificate_authorities",
    ),
    "literal-password": (
        change("output.elasticsearch/password", "hunter2hunter2"),
        "password is a literal value",
    ),
    "second-output": (
        change("output.logstash", {"hosts": ["logstash:5044"]}),
        "are all enabled",
    ),
    "undefined-variable": (
        change("output.elasticsearch/password", "${PASSWORD}"),
        "references ${PASSWORD}",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_finds_each_broken_rule(name: str) -> None:
    breaker, message = BROKEN[name]
    problems = check_apm_server_config(
        breaker(good_config()), environment_variables=VARIABLES
    )

    assert any(message in problem for problem in problems), problems


# --- the APM package setup step ----------------------------------------------


class FakeKibana:
    """A local stand-in for Kibana's status and Fleet package API."""

    def __init__(self, *, ready_after: int = 0, install_status: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.ready_after = ready_after
        self.install_status = install_status
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": self.rfile.read(length).decode(),
                    }
                )

            def do_GET(self) -> None:
                self.record()
                polls = [r for r in fake.requests if r["path"] == "/api/status"]
                if len(polls) <= fake.ready_after:
                    self.answer(503, {"status": {"overall": {"level": "unavailable"}}})
                else:
                    self.answer(200, {"status": {"overall": {"level": "available"}}})

            def do_POST(self) -> None:
                self.record()
                self.answer(
                    fake.install_status,
                    {"items": [{"id": "traces-apm", "type": "index_template"}]}
                    if fake.install_status == 200
                    else {"message": "Fleet is not ready"},
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKibana:
        self.thread.start()
        return self

    def __exit__(self, *args: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


PASSWORD = 'ela"stic\\pa$s word'


def run_step(
    step: str, tmp_path: Path, kibana_url: str | None
) -> subprocess.CompletedProcess:
    find_program("curl")
    password_file = tmp_path / "elastic-password"
    password_file.write_text(PASSWORD + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    env["ELASTIC_PASSWORD_FILE"] = str(password_file)
    if kibana_url is not None:
        env["KIBANA_URL"] = kibana_url
    text = f"{step}echo after-the-step\n"
    return subprocess.run(
        [find_program("sh"), "-c", text],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def fast_step() -> Iterator[str]:
    yield apm_setup_step("8.5.0", wait_seconds=3, poll_seconds=1)


def test_setup_step_is_posix_sh() -> None:
    done = subprocess.run(
        [find_program("sh"), "-n", "-c", APM_SETUP_STEP],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "/api/fleet/epm/packages/apm/8.5.0" in APM_SETUP_STEP


def test_setup_step_installs_the_bundled_package_version(
    fast_step: str, tmp_path: Path
) -> None:
    with FakeKibana(ready_after=1) as kibana:
        done = run_step(fast_step, tmp_path, kibana.url)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "APM setup: apm 8.5.0 is installed",
        "after-the-step",
    ]
    paths = [(r["method"], r["path"]) for r in kibana.requests]
    assert paths == [
        ("GET", "/api/status"),
        ("GET", "/api/status"),
        ("POST", "/api/fleet/epm/packages/apm/8.5.0"),
    ]
    install = kibana.requests[-1]
    expected = base64.b64encode(f"elastic:{PASSWORD}".encode()).decode()
    assert install["headers"]["Authorization"] == f"Basic {expected}"
    assert install["headers"]["kbn-xsrf"] == "true"
    assert install["headers"]["Content-Type"] == "application/json"
    assert install["body"] == "{}"


def test_setup_step_gives_up_on_a_kibana_that_never_comes_up(
    fast_step: str, tmp_path: Path
) -> None:
    with FakeKibana(ready_after=1000) as kibana:
        done = run_step(fast_step, tmp_path, kibana.url)

    assert done.returncode == 1
    assert "after-the-step" not in done.stdout
    assert "is not up after 3 tries" in done.stderr
    assert all(r["method"] == "GET" for r in kibana.requests)
    assert PASSWORD not in done.stderr


def test_setup_step_fails_loudly_when_the_install_fails(
    fast_step: str, tmp_path: Path
) -> None:
    with FakeKibana(install_status=500) as kibana:
        done = run_step(fast_step, tmp_path, kibana.url)

    assert done.returncode == 1
    assert "installing apm 8.5.0 failed" in done.stderr
    assert len([r for r in kibana.requests if r["method"] == "POST"]) == 5


def test_setup_step_needs_the_kibana_url(fast_step: str, tmp_path: Path) -> None:
    done = run_step(fast_step, tmp_path, None)

    assert done.returncode == 1
    assert "KIBANA_URL is not set" in done.stderr


@pytest.mark.parametrize("version", ["latest", "8.5", "8.5.0; rm -rf /"])
def test_setup_step_refuses_a_version_that_is_not_a_release(version: str) -> None:
    with pytest.raises(ConfigurationError, match="APM package version"):
        apm_setup_step(version)


# --- settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"image": "docker.elastic.co/apm/apm-server:latest"},
        {"replicas": 0},
        {"replicas": "2"},
        {"secret_token_secret": "APM_Token"},
        {"secret_token": "hunter2"},
        {"wait_for_integration": "yes"},
    ],
    ids=[
        "latest-tag",
        "no-replicas",
        "replicas-string",
        "secret-not-dns",
        "unknown",
        "wait-word",
    ],
)
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ApmServerSettings(**bad)


def test_every_setting_has_a_default_and_says_it() -> None:
    for name, field in ApmServerSettings.model_fields.items():
        assert not field.is_required(), name
        assert field.description and "efault" in field.description, name
