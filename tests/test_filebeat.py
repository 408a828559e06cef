"""Filebeat alone in a chart: the daily index, its inputs, RBAC and host access."""

from __future__ import annotations

import copy
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
import cdk8s
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from constructs_lib import filebeat as filebeat_module
from constructs_lib.common import Endpoint, declared_secrets
from constructs_lib.elastic import CERTS_SECRET, ELASTICSEARCH
from constructs_lib.errors import ConfigurationError
from constructs_lib.filebeat import (
    CA_DIR,
    CREDENTIALS_DIR,
    DATA_DIR,
    FILEBEAT_USER,
    INDEX_PATTERN,
    NGINX_INPUT_ID,
    TIME_FIELD,
    Filebeat,
    FilebeatSettings,
    check_filebeat_config,
    filebeat_user,
    launch_script,
)
from constructs_lib.integrity import check_references
from tests.conftest import elasticsearch_and_kibana, find_program
from tests.objects import get, pod_volume, shell_script
from tests.objects import secret_file as objects_secret_file

NAMESPACE = "monitoring"


def synth(**kwargs: Any) -> list[dict[str, Any]]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    Filebeat(
        chart,
        "filebeat",
        settings=kwargs.pop("settings", FilebeatSettings()),
        namespace=NAMESPACE,
        environment=kwargs.pop("environment", "production"),
        elasticsearch=kwargs.pop("elasticsearch", ELASTICSEARCH),
    )
    return cdk8s.Testing.synth(chart)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return synth()


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return get(objects, "DaemonSet", "filebeat")["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (filebeat,) = pod(objects)["containers"]
    return filebeat


def config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    text = get(objects, "ConfigMap", "filebeat-config")["data"]["filebeat.yml"]
    return yaml.safe_load(text)


def volume(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return pod_volume(pod(objects), name)


def secret_file(objects: list[dict[str, Any]], path: str) -> tuple[str, str]:
    return objects_secret_file(pod(objects), container(objects), path)


def host_paths(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mount path -> (mount, hostPath) of every host directory."""
    found = {}
    for mount in container(objects)["volumeMounts"]:
        source = volume(objects, mount["name"])
        if "hostPath" in source:
            found[mount["mountPath"]] = {"mount": mount, "host": source["hostPath"]}
    return found


def script(objects: list[dict[str, Any]]) -> str:
    return shell_script(container(objects))


# --- every object ------------------------------------------------------------


def test_every_object_is_valid_kubernetes_1_27(objects: list[dict]) -> None:
    assert {obj["kind"] for obj in objects} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, "1.27.0", strict=True)


def test_every_reference_resolves_within_the_chart() -> None:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    Filebeat(
        chart,
        "filebeat",
        settings=FilebeatSettings(),
        namespace=NAMESPACE,
        environment="production",
        elasticsearch=ELASTICSEARCH,
    )
    servers, server_secrets = elasticsearch_and_kibana()
    assert (
        check_references(
            chart.to_json() + servers, declared_secrets(chart) + server_secrets
        )
        == []
    )


def test_the_operator_secrets_are_declared() -> None:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    Filebeat(
        chart,
        "filebeat",
        settings=FilebeatSettings(),
        namespace=NAMESPACE,
        environment="production",
        elasticsearch=ELASTICSEARCH,
    )
    declared = {(s.name, s.keys) for s in declared_secrets(chart)}

    assert declared == {
        (CERTS_SECRET, ("ca.crt", "tls.crt", "tls.key")),
        ("filebeat-elasticsearch", ("password",)),
    }


# --- the daily index ---------------------------------------------------------


def test_events_go_to_one_daily_index(objects: list[dict]) -> None:
    output = config(objects)["output.elasticsearch"]

    assert output["index"] == "filebeat-sunday-%{+yyyy.MM.dd}"
    assert INDEX_PATTERN == "filebeat-sunday-*"
    assert TIME_FIELD == "@timestamp"


def test_the_template_is_named_and_matches_the_daily_index(objects: list[dict]) -> None:
    loaded = config(objects)

    assert loaded["setup.template.enabled"] is True
    assert loaded["setup.template.name"] == "filebeat-sunday"
    assert loaded["setup.template.pattern"] == INDEX_PATTERN


def test_ilm_is_off_so_the_daily_name_is_the_rollover(objects: list[dict]) -> None:
    assert config(objects)["setup.ilm.enabled"] is False


def test_the_rendered_config_passes_every_check(objects: list[dict]) -> None:
    assert (
        check_filebeat_config(
            config(objects), environment_variables={"NODE_NAME", "ES_PASSWORD"}
        )
        == []
    )


def test_index_prefix_moves_index_template_and_role_together() -> None:
    objects = synth(settings=FilebeatSettings(index_prefix="logs-sunday-staging"))
    loaded = config(objects)
    user = filebeat_user("logs-sunday-staging")

    assert loaded["output.elasticsearch"]["index"] == (
        "logs-sunday-staging-%{+yyyy.MM.dd}"
    )
    assert loaded["setup.template.name"] == "logs-sunday-staging"
    assert loaded["setup.template.pattern"] == "logs-sunday-staging-*"
    assert user.role["indices"][0]["names"] == ["logs-sunday-staging-*"]


# --- inputs ------------------------------------------------------------------


def test_container_logs_carry_pod_metadata_from_one_processor(
    objects: list[dict],
) -> None:
    loaded = config(objects)
    container_input = loaded["filebeat.inputs"][0]

    assert container_input["type"] == "container"
    assert container_input["paths"] == ["/var/log/containers/*sunday*.log"]
    assert container_input["processors"] == [
        {
            "add_kubernetes_metadata": {
                "host": "${NODE_NAME}",
                "matchers": [{"logs_path": {"logs_path": "/var/log/containers/"}}],
            }
        }
    ]
    assert loaded["processors"] == [
        {"add_host_metadata": {"when.not.contains.tags": "forwarded"}}
    ]
    text = get(objects, "ConfigMap", "filebeat-config")["data"]["filebeat.yml"]
    assert text.count("add_kubernetes_metadata") == 1
    assert "add_docker_metadata" not in text


def test_nginx_logs_use_filestream_with_a_stable_id(objects: list[dict]) -> None:
    nginx = config(objects)["filebeat.inputs"][1]

    assert nginx["type"] == "filestream"
    assert nginx["id"] == NGINX_INPUT_ID == "sunday-nginx"
    assert nginx["paths"] == ["/var/log/nginx/access.log", "/var/log/nginx/error.log"]
    assert nginx["fields"] == {"service": "nginx", "environment": "production"}
    assert all(i["type"] != "log" for i in config(objects)["filebeat.inputs"])


def test_environment_field_comes_from_the_environment_argument() -> None:
    inputs = config(synth(environment="staging"))["filebeat.inputs"]

    assert [i["fields"]["environment"] for i in inputs] == ["staging", "staging"]


def test_no_nginx_input_without_nginx_paths() -> None:
    objects = synth(settings=FilebeatSettings(nginx_log_paths=[]))

    assert [i["type"] for i in config(objects)["filebeat.inputs"]] == ["container"]
    assert set(host_paths(objects)) == {
        DATA_DIR,
        "/var/log/containers",
        "/var/log/pods",
    }


# --- output ------------------------------------------------------------------


def test_output_is_https_with_the_mounted_ca(objects: list[dict]) -> None:
    output = config(objects)["output.elasticsearch"]
    (ca_file,) = output["ssl.certificate_authorities"]

    assert output["hosts"] == ["https://elasticsearch:9200"]
    assert output["ssl.verification_mode"] == "full"
    assert ca_file == f"{CA_DIR}/ca.crt"
    assert secret_file(objects, ca_file) == (CERTS_SECRET, "ca.crt")


def test_output_logs_in_with_the_password_from_its_secret_file(
    objects: list[dict],
) -> None:
    output = config(objects)["output.elasticsearch"]
    password_file = f"{CREDENTIALS_DIR}/password"

    assert output["username"] == "filebeat_writer" == FILEBEAT_USER.username
    assert output["password"] == "${ES_PASSWORD}"
    assert f'ES_PASSWORD="$(cat {password_file})"' in script(objects)
    assert secret_file(objects, password_file) == ("filebeat-elasticsearch", "password")
    assert FILEBEAT_USER.secret == "filebeat-elasticsearch"


def test_no_secret_value_is_rendered(objects: list[dict]) -> None:
    filebeat = container(objects)

    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    assert [env["name"] for env in filebeat["env"]] == ["NODE_NAME"]
    assert filebeat["env"][0]["valueFrom"] == {
        "fieldRef": {"fieldPath": "spec.nodeName"}
    }
    assert "secretKeyRef" not in yaml.safe_dump(objects)


def test_the_writer_role_creates_documents_in_its_indices_only() -> None:
    assert FILEBEAT_USER.role_name == "filebeat_writer"
    assert FILEBEAT_USER.role == {
        "cluster": ["monitor", "manage_index_templates"],
        "indices": [
            {
                "names": ["filebeat-sunday-*"],
                "privileges": ["create_doc", "auto_configure"],
            }
        ],
    }


def test_an_http_elasticsearch_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="must be https"):
        synth(elasticsearch=Endpoint("elasticsearch", 9200))


@pytest.mark.parametrize("environment", ["", "Production", "prod env", "-prod"])
def test_a_bad_environment_is_refused(environment: str) -> None:
    with pytest.raises(ConfigurationError, match="filebeat environment"):
        synth(environment=environment)


def test_a_config_problem_stops_the_construct(monkeypatch: pytest.MonkeyPatch) -> None:
    real = filebeat_module.filebeat_config

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        loaded = real(*args, **kwargs)
        del loaded["setup.template.pattern"]
        return loaded

    monkeypatch.setattr(filebeat_module, "filebeat_config", broken)
    with pytest.raises(ConfigurationError, match="setup.template.pattern"):
        synth()


# --- launch ------------------------------------------------------------------


def test_the_launch_script_exports_the_password_and_starts_filebeat(
    objects: list[dict],
) -> None:
    lines = script(objects).splitlines()

    assert lines[0] == "set -eu"
    assert lines[-1] == (
        "exec /usr/share/filebeat/filebeat -e -c /etc/filebeat/config/filebeat.yml"
    )
    assert "rm -f /usr/share/filebeat/data/filebeat.lock" in lines
    assert "logging.to_files" not in yaml.safe_dump(config(objects))


def launch(tmp_path: Path, password: str | None) -> subprocess.CompletedProcess:
    """Run the launch script in dash with a stand-in for the filebeat binary."""
    sh = find_program("sh")
    binary = tmp_path / "filebeat"
    binary.write_text('#!/bin/sh\nprintf "%s|" "$ES_PASSWORD" "$@"\n')
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    password_file = tmp_path / "password"
    if password is not None:
        password_file.write_text(password)
    lock = tmp_path / "filebeat.lock"
    lock.write_text('{"pid": 1}')
    text = launch_script(
        password_file=str(password_file),
        lock_file=str(lock),
        binary=str(binary),
        config_file="/etc/filebeat/config/filebeat.yml",
    )
    return subprocess.run(
        [sh, "-c", text],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=30,
        check=False,
    )


def test_launch_passes_the_password_through_the_environment(tmp_path: Path) -> None:
    done = launch(tmp_path, "s3cr$t 'quoted'\n")

    assert done.returncode == 0, done.stderr
    assert done.stdout == "s3cr$t 'quoted'|-e|-c|/etc/filebeat/config/filebeat.yml|"
    assert not (tmp_path / "filebeat.lock").exists()


def test_launch_stops_when_the_password_file_is_missing(tmp_path: Path) -> None:
    done = launch(tmp_path, None)

    assert done.returncode != 0
    assert done.stdout == ""


# --- RBAC --------------------------------------------------------------------


def test_cluster_role_reads_exactly_what_the_metadata_processor_watches(
    objects: list[dict],
) -> None:
    role = get(objects, "ClusterRole", "filebeat-monitoring")

    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["namespaces", "nodes", "pods"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["apps"],
            "resources": ["replicasets"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    assert not [obj for obj in objects if obj["kind"] in ("Role", "RoleBinding")]


def test_the_role_is_bound_to_the_pods_service_account(objects: list[dict]) -> None:
    binding = get(objects, "ClusterRoleBinding", "filebeat-monitoring")

    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "filebeat-monitoring",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "filebeat", "namespace": NAMESPACE}
    ]
    assert pod(objects)["serviceAccountName"] == "filebeat"
    assert pod(objects)["automountServiceAccountToken"] is True


# --- host access -------------------------------------------------------------


def test_the_registry_survives_restarts_on_the_node(objects: list[dict]) -> None:
    registry = host_paths(objects)[DATA_DIR]

    assert registry["host"] == {
        "path": "/var/lib/filebeat-data",
        "type": "DirectoryOrCreate",
    }
    assert registry["mount"]["readOnly"] is False
    assert config(objects)["path.data"] == DATA_DIR


def test_host_logs_are_mounted_read_only_where_the_symlinks_point(
    objects: list[dict],
) -> None:
    logs = {
        path: found for path, found in host_paths(objects).items() if path != DATA_DIR
    }

    assert {path: found["host"] for path, found in logs.items()} == {
        "/var/log/containers": {"path": "/var/log/containers", "type": "Directory"},
        "/var/log/pods": {"path": "/var/log/pods", "type": "Directory"},
        "/var/log/nginx": {"path": "/var/log/nginx", "type": "DirectoryOrCreate"},
    }
    assert all(found["mount"]["readOnly"] is True for found in logs.values())
    assert "/var/lib/docker/containers" not in yaml.safe_dump(objects)


def test_only_the_registry_is_writable(objects: list[dict]) -> None:
    writable = {
        mount["mountPath"]
        for mount in container(objects)["volumeMounts"]
        if not mount.get("readOnly")
    }

    assert writable == {DATA_DIR}


def test_filebeat_runs_as_root_without_any_capability(objects: list[dict]) -> None:
    pod_context = pod(objects)["securityContext"]
    context = container(objects)["securityContext"]

    assert pod_context == {
        "runAsNonRoot": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "supplementalGroups": [4],
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert context["runAsUser"] == 0
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    spec = pod(objects)
    assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))


def test_reader_groups_come_from_the_settings() -> None:
    none = pod(synth(settings=FilebeatSettings(log_reader_groups=[])))
    two = pod(synth(settings=FilebeatSettings(log_reader_groups=[4, 1001])))

    assert "supplementalGroups" not in none["securityContext"]
    assert two["securityContext"]["supplementalGroups"] == [4, 1001]


def test_every_node_runs_filebeat(objects: list[dict]) -> None:
    daemonset = get(objects, "DaemonSet", "filebeat")

    assert pod(objects)["tolerations"] == [{"operator": "Exists"}]
    assert daemonset["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }


def test_probes_reach_the_http_endpoint_on_the_pod_ip(objects: list[dict]) -> None:
    filebeat = container(objects)
    loaded = config(objects)

    assert filebeat["ports"] == [
        {"name": "http", "containerPort": 5066, "protocol": "TCP"}
    ]
    assert (loaded["http.enabled"], loaded["http.host"], loaded["http.port"]) == (
        True,
        "0.0.0.0",
        5066,
    )
    for probe in ("readinessProbe", "livenessProbe"):
        assert filebeat[probe]["httpGet"] == {"path": "/", "port": "http"}


def test_resources_and_image_default_to_the_design(objects: list[dict]) -> None:
    filebeat = container(objects)

    assert filebeat["image"] == "docker.elastic.co/beats/filebeat:8.5.0"
    assert filebeat["resources"] == {
        "requests": {"cpu": "100m", "memory": "200Mi"},
        "limits": {"cpu": "200m", "memory": "400Mi"},
    }


def test_config_checksum_changes_with_the_config() -> None:
    def checksum(objs: list[dict]) -> str:
        template = get(objs, "DaemonSet", "filebeat")["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/config"]

    assert checksum(synth()) == checksum(synth())
    assert checksum(synth()) != checksum(synth(environment="staging"))


# --- check_filebeat_config ---------------------------------------------------


def good_config() -> dict[str, Any]:
    return copy.deepcopy(
        filebeat_module.filebeat_config(
            FilebeatSettings(), environment="production", elasticsearch=ELASTICSEARCH
        )
    )


def without(config: dict[str, Any], *keys: str) -> dict[str, Any]:
    for key in keys:
        del config[key]
    return config


def output(config: dict[str, Any], **changes: Any) -> dict[str, Any]:
    for key, value in changes.items():
        if value is None:
            config["output.elasticsearch"].pop(key, None)
        else:
            config["output.elasticsearch"][key] = value
    return config


def add_input(config: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    config["filebeat.inputs"].append(item)
    return config


BROKEN: dict[str, tuple[Any, str]] = {
    "no-template-name": (
        lambda c: without(c, "setup.template.name"),
        "setup.template.name and setup.template.pattern must both be set",
    ),
    "no-template-pattern": (
        lambda c: without(c, "setup.template.pattern"),
        "setup.template.name and setup.template.pattern must both be set",
    ),
    "pattern-misses-index": (
        lambda c: {**c, "setup.template.pattern": "filebeat-*-sunday"},
        "does not match the index 'filebeat-sunday-2024.01.31'",
    ),
    "ilm-on": (
        lambda c: {**c, "setup.ilm.enabled": True},
        "setup.ilm.enabled must be false",
    ),
    "ilm-default": (
        lambda c: without(c, "setup.ilm.enabled"),
        "setup.ilm.enabled must be false",
    ),
    "index-not-daily": (
        lambda c: {
            **output(c, index="filebeat-sunday"),
            "setup.template.pattern": "filebeat-sunday*",
        },
        "has no %{+yyyy.MM.dd}",
    ),
    "index-not-a-data-stream-name": (
        lambda c: {
            **output(c, index="_filebeat-%{+yyyy.MM.dd}"),
            "setup.template.pattern": "_filebeat-*",
        },
        "no valid data stream name",
    ),
    "filestream-without-id": (
        lambda c: add_input(c, {"type": "filestream", "paths": ["/var/log/a.log"]}),
        "has no id",
    ),
    "filestream-duplicate-id": (
        lambda c: add_input(
            c, {"type": "filestream", "id": NGINX_INPUT_ID, "paths": ["/var/log/a"]}
        ),
        "reuses the id 'sunday-nginx' of input #2",
    ),
    "filestream-on-symlinks": (
        lambda c: add_input(
            c,
            {
                "type": "filestream",
                "id": "containers",
                "paths": ["/var/log/containers/*.log"],
            },
        ),
        "without prospector.scanner.symlinks: true",
    ),
    "deprecated-log-input": (
        lambda c: add_input(c, {"type": "log", "paths": ["/var/log/a.log"]}),
        "deprecated 'log' input",
    ),
    "https-without-ca": (
        lambda c: output(c, **{"ssl.certificate_authorities": None}),
        "sets no ssl.certificate_authorities",
    ),
    "https-by-protocol-without-ca": (
        lambda c: output(
            c,
            hosts=["elasticsearch:9200"],
            protocol="https",
            **{"ssl.certificate_authorities": None},
        ),
        "sets no ssl.certificate_authorities",
    ),
    "verification-off": (
        lambda c: output(c, **{"ssl.verification_mode": "none"}),
        "verification_mode is 'none'",
    ),
    "literal-password": (
        lambda c: output(c, password="hunter2hunter2"),
        "password is a literal value",
    ),
    "user-without-password": (
        lambda c: output(c, password=None),
        "needs both username and password",
    ),
    "api-key-and-password": (
        lambda c: output(c, api_key="${ES_API_KEY}"),
        "both api_key and username/password",
    ),
    "second-output": (
        lambda c: {**c, "output.console": {"pretty": True}},
        "are all enabled",
    ),
    "no-output": (
        lambda c: without(c, "output.elasticsearch"),
        "no output is configured",
    ),
    "docker-metadata": (
        lambda c: {**c, "processors": [*c["processors"], {"add_docker_metadata": {}}]},
        "add_docker_metadata needs the Docker socket",
    ),
    "global-kubernetes-metadata": (
        lambda c: {
            **c,
            "processors": [*c["processors"], {"add_kubernetes_metadata": None}],
        },
        "add_kubernetes_metadata is configured 2 times",
    ),
    "undefined-variable": (
        lambda c: output(c, password="${ELASTICSEARCH_PASSWORD}"),
        "references ${ELASTICSEARCH_PASSWORD}",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_finds_each_broken_rule(name: str) -> None:
    breaker, message = BROKEN[name]
    problems = check_filebeat_config(
        breaker(good_config()), environment_variables={"NODE_NAME", "ES_PASSWORD"}
    )

    assert any(message in problem for problem in problems), problems


def test_check_reads_nested_keys_like_dotted_ones() -> None:
    nested = {
        "output": {
            "elasticsearch": {
                "hosts": ["https://elasticsearch:9200"],
                "index": "custom-%{+yyyy.MM.dd}",
                "ssl": {"certificate_authorities": ["/ca.crt"]},
            }
        },
        "setup": {"template": {"name": "custom"}, "ilm": {"enabled": False}},
    }

    assert check_filebeat_config(nested) == [
        "output.elasticsearch.index is set, so setup.template.name and "
        "setup.template.pattern must both be set; Filebeat exits at start"
    ]


def test_check_accepts_defaults_and_setting_references() -> None:
    loaded = output(good_config(), username="${ES_USER:filebeat_writer}")
    loaded["path.home"] = "/usr/share/filebeat"
    loaded["path.data"] = "${path.home}/data"

    assert (
        check_filebeat_config(
            loaded, environment_variables={"NODE_NAME", "ES_PASSWORD"}
        )
        == []
    )


def test_a_template_disabled_index_needs_no_template_names() -> None:
    loaded = without(good_config(), "setup.template.name", "setup.template.pattern")
    loaded["setup.template.enabled"] = False

    assert check_filebeat_config(loaded) == []


# --- settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"image": "docker.elastic.co/beats/filebeat:latest"},
        {"image": "docker.elastic.co/beats/filebeat"},
        {"log_paths": []},
        {"log_paths": ["/var/log/pods/*.log"]},
        {"log_paths": ["var/log/containers/*.log"]},
        {"nginx_log_paths": ["/var/log/*/access.log"]},
        {"nginx_log_paths": ["/access.log"]},
        {"nginx_log_paths": ["/var/log/nginx/../auth.log"]},
        {"index_prefix": "Filebeat"},
        {"index_prefix": "-filebeat"},
        {"index_prefix": "filebeat sunday"},
        {"log_reader_groups": [0]},
        {"log_reader_groups": [70000]},
        {"log_reader_groups": ["adm"]},
        {"registry_host_path": "/"},
        {"registry_host_path": "var/lib/filebeat"},
        {"hosts": ["elasticsearch:9200"]},
        {"resources": {"cpu_request": "1", "memory_request": "1Gi"}},
    ],
    ids=[
        "latest-tag",
        "untagged",
        "no-log-paths",
        "logs-outside-kubelet-dir",
        "relative-log-path",
        "globbed-directory",
        "root-directory",
        "dotdot",
        "upper-case-prefix",
        "dash-prefix",
        "space-in-prefix",
        "root-group",
        "group-out-of-range",
        "group-by-name",
        "registry-at-root",
        "relative-registry",
        "unknown-key",
        "partial-resources",
    ],
)
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        FilebeatSettings(**bad)


def test_every_setting_has_a_default_and_says_it() -> None:
    for name, field in FilebeatSettings.model_fields.items():
        assert not field.is_required(), name
        assert field.description and "efault" in field.description, name


def test_check_merges_dotted_and_nested_forms_of_one_setting() -> None:
    loaded = output(good_config(), **{"ssl.certificate_authorities": None})
    loaded["output"] = {
        "elasticsearch": {
            "ssl": {"certificate_authorities": ["/etc/filebeat/ca/ca.crt"]}
        }
    }

    assert check_filebeat_config(loaded) == []
