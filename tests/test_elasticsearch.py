"""Elasticsearch alone in a chart: cluster formation, TLS, hardening, probes.

Elasticsearch itself cannot run here; its readiness script is run for real
(sh and curl, as the pod's uid) against the HTTPS stand-in of
test_elasticsearch_setup.py, listening on 127.0.0.1:9200 of a private
network namespace.
"""

from __future__ import annotations

import copy
import os
import re
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
from constructs_lib.common import declared_secrets
from constructs_lib.elasticsearch import (
    BOOTSTRAP_PASSWORD_FILE,
    CERTS_DIR,
    CONFIG_DIR,
    ELASTICSEARCH_USER,
    READY_MARKER,
    Elasticsearch,
    ElasticsearchSettings,
    certificate_sans,
    check_elasticsearch_config,
    elasticsearch_config,
    openssl_subject_alt_name,
)
from constructs_lib.errors import ConfigurationError
from constructs_lib.integrity import check_references
from tests.objects import get
from tests.test_elasticsearch_setup import (
    make_certs,
    programs,  # noqa: F401  (the live test's program check)
    root,  # noqa: F401  (fixture)
    run_harness,
)

NAMESPACE = "monitoring"


def synth(**settings: Any) -> tuple[cdk8s.Chart, list[dict[str, Any]]]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    Elasticsearch(
        chart,
        "elasticsearch",
        settings=ElasticsearchSettings(**settings),
        namespace=NAMESPACE,
    )
    return chart, cdk8s.Testing.synth(chart)


@pytest.fixture(scope="module")
def cluster() -> list[dict[str, Any]]:
    return synth()[1]


@pytest.fixture(scope="module")
def single() -> list[dict[str, Any]]:
    return synth(replicas=1)[1]


