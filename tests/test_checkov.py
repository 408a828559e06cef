"""checkov: the rendered manifests fail no Kubernetes check, scanned offline.

checkov runs from its own virtual environment, .venv-checkov/ (`make
setup-test` creates it from requirements-checkov.txt): its dependencies pin
``packaging<24`` and, through botocore, ``python-dateutil<3``, which conflict
with the project's pins in requirements.txt, so it cannot share .venv/.

The scan never reaches the network: checkov runs under ``unshare -n`` (a
private network namespace with no interfaces up), with ``--skip-download``,
no platform API key, and its PyPI update check and platform ID mapping
switched off, so a network attempt fails at once instead of hanging. Any
checkov setting inherited from the caller (``CKV_SKIP_CHECK``, a
``.checkov.yaml`` in the working or home directory) is kept out, so nothing
can skip a check except an annotation on the object itself.

A workload that truly needs what a check forbids carries one annotation per
check on its own ``metadata.annotations`` (checkov reads only there, not the
pod template's), in the form checkov documents for Kubernetes::

    checkov.io/skip1: CKV_K8S_17=node-exporter reports the node's processes

The tests below hold every such annotation to one check and a reason of
several words, and hold the set of (check, object) pairs to ALLOWED_SKIPS, so
that a new exception needs a reviewed edit of this file.

One check is open rather than excepted: CKV_K8S_43 wants every image pinned
by digest. The settings accept ``repository:tag@sha256:<digest>`` for every
image, but the built-in environments pin tags, because resolving a digest
needs the image registries (docs/security.md, "Image digests"). So the scan
of dist/ allows that one check to fail, and only on workloads whose images
carry no digest; a second scan renders every image digest-pinned and must
fail no check at all.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from charts.loader import SETTINGS_DIR
from constructs_lib.integrity import WORKLOAD_KINDS
from constructs_lib.stack import StackSettings
from main import render
from tests.conftest import ENVIRONMENTS, ROOT, find_program
from tests.objects import pod_template

CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = ROOT / ".venv-checkov"
CHECKOV = CHECKOV_VENV / "bin" / "checkov"
DIST = ROOT / "dist"
SCAN_TIMEOUT_SECONDS = 300

# (check, kind, namespace, name) -> why the object needs that check skipped.
# The reason itself lives in the object's annotation; this is the reviewed list
# of which exceptions exist at all (docs/security.md explains each workload).
ALLOWED_SKIPS: dict[tuple[str, str, str, str], str] = {
    ("CKV_K8S_17", "DaemonSet", "monitoring", "node-exporter"): (
        "hostPID: process counts and pressure figures are the node's"
    ),
    ("CKV_K8S_19", "DaemonSet", "monitoring", "node-exporter"): (
        "hostNetwork: the node's own interfaces, scraped at the node's address"
    ),
    ("CKV_K8S_23", "DaemonSet", "monitoring", "filebeat"): (
        "runs as root to read the node's root-owned log files"
    ),
    ("CKV_K8S_40", "DaemonSet", "monitoring", "filebeat"): (
        "runs as UID 0 (the same reason as CKV_K8S_23)"
    ),
    ("CKV_K8S_38", "DaemonSet", "monitoring", "filebeat"): (
        "its Kubernetes metadata processor reads pods, namespaces and nodes"
    ),
    ("CKV_K8S_38", "Deployment", "monitoring", "kube-state-metrics"): (
        "lists and watches the objects it reports on"
    ),
    ("CKV_K8S_38", "CronJob", "monitoring", "auto-recovery"): (
        "reads, restarts and scales Deployments through the API"
    ),
}
# Open until the images are pinned by digest (see the module docstring).
DIGEST_CHECK = "CKV_K8S_43"

# Where checkov looks for skips (kubernetes_utils.SKIP_ANNOTATION_PREFIXES).
SKIP_PREFIXES = ("checkov.io/skip", "bridgecrew.io/skip", "cortex.io/skip")
SKIP_KEY = re.compile(r"^checkov\.io/skip[1-9][0-9]*$")
# checkov splits the value on every '=' and expects exactly two parts: a
# reason containing '=' makes the whole scan crash (checkov 3.3.30).
SKIP_VALUE = re.compile(r"^(?P<check>CKV2?_K8S_[0-9]+)=(?P<reason>[^=]+)$")
MIN_REASON_WORDS = 4
MIN_REASON_CHARS = 20

Pair = tuple[str, str, str, str]  # (check, kind, namespace, name)


# --- running checkov -------------------------------------------------------


def checkov_program() -> Path:
    """The checkov of .venv-checkov/; fail, never skip, when it is missing."""
    assert CHECKOV.exists(), (
        f"checkov is not installed at {CHECKOV.relative_to(ROOT)}; "
        "run `make setup-test` (or `make test`)"
    )
    return CHECKOV


def offline_environment(home: Path) -> dict[str, str]:
    """The caller's environment without any checkov or platform setting."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CKV_", "BC_", "PRISMA_", "CHECKOV_"))
    }
    env.update(
        {
            # No `pip`-style "a newer checkov exists" request to PyPI.
            "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
            # No download of the platform's check ID mapping.
            "BC_SKIP_MAPPING": "TRUE",
            # No ~/.checkov.yaml (nor any other home-directory state).
            "HOME": str(home),
            "LOG_LEVEL": "WARNING",
        }
    )
    return env


