"""The auto-recovery CronJob: its objects, and its script run for real.

The script (constructs_lib/auto_recovery.sh) runs under dash, the image's
/bin/sh, and under bash, with mawk as awk, as in the image. Its PATH holds
only the programs it may use and a fake kubectl
(tests/auto_recovery/fake_kubectl.py) that replays a canned cluster from
tests/auto_recovery/scenarios/ and records every call, with the API
requests the real kubectl 1.27 makes for it. The Roles the construct
renders are compared with those requests, and the fake refuses any command,
flag or output format it does not model, so a script change the tests do
not cover fails them.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
import cdk8s
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from constructs_lib.auto_recovery import (
    ACTIVE_DEADLINE_SECONDS,
    KUBECTL_UID,
    NAME,
    SCRIPT,
    SCRIPT_DIR,
    SCRIPT_KEY,
    STARTING_DEADLINE_SECONDS,
    AutoRecovery,
    AutoRecoverySettings,
    script_environment,
)
from constructs_lib.common import declared_secrets
from constructs_lib.integrity import check_references
from tests.auto_recovery.kube_jsonpath import render
from tests.conftest import find_program

NAMESPACE = "monitoring"
APPS = ["shop", "billing"]
FIXTURES = Path(__file__).parent / "auto_recovery"
SCENARIOS = sorted(path.stem for path in (FIXTURES / "scenarios").glob("*.yaml"))
# What the script may run besides kubectl and shell builtins: what the
# Bitnami image's Debian base has, mawk as its awk.
IMAGE_PROGRAMS = {
    "awk": "mawk",
    "cat": "cat",
    "date": "date",
    "mktemp": "mktemp",
    "rm": "rm",
    "sort": "sort",
}
MUTATING = (("rollout", "restart"), ("scale",))
_NOW = re.compile(r"^NOW-([0-9]+)s(?:([+-])([0-9]{2}):([0-9]{2}))?$")
FORBIDDEN = (
    "Error from server (Forbidden): pods is forbidden: User "
    '"system:serviceaccount:monitoring:auto-recovery" cannot list resource '
    '"pods" in API group "" in the namespace "billing"'
)


# --- rendering ---------------------------------------------------------------


def settings(**overrides: Any) -> AutoRecoverySettings:
    values: dict[str, Any] = {"namespaces": APPS, "dry_run": False}
    return AutoRecoverySettings(**{**values, **overrides})


def synth(config: AutoRecoverySettings | None = None) -> tuple[Any, list[dict]]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    AutoRecovery(
        chart, "auto-recovery", settings=config or settings(), namespace=NAMESPACE
    )
    return chart, cdk8s.Testing.synth(chart)


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return synth()[1]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def cronjob(objects: list[dict]) -> dict:
    (found,) = of_kind(objects, "CronJob")
    return found


def pod(objects: list[dict]) -> dict:
    return cronjob(objects)["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container(objects: list[dict]) -> dict:
    (found,) = pod(objects)["containers"]
    return found


# --- running the script ------------------------------------------------------


def fill_times(node: Any, now: datetime) -> Any:
    """Replace "NOW-<n>s[+HH:MM]" with the time n seconds before now."""
    if isinstance(node, dict):
        return {key: fill_times(value, now) for key, value in node.items()}
    if isinstance(node, list):
        return [fill_times(value, now) for value in node]
    match = _NOW.match(node) if isinstance(node, str) else None
    if match is None:
        return node
    moment = now - timedelta(seconds=int(match[1]))
    if match[2] is None:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    offset = timedelta(hours=int(match[3]), minutes=int(match[4]))
    zone = timezone(offset if match[2] == "+" else -offset)
    return moment.astimezone(zone).isoformat(timespec="seconds")


def cluster(scenario: str, failures: list[dict] | None = None) -> dict:
    """A scenario's state for the fake kubectl, times filled in."""
    text = (FIXTURES / "scenarios" / f"{scenario}.yaml").read_text()
    state = fill_times(yaml.safe_load(text), datetime.now(UTC))
    state["failures"] = failures or []
    return state


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    calls: list[dict]
    state: dict

    def lines(self, start: str) -> list[str]:
        return [
            line
            for line in self.stdout.splitlines()
            if line.startswith(f"auto-recovery: {start}")
        ]

    @property
    def changes(self) -> list[str]:
        """The mutating kubectl commands, as words without global flags."""
        return [
            " ".join(words(call))
            for call in self.calls
            if any(tuple(words(call)[: len(m)]) == m for m in MUTATING)
        ]

    def deployment(self, namespace: str, name: str) -> dict:
        """A Deployment as the fake left it, after the run's changes."""
        (found,) = [
            obj
            for obj in self.state["objects"]["deployments"]
            if (obj["metadata"]["namespace"], obj["metadata"]["name"])
            == (namespace, name)
        ]
        return found

    def replicas(self, namespace: str, name: str) -> int:
        return self.deployment(namespace, name)["spec"]["replicas"]

    def restarted_at(self, namespace: str, name: str) -> str | None:
        template = self.deployment(namespace, name)["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        return annotations.get("kubectl.kubernetes.io/restartedAt")


def steady(text: str) -> str:
    """Log text without ages, which the clock moves between two runs."""
    return re.sub(r"newest pod is [0-9]+s old", "newest pod is Ns old", text)


def words(call: dict) -> list[str]:
    return [arg for arg in call["argv"] if not arg.startswith("--request-timeout")]


@pytest.fixture(scope="session")
def toolbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PATH directory with the image's programs and the fake kubectl."""
    path = tmp_path_factory.mktemp("bin")
    for name, program in IMAGE_PROGRAMS.items():
        (path / name).symlink_to(find_program(program))
    kubectl = path / "kubectl"
    kubectl.write_text(
        "#!/bin/sh\n"
        f"exec {shlex.quote(sys.executable)} "
        f'{shlex.quote(str(FIXTURES / "fake_kubectl.py"))} "$@"\n'
    )
    kubectl.chmod(0o755)
    return path


@pytest.fixture
def run(toolbox: Path, tmp_path: Path):
    """Run the script once against a cluster state; see :func:`_run`."""
    count = 0

    def runner(
        state: dict | str,
        *,
        shell: str = "dash",
        config: AutoRecoverySettings | None = None,
        env: dict[str, str] | None = None,
    ) -> Run:
        nonlocal count
        count += 1
        return _run(
            tmp_path / f"run{count}", toolbox, state, shell, config or settings(), env
        )

    return runner


def _run(
    work: Path,
    toolbox: Path,
    state: dict | str,
    shell: str,
    config: AutoRecoverySettings,
    env: dict[str, str] | None,
) -> Run:
    (work / "tmp").mkdir(parents=True)
    state_file = work / "state.json"
    calls_file = work / "calls.jsonl"
    state_file.write_text(
        json.dumps(cluster(state) if isinstance(state, str) else state)
    )
    calls_file.touch()
    environment = {
        "PATH": str(toolbox),
        "TMPDIR": str(work / "tmp"),
        "FAKE_KUBECTL_STATE": str(state_file),
        "FAKE_KUBECTL_LOG": str(calls_file),
        **script_environment(config),
        **(env or {}),
    }
    result = subprocess.run(
        [find_program(shell), str(SCRIPT)],
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    unsupported = [call for call in calls if "unsupported" in call]
    assert not unsupported, (
        f"the script made calls the fake does not model: {unsupported}"
    )
    assert not list((work / "tmp").iterdir()), "the script left temporary files"
    return Run(
        result.returncode,
        result.stdout,
        result.stderr,
        calls,
        json.loads(state_file.read_text()),
    )


@pytest.fixture(params=["dash", "bash"])
def shell(request: pytest.FixtureRequest) -> str:
    """The image's /bin/sh (dash), and bash, which it also has."""
    return request.param


# --- scenarios ---------------------------------------------------------------


def test_a_healthy_cluster_is_read_and_left_alone(run, shell: str) -> None:
    result = run("healthy", shell=shell)

    assert result.status == 0, result.stderr
    assert result.stderr == ""
    assert result.changes == []
    assert result.stdout.splitlines() == [
        'auto-recovery: done namespaces="shop billing" unhealthy=0 restarted=0 '
        "scaled=0 skipped=0 failed=0 dry_run=false"
    ]
    # One list per kind and namespace, each in its namespace, none across.
    reads = sorted((call["namespace"], words(call)[1]) for call in result.calls)
    assert reads == sorted(
        (namespace, kind)
        for namespace in APPS
        for kind in (
            "pods",
            "replicasets",
            "deployments",
            "horizontalpodautoscalers",
            "pods.metrics.k8s.io",
        )
    )


def test_failing_deployments_are_restarted_once_each(run, shell: str) -> None:
    result = run("failing", shell=shell)

    assert result.status == 0, result.stderr
    assert sorted(result.changes) == [
        "rollout restart deployment/api -n shop",
        "rollout restart deployment/worker -n shop",
    ]
    assert result.lines("restart") == [
        "auto-recovery: restart namespace=shop deployment=api "
        'before="revision 3" after="revision 4" reason="9 unhealthy pod(s), '
        "above 5; 3 failing pod(s): api-6d4cf-k2x9p (CrashLoopBackOff), "
        'api-6d4cf-q7m4w (CrashLoopBackOff), api-6d4cf-z8r2n (Failed)"',
        "auto-recovery: restart namespace=shop deployment=worker "
        'before="revision 12" after="revision 13" reason="9 unhealthy pod(s), '
        "above 5; 2 failing pod(s): worker-84c6d-5lq8v (Failed), "
        'worker-84c6d-t6c1m (CrashLoopBackOff)"',
    ]
    assert result.lines("done") == [
        'auto-recovery: done namespaces="shop billing" unhealthy=9 restarted=2 '
        "scaled=0 skipped=0 failed=0 dry_run=false"
    ]
    assert result.restarted_at("shop", "api") is not None
    assert result.restarted_at("shop", "web") is None
    assert result.restarted_at("billing", "ledger") is None


def test_no_restart_until_more_pods_than_the_threshold_are_unhealthy(run) -> None:
    result = run("failing", config=settings(unhealthy_threshold=9))

    assert result.status == 0, result.stderr
    assert result.changes == []
    assert [line.split(" reason=")[0] for line in result.lines("skip")] == [
        "auto-recovery: skip restart namespace=shop deployment=api replicas=3",
        "auto-recovery: skip restart namespace=shop deployment=worker replicas=2",
    ]
    assert all(
        'reason="9 unhealthy pod(s), restarts start above 9;' in line
        for line in result.lines("skip")
    )


def test_a_deployment_near_its_memory_limit_gets_one_more_replica(
    run, shell: str
) -> None:
    result = run("memory", shell=shell)

    assert result.status == 0, result.stderr
    # Two hot pods of api, one scale; --current-replicas guards against a
    # concurrent change.
    assert sorted(result.changes) == [
        "scale deployment/api -n shop --current-replicas=3 --replicas=4",
        "scale deployment/ledger -n billing --current-replicas=2 --replicas=3",
    ]
    assert result.replicas("shop", "api") == 4
    assert result.replicas("billing", "ledger") == 3
    assert result.replicas("shop", "cart") == 1
    assert result.lines("scale") == [
        "auto-recovery: scale namespace=billing deployment=ledger before=2 after=3 "
        'reason="pod ledger-7f8d9-bx2lt container ledger uses 95.0% of its memory '
        'limit (905Mi of 953Mi, threshold 80%)"',
        "auto-recovery: scale namespace=shop deployment=api before=3 after=4 "
        'reason="pod api-6d4cf-q7m4w container api uses 94.4% of its memory '
        'limit (966Mi of 1024Mi, threshold 80%)"',
    ]
    assert result.lines("skip") == [
        "auto-recovery: skip scale namespace=billing deployment=- replicas=- "
        'reason="pod reports-0 container reports uses 97.7% of its memory limit '
        '(250Mi of 256Mi, threshold 80%); not managed by a Deployment"'
    ]


def test_half_the_memory_limit_is_not_scaled(run, shell: str) -> None:
    # The design compared "512Mi" with 80 as text; 900Mi of 4Gi would then
    # have been "above 80".
    result = run("half_memory", shell=shell)

    assert result.status == 0, result.stderr
    assert result.changes == []
    assert result.stdout.splitlines() == [
        'auto-recovery: done namespaces="shop billing" unhealthy=0 restarted=0 '
        "scaled=0 skipped=0 failed=0 dry_run=false"
    ]


def test_a_deployment_an_autoscaler_targets_is_never_scaled(run, shell: str) -> None:
    result = run("hpa", shell=shell)

    assert result.status == 0, result.stderr
    assert result.changes == [
        "scale deployment/cart -n shop --current-replicas=1 --replicas=2"
    ]
    (skip,) = result.lines("skip")
    assert skip.startswith(
        "auto-recovery: skip scale namespace=shop deployment=api replicas=4 "
        'reason="scaled by HorizontalPodAutoscaler api; pod api-6d4cf-k2x9p'
    )


def test_no_deployment_is_scaled_past_the_cap(run, shell: str) -> None:
    result = run("cap", shell=shell)

    assert result.status == 0, result.stderr
    assert result.changes == [
        "scale deployment/cart -n shop --current-replicas=9 --replicas=10"
    ]
    (skip,) = result.lines("skip")
    assert skip.startswith(
        "auto-recovery: skip scale namespace=shop deployment=api replicas=10 "
        'reason="at the cap of 10 replicas;'
    )

    lower = run("cap", config=settings(max_replicas=9))
    assert lower.changes == []
    assert len(lower.lines("skip scale")) == 2


def test_recently_changed_deployments_are_left_to_settle(run, shell: str) -> None:
    result = run("cooldown", shell=shell)

    assert result.status == 0, result.stderr
    assert sorted(result.changes) == [
        "rollout restart deployment/worker -n shop",
        "scale deployment/search -n shop --current-replicas=2 --replicas=3",
    ]
    skips = result.lines("skip")
    assert [line.split(" reason=")[0] for line in skips] == [
        "auto-recovery: skip restart namespace=shop deployment=api replicas=3",
        "auto-recovery: skip scale namespace=shop deployment=cart replicas=2",
    ]
    assert "-05:00, within the cooldown of 1800s;" in skips[0]
    assert re.search(
        r'reason="newest pod is 1[2-9][0-9]s old, within the cooldown '
        r"of 600s;",
        skips[1],
    )

    # Without cooldowns, everything that qualifies is acted on.
    eager = run("cooldown", config=settings(restart_cooldown="0s", scale_cooldown="0s"))
    assert sorted(eager.changes) == [
        "rollout restart deployment/api -n shop",
        "rollout restart deployment/worker -n shop",
        "scale deployment/cart -n shop --current-replicas=2 --replicas=3",
        "scale deployment/search -n shop --current-replicas=2 --replicas=3",
    ]


@pytest.mark.parametrize("scenario", ["failing", "memory", "cooldown"])
def test_dry_run_changes_nothing_and_logs_what_it_would_do(run, scenario: str) -> None:
    state = cluster(scenario)
    live = run(state)
    dry = run(state, config=settings(dry_run=True))

    assert dry.status == 0, dry.stderr
    assert dry.changes == []
    assert dry.state == state
    actions = live.lines("restart") + live.lines("scale")
    assert actions, "the scenario must have something to do"
    assert dry.lines("dry-run: would ") == [
        line.replace("auto-recovery: ", "auto-recovery: dry-run: would ", 1)
        for line in actions
    ]
    assert steady("\n".join(dry.lines("skip"))) == steady("\n".join(live.lines("skip")))
    assert dry.lines("done")[0].endswith("dry_run=true")


def test_a_failed_read_stops_the_run_before_any_change(run, shell: str) -> None:
    failures = [{"args": ["get", "pods"], "namespace": "billing", "stderr": FORBIDDEN}]
    result = run(cluster("failing", failures), shell=shell)

    assert result.status == 1
    # shop was read in full and would have had restarts; nothing happened.
    assert result.changes == []
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "auto-recovery: error: kubectl get pods -n billing failed (exit 1): "
        + FORBIDDEN
    ]


def test_without_metrics_only_the_memory_check_is_skipped(run) -> None:
    message = (
        'error: the server doesn\'t have a resource type "pods" in group '
        '"metrics.k8s.io"'
    )
    failures = [{"args": ["get", "pods.metrics.k8s.io"], "stderr": message}]
    restarts = run(cluster("failing", failures))

    assert restarts.status == 1
    assert sorted(restarts.changes) == [
        "rollout restart deployment/api -n shop",
        "rollout restart deployment/worker -n shop",
    ]
    assert restarts.stderr.splitlines() == [
        f"auto-recovery: error: kubectl get pods.metrics.k8s.io -n {namespace} "
        f"failed (exit 1): {message}"
        for namespace in APPS
    ]
    assert restarts.lines("memory check skipped") == [
        "auto-recovery: memory check skipped in namespace shop: the metrics API "
        "did not answer",
        "auto-recovery: memory check skipped in namespace billing: the metrics API "
        "did not answer",
    ]

    failures[0]["namespace"] = "shop"
    scales = run(cluster("memory", failures))
    assert scales.status == 1
    assert scales.changes == [
        "scale deployment/ledger -n billing --current-replicas=2 --replicas=3"
    ]


@pytest.mark.parametrize(
    ("scenario", "command", "message", "line"),
    [
        (
            "failing",
            ["rollout", "restart", "deployment/api"],
            'error: deployments.apps "api" can\'t restart paused deployment (run '
            "rollout resume first)",
            "auto-recovery: error: restart namespace=shop deployment=api "
            'before="revision 3" after="revision 4" reason="9 unhealthy pod(s), '
            "above 5; 3 failing pod(s): api-6d4cf-k2x9p (CrashLoopBackOff), "
            'api-6d4cf-q7m4w (CrashLoopBackOff), api-6d4cf-z8r2n (Failed)" '
            "failed (kubectl exit 1): ",
        ),
        (
            "memory",
            ["scale", "deployment/api"],
            "error: Expected replicas to be 3, was 5",
            "auto-recovery: error: scale namespace=shop deployment=api before=3 "
            'after=4 reason="pod api-6d4cf-q7m4w container api uses 94.4% of its '
            'memory limit (966Mi of 1024Mi, threshold 80%)" failed (kubectl exit 1): ',
        ),
    ],
)
def test_a_failed_change_is_logged_and_the_others_still_made(
    run, scenario: str, command: list[str], message: str, line: str
) -> None:
    result = run(cluster(scenario, [{"args": command, "stderr": message}]))

    assert result.status == 1
    assert result.stderr.splitlines() == [line + message]
    attempted = " ".join(command)
    assert any(change.startswith(attempted) for change in result.changes)
    made = [change for change in result.changes if not change.startswith(attempted)]
    assert len(made) == 1
    assert result.lines("done")[0].endswith("failed=1 dry_run=false")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DRY_RUN", "yes", "DRY_RUN must be 'true' or 'false', not 'yes'"),
        ("MAX_REPLICAS", "ten", "MAX_REPLICAS must be a whole number, not 'ten'"),
        ("UNHEALTHY_THRESHOLD", "", "UNHEALTHY_THRESHOLD must be a whole number"),
        ("NAMESPACES", " ", "NAMESPACES is empty; name the namespaces to act in"),
        ("NAMESPACES", "shop Billing", "namespace 'Billing' in NAMESPACES is not"),
    ],
)
def test_an_invalid_environment_stops_before_any_call(
    run, variable: str, value: str, message: str
) -> None:
    result = run("failing", env={variable: value})

    assert result.status == 2
    assert result.calls == []
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"auto-recovery: error: {message}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_dash_and_bash_decide_the_same(run, scenario: str) -> None:
    state = cluster(scenario)
    dash = run(state, shell="dash")
    bash = run(state, shell="bash")

    assert (bash.status, steady(bash.stdout), bash.stderr) == (
        dash.status,
        steady(dash.stdout),
        dash.stderr,
    )
    assert bash.changes == dash.changes


