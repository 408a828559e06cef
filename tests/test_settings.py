"""Settings that a cluster or a program would refuse are refused at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from charts.loader import SETTINGS_DIR, load_environment, load_environments
from constructs_lib.common import Resources, duration_seconds
from constructs_lib.errors import ConfigurationError
from constructs_lib.prometheus import PrometheusSettings
from constructs_lib.rules import load_rule_files
from constructs_lib.stack import StackSettings


def prometheus(**settings: Any) -> PrometheusSettings:
    return PrometheusSettings(**{"app_namespaces": ["sunday-qa"], **settings})


@pytest.mark.parametrize(
    "value", ["30m1h", "5m5m", "99999999999999999999d", "1h30", "30 d", "", "0s"]
)
def test_durations_prometheus_cannot_parse_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="duration"):
        prometheus(retention=value)


@pytest.mark.parametrize("value", ["2h30m", "2w3d", "30d", "1y"])
def test_well_formed_durations_are_accepted(value: str) -> None:
    assert prometheus(retention=value).retention == value


def test_duration_seconds_adds_every_unit() -> None:
    assert duration_seconds("1d2h3m4s5ms") == 86400 + 7200 + 180 + 4 + 0.005


@pytest.mark.parametrize("value", ["2m", "5m", "500ms"])
def test_scrape_intervals_the_rules_cannot_use_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="between 1s and 1m"):
        prometheus(scrape_interval=value)


def test_retention_shorter_than_a_block_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 2h"):
        prometheus(retention="1h")


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu_request": "2", "cpu_limit": "500m"}, "cpu_request '2' exceeds"),
        ({"memory_request": "8Gi", "memory_limit": "1Gi"}, "exceeds memory_limit"),
        ({"memory_request": "500m", "memory_limit": "1Gi"}, "below 4Mi"),
        ({"cpu_request": "0"}, "positive Kubernetes quantity"),
    ],
    ids=["cpu", "memory", "millibytes", "zero"],
)
def test_resources_the_api_server_refuses_are_refused(
    resources: dict[str, str], message: str
) -> None:
    values = {
        "cpu_request": "100m",
        "memory_request": "128Mi",
        "cpu_limit": "1",
        "memory_limit": "1Gi",
        **resources,
    }

    with pytest.raises(ValidationError, match=message):
        Resources(**values)


@pytest.mark.parametrize("size", ["0", "0Gi", "100", "512Mi"])
def test_volumes_below_a_gibibyte_are_refused(size: str) -> None:
    with pytest.raises(ValidationError):
        prometheus(storage_size=size)


@pytest.mark.parametrize("storage_class", ["", "Fast_SSD", "fast ssd"])
def test_storage_classes_must_be_dns_names(storage_class: str) -> None:
    with pytest.raises(ValidationError, match="DNS subdomain"):
        prometheus(storage_class=storage_class)


@pytest.mark.parametrize(
    "image",
    [
        "localhost:5000/foo/:v1",
        "localhost:5000//x:v1",
        "prom/prometheus:_v2.40.0.",
        "prom/prometheus:" + "v" * 64,
        "Prom/Prometheus:v2.42.0",
    ],
)
def test_image_references_kubernetes_would_refuse_are_refused(image: str) -> None:
    with pytest.raises(ValidationError, match="released tag"):
        prometheus(image=image)


@pytest.mark.parametrize(
    "image",
    [
        "prom/prometheus:v2.42.0@sha256:" + "A" * 64,
        "prom/prometheus:v2.42.0@sha256:" + "a" * 63,
        "prom/prometheus@sha256:" + "a" * 64,
        "prom/prometheus:v2.42.0@sha512:" + "a" * 128,
    ],
)
def test_malformed_digests_are_refused_naming_the_form(image: str) -> None:
    with pytest.raises(ValidationError, match="@sha256:<64 lowercase hex digits>"):
        prometheus(image=image)


@pytest.mark.parametrize(
    "field, value",
    [
        ("image", "prom/prometheus:v2.42.0\n"),
        ("retention", "30d\n"),
        ("storage_class", "fast\n"),
    ],
)
def test_a_trailing_newline_is_no_part_of_a_valid_value(field: str, value: str) -> None:
    # A YAML block scalar ('image: |') ends its value with a newline.
    with pytest.raises(ValidationError, match=field):
        prometheus(**{field: value})


def test_the_namespace_may_not_end_in_a_newline(tmp_path: Path) -> None:
    text = (SETTINGS_DIR / "staging.yaml").read_text()
    (tmp_path / "staging.yaml").write_text(
        text.replace("namespace: monitoring\n", "namespace: |\n  monitoring\n")
    )

    with pytest.raises(ConfigurationError, match="field namespace: got 'monitoring"):
        load_environments(tmp_path)


def test_kibana_must_run_the_elasticsearch_release(tmp_path: Path) -> None:
    text = (SETTINGS_DIR / "staging.yaml").read_text()
    (tmp_path / "staging.yaml").write_text(
        text + "\nkibana:\n  image: docker.elastic.co/kibana/kibana:8.6.0\n"
    )

    with pytest.raises(ConfigurationError) as error:
        load_environments(tmp_path)

    assert str(error.value) == (
        "environment 'staging' (staging.yaml): kibana.image "
        "'docker.elastic.co/kibana/kibana:8.6.0' runs Kibana 8.6.0, but "
        "elasticsearch.image runs Elasticsearch 8.5.0; Kibana refuses to start "
        "against another version, so set both to one release"
    )


def test_the_apm_server_must_run_the_elasticsearch_release(tmp_path: Path) -> None:
    text = (SETTINGS_DIR / "staging.yaml").read_text()
    (tmp_path / "staging.yaml").write_text(
        text + "\napm_server:\n  image: docker.elastic.co/apm/apm-server:8.6.0\n"
    )

    with pytest.raises(ConfigurationError, match="runs APM Server 8.6.0, but"):
        load_environments(tmp_path)


@pytest.mark.parametrize(
    "image",
    [
        "registry.k8s.io/kube-state-metrics/kube-state-metrics:v2.9.2",
        "a/b:1.0",
        "prom/prometheus:v2.42.0@sha256:" + "0123456789abcdef" * 4,
    ],
)
def test_registry_images_are_accepted(image: str) -> None:
    assert prometheus(image=image).image == image


@pytest.mark.parametrize(
    "config",
    [
        {"job_name": "x", "basic_auth": {"username": "u", "password": "p"}},
        {"job_name": "x", "authorization": {"credentials": "token"}},
        {"job_name": "x", "bearer_token": "token"},
    ],
    ids=["basic-auth", "authorization", "bearer-token"],
)
def test_extra_scrape_configs_may_not_hold_secrets(config: dict) -> None:
    with pytest.raises(ValidationError, match="_file with a file mounted"):
        prometheus(extra_scrape_configs=[config])


@pytest.mark.parametrize("namespace", ["kube-system", "default", "sunday-qa"])
def test_the_stack_refuses_a_namespace_it_does_not_own(namespace: str) -> None:
    settings = load_environment(SETTINGS_DIR / "staging.yaml").model_dump(
        exclude_unset=True
    )
    settings.update(namespace=namespace)
    settings["prometheus"]["app_namespaces"] = ["sunday-qa"]

    with pytest.raises(ValidationError, match="namespace"):
        StackSettings.model_validate(settings)


def test_a_new_environment_must_name_its_own_application(tmp_path: Path) -> None:
    (tmp_path / "qa.yaml").write_text("environment: qa\ncluster: sunday-qa\n")

    with pytest.raises(ConfigurationError) as error:
        load_environments(tmp_path)

    assert "environment 'qa'" in str(error.value)
    assert "prometheus" in str(error.value)
    assert "required" in str(error.value)


def test_duplicate_keys_in_a_settings_file_are_refused(tmp_path: Path) -> None:
    text = (SETTINGS_DIR / "staging.yaml").read_text()
    (tmp_path / "staging.yaml").write_text(text + "\nprometheus:\n  replicas: 2\n")

    with pytest.raises(ConfigurationError, match="duplicate key 'prometheus'"):
        load_environments(tmp_path)


def test_yaml_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "qa.yaml").write_text("environment: qa\ncluster: [unclosed\n")

    with pytest.raises(ConfigurationError) as error:
        load_environments(tmp_path)

    assert "\n" not in str(error.value)
    assert "line 3" in str(error.value)


def test_environment_files_may_end_in_yml(tmp_path: Path) -> None:
    text = (SETTINGS_DIR / "staging.yaml").read_text()
    (tmp_path / "staging.yml").write_text(text)

    [settings] = load_environments(tmp_path)

    assert settings.environment == "staging"


@pytest.mark.parametrize("name", ["team.yaml", "team", "my rules.yml"])
def test_rule_files_prometheus_would_not_load_are_refused(
    name: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_text("groups: []\n")

    with pytest.raises(ConfigurationError, match="must end in '.yml'"):
        load_rule_files([path])