def run_checkov(directory: Path, workdir: Path) -> dict[str, Any]:
    """Scan every manifest in `directory`; return checkov's JSON report."""
    program = checkov_program()
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        find_program("unshare"),
        "-n",
        str(program),
        "--directory",
        str(directory),
        "--framework",
        "kubernetes",
        "--skip-download",
        "--compact",
        "--output",
        "json",
    ]
    try:
        result = subprocess.run(
            command,
            cwd=workdir,  # no ./.checkov.yaml
            env=offline_environment(workdir),
            capture_output=True,
            text=True,
            timeout=SCAN_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"checkov did not finish in {SCAN_TIMEOUT_SECONDS} s; "
            "it may be waiting on the network"
        )
    # 0: no failed check; 1: some failed checks. Anything else is a crash.
    assert result.returncode in (0, 1), (
        f"checkov exited {result.returncode} (a checkov.io/skip annotation whose "
        f"reason contains '=' crashes it):\n{result.stderr[-3000:]}"
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON report:\n{result.stdout[-3000:]}")
    # One framework scanned gives one report object; several give a list.
    reports = report if isinstance(report, list) else [report]
    assert [r.get("check_type") for r in reports] == ["kubernetes"], reports
    return reports[0]


def describe(result: dict[str, Any]) -> str:
    """`production: CKV_K8S_40 Deployment monitoring/grafana: <title>`."""
    environment = Path(result["file_path"]).name.removesuffix(".k8s.yaml")
    kind, namespace, name = checkov_object(result)
    where = f"{kind} {namespace}/{name}"
    if kind == "Pod":
        where = f"the pods of {namespace}/{name}"
    return f"{environment}: {result['check_id']} {where}: {result['check_name']}"


def checkov_object(result: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name) of a result's resource, `Kind.ns.name[...]`.

    Graph checks report the pods a workload creates as
    `Pod.<namespace>.<workload name>.<labels>`; names here are DNS labels, so
    the first three dot-separated parts are kind, namespace and name.
    """
    kind, namespace, name = result["resource"].split(".", 3)[:3]
    return kind, namespace, name


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkov")


@pytest.fixture(scope="module")
def dist_report(scan_dir: Path) -> dict[str, Any]:
    """checkov's report on the committed dist/ (test_dist.py: a fresh render)."""
    return run_checkov(DIST, scan_dir / "dist-run")


# --- the annotations in dist/ ----------------------------------------------


@functools.cache
def _parsed_dist() -> tuple[tuple[str, dict[str, Any]], ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return tuple(
        (environment, doc)
        for environment in ENVIRONMENTS
        for doc in yaml.load_all(
            (DIST / f"{environment}.k8s.yaml").read_text(), Loader=loader
        )
        if doc
    )


def dist_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    """(environment, document) for every object in dist/; copies, to modify."""
    for environment, doc in _parsed_dist():
        yield environment, copy.deepcopy(doc)


def object_of(doc: dict[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name); checkov calls cluster-scoped objects' "default"."""
    metadata = doc["metadata"]
    return doc["kind"], metadata.get("namespace", "default"), metadata["name"]


def skip_annotations(doc: dict[str, Any]) -> dict[str, str]:
    annotations = doc["metadata"].get("annotations") or {}
    return {
        key: value
        for key, value in annotations.items()
        if any(prefix in key for prefix in SKIP_PREFIXES)
    }


def declared_skips(environment: str) -> set[Pair]:
    """The (check, kind, namespace, name) pairs an environment's file skips."""
    pairs = set()
    for env, doc in dist_documents():
        if env != environment:
            continue
        for value in skip_annotations(doc).values():
            match = SKIP_VALUE.match(value)
            if match:
                pairs.add((match["check"], *object_of(doc)))
    return pairs


def nested_skip_keys(node: Any, path: str) -> Iterator[str]:
    """Paths of skip annotations anywhere below a document's top level."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and any(p in key for p in SKIP_PREFIXES):
                yield f"{path}.{key}"
            yield from nested_skip_keys(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from nested_skip_keys(value, f"{path}[{index}]")


def images_of(doc: dict[str, Any]) -> list[str]:
    """Every image a workload's pods run, init containers included."""
    if doc["kind"] not in WORKLOAD_KINDS:
        return []
    pod = pod_template(doc)["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    return [container["image"] for container in containers]


def pin_every_image(document: dict[str, Any]) -> None:
    """Give every image setting of an environment file a digest.

    The digests are made up (a hash of the reference): they stand for what
    `crane digest` would print, to show what a render with digests looks
    like to the scanner. Nothing here is applied to a cluster.
    """
    for section, field in StackSettings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for name, setting in model.model_fields.items():
            if name != "image" and not name.endswith("_image"):
                continue
            values = document.setdefault(section, {})
            if name not in values and not applies(model, values, name):
                continue
            image = values.get(name, setting.default)
            digest = hashlib.sha256(image.encode()).hexdigest()
            values[name] = f"{image}@sha256:{digest}"


def applies(model: type[BaseModel], values: dict[str, Any], name: str) -> bool:
    """Whether setting ``name`` is accepted beside ``values`` (Jaeger's modes)."""
    try:
        model.model_validate({**values, name: model.model_fields[name].default})
    except ValueError:
        return False
    return True


# --- the tests -------------------------------------------------------------


def test_checkov_is_installed_at_the_pinned_version(
    dist_report: dict[str, Any],
) -> None:
    installed = dist_report["summary"]["checkov_version"]
    assert installed == CHECKOV_VERSION, (
        f"{CHECKOV.relative_to(ROOT)} is checkov {installed}, not "
        f"{CHECKOV_VERSION}: run `make setup-test`"
    )


def test_checkov_scanned_every_manifest(dist_report: dict[str, Any]) -> None:
    summary = dist_report["summary"]
    assert summary["parsing_errors"] == 0, dist_report["results"]["parsing_errors"]
    assert summary["passed"] > 0 and summary["resource_count"] > 0, summary
    scanned = {
        Path(r["file_path"]).name
        for kind in ("passed_checks", "failed_checks", "skipped_checks")
        for r in dist_report["results"].get(kind, [])
    }
    assert scanned == {f"{env}.k8s.yaml" for env in ENVIRONMENTS}


def test_dist_fails_no_checkov_check_but_the_digest_one(
    dist_report: dict[str, Any],
) -> None:
    failed = sorted(
        describe(r)
        for r in dist_report["results"].get("failed_checks", [])
        if r["check_id"] != DIGEST_CHECK
    )
    if failed:
        pytest.fail(
            f"checkov {CHECKOV_VERSION} finds {len(failed)} failed checks in "
            "dist/ (fix the construct; an exception needs an annotation on the "
            "object and an entry in ALLOWED_SKIPS):\n  " + "\n  ".join(failed),
            pytrace=False,
        )


def test_the_digest_check_fails_exactly_where_an_image_has_no_digest(
    dist_report: dict[str, Any],
) -> None:
    failing = {
        (Path(r["file_path"]).name.removesuffix(".k8s.yaml"), *checkov_object(r))
        for r in dist_report["results"].get("failed_checks", [])
        if r["check_id"] == DIGEST_CHECK
    }
    unpinned = {
        (environment, *object_of(doc))
        for environment, doc in dist_documents()
        if any("@sha256:" not in image for image in images_of(doc))
    }

    assert unpinned, "dist/ pins every image by digest: DIGEST_CHECK is closed"
    assert failing == unpinned


def test_a_render_with_every_image_pinned_by_digest_fails_no_check(
    scan_dir: Path,
) -> None:
    settings = scan_dir / "pinned-settings"
    shutil.copytree(SETTINGS_DIR, settings)
    for path in settings.glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        pin_every_image(document)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
    outdir = scan_dir / "pinned"
    render(settings, outdir, promtool=False)
    rendered = [
        image
        for path in outdir.glob("*.k8s.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc
        for image in images_of(doc)
    ]
    assert rendered and all("@sha256:" in image for image in rendered), rendered

    report = run_checkov(outdir, scan_dir / "pinned-run")

    failed = sorted(describe(r) for r in report["results"].get("failed_checks", []))
    assert failed == [], "\n".join(failed)


def test_checkov_honours_every_skip_annotation(dist_report: dict[str, Any]) -> None:
    """Each declared skip is one checkov reports as skipped, and no other."""
    reported = set()
    for result in dist_report["results"].get("skipped_checks", []):
        environment = Path(result["file_path"]).name.removesuffix(".k8s.yaml")
        _, namespace, name = checkov_object(result)
        reported.add((environment, result["check_id"], namespace, name))
    declared = {
        (environment, check, namespace, name)
        for environment in ENVIRONMENTS
        for check, _, namespace, name in declared_skips(environment)
    }

    assert reported == declared, (
        f"skipped by checkov, not declared: {sorted(reported - declared)}; "
        f"declared, not skipped by checkov: {sorted(declared - reported)}"
    )


def test_every_skip_names_one_check_and_gives_a_reason() -> None:
    problems = []
    for environment, doc in dist_documents():
        kind, namespace, name = object_of(doc)
        where = f"{environment}: {kind} {namespace}/{name}"
        checks = []
        for key, value in skip_annotations(doc).items():
            if not SKIP_KEY.match(key):
                problems.append(f"{where}: {key!r} is not checkov.io/skip<N>")
            match = SKIP_VALUE.match(str(value))
            if match is None:
                problems.append(
                    f"{where}: {key}: {value!r} is not one CKV_K8S_<N>=<reason> "
                    "(one check, a reason, no other '=')"
                )
                continue
            checks.append(match["check"])
            reason = match["reason"].strip()
            if len(reason.split()) < MIN_REASON_WORDS or len(reason) < MIN_REASON_CHARS:
                problems.append(
                    f"{where}: {key}: the reason {reason!r} is too short to "
                    f"review (at least {MIN_REASON_WORDS} words)"
                )
        repeated = sorted({c for c in checks if checks.count(c) > 1})
        if repeated:
            problems.append(f"{where}: skips {repeated} more than once")
        for path in nested_skip_keys(doc.get("spec"), "spec"):
            problems.append(
                f"{where}: {path}: checkov reads skips only from the object's "
                "own metadata.annotations"
            )

    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_skipped_checks_are_exactly_the_allowed_ones(environment: str) -> None:
    present = {object_of(doc) for env, doc in dist_documents() if env == environment}
    allowed = {pair for pair in ALLOWED_SKIPS if pair[1:] in present}
    declared = declared_skips(environment)

    assert declared == allowed, (
        f"{environment}: skipped but not in ALLOWED_SKIPS (review, then list "
        f"them): {sorted(declared - allowed)}; in ALLOWED_SKIPS but not "
        f"annotated on the object: {sorted(allowed - declared)}"
    )


def test_every_allowed_skip_is_still_needed(scan_dir: Path) -> None:
    """Without its annotation, each allowed object fails its check."""
    stripped = scan_dir / "stripped"
    stripped.mkdir()
    for environment in ENVIRONMENTS:
        docs = []
        for env, doc in dist_documents():
            if env != environment:
                continue
            annotations = doc["metadata"].get("annotations")
            if annotations:
                for key in skip_annotations(doc):
                    del annotations[key]
                if not annotations:
                    del doc["metadata"]["annotations"]
            docs.append(doc)
        (stripped / f"{environment}.k8s.yaml").write_text(
            yaml.safe_dump_all(docs, sort_keys=False)
        )

    report = run_checkov(stripped, scan_dir / "stripped-run")
    failing = {
        (r["check_id"], *checkov_object(r))
        for r in report["results"].get("failed_checks", [])
    }
    present = {object_of(doc) for _, doc in dist_documents()}
    stale = sorted(
        pair for pair in ALLOWED_SKIPS if pair[1:] in present and pair not in failing
    )
    assert stale == [], (
        f"these objects pass without their exception; remove the annotation "
        f"and the ALLOWED_SKIPS entry: {stale}"
    )