# --- RBAC: exactly the requests the script makes --------------------------------


def granted(objects: list[dict]) -> dict[str, set[tuple[str, str, str]]]:
    """(group, resource, verb) each namespace's Role grants."""
    grants: dict[str, set[tuple[str, str, str]]] = {}
    for role in of_kind(objects, "Role"):
        found = grants.setdefault(role["metadata"]["namespace"], set())
        for rule in role["rules"]:
            assert "resourceNames" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        found.add((group, resource, verb))
    return grants


def requested(runs: list[Run]) -> tuple[set[str], set[tuple[str, str, str]]]:
    """The namespaces the script's calls went to, and (group, resource, verb)
    of every API request they made."""
    namespaces: set[str] = set()
    requests: set[tuple[str, str, str]] = set()
    for result in runs:
        for call in result.calls:
            assert call["exit"] == 0, call
            for request in call["requests"]:
                resource = request["resource"]
                if request["subresource"]:
                    resource += "/" + request["subresource"]
                namespaces.add(request["namespace"])
                requests.add((request["group"], resource, request["verb"]))
    return namespaces, requests


@pytest.mark.parametrize("dry_run", [False, True], ids=["live", "dry-run"])
def test_roles_grant_exactly_what_the_script_requests(run, dry_run: bool) -> None:
    config = settings(dry_run=dry_run)
    runs = [run(scenario, config=config) for scenario in SCENARIOS]
    namespaces, requests = requested(runs)

    grants = granted(synth(config)[1])
    # Which Deployment needs a restart is not known in advance, so every
    # namespace gets the same Role. Over all scenarios the script makes
    # every request that Role grants, and none it does not.
    assert set(grants) == namespaces == set(APPS)
    for namespace in APPS:
        assert grants[namespace] == requests, namespace
    if dry_run:
        assert {verb for _, _, verb in requests} == {"list"}
    else:
        assert ("apps", "deployments", "patch") in requests
        assert ("apps", "deployments/scale", "update") in requests


