"""Jaeger alone in a chart: both modes, their Services, storage, retention."""

from __future__ import annotations

import re
from typing import Any

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
import cdk8s
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from constructs_lib.common import Endpoint
from constructs_lib.elastic import ELASTICSEARCH
from constructs_lib.errors import ConfigurationError
from constructs_lib.grafana import datasources_config
from constructs_lib.jaeger import (
    JAEGER_UID,
    JAEGER_USER,
    VERSION,
    Jaeger,
    JaegerSettings,
    _mount_problems,
    check_jaeger_args,
    grafana_datasource,
)
from tests.objects import get, pod_template

NAMESPACE = "monitoring"
WORKLOADS = ("Deployment", "CronJob")
COL = "jaeger-collector"
CLEANER = "jaeger-es-index-cleaner"


def synth(elasticsearch: Endpoint = ELASTICSEARCH, **settings: Any) -> list[dict]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    Jaeger(
        chart,
        "jaeger",
        settings=JaegerSettings(**settings),
        namespace=NAMESPACE,
        elasticsearch=elasticsearch,
    )
    return cdk8s.Testing.synth(chart)


def build(**settings: Any) -> Jaeger:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    return Jaeger(
        chart,
        "jaeger",
        settings=JaegerSettings(**settings),
        namespace=NAMESPACE,
        elasticsearch=ELASTICSEARCH,
    )


@pytest.fixture(scope="module")
def production() -> list[dict]:
    return synth(mode="production")


@pytest.fixture(scope="module")
def all_in_one() -> list[dict]:
    return synth(mode="all-in-one")


@pytest.fixture(scope="module")
def badger() -> list[dict]:
    return synth(mode="all-in-one", all_in_one_storage="badger")


def pod_of(obj: dict) -> dict[str, Any]:
    return pod_template(obj)["spec"]


def pods(objects: list[dict]) -> list[dict[str, Any]]:
    return [pod_of(obj) for obj in objects if obj["kind"] in WORKLOADS]


def container(objects: list[dict], kind: str, name: str) -> dict[str, Any]:
    (only,) = pod_of(get(objects, kind, name))["containers"]
    return only


def options(main: dict[str, Any]) -> dict[str, str]:
    """The --flag=value arguments of a container, as a mapping."""
    found = {}
    for arg in main["args"]:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            found[name] = value
    return found


def env(main: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in main.get("env", [])}


def mounted_file(pod: dict, main: dict, path: str) -> tuple[dict, str]:
    """The volume and key that provide the file at ``path`` in ``main``."""
    (mount,) = [
        m for m in main["volumeMounts"] if path.startswith(m["mountPath"] + "/")
    ]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume, path[len(mount["mountPath"]) + 1 :]