def statefulset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return get(objects, "StatefulSet", "elasticsearch")


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return statefulset(objects)["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (main,) = pod(objects)["containers"]
    return main


def init(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (prepare,) = pod(objects)["initContainers"]
    return prepare


def config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data = get(objects, "ConfigMap", "elasticsearch-config")["data"]
    return yaml.safe_load(data["elasticsearch.yml"])


def env(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {var["name"]: var for var in container(objects)["env"]}


def volumes(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod(objects)["volumes"]}


def mounts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mount["mountPath"]: mount for mount in spec["volumeMounts"]}


def provider(spec: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The mount that provides ``path``, and the path inside its volume."""
    best = max(
        (m for p, m in mounts(spec).items() if path.startswith(p.rstrip("/") + "/")),
        key=lambda m: len(m["mountPath"]),
    )
    return best, path[len(best["mountPath"].rstrip("/")) + 1 :]


# --- the objects -------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_object_is_valid_and_every_reference_resolves(replicas: int) -> None:
    chart, objects = synth(replicas=replicas)
    for obj in objects:
        kubernetes_validate.validate(obj, "1.27.0", strict=True)
    assert check_references(objects, declared_secrets(chart)) == []
    assert all(obj["metadata"]["namespace"] == NAMESPACE for obj in objects)


def test_objects_come_in_dependency_order(cluster: list[dict]) -> None:
    assert [(obj["kind"], obj["metadata"]["name"]) for obj in cluster] == [
        ("ServiceAccount", "elasticsearch"),
        ("ConfigMap", "elasticsearch-config"),
        ("Service", "elasticsearch-headless"),
        ("StatefulSet", "elasticsearch"),
        ("Service", "elasticsearch"),
        ("PodDisruptionBudget", "elasticsearch"),
    ]


def test_the_client_service_is_the_shared_endpoint(cluster: list[dict]) -> None:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "endpoint")
    construct = Elasticsearch(
        chart, "es", settings=ElasticsearchSettings(), namespace=NAMESPACE
    )
    assert construct.endpoint == elastic.ELASTICSEARCH
    client = get(cluster, "Service", elastic.ELASTICSEARCH.host)["spec"]
    assert client["ports"] == [
        {"name": "https", "port": 9200, "protocol": "TCP", "targetPort": "https"}
    ]
    assert "clusterIP" not in client


# --- cluster formation ---------------------------------------------------------


def test_nodes_find_each_other_through_the_governing_headless_service(
    cluster: list[dict],
) -> None:
    headless = get(cluster, "Service", "elasticsearch-headless")["spec"]

    assert config(cluster)["discovery.seed_hosts"] == ["elasticsearch-headless"]
    assert statefulset(cluster)["spec"]["serviceName"] == "elasticsearch-headless"
    assert headless["clusterIP"] == "None"
    # Nodes must find each other before any of them is ready.
    assert headless["publishNotReadyAddresses"] is True
    assert {(p["name"], p["port"]) for p in headless["ports"]} == {
        ("https", 9200),
        ("transport", 9300),
    }
    # The seed host's default port is the transport port the Service exposes.
    assert config(cluster)["transport.port"] == 9300


def test_initial_masters_are_exactly_the_pod_names(cluster: list[dict]) -> None:
    replicas = statefulset(cluster)["spec"]["replicas"]
    name = statefulset(cluster)["metadata"]["name"]

    assert replicas == 3
    assert config(cluster)["cluster.initial_master_nodes"] == [
        f"{name}-{index}" for index in range(replicas)
    ]
    assert config(cluster)["node.name"] == "${POD_NAME}"
    assert env(cluster)["POD_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    # All masters must start together for the first election.
    assert statefulset(cluster)["spec"]["podManagementPolicy"] == "Parallel"


def test_one_replica_runs_single_node_discovery(single: list[dict]) -> None:
    settings = config(single)

    assert settings["discovery.type"] == "single-node"
    assert "cluster.initial_master_nodes" not in settings
    assert "discovery.seed_hosts" not in settings
    assert not [obj for obj in single if obj["kind"] == "PodDisruptionBudget"]
    assert "topologySpreadConstraints" not in pod(single)


def test_cluster_settings_come_from_the_settings(cluster: list[dict]) -> None:
    settings = config(cluster)
    assert settings["cluster.name"] == "sunday-logs"
    assert settings["network.host"] == "0.0.0.0"
    assert settings["http.port"] == 9200


# --- security -----------------------------------------------------------------


@pytest.mark.parametrize("layer", ["http", "transport"])
def test_tls_files_are_provided_by_the_certs_secret(
    cluster: list[dict], layer: str
) -> None:
    settings = config(cluster)
    prefix = f"xpack.security.{layer}.ssl"
    assert settings[f"{prefix}.enabled"] is True
    paths = [settings[f"{prefix}.key"], settings[f"{prefix}.certificate"]]
    paths += settings[f"{prefix}.certificate_authorities"]
    assert len(paths) == 3
    for relative in paths:
        # Elasticsearch resolves relative paths against its config directory.
        mount, inside = provider(container(cluster), f"{CONFIG_DIR}/{relative}")
        volume = volumes(cluster)[mount["name"]]
        assert volume["secret"]["secretName"] == elastic.CERTS_SECRET
        assert inside in [item["path"] for item in volume["secret"]["items"]]


def test_security_is_on_and_transport_checks_the_ca(cluster: list[dict]) -> None:
    settings = config(cluster)
    assert settings["xpack.security.enabled"] is True
    assert settings["xpack.security.transport.ssl.verification_mode"] == "certificate"


def test_config_file_reaches_the_config_directory(cluster: list[dict]) -> None:
    # The init container copies the ConfigMap's file into the config emptyDir
    # that the main container mounts as its config directory.
    prepare = init(cluster)
    script = prepare["args"][0]
    source = re.search(r"cp (\S+/elasticsearch\.yml) (\S+)", script)
    assert source is not None
    template_mount, key = provider(prepare, source.group(1))
    assert key in [
        item["key"]
        for item in volumes(cluster)[template_mount["name"]]["configMap"]["items"]
    ]
    target_mount, name = provider(prepare, source.group(2))
    assert name == "elasticsearch.yml"
    assert mounts(container(cluster))[CONFIG_DIR]["name"] == target_mount["name"]
    assert "emptyDir" in volumes(cluster)[target_mount["name"]]


def test_elastic_password_reaches_the_entrypoint_as_a_mode_600_file(
    cluster: list[dict],
) -> None:
    assert env(cluster)["ELASTIC_PASSWORD_FILE"]["value"] == BOOTSTRAP_PASSWORD_FILE
    mount, _ = provider(container(cluster), BOOTSTRAP_PASSWORD_FILE)
    bootstrap = volumes(cluster)[mount["name"]]
    assert bootstrap["emptyDir"]["medium"] == "Memory"
    script = init(cluster)["args"][0]
    # The Secret volume is mode 440 under fsGroup; the image wants 400 or 600.
    assert "umask 077" in script.split(f"> {BOOTSTRAP_PASSWORD_FILE}")[0]
    source, _ = provider(init(cluster), script.split("cat ")[1].split(" >")[0])
    assert volumes(cluster)[source["name"]]["secret"] == {
        "secretName": "elasticsearch-elastic",
        "defaultMode": 0o440,
        "items": [{"key": "password", "path": "password"}],
    }


def test_no_secret_value_is_rendered(cluster: list[dict]) -> None:
    assert not [obj for obj in cluster if obj["kind"] == "Secret"]
    for var in container(cluster)["env"]:
        assert "secretKeyRef" not in var.get("valueFrom", {})
    text = yaml.safe_dump_all(cluster)
    assert not re.search(r"password\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{8,}", text)


def test_certificate_names_every_address_clients_use() -> None:
    sans = certificate_sans("monitoring")
    for name in (
        "elasticsearch",
        "elasticsearch.monitoring",
        "elasticsearch.monitoring.svc",
        "elasticsearch.monitoring.svc.cluster.local",
        "*.elasticsearch-headless.monitoring.svc",
        "*.elasticsearch-headless.monitoring.svc.cluster.local",
    ):
        assert name in sans
    assert openssl_subject_alt_name("monitoring").startswith(
        "DNS:elasticsearch,DNS:elasticsearch.monitoring,"
    )
    assert all(" " not in name for name in sans)


# --- hardening ----------------------------------------------------------------


def test_pod_runs_as_its_own_high_uid_with_volumes_owned_once(
    cluster: list[dict],
) -> None:
    context = pod(cluster)["securityContext"]
    assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"]
    assert context["runAsUser"] == ELASTICSEARCH_USER >= 10000
    assert context["runAsNonRoot"] is True
    assert context["fsGroupChangePolicy"] == "OnRootMismatch"
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod(cluster)["automountServiceAccountToken"] is False


@pytest.mark.parametrize("which", ["init", "main"])
def test_containers_are_locked_down(cluster: list[dict], which: str) -> None:
    spec = init(cluster) if which == "init" else container(cluster)
    context = spec["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert set(spec["resources"]["limits"]) == {"cpu", "memory"}


def test_only_the_paths_elasticsearch_writes_are_writable(cluster: list[dict]) -> None:
    writable = {
        path: volumes(cluster).get(mount["name"], {"claim": True})
        for path, mount in mounts(container(cluster)).items()
        if not mount["readOnly"]
    }
    assert set(writable) == {
        CONFIG_DIR,  # the keystore
        "/usr/share/elasticsearch/data",
        "/usr/share/elasticsearch/logs",
        "/tmp",  # the JVM's private tmpdir and bash's here-strings
    }
    assert writable["/usr/share/elasticsearch/data"] == {"claim": True}
    assert all(
        "emptyDir" in volume and "sizeLimit" in volume["emptyDir"]
        for path, volume in writable.items()
        if path != "/usr/share/elasticsearch/data"
    )
    assert not [v for v in pod(cluster)["volumes"] if "hostPath" in v]
    assert "initContainers" in pod(cluster)
    assert pod(cluster)["enableServiceLinks"] is False


def test_heap_and_resources_come_from_the_settings() -> None:
    _, objects = synth(
        heap_size="3g",
        resources={
            "cpu_request": "2",
            "memory_request": "6Gi",
            "cpu_limit": "4",
            "memory_limit": "6Gi",
        },
    )
    opts = env(objects)["ES_JAVA_OPTS"]["value"].split()
    assert opts[:2] == ["-Xms3g", "-Xmx3g"]
    # GC logs go to stderr, not to files in the size-limited logs volume.
    assert "-Xlog:disable" in opts
    assert container(objects)["resources"]["limits"]["memory"] == "6Gi"


def test_mmap_is_off_unless_the_nodes_are_prepared() -> None:
    assert config(synth()[1])["node.store.allow_mmap"] is False
    _, objects = synth(allow_mmap=True, node_selector={"sunday/max-map-count": "ok"})
    assert "node.store.allow_mmap" not in config(objects)
    assert pod(objects)["nodeSelector"] == {"sunday/max-map-count": "ok"}
    # Either way no container may change the node's kernel settings.
    assert "sysctls" not in pod(objects)["securityContext"]


def test_masters_spread_over_nodes_and_leave_one_at_a_time(
    cluster: list[dict],
) -> None:
    (spread,) = pod(cluster)["topologySpreadConstraints"]
    selector = statefulset(cluster)["spec"]["selector"]["matchLabels"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["maxSkew"] == 1
    assert spread["nodeTaintsPolicy"] == "Honor"
    assert spread["labelSelector"] == {"matchLabels": selector}
    budget = get(cluster, "PodDisruptionBudget", "elasticsearch")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"] == {"matchLabels": selector}


def test_probes_use_declared_ports_and_a_mounted_script(cluster: list[dict]) -> None:
    main = container(cluster)
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    assert ports == {"https": 9200, "transport": 9300}
    for probe in ("livenessProbe", "startupProbe"):
        assert main[probe]["tcpSocket"]["port"] == "https"
    assert (
        main["startupProbe"]["failureThreshold"] * main["startupProbe"]["periodSeconds"]
        >= 600
    )
    command = main["readinessProbe"]["exec"]["command"]
    assert command[0] == "/bin/sh"
    mount, key = provider(main, command[1])
    items = volumes(cluster)[mount["name"]]["configMap"]["items"]
    assert key in [item["key"] for item in items]
    data = get(cluster, "ConfigMap", "elasticsearch-config")["data"][key]
    assert "wait_for_status=green" in data
    assert BOOTSTRAP_PASSWORD_FILE in data
    assert f"{CERTS_DIR}/ca.crt" in data


def test_config_changes_roll_the_pods() -> None:
    one = statefulset(synth()[1])["spec"]["template"]["metadata"]["annotations"]
    two = statefulset(synth(cluster_name="other")[1])["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert one["checksum/config"] != two["checksum/config"]


# --- settings errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"heap_size": "3g"}, "more than half the memory limit"),
        ({"heap_size": "5g"}, "exceeds the memory limit"),
        ({"heap_size": "2GB"}, "not a JVM size"),
        ({"heap_size": "0g"}, "not a JVM size"),
        ({"replicas": 0}, "greater than or equal to 1"),
        ({"replicas": "3"}, "valid integer"),
        ({"cluster_name": "logs:prod"}, "contain no ':'"),
        ({"image": "docker.elastic.co/elasticsearch/elasticsearch:latest"}, "latest"),
        ({"credentials_secret": "Elastic_Secret"}, "not a DNS label"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
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
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ElasticsearchSettings(**settings)


# --- check_elasticsearch_config -------------------------------------------------


def good(replicas: int = 3) -> dict[str, Any]:
    return elasticsearch_config(ElasticsearchSettings(replicas=replicas))


@pytest.mark.parametrize("replicas", [1, 2, 3, 5])
def test_the_rendered_config_passes_every_rule(replicas: int) -> None:
    assert check_elasticsearch_config(good(replicas), replicas) == []


def changed(replicas: int, **changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(good(replicas))
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


@pytest.mark.parametrize(
    ("config", "replicas", "message"),
    [
        (changed(3, discovery__zen__minimum_master_nodes=2), 3, "removed in"),
        (changed(3, node__master=True), 3, "node.master was removed"),
        (changed(3, xpack__monitoring__enabled=False), 3, "removed in"),
        (changed(3, gateway__recover_after_nodes=2), 3, "removed in"),
        (
            changed(3, **{"transport.profiles.client.xpack.security.type": "client"}),
            3,
            "removed in",
        ),
        (changed(3, cluster__name="a:b"), 3, "no ':'"),
        (changed(3, discovery__type="zen"), 3, "is unknown"),
        (
            changed(
                1,
                discovery__type="single-node",
                cluster__initial_master_nodes=["elasticsearch-0"],
            ),
            1,
            "not allowed with discovery.type single-node",
        ),  # noqa: E501
        (
            changed(
                3,
                discovery__type="single-node",
                cluster__initial_master_nodes=None,
                discovery__seed_hosts=None,
            ),
            3,
            "one-node cluster of its own",
        ),  # noqa: E501
        (changed(3, discovery__seed_hosts=None), 3, "could not find each other"),
        (
            changed(3, cluster__initial_master_nodes=["es-0", "es-1", "es-2"]),
            3,
            "not the pod names",
        ),
        (
            changed(3, cluster__initial_master_nodes=["elasticsearch-0"]),
            3,
            "not the pod names",
        ),
        (changed(3, node__name="node-a"), 3, "not '${POD_NAME}'"),
        (changed(3, node__roles=["data", "ingest"]), 3, "has no 'master'"),
        (changed(1, discovery__type=None), 1, "needs cluster.initial_master_nodes"),
        (changed(3, network__host=None), 3, "binds loopback only"),
        (changed(3, http__host="127.0.0.1"), 3, "binds loopback only"),
        (changed(3, xpack__security__enabled=False), 3, "every client"),
        (
            changed(3, **{"xpack.security.transport.ssl.enabled": False}),
            3,
            "transport.ssl.enabled must be true",
        ),
        (
            changed(3, **{"xpack.security.http.ssl.enabled": None}),
            3,
            "need an explicit xpack.security.http.ssl.enabled",
        ),
        (
            changed(3, **{"xpack.security.http.ssl.key": None}),
            3,
            "must be set together",
        ),
        (
            changed(
                3,
                **{
                    "xpack.security.http.ssl.key": None,
                    "xpack.security.http.ssl.certificate": None,
                },
            ),
            3,
            "no certificate and key are set",
        ),
        (
            changed(3, **{"xpack.security.http.ssl.keystore.path": "certs/x.p12"}),
            3,
            "exclude each other",
        ),
        (
            changed(3, **{"xpack.security.transport.ssl.verification_mode": "strict"}),
            3,
            "is not one of",
        ),
        (
            changed(
                3, **{"xpack.security.transport.ssl.certificate_authorities": None}
            ),
            3,
            "could not verify each other",
        ),
        (
            changed(
                3,
                **{
                    "xpack.security.http.ssl.enabled": False,
                    "xpack.security.authc.token.enabled": True,
                },
            ),
            3,
            "token.enabled needs",
        ),
        (changed(3, bootstrap__memory_lock=True), 3, "memory-lock bootstrap check"),
    ],
)
def test_each_rule_finds_its_problem(
    config: dict[str, Any], replicas: int, message: str
) -> None:
    problems = check_elasticsearch_config(config, replicas)
    assert any(message in problem for problem in problems), problems


def test_nested_yaml_is_read_like_dotted_keys() -> None:
    nested = {"discovery": {"zen": {"ping": {"unicast": {"hosts": ["a"]}}}}}
    problems = check_elasticsearch_config({**good(), **nested}, 3)
    assert any("discovery.zen.ping.unicast.hosts" in p for p in problems)


def test_heap_rules_apply_when_given() -> None:
    assert (
        check_elasticsearch_config(good(), 3, heap_size="3g", memory_limit="4Gi") != []
    )
    assert (
        check_elasticsearch_config(good(), 3, heap_size="2g", memory_limit="4Gi") == []
    )


def test_the_construct_refuses_a_config_that_would_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from constructs_lib import elasticsearch as module

    def broken(settings: ElasticsearchSettings) -> dict[str, Any]:
        return {**elasticsearch_config(settings), "node.master": True}

    monkeypatch.setattr(module, "elasticsearch_config", broken)
    with pytest.raises(ConfigurationError, match="node.master was removed"):
        synth()


# --- the readiness probe, run for real -------------------------------------------


def probe_spec(
    directory: Path,
    objects: list[dict[str, Any]],
    password: str,
    *,
    runs: int,
    **server: Any,
) -> dict[str, Any]:
    """The probe script with its pod paths moved under ``directory``; runs of it."""
    certs = make_certs(directory / "certs", openssl_subject_alt_name(NAMESPACE))
    data = get(objects, "ConfigMap", "elasticsearch-config")["data"]
    tmp = directory / "tmp"
    tmp.mkdir()
    os.chown(tmp, ELASTICSEARCH_USER, ELASTICSEARCH_USER)
    secret = directory / "bootstrap" / "password"
    secret.parent.mkdir(mode=0o755)
    secret.write_text(password)
    os.chown(secret, ELASTICSEARCH_USER, ELASTICSEARCH_USER)
    secret.chmod(0o600)
    script = (
        data["readiness-probe.sh"]
        .replace(f"{CERTS_DIR}/ca.crt", str(certs["ca.crt"]))
        .replace(BOOTSTRAP_PASSWORD_FILE, str(secret))
        .replace(READY_MARKER, str(tmp / "ready"))
    )
    (directory / "probe.sh").write_text(script)
    (directory / "probe.sh").chmod(0o444)
    run = {
        "argv": ["/bin/sh", str(directory / "probe.sh")],
        "env": {"PATH": "/usr/bin:/bin"},
        "uid": ELASTICSEARCH_USER,
        "gid": ELASTICSEARCH_USER,
        "cwd": str(directory),
    }
    return {
        "cert": str(certs["tls.crt"]),
        "key": str(certs["tls.key"]),
        "port": 9200,
        "reserved_users": [],
        "secrets": [password],
        "runs": [run] * runs,
        **server,
    }


def paths(run: dict[str, Any]) -> list[str]:
    return [request["path"] for request in run["requests"]]


def test_readiness_waits_for_green_once_then_asks_the_local_node(
    root: Path,  # noqa: F811
    cluster: list[dict],
) -> None:
    password = 'el"astic\\pass'
    spec = probe_spec(
        root, cluster, password, elastic_password=password, green_after=2, runs=4
    )
    seen = run_harness(root, spec)
    runs = seen["runs"]

    assert [run["returncode"] == 0 for run in runs] == [False, False, True, True]
    waiting = "/_cluster/health?wait_for_status=green&timeout=1s"
    assert paths(runs[0]) == paths(runs[1]) == paths(runs[2]) == [waiting]
    assert paths(runs[3]) == ["/_cluster/health?local=true"]
    assert "answered 408" in runs[0]["stderr"]
    assert {(r["user"], r["password"]) for run in runs for r in run["requests"]} == {
        ("elastic", password)
    }
    assert seen["leaks"] == []


def test_readiness_fails_when_the_password_is_refused(
    root: Path,  # noqa: F811
    single: list[dict],
) -> None:
    spec = probe_spec(root, single, "stale-password", elastic_password="other", runs=2)
    seen = run_harness(root, spec)

    for run in seen["runs"]:
        assert run["returncode"] != 0
        assert paths(run) == ["/_cluster/health?wait_for_status=yellow&timeout=1s"]
        assert "answered 401" in run["stderr"]
        assert "stale-password" not in run["stdout"] + run["stderr"]
    assert seen["leaks"] == []
