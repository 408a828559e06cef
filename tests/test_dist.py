"""dist/: committed, current, and valid Kubernetes 1.27."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from tests.conftest import ENVIRONMENTS, ROOT, Manifest

KUBERNETES_VERSION = "1.27.0"


def test_every_environment_renders_one_file(rendered_dir: Path) -> None:
    assert sorted(p.name for p in rendered_dir.glob("*.k8s.yaml")) == [
        f"{name}.k8s.yaml" for name in ENVIRONMENTS
    ]
    assert {"production", "staging"} <= set(ENVIRONMENTS)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_committed_dist_matches_a_fresh_render(
    environment: str, rendered_dir: Path
) -> None:
    committed = ROOT / "dist" / f"{environment}.k8s.yaml"
    fresh = rendered_dir / f"{environment}.k8s.yaml"

    assert committed.exists(), f"{committed} is missing: run `make synth`"
    assert committed.read_text() == fresh.read_text(), (
        f"{committed.relative_to(ROOT)} is stale: run `make synth` and commit it"
    )


def test_dist_holds_nothing_but_the_environments() -> None:
    assert sorted(p.name for p in (ROOT / "dist").iterdir()) == [
        f"{name}.k8s.yaml" for name in ENVIRONMENTS
    ]


def test_every_document_is_strictly_valid_kubernetes_1_27(manifest: Manifest) -> None:
    problems = []
    for doc in manifest.documents:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            problems.append(f"{name}: {error.message} at {list(error.path)}")

    assert problems == []


def test_object_names_are_unique_per_kind_and_namespace(manifest: Manifest) -> None:
    seen: set[tuple[str, str, str]] = set()
    for doc in manifest.documents:
        key = (
            doc["kind"],
            doc["metadata"].get("namespace", ""),
            doc["metadata"]["name"],
        )
        assert key not in seen, key
        seen.add(key)


def test_images_are_pinned_to_released_tags(manifest: Manifest) -> None:
    for container in _containers(manifest):
        image = container["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", image
        assert "/" not in tag, image


def _containers(manifest: Manifest) -> list[dict]:
    containers = []
    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        for doc in manifest.of_kind(kind):
            pod = doc["spec"]["template"]["spec"]
            containers += pod["containers"] + pod.get("initContainers", [])
    return containers
