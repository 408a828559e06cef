"""Kibana alone in a chart: login, secrets from files, hardening, probes.

Kibana cannot run here; its ``start.sh`` is run for real with /bin/sh as the
image's user, with the image's launcher replaced by a stand-in that records
the environment it was given, and ``kibana.yml``'s ``${VAR}`` references are
expanded from that environment the way Kibana expands them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
import cdk8s
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from constructs_lib import elastic
from constructs_lib.common import Endpoint, declared_secrets
from constructs_lib.errors import ConfigurationError
from constructs_lib.integrity import check_references
from constructs_lib.kibana import (
    CONFIG_PATH,
    CREDENTIALS_DIR,
    ENCRYPTION_KEYS,
    KEYS_DIR,
    KIBANA,
    KIBANA_UID,
    KIBANA_USER,
    LAUNCHER,
    Kibana,
    KibanaSettings,
    check_kibana_config,
    kibana_config,
)
from tests.conftest import elasticsearch_and_kibana
from tests.objects import get

NAMESPACE = "monitoring"
KEYS = {
    "saved-objects": "s" * 32,
    "security": "k" * 40,
    "reporting": "r" * 32,
}


def synth(
    elasticsearch: Endpoint = elastic.ELASTICSEARCH, **settings: Any
) -> tuple[cdk8s.Chart, list[dict[str, Any]]]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    Kibana(
        chart,
        "kibana",
        settings=KibanaSettings(**settings),
        namespace=NAMESPACE,
        elasticsearch=elasticsearch,
    )
    return chart, cdk8s.Testing.synth(chart)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return synth()[1]


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return get(objects, "Deployment", "kibana")["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (kibana,) = pod(objects)["containers"]
    return kibana


def data(objects: list[dict[str, Any]]) -> dict[str, str]:
    return get(objects, "ConfigMap", "kibana-config")["data"]


def config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(data(objects)["kibana.yml"])


def volumes(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod(objects)["volumes"]}


def provider(objects: list[dict[str, Any]], path: str) -> tuple[dict, str]:
    """The volume that provides ``path`` in the container, and the key in it."""
    candidates = [
        m
        for m in container(objects)["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")
    ]
    best = max(candidates, key=lambda m: len(m["mountPath"]))
    inside = best.get("subPath") or path[len(best["mountPath"]) + 1 :]
    return volumes(objects)[best["name"]], inside


# --- the objects -------------------------------------------------------------


def test_every_object_is_valid_and_every_reference_resolves() -> None:
    chart, objects = synth()
    for obj in objects:
        kubernetes_validate.validate(obj, "1.27.0", strict=True)
    servers, server_secrets = elasticsearch_and_kibana()
    assert (
        check_references(objects + servers, declared_secrets(chart) + server_secrets)
        == []
    )
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ServiceAccount", "kibana"),
        ("ConfigMap", "kibana-config"),
        ("Deployment", "kibana"),
        ("Service", "kibana"),
    ]
    assert {s.name for s in declared_secrets(chart)} == {
        "kibana-elasticsearch",
        "kibana-encryption-keys",
        "elasticsearch-certs",
    }


def test_service_is_kibana_on_5601(objects: list[dict]) -> None:
    service = get(objects, "Service", "kibana")["spec"]
    assert service["ports"] == [
        {"name": "http", "port": 5601, "protocol": "TCP", "targetPort": "http"}
    ]
    assert KIBANA.url == "http://kibana:5601"


def test_upgrades_stop_every_old_pod_first(objects: list[dict]) -> None:
    spec = get(objects, "Deployment", "kibana")["spec"]
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["replicas"] == 1
    assert get(synth(replicas=2)[1], "Deployment", "kibana")["spec"]["replicas"] == 2


# --- logging in to Elasticsearch -------------------------------------------------


def test_kibana_logs_in_as_kibana_system_with_the_ca(objects: list[dict]) -> None:
    settings = config(objects)
    assert KIBANA_USER == elastic.ClientUser("kibana_system", "kibana-elasticsearch")
    assert KIBANA_USER.role is None and KIBANA_USER.role_name is None
    assert settings["elasticsearch.username"] == "kibana_system"
    assert settings["elasticsearch.hosts"] == ["https://elasticsearch:9200"]
    assert settings["elasticsearch.ssl.verificationMode"] == "full"
    (ca,) = settings["elasticsearch.ssl.certificateAuthorities"]
    volume, key = provider(objects, ca)
    assert volume["secret"]["secretName"] == elastic.CERTS_SECRET
    assert key in [item["path"] for item in volume["secret"]["items"]]


def test_plain_http_elasticsearch_needs_no_ca() -> None:
    chart, objects = synth(Endpoint("elasticsearch", 9200))
    assert "elasticsearch.ssl.certificateAuthorities" not in config(objects)
    assert "elasticsearch-ca" not in volumes(objects)
    assert "elasticsearch-certs" not in {s.name for s in declared_secrets(chart)}


def test_secrets_are_read_from_mounted_files(objects: list[dict]) -> None:
    script = data(objects)["start.sh"]
    for path in re.findall(r"read_secret (\S+)", script):
        volume, key = provider(objects, path)
        assert key in [item["path"] for item in volume["secret"]["items"]]
    password, _ = provider(objects, f"{CREDENTIALS_DIR}/password")
    assert password["secret"]["secretName"] == KIBANA_USER.secret
    keys, _ = provider(objects, f"{KEYS_DIR}/security")
    assert keys["secret"]["secretName"] == "kibana-encryption-keys"
    assert [item["key"] for item in keys["secret"]["items"]] == list(ENCRYPTION_KEYS)


def test_every_config_reference_is_a_variable_start_sh_exports(
    objects: list[dict],
) -> None:
    text = data(objects)["kibana.yml"]
    references = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    exported = set(
        re.search(r"^export (.+)$", data(objects)["start.sh"], re.M).group(1).split()
    )
    assert references == exported
    assert len(references) == 4


def test_no_secret_travels_as_a_setting_variable_or_flag(objects: list[dict]) -> None:
    # kibana-docker turns a variable named after a setting into --setting=value.
    setting_variables = {key.upper().replace(".", "_") for key in config(objects)} | {
        "ELASTICSEARCH_PASSWORD",
        "ELASTICSEARCH_SERVICEACCOUNTTOKEN",
    }
    exported = re.search(r"^export (.+)$", data(objects)["start.sh"], re.M).group(1)
    assert not set(exported.split()) & setting_variables
    for var in container(objects).get("env", []):
        assert var["name"] not in setting_variables
        assert "secretKeyRef" not in var.get("valueFrom", {})
    assert not [obj for obj in objects if obj["kind"] == "Secret"]


def test_the_image_entrypoint_stays_and_runs_the_wrapper(objects: list[dict]) -> None:
    kibana = container(objects)
    assert "command" not in kibana  # tini, the image's entrypoint, stays PID 1
    assert kibana["args"][0] == "/bin/sh"
    volume, key = provider(objects, kibana["args"][1])
    assert volume["configMap"]["name"] == "kibana-config"
    assert key == "start.sh"
    assert data(objects)["start.sh"].rstrip().endswith(f"exec {LAUNCHER}")


def test_only_kibana_yml_replaces_the_image_config(objects: list[dict]) -> None:
    (mount,) = [
        m for m in container(objects)["volumeMounts"] if m["mountPath"] == CONFIG_PATH
    ]
    assert mount["subPath"] == "kibana.yml"
    assert mount["readOnly"] is True


# --- hardening ----------------------------------------------------------------


def test_pod_is_locked_down(objects: list[dict]) -> None:
    context = pod(objects)["securityContext"]
    assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"]
    assert context["runAsUser"] == KIBANA_UID >= 10000
    assert context["runAsNonRoot"] is True
    assert pod(objects)["automountServiceAccountToken"] is False
    assert pod(objects)["enableServiceLinks"] is False
    kibana = container(objects)["securityContext"]
    assert kibana["readOnlyRootFilesystem"] is True
    assert kibana["allowPrivilegeEscalation"] is False
    assert kibana["capabilities"] == {"drop": ["ALL"]}


def test_only_the_paths_kibana_writes_are_writable(objects: list[dict]) -> None:
    writable = {
        m["mountPath"]: volumes(objects)[m["name"]]
        for m in container(objects)["volumeMounts"]
        if not m["readOnly"]
    }
    assert set(writable) == {
        "/usr/share/kibana/data",
        "/usr/share/kibana/logs",
        "/tmp",
    }
    assert all("sizeLimit" in volume["emptyDir"] for volume in writable.values())


def test_probes_ask_login_on_the_declared_port(objects: list[dict]) -> None:
    kibana = container(objects)
    assert kibana["ports"] == [
        {"containerPort": 5601, "name": "http", "protocol": "TCP"}
    ]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert kibana[probe]["httpGet"] == {"path": "/login", "port": "http"}
    startup = kibana["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_node_heap_fits_the_memory_limit(objects: list[dict]) -> None:
    (option,) = [v for v in container(objects)["env"] if v["name"] == "NODE_OPTIONS"]
    assert option["value"] == "--max-old-space-size=1228"
    assert container(objects)["resources"]["limits"]["memory"] == "2Gi"


def test_public_base_url_is_rendered_when_set() -> None:
    assert "server.publicBaseUrl" not in config(synth()[1])
    objects = synth(public_base_url="https://logs.sunday.com")[1]
    assert config(objects)["server.publicBaseUrl"] == "https://logs.sunday.com"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"public_base_url": "logs.sunday.com"}, "not an http(s) URL"),
        ({"public_base_url": "https://logs.sunday.com/kibana"}, "has a path"),
        ({"public_base_url": "https://logs.sunday.com/?a=b"}, "may only contain"),
        ({"replicas": 0}, "greater than or equal to 1"),
        ({"encryption_secret": "Kibana_Keys"}, "not a DNS label"),
        ({"image": "docker.elastic.co/kibana/kibana"}, "released tag"),
        (
            {
                "resources": {
                    "cpu_request": "1",
                    "memory_request": "512Mi",
                    "cpu_limit": "1",
                    "memory_limit": "512Mi",
                }
            },
            "below 1Gi",
        ),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        KibanaSettings(**settings)


# --- check_kibana_config ------------------------------------------------------------


def good() -> dict[str, Any]:
    return kibana_config(KibanaSettings(), elastic.ELASTICSEARCH)


def with_changes(**changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(good())
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def test_the_rendered_config_passes_every_rule() -> None:
    assert check_kibana_config(good()) == []
    assert check_kibana_config(kibana_config(KibanaSettings(), KIBANA)) == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (with_changes(elasticsearch__username="elastic"), "'elastic' is forbidden"),
        (with_changes(elasticsearch__username="kibana"), "no longer exists"),
        (
            with_changes(elasticsearch__serviceAccountToken="AAEAAWVsYXN0aWM"),
            "serviceAccountToken cannot be specified",
        ),
        (with_changes(elasticsearch__password=None), "must be set together"),
        (with_changes(elasticsearch__hosts=[]), "hosts is empty"),
        (with_changes(elasticsearch__hosts=["ftp://es:9200"]), "must be http(s)"),
        (
            with_changes(elasticsearch__ssl__verificationMode="strict"),
            "is not none, certificate or full",
        ),
        (
            with_changes(elasticsearch__ssl__certificateAuthorities=None),
            "could not verify",
        ),
        (
            with_changes(
                elasticsearch__ssl__key="a.key", elasticsearch__ssl__keystore__path="k"
            ),
            "cannot use [key]",
        ),
        (
            with_changes(xpack__security__encryptionKey="short"),
            "requires at least 32",
        ),
        (with_changes(xpack__reporting__encryptionKey=None), "is not set"),
        (
            with_changes(server__publicBaseUrl="https://kibana.example/x"),
            "must contain the [basePath]",
        ),
        (
            with_changes(server__publicBaseUrl="https://kibana.example/?q=1"),
            "may only contain",
        ),
        (with_changes(server__host=None), "binds loopback only"),
    ],
)
def test_each_rule_finds_its_problem(config: dict[str, Any], message: str) -> None:
    problems = check_kibana_config(config)
    assert any(message in problem for problem in problems), problems


def test_nested_yaml_is_read_like_dotted_keys() -> None:
    nested = {k: v for k, v in good().items() if not k.startswith("elasticsearch.")}
    nested["elasticsearch"] = {
        "hosts": ["https://elasticsearch:9200"],
        "username": "elastic",
        "password": "${X}",
        "ssl": {"certificateAuthorities": ["/ca.crt"]},
    }
    assert any("forbidden" in p for p in check_kibana_config(nested))


def test_the_construct_refuses_a_config_kibana_would_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from constructs_lib import kibana as module

    def broken(settings: KibanaSettings, es: Endpoint) -> dict[str, Any]:
        return {**kibana_config(settings, es), "elasticsearch.username": "elastic"}

    monkeypatch.setattr(module, "kibana_config", broken)
    with pytest.raises(ConfigurationError, match="forbidden"):
        synth()


# --- start.sh, run for real ------------------------------------------------------

FAKE_LAUNCHER = """#!/bin/sh
# Records what the image's launcher would receive.
env > "$RECORD"
printf '%s\\n' "$@" > "$RECORD.args"
"""


@pytest.fixture()
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sunday-kibana-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_start(
    root: Path, objects: list[dict[str, Any]], files: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run start.sh as the pod's uid with its mounts under ``root``."""
    assert shutil.which("setpriv"), "setpriv is missing (util-linux)"
    script = data(objects)["start.sh"]
    for directory in (CREDENTIALS_DIR, KEYS_DIR):
        script = script.replace(directory, str(root / directory.strip("/")))
    launcher = root / "launcher.sh"
    launcher.write_text(FAKE_LAUNCHER)
    launcher.chmod(0o555)
    script = script.replace(LAUNCHER, str(launcher))
    (root / "start.sh").write_text(script)
    (root / "start.sh").chmod(0o444)
    for relative, value in files.items():
        path = root / relative.strip("/")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text(value)
        os.chown(path, 0, KIBANA_UID)  # as fsGroup leaves a Secret file: 0440
        path.chmod(0o440)
    record = root / "out" / "env"
    record.parent.mkdir()
    os.chown(record.parent, KIBANA_UID, KIBANA_UID)
    process = subprocess.run(
        ["setpriv", f"--reuid={KIBANA_UID}", f"--regid={KIBANA_UID}"]
        + ["--clear-groups", "--"]
        + ["/bin/sh", str(root / "start.sh")],
        env={"PATH": "/usr/bin:/bin", "RECORD": str(record)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    environment: dict[str, str] = {}
    if record.exists():
        for line in record.read_text().splitlines():
            name, _, value = line.partition("=")
            environment[name] = value
    return process, environment


def secret_files(password: str = "kibana-system-pw\n") -> dict[str, str]:
    files = {f"{CREDENTIALS_DIR}/password": password}
    files.update({f"{KEYS_DIR}/{key}": value for key, value in KEYS.items()})
    return files


def expand(text: str, environment: dict[str, str]) -> dict[str, Any]:
    """Kibana's ``${VAR}`` expansion of kibana.yml."""
    return yaml.safe_load(
        re.sub(r"\$\{([A-Z_]+)\}", lambda m: json.dumps(environment[m[1]]), text)
    )


def test_start_sh_hands_kibana_the_secrets_it_reads(
    root: Path, objects: list[dict]
) -> None:
    process, environment = run_start(root, objects, secret_files())

    assert process.returncode == 0, process.stderr
    settings = expand(data(objects)["kibana.yml"], environment)
    # The trailing newline of the Secret is dropped, as the setup Job drops it.
    assert settings["elasticsearch.password"] == "kibana-system-pw"
    for key, (setting, _) in ENCRYPTION_KEYS.items():
        assert settings[setting] == KEYS[key]
    # The launcher gets no arguments: nothing secret on its command line.
    assert (root / "out" / "env.args").read_text().strip() == ""
    assert "kibana-system-pw" not in process.stdout + process.stderr


def test_start_sh_refuses_a_short_encryption_key(
    root: Path, objects: list[dict]
) -> None:
    files = secret_files()
    files[f"{KEYS_DIR}/reporting"] = "too-short"
    process, environment = run_start(root, objects, files)

    assert process.returncode != 0
    assert "reporting holds 9 characters; at least 32 are needed" in process.stderr
    assert environment == {}  # Kibana never started


def test_start_sh_refuses_an_empty_password(root: Path, objects: list[dict]) -> None:
    process, environment = run_start(root, objects, secret_files(password="\n"))

    assert process.returncode != 0
    assert "password holds 0 characters" in process.stderr
    assert environment == {}
