"""Shared fixtures: the rendered manifests of every built-in environment."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)
from charts.loader import SETTINGS_DIR
from main import render

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = sorted(path.stem for path in SETTINGS_DIR.glob("*.yaml"))


class Manifest:
    """The documents of one rendered environment, with lookups by kind/name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = path.read_text()
        self.documents: list[dict[str, Any]] = [
            doc for doc in yaml.safe_load_all(self.text) if doc
        ]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [
            doc
            for doc in self.documents
            if doc["kind"] == kind and doc["metadata"]["name"] == name
        ]
        assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
        return found[0]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def config(self, config_map: str, key: str) -> Any:
        return yaml.safe_load(self.get("ConfigMap", config_map)["data"][key])


@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh render of every built-in environment."""
    outdir = tmp_path_factory.mktemp("render")
    render(SETTINGS_DIR, outdir)
    return outdir


@pytest.fixture(scope="session")
def manifests(rendered_dir: Path) -> dict[str, Manifest]:
    return {
        path.name.removesuffix(".k8s.yaml"): Manifest(path)
        for path in rendered_dir.glob("*.k8s.yaml")
    }


@pytest.fixture(params=ENVIRONMENTS)
def manifest(
    request: pytest.FixtureRequest, manifests: dict[str, Manifest]
) -> Manifest:
    """Each built-in environment in turn."""
    return manifests[request.param]


@pytest.fixture
def project_copy(tmp_path: Path) -> Iterator[Path]:
    """A copy of the settings directory that a test may break."""
    copy = tmp_path / "settings"
    shutil.copytree(SETTINGS_DIR, copy)
    yield copy


def find_program(name: str) -> str:
    """The path of a Debian program the tests need; fail, never skip."""
    path = shutil.which(name)
    assert path, f"{name} is not installed; run `make setup-test` (or `make test`)"
    return path


def elasticsearch_and_kibana(namespace: str = "monitoring") -> tuple[list, list]:
    """The documents and declared Secrets of the servers clients talk to.

    Component tests add these to their own documents before checking
    references, because a client alone refers to servers it does not deploy.
    """
    import cdk8s

    from constructs_lib.common import declared_secrets
    from constructs_lib.elasticsearch import Elasticsearch, ElasticsearchSettings
    from constructs_lib.kibana import Kibana, KibanaSettings

    chart = cdk8s.Chart(cdk8s.Testing.app(), "servers")
    server = Elasticsearch(
        chart, "elasticsearch", settings=ElasticsearchSettings(), namespace=namespace
    )
    Kibana(
        chart,
        "kibana",
        settings=KibanaSettings(),
        namespace=namespace,
        elasticsearch=server.endpoint,
    )
    return chart.to_json(), declared_secrets(chart)