def test_the_roles_are_bound_to_the_jobs_account_only(objects: list[dict]) -> None:
    roles = of_kind(objects, "Role")
    bindings = of_kind(objects, "RoleBinding")
    assert sorted(role["metadata"]["namespace"] for role in roles) == sorted(APPS)
    assert not of_kind(objects, "ClusterRole")
    assert not of_kind(objects, "ClusterRoleBinding")
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": f"{NAME}-{NAMESPACE}",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
        ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(APPS)


# --- the rendered objects ------------------------------------------------------


def test_every_object_is_valid_kubernetes_1_27(objects: list[dict]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, "1.27.0", strict=True)
    assert sorted(obj["kind"] for obj in objects) == sorted(
        ["ServiceAccount", "ConfigMap", "CronJob"] + ["Role", "RoleBinding"] * 2
    )


def test_every_reference_resolves(objects: list[dict]) -> None:
    chart, rendered = synth()
    assert check_references(rendered, declared_secrets(chart)) == []


def test_the_job_runs_one_at_a_time_within_bounds(objects: list[dict]) -> None:
    spec = cronjob(objects)["spec"]
    assert spec["schedule"] == "* * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == STARTING_DEADLINE_SECONDS
    # The CronJob controller checks schedules every 10 seconds; a shorter
    # deadline could miss every run.
    assert 10 <= STARTING_DEADLINE_SECONDS < 60
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == ACTIVE_DEADLINE_SECONDS
    assert job["backoffLimit"] == 0
    assert pod(objects)["restartPolicy"] == "Never"