def secret_key(pod: dict, main: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) mounted at ``path``, asserting the key is listed."""
    volume, file_name = mounted_file(pod, main, path)
    items = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    assert file_name in items, f"{path}: no item {file_name!r} in {items}"
    return volume["secret"]["secretName"], items[file_name]


def service_ports(objects: list[dict], name: str) -> list[tuple[str, int, str]]:
    return [
        (port["name"], port["port"], port["targetPort"])
        for port in get(objects, "Service", name)["spec"]["ports"]
    ]


def pods_selected(objects: list[dict], service_name: str) -> list[dict]:
    selector = get(objects, "Service", service_name)["spec"]["selector"]
    return [
        obj
        for obj in objects
        if obj["kind"] == "Deployment"
        and selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
    ]


# --- the objects -----------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "production"},
        {"mode": "production", "zipkin": True, "query_replicas": 2},
        {"mode": "production", "collector_replicas": 1},
        {"mode": "all-in-one"},
        {"mode": "all-in-one", "all_in_one_storage": "badger", "zipkin": True},
    ],
)
def test_every_object_is_valid_kubernetes_1_27(settings: dict) -> None:
    for obj in synth(**settings):
        kubernetes_validate.validate(obj, "1.27.0", strict=True)


def test_production_runs_collector_query_and_index_cleaner(
    production: list[dict],
) -> None:
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in production}

    assert kinds == {
        ("ServiceAccount", "jaeger"),
        ("Deployment", "jaeger-collector"),
        ("Service", "jaeger-collector"),
        ("PodDisruptionBudget", "jaeger-collector"),
        ("Deployment", "jaeger-query"),
        ("Service", "jaeger-query"),
        ("CronJob", "jaeger-es-index-cleaner"),
    }
    assert all(obj["metadata"]["namespace"] == NAMESPACE for obj in production)
    assert get(production, "Deployment", "jaeger-collector")["spec"]["replicas"] == 2
    assert get(production, "Deployment", "jaeger-query")["spec"]["replicas"] == 1


def test_all_in_one_runs_one_pod_behind_both_services(all_in_one: list[dict]) -> None:
    kinds = {(obj["kind"], obj["metadata"]["name"]) for obj in all_in_one}

    assert kinds == {
        ("ServiceAccount", "jaeger"),
        ("Deployment", "jaeger"),
        ("Service", "jaeger-collector"),
        ("Service", "jaeger-query"),
    }
    assert get(all_in_one, "Deployment", "jaeger")["spec"]["replicas"] == 1
    for name in ("jaeger-collector", "jaeger-query"):
        (selected,) = pods_selected(all_in_one, name)
        assert selected["metadata"]["name"] == "jaeger"


@pytest.mark.parametrize("zipkin", [False, True])
def test_services_have_the_same_names_and_ports_in_both_modes(zipkin: bool) -> None:
    production = synth(mode="production", zipkin=zipkin)
    all_in_one = synth(mode="all-in-one", zipkin=zipkin)

    def services(objects: list[dict]) -> dict[str, list]:
        return {
            obj["metadata"]["name"]: [
                (port["name"], port["port"]) for port in obj["spec"]["ports"]
            ]
            for obj in objects
            if obj["kind"] == "Service"
        }

    assert services(production) == services(all_in_one)
    expected_ingest = [
        ("otlp-grpc", 4317),
        ("otlp-http", 4318),
        ("jaeger-grpc", 14250),
        ("jaeger-thrift", 14268),
    ] + ([("zipkin", 9411)] if zipkin else [])
    assert services(production) == {
        "jaeger-collector": [*expected_ingest, ("admin", 14269)],
        "jaeger-query": [("http", 16686), ("admin", 16687)],
    }


@pytest.mark.parametrize("mode", ["production", "all-in-one"])
def test_every_service_port_reaches_a_declared_container_port(mode: str) -> None:
    objects = synth(mode=mode, zipkin=True)
    for name in ("jaeger-collector", "jaeger-query"):
        (selected,) = pods_selected(objects, name)
        (main,) = pod_of(selected)["containers"]
        declared = {port["name"]: port["containerPort"] for port in main["ports"]}
        for port_name, _, target in service_ports(objects, name):
            assert target == port_name
            assert target in declared, f"{name}:{port_name} targets nothing"
    if mode == "all-in-one":
        # The query Service's admin port reaches all-in-one's one admin port.
        main = container(objects, "Deployment", "jaeger")
        admin = {p["name"]: p["containerPort"] for p in main["ports"]}["admin"]
        assert admin == 14269


def test_zipkin_is_only_exposed_when_enabled(production: list[dict]) -> None:
    main = container(production, "Deployment", "jaeger-collector")
    assert "collector.zipkin.host-port" not in options(main)
    assert "zipkin" not in {name for name, _, _ in service_ports(production, COL)}

    enabled = synth(mode="production", zipkin=True)
    main = container(enabled, "Deployment", "jaeger-collector")
    assert options(main)["collector.zipkin.host-port"] == ":9411"


@pytest.mark.parametrize("mode", ["production", "all-in-one"])
def test_endpoints_name_the_services_the_application_and_grafana_use(
    mode: str,
) -> None:
    jaeger = build(mode=mode)

    assert jaeger.collector == {
        "otlp-grpc": Endpoint("jaeger-collector", 4317),
        "otlp-http": Endpoint("jaeger-collector", 4318),
        "jaeger-grpc": Endpoint("jaeger-collector", 14250),
        "jaeger-thrift": Endpoint("jaeger-collector", 14268),
    }
    assert jaeger.collector["otlp-http"].url == "http://jaeger-collector:4318"
    assert jaeger.query == Endpoint("jaeger-query", 16686)
    # Each process is scraped once: all-in-one's query Service admin port
    # leads to the same process as the collector Service's.
    assert jaeger.metrics == (
        [Endpoint("jaeger-collector", 14269), Endpoint("jaeger-query", 16687)]
        if mode == "production"
        else [Endpoint("jaeger-collector", 14269)]
    )


# --- storage ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["jaeger-collector", "jaeger-query"])
def test_production_stores_in_the_shared_elasticsearch_over_tls(
    production: list[dict], name: str
) -> None:
    pod = pod_of(get(production, "Deployment", name))
    main = container(production, "Deployment", name)
    flags = options(main)

    assert env(main) == {"SPAN_STORAGE_TYPE": "elasticsearch"}
    assert flags["es.server-urls"] == "https://elasticsearch:9200"
    assert flags["es.server-urls"] == ELASTICSEARCH.url
    assert flags["es.tls.enabled"] == "true"
    assert secret_key(pod, main, flags["es.tls.ca"]) == (
        "elasticsearch-certs",
        "ca.crt",
    )
    assert flags["es.tls.ca"].endswith("/ca.crt")
    # Indices stay jaeger-*, where the jaeger role may write.
    assert "es.index-prefix" not in flags
    assert "es.tls.skip-host-verify" not in flags


@pytest.mark.parametrize("name", ["jaeger-collector", "jaeger-query"])
def test_the_password_is_read_from_the_mounted_secret_file(
    production: list[dict], name: str
) -> None:
    pod = pod_of(get(production, "Deployment", name))
    main = container(production, "Deployment", name)
    flags = options(main)

    assert flags["es.username"] == "jaeger" == JAEGER_USER.username
    assert secret_key(pod, main, flags["es.password-file"]) == (
        "jaeger-elasticsearch",
        "password",
    )
    assert flags["es.password-file"].endswith("/password")
    assert "es.password" not in flags
    assert all("valueFrom" not in var for var in main["env"])


def test_only_the_collector_installs_index_templates(production: list[dict]) -> None:
    collector = options(container(production, "Deployment", "jaeger-collector"))
    query = options(container(production, "Deployment", "jaeger-query"))

    assert collector["es.create-index-templates"] == "true"
    assert "es.create-index-templates" not in query


@pytest.mark.parametrize("days", [7, 14])
def test_query_searches_as_far_back_as_the_cleaner_keeps(days: int) -> None:
    objects = synth(mode="production", retention_days=days)
    query = options(container(objects, "Deployment", "jaeger-query"))
    cleaner = container(objects, "CronJob", "jaeger-es-index-cleaner")

    assert query["es.max-span-age"] == f"{days * 24}h"
    assert cleaner["args"][-2:] == [str(days), "https://elasticsearch:9200"]


def test_all_in_one_keeps_a_bounded_number_of_traces_in_memory(
    all_in_one: list[dict],
) -> None:
    pod = pod_of(get(all_in_one, "Deployment", "jaeger"))
    main = container(all_in_one, "Deployment", "jaeger")
    flags = options(main)

    assert env(main) == {"SPAN_STORAGE_TYPE": "memory"}
    assert flags["memory.max-traces"] == "10000"
    assert not [flag for flag in flags if flag.startswith("es.")]
    assert {volume["name"] for volume in pod["volumes"]} == {"tmp"}
    assert main["image"] == f"jaegertracing/all-in-one:{VERSION}"

    bigger = synth(mode="all-in-one", max_traces=50000)
    assert options(container(bigger, "Deployment", "jaeger"))["memory.max-traces"] == (
        "50000"
    )


def test_all_in_one_badger_writes_to_an_empty_dir_with_a_ttl(
    badger: list[dict],
) -> None:
    pod = pod_of(get(badger, "Deployment", "jaeger"))
    main = container(badger, "Deployment", "jaeger")
    flags = options(main)

    assert env(main) == {"SPAN_STORAGE_TYPE": "badger"}
    assert flags["badger.ephemeral"] == "false"
    assert flags["badger.span-store-ttl"] == "168h"
    for flag in ("badger.directory-key", "badger.directory-value"):
        volume, _ = mounted_file(pod, main, flags[flag])
        assert volume["emptyDir"] == {"sizeLimit": "2Gi"}
        (mount,) = [m for m in main["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is False
    assert "memory.max-traces" not in flags


# --- retention ------------------------------------------------------------------------


def test_index_cleaner_runs_nightly_alone_with_the_jaeger_credentials(
    production: list[dict],
) -> None:
    cronjob = get(production, "CronJob", "jaeger-es-index-cleaner")
    pod = pod_of(cronjob)
    main = container(production, "CronJob", "jaeger-es-index-cleaner")
    flags = options(main)

    assert cronjob["spec"]["schedule"] == "55 23 * * *"
    assert cronjob["spec"]["timeZone"] == "Etc/UTC"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert pod["restartPolicy"] == "Never"
    assert main["image"] == f"jaegertracing/jaeger-es-index-cleaner:{VERSION}"
    assert [arg for arg in main["args"] if not arg.startswith("--")] == [
        "7",
        "https://elasticsearch:9200",
    ]
    assert flags["es.username"] == "jaeger"
    assert flags["es.tls.enabled"] == "true"
    assert secret_key(pod, main, flags["es.tls.ca"]) == (
        "elasticsearch-certs",
        "ca.crt",
    )
    assert "es.password" not in flags


def test_index_cleaner_password_comes_from_the_mounted_file_via_a_shell(
    production: list[dict],
) -> None:
    pod = pod_of(get(production, "CronJob", "jaeger-es-index-cleaner"))
    main = container(production, "CronJob", "jaeger-es-index-cleaner")
    shell, dash_c, script, argv0 = main["command"]

    assert (shell, dash_c, argv0) == ("/bin/sh", "-c", "jaeger-es-index-cleaner")
    (path,) = re.findall(r'ES_PASSWORD="\$\$\(cat ([^)]+)\)"', script)
    assert secret_key(pod, main, path) == ("jaeger-elasticsearch", "password")
    assert "export ES_PASSWORD" in script
    assert script.endswith('exec /go/bin/es-index-cleaner-linux "$@"')
    assert "env" not in main


def test_index_cleaner_schedule_is_a_setting() -> None:
    objects = synth(mode="production", index_cleaner_schedule="30 2 * * *")
    assert get(objects, "CronJob", CLEANER)["spec"]["schedule"] == "30 2 * * *"


# --- availability ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "budgets"),
    [
        ({"mode": "production"}, {"jaeger-collector"}),
        ({"mode": "production", "collector_replicas": 1}, set()),
        (
            {"mode": "production", "collector_replicas": 3, "query_replicas": 2},
            {"jaeger-collector", "jaeger-query"},
        ),
        ({"mode": "all-in-one"}, set()),
    ],
)
def test_replicated_deployments_get_a_disruption_budget(
    settings: dict, budgets: set[str]
) -> None:
    objects = synth(**settings)
    found = {
        o["metadata"]["name"] for o in objects if o["kind"] == "PodDisruptionBudget"
    }

    assert found == budgets
    for name in budgets:
        pdb = get(objects, "PodDisruptionBudget", name)
        deployment = get(objects, "Deployment", name)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
        constraints = pod_of(deployment)["topologySpreadConstraints"]
        assert constraints[0]["topologyKey"] == "kubernetes.io/hostname"


# --- hardening ------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["production", "all_in_one", "badger"])
def test_every_pod_is_locked_down(fixture: str, request: pytest.FixtureRequest) -> None:
    objects = request.getfixturevalue(fixture)
    for pod in pods(objects):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == JAEGER_UID == 10001
        assert context["runAsGroup"] == JAEGER_UID
        assert context["fsGroup"] == JAEGER_UID
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["serviceAccountName"] == "jaeger"
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        for main in pod["containers"]:
            security = main["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["privileged"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert set(main["resources"]["requests"]) == {"cpu", "memory"}
            assert set(main["resources"]["limits"]) == {"cpu", "memory"}
        for volume in pod["volumes"]:
            assert "hostPath" not in volume
    assert (
        get(objects, "ServiceAccount", "jaeger")["automountServiceAccountToken"]
        is False
    )


@pytest.mark.parametrize(
    ("fixture", "name", "admin"),
    [
        ("production", "jaeger-collector", 14269),
        ("production", "jaeger-query", 16687),
        ("all_in_one", "jaeger", 14269),
    ],
)
def test_probes_ask_the_health_check_on_the_declared_admin_port(
    fixture: str, name: str, admin: int, request: pytest.FixtureRequest
) -> None:
    main = container(request.getfixturevalue(fixture), "Deployment", name)
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}

    assert ports["admin"] == admin
    assert options(main)["admin.http.host-port"] == f":{admin}"
    for probe in ("readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": "/", "port": "admin"}


@pytest.mark.parametrize("fixture", ["production", "all_in_one", "badger"])
def test_each_listener_flag_matches_a_declared_container_port(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(fixture)
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        (main,) = pod_of(obj)["containers"]
        declared = {port["containerPort"] for port in main["ports"]}
        for flag, value in options(main).items():
            if flag.endswith("host-port"):
                assert int(value.lstrip(":")) in declared, flag


@pytest.mark.parametrize("fixture", ["production", "all_in_one", "badger"])
def test_no_secret_value_is_rendered(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(fixture)
    text = yaml.safe_dump_all(objects)

    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    suspicious = re.compile(
        r"(password|token|secret)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{12,}", re.IGNORECASE
    )
    for line in text.splitlines():
        match = suspicious.search(line)
        assert match is None or "/" in match.group(0), line


@pytest.mark.parametrize(
    ("fixture", "binary"),
    [
        ("production", "collector"),
        ("production", "query"),
        ("all_in_one", "all-in-one"),
    ],
)
def test_the_rendered_arguments_pass_the_jaeger_rules(
    fixture: str, binary: str, request: pytest.FixtureRequest
) -> None:
    objects = request.getfixturevalue(fixture)
    name = {"collector": COL, "query": "jaeger-query", "all-in-one": "jaeger"}
    main = container(objects, "Deployment", name[binary])

    assert check_jaeger_args(main["args"], binary, env(main)) == []


def test_the_rendered_cleaner_arguments_pass_the_jaeger_rules(
    production: list[dict],
) -> None:
    main = container(production, "CronJob", CLEANER)
    assert check_jaeger_args(main["args"], "es-index-cleaner") == []


def test_badger_arguments_pass_the_jaeger_rules(badger: list[dict]) -> None:
    main = container(badger, "Deployment", "jaeger")
    assert check_jaeger_args(main["args"], "all-in-one", env(main)) == []


# --- the Elasticsearch user and Grafana -------------------------------------------


def test_the_jaeger_user_has_only_what_jaeger_needs() -> None:
    assert JAEGER_USER.username == "jaeger"
    assert JAEGER_USER.secret == "jaeger-elasticsearch"
    assert JAEGER_USER.role_name == "jaeger_writer"
    role = JAEGER_USER.role
    assert role is not None
    assert set(role) == {"cluster", "indices"}
    assert sorted(role["cluster"]) == ["manage_index_templates", "monitor"]
    (indices,) = role["indices"]
    assert indices["names"] == ["jaeger-*"]
    assert sorted(indices["privileges"]) == [
        "create_index",
        "delete_index",
        "index",
        "read",
        "view_index_metadata",
    ]
    granted = {*role["cluster"], *indices["privileges"]}
    assert not granted & {"all", "manage", "write", "delete", "manage_security"}


def test_grafana_datasource_points_at_the_query_service() -> None:
    source = grafana_datasource(Endpoint("jaeger-query", 16686))

    assert source == {
        "name": "Jaeger",
        "uid": "jaeger",
        "type": "jaeger",
        "access": "proxy",
        "url": "http://jaeger-query:16686",
        "editable": False,
    }
    provisioned = datasources_config(Endpoint("prometheus", 9090), [source])
    assert provisioned["datasources"][1] == source


# --- check_jaeger_args: each rule, failing --------------------------------------------

ES_ENV = {"SPAN_STORAGE_TYPE": "elasticsearch"}
GOOD_ES = [
    "--es.server-urls=https://elasticsearch:9200",
    "--es.tls.enabled=true",
    "--es.tls.ca=/etc/jaeger/elasticsearch-ca/ca.crt",
    "--es.username=jaeger",
    "--es.password-file=/etc/jaeger/elasticsearch-credentials/password",
]
GOOD_CLEANER = [
    "--es.username=jaeger",
    "--es.tls.enabled=true",
    "--es.tls.ca=/etc/jaeger/elasticsearch-ca/ca.crt",
    "7",
    "https://elasticsearch:9200",
]


def without(args: list[str], prefix: str) -> list[str]:
    return [arg for arg in args if not arg.startswith(prefix)]


@pytest.mark.parametrize(
    ("args", "mode", "env_vars"),
    [
        (GOOD_ES, "collector", ES_ENV),
        (GOOD_ES, "query", ES_ENV),
        (["--memory.max-traces=100"], "all-in-one", {"SPAN_STORAGE_TYPE": "memory"}),
        (GOOD_CLEANER, "es-index-cleaner", {}),
    ],
)
def test_check_accepts_a_working_configuration(
    args: list[str], mode: str, env_vars: dict
) -> None:
    assert check_jaeger_args(args, mode, env_vars) == []


@pytest.mark.parametrize(
    ("args", "mode", "env_vars", "expected"),
    [
        # Storage selection.
        (GOOD_ES, "collector", {}, "SPAN_STORAGE_TYPE is not set"),
        (GOOD_ES, "collector", {"SPAN_STORAGE_TYPE": "elastic"}, "unknown to Jaeger"),
        (
            ["--memory.max-traces=10"],
            "collector",
            {"SPAN_STORAGE_TYPE": "memory"},
            "collector runs with SPAN_STORAGE_TYPE elasticsearch",
        ),
        (GOOD_ES, "all-in-one", ES_ENV, "all-in-one runs with SPAN_STORAGE_TYPE"),
        (
            [*GOOD_ES, "--memory.max-traces=10"],
            "all-in-one",
            {"SPAN_STORAGE_TYPE": "memory"},
            "--es.server-urls is not a flag of all-in-one",
        ),
        # TLS.
        (
            without(GOOD_ES, "--es.tls.enabled"),
            "collector",
            ES_ENV,
            "need --es.tls.enabled=true",
        ),
        (
            without(GOOD_ES, "--es.tls"),
            "collector",
            ES_ENV,
            "is https but --es.tls.enabled is not true",
        ),
        (
            [*without(GOOD_ES, "--es.server-urls"), "--es.server-urls=http://es:9200"],
            "query",
            ES_ENV,
            "with an http:// --es.server-urls",
        ),
        (
            [*GOOD_ES, "--es.tls.skip-host-verify=true"],
            "collector",
            ES_ENV,
            "turns off certificate checks",
        ),
        # Credentials.
        ([*GOOD_ES, "--es.password=hunter2"], "collector", ES_ENV, "into the manifest"),
        ([*GOOD_ES, "--es.password=hunter2"], "collector", ES_ENV, "are both set"),
        (
            without(GOOD_ES, "--es.username"),
            "collector",
            ES_ENV,
            "--es.password-file without --es.username",
        ),
        (
            without(GOOD_ES, "--es.password-file"),
            "query",
            ES_ENV,
            "--es.username without --es.password-file",
        ),
        # Where and how spans are stored.
        (
            without(GOOD_ES, "--es.server-urls"),
            "collector",
            ES_ENV,
            "--es.server-urls is not set",
        ),
        (
            [*GOOD_ES, "--es.index-prefix=sunday"],
            "collector",
            ES_ENV,
            "outside jaeger-*",
        ),
        ([*GOOD_ES, "--es.use-aliases=true"], "collector", ES_ENV, "es-rollover"),
        ([*GOOD_ES, "--es.use-ilm=true"], "collector", ES_ENV, "es-rollover"),
        ([], "all-in-one", {"SPAN_STORAGE_TYPE": "memory"}, "--memory.max-traces >= 1"),
        (
            ["--memory.max-traces=0"],
            "all-in-one",
            {"SPAN_STORAGE_TYPE": "memory"},
            "--memory.max-traces >= 1",
        ),
        (
            ["--badger.ephemeral=false"],
            "all-in-one",
            {"SPAN_STORAGE_TYPE": "badger"},
            "needs --badger.directory-key",
        ),
        # Values Jaeger's flag parser refuses.
        ([*GOOD_ES, "--es.max-span-age=7d"], "query", ES_ENV, "not a Go duration"),
        ([*GOOD_ES, "--es.create-index-templates=yes"], "collector", ES_ENV, "boolean"),
        ([*GOOD_ES, "--es.num-shards=three"], "collector", ES_ENV, "not an integer"),
        ([*GOOD_ES, "--es.log-level=warn"], "collector", ES_ENV, "not one of"),
        ([*GOOD_ES, "--es.version=9"], "collector", ES_ENV, "not one of"),
        (
            [
                *without(GOOD_ES, "--es.server-urls"),
                "--es.server-urls=elasticsearch:9200",
            ],
            "collector",
            ES_ENV,
            "not a full http(s) URL",
        ),
        (
            [*GOOD_ES, "--es.tls.ca=ca.crt"],
            "collector",
            ES_ENV,
            "not an absolute path",
        ),
        ([*GOOD_ES, "--admin.http.host-port=14269"], "collector", ES_ENV, "host:port"),
        ([*GOOD_ES, "--query.base-path=/"], "collector", ES_ENV, "not a flag"),
        # The command line itself.
        ([*GOOD_ES, "--es.sniffer"], "collector", ES_ENV, "has no '=value'"),
        ([*GOOD_ES, GOOD_ES[0]], "collector", ES_ENV, "given twice"),
        ([*GOOD_ES, "es.timeout=5s"], "collector", ES_ENV, "unexpected argument"),
        (
            [*GOOD_ES, "--collector.otlp.grpc.host-port=:14250"],
            "collector",
            ES_ENV,
            "port 14250 is used by",
        ),
        (
            [*GOOD_ES, "--query.grpc-server.host-port=:16686"],
            "query",
            ES_ENV,
            "port 16686 is used by",
        ),
        # The index cleaner.
        (GOOD_CLEANER[:-1], "es-index-cleaner", {}, "exactly two arguments"),
        (
            [*GOOD_CLEANER[:-2], "0", GOOD_CLEANER[-1]],
            "es-index-cleaner",
            {},
            "NUM_OF_DAYS '0'",
        ),
        (
            without(GOOD_CLEANER, "--es.tls"),
            "es-index-cleaner",
            {},
            "is https but --es.tls.enabled is not true",
        ),
        (GOOD_CLEANER, "production", {}, "unknown binary"),
    ],
)
def test_check_names_what_would_stop_jaeger(
    args: list[str], mode: str, env_vars: dict, expected: str
) -> None:
    problems = check_jaeger_args(args, mode, env_vars)

    assert any(expected in problem for problem in problems), problems


def test_mount_check_finds_files_and_directories_no_volume_provides() -> None:
    mounts = [
        ("elasticsearch-ca", "/etc/jaeger/elasticsearch-ca", True),
        ("tmp", "/tmp", False),
        ("config", "/etc/jaeger/config", True),
    ]
    volumes = {
        "elasticsearch-ca": frozenset({"ca.crt"}),
        "tmp": None,
        "config": frozenset({"ui.json"}),
    }

    assert (
        _mount_problems(GOOD_ES[:3], "collector", "elasticsearch", mounts, volumes)
        == []
    )
    missing_key = [
        "--es.tls.enabled=true",
        "--es.tls.ca=/etc/jaeger/elasticsearch-ca/tls.crt",
    ]
    assert _mount_problems(
        missing_key, "collector", "elasticsearch", mounts, volumes
    ) == [
        "/etc/jaeger/elasticsearch-ca/tls.crt is not a file any mounted volume provides"
    ]
    unmounted = ["--es.password-file=/etc/jaeger/elasticsearch-credentials/password"]
    assert _mount_problems(unmounted, "query", "elasticsearch", mounts, volumes)
    read_only = ["--badger.directory-key=/etc/jaeger/config/key"]
    assert _mount_problems(read_only, "all-in-one", "badger", mounts, volumes) == [
        "/etc/jaeger/config/key is not on a writable emptyDir mount"
    ]
    writable = ["--badger.directory-key=/tmp/key"]
    assert _mount_problems(writable, "all-in-one", "badger", mounts, volumes) == []


def test_construct_refuses_elasticsearch_without_https() -> None:
    with pytest.raises(ConfigurationError, match="only travels over https"):
        synth(elasticsearch=Endpoint("elasticsearch", 9200), mode="production")


def test_all_in_one_never_reaches_for_elasticsearch() -> None:
    # The endpoint is accepted so the call is the same in every environment,
    # and left unused.
    objects = synth(elasticsearch=Endpoint("elasticsearch", 9200), mode="all-in-one")
    assert "elasticsearch" not in yaml.safe_dump_all(objects)


# --- settings -----------------------------------------------------------------------


def test_every_setting_states_its_default() -> None:
    for name, field in JaegerSettings.model_fields.items():
        assert field.description and "Defaults to" in field.description, name


def test_defaults_pin_every_image_to_one_release() -> None:
    settings = JaegerSettings()
    images = [
        settings.collector_image,
        settings.query_image,
        settings.index_cleaner_image,
        settings.all_in_one_image,
    ]
    assert {image.rsplit(":", 1)[1] for image in images} == {VERSION} == {"1.57.0"}
    assert settings.mode == "production"
    assert settings.collector_replicas == 2
    assert settings.query_replicas == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "staging"}, "mode"),
        ({"collector_replicas": 0}, "collector_replicas"),
        ({"retention_days": 0}, "retention_days"),
        ({"index_cleaner_schedule": "@daily"}, "index_cleaner_schedule"),
        ({"index_cleaner_schedule": "55 23 * *"}, "index_cleaner_schedule"),
        ({"collector_image": "jaegertracing/jaeger-collector:latest"}, "latest"),
        ({"mode": "all-in-one", "badger_size": "lots"}, "quantity"),
        ({"mode": "all-in-one", "max_traces": 0}, "max_traces"),
        ({"replicas": 2}, "replicas"),
        ({"max_traces": 500}, "do not apply in mode 'production'"),
        ({"mode": "all-in-one", "collector_replicas": 3}, "do not apply in mode"),
        (
            {"mode": "all-in-one", "retention_days": 3},
            "retention_days does not apply to memory storage",
        ),
        (
            {"mode": "all-in-one", "all_in_one_storage": "badger", "max_traces": 5},
            "max_traces applies to memory storage only",
        ),
    ],
)
def test_bad_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        JaegerSettings(**settings)


def test_badger_uses_retention_days_as_its_ttl() -> None:
    objects = synth(mode="all-in-one", all_in_one_storage="badger", retention_days=2)
    flags = options(container(objects, "Deployment", "jaeger"))
    assert flags["badger.span-store-ttl"] == "48h"