def test_the_pod_is_hardened_and_calls_the_api_as_its_account(
    objects: list[dict],
) -> None:
    spec = pod(objects)
    assert spec["serviceAccountName"] == NAME
    assert spec["automountServiceAccountToken"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == KUBECTL_UID
    context = container(objects)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    resources = container(objects)["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    (account,) = of_kind(objects, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def test_the_container_runs_the_shipped_script(objects: list[dict]) -> None:
    (config_map,) = of_kind(objects, "ConfigMap")
    assert config_map["data"] == {SCRIPT_KEY: SCRIPT.read_text()}
    assert container(objects)["command"] == ["/bin/sh", f"{SCRIPT_DIR}/{SCRIPT_KEY}"]
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    assert mounts["script"] == {
        "name": "script",
        "mountPath": SCRIPT_DIR,
        "readOnly": True,
    }
    # kubectl's cache ($HOME/.kube) and the script's mktemp need /tmp.
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert mounts["tmp"]["readOnly"] is False


@pytest.mark.parametrize("dry_run", [False, True])
def test_the_environment_carries_the_settings(dry_run: bool) -> None:
    config = settings(
        dry_run=dry_run,
        max_replicas=6,
        memory_threshold_percent=90,
        restart_cooldown="1h",
        scale_cooldown="0s",
    )
    env = {e["name"]: e["value"] for e in container(synth(config)[1])["env"]}
    assert env == {
        "NAMESPACES": "shop billing",
        "DRY_RUN": "true" if dry_run else "false",
        "UNHEALTHY_THRESHOLD": "5",
        "MEMORY_THRESHOLD_PERCENT": "90",
        "MAX_REPLICAS": "6",
        "RESTART_COOLDOWN_SECONDS": "3600",
        "SCALE_COOLDOWN_SECONDS": "0",
        "HOME": "/tmp",
    }


# --- settings -----------------------------------------------------------------


def test_defaults_report_before_they_act() -> None:
    config = AutoRecoverySettings(namespaces=["shop"])
    assert config.dry_run is True
    assert config.image == "docker.io/bitnamilegacy/kubectl:1.27.14"
    assert (config.unhealthy_threshold, config.memory_threshold_percent) == (5, 80)
    assert config.max_replicas == 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"namespaces": []}, "at least 1 item"),
        ({"namespaces": ["shop", "shop"]}, "more than once"),
        ({"namespaces": ["shop", "kube-system"]}, "cluster's own components"),
        ({"namespaces": ["Shop"]}, "not a DNS label"),
        ({"image": "docker.io/bitnamilegacy/kubectl:latest"}, "moving tag"),
        ({"schedule": "every minute"}, "String should match pattern"),
        ({"memory_threshold_percent": 0}, "greater than or equal to 1"),
        ({"memory_threshold_percent": 101}, "less than or equal to 100"),
        ({"max_replicas": 0}, "greater than or equal to 1"),
        ({"restart_cooldown": "30 minutes"}, "not a positive Prometheus duration"),
        ({"dry_run": "false"}, "valid boolean"),
        ({"enabled": True}, "Extra inputs are not permitted"),
    ],
)
def test_settings_reject_what_would_misbehave(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        settings(**overrides)


# --- the fake's jsonpath engine -----------------------------------------------------


# Outputs of the real kubectl (v1.32, whose jsonpath engine matches 1.27's)
# for these templates, recorded with `kubectl label --local -f FILE -o
# jsonpath=...`, which renders a local file without a server.
_ENGINE_DATA = {
    "items": [
        {
            "metadata": {
                "name": "p1",
                "ownerReferences": [{"kind": "ReplicaSet", "name": "rs1"}],
            },
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"limits": {"memory": "1Gi"}}},
                    {"name": "b"},
                ]
            },
        },
        {"metadata": {"name": "p2"}, "spec": {"containers": [{"name": "c"}]}},
    ]
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            '{range .items[*]}{.metadata.name}{"\\t"}{range .spec.containers[*]}'
            '{.name}={.resources.limits.memory}{" "}{end}{"\\n"}{end}',
            "p1\ta=1Gi b= \np2\tc= \n",
        ),
        (
            '{range .items[*]}{.metadata.name}{"\\t"}{range .metadata.ownerReferences'
            '[*]}{.kind}/{.name}{end}{"|after\\n"}{end}',
            "p1\tReplicaSet/rs1|after\np2\t|after\n",
        ),
        (
            '{range .items[*]}{.metadata.name}{"\\t"}'
            '{.metadata.ownerReferences[*].kind}{"\\t"}'
            '{.spec.containers[*].resources.limits.memory}{"\\n"}{end}',
            "p1\tReplicaSet\t1Gi\np2\t\t\n",
        ),
        ("{.items[*].spec.containers[*].name}", "a b c"),
        (
            "{range .items[*]}{.spec.containers[0].resources}{end}",
            '{"limits":{"memory":"1Gi"}}',
        ),
    ],
)
def test_the_fakes_jsonpath_engine_prints_what_kubectl_prints(
    template: str, expected: str
) -> None:
    assert render(template, _ENGINE_DATA) == expected
