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
    SCALED_AT_ANNOTATION,
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
MUTATING = (("rollout", "restart"), ("scale",), ("annotate",))
_SCALED_AT_VALUE = re.compile(rf"({re.escape(SCALED_AT_ANNOTATION)}=)\S+")
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
        """The mutating kubectl commands, as words without global flags; the
        time an annotate call records reads TIME."""
        return [
            _SCALED_AT_VALUE.sub(r"\1TIME", " ".join(words(call)))
            for call in self.calls
            if any(tuple(words(call)[: len(m)]) == m for m in MUTATING)
        ]

    @property
    def scales(self) -> list[str]:
        """The scale commands only."""
        return [change for change in self.changes if change.startswith("scale ")]

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

    def scaled_at(self, namespace: str, name: str) -> str | None:
        annotations = self.deployment(namespace, name)["metadata"].get(
            "annotations", {}
        )
        return annotations.get(SCALED_AT_ANNOTATION)


def annotate(namespace: str, name: str) -> str:
    """The change recording that the job scaled a Deployment."""
    return (
        f"annotate deployment/{name} -n {namespace} --overwrite "
        f"{SCALED_AT_ANNOTATION}=TIME"
    )


def steady(text: str) -> str:
    """Log text without ages, which the clock moves between two runs."""
    return re.sub(r"is [0-9]+s in the future", "is Ns in the future", text)


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
        'before="revision 3" after="revision 4" reason="6 unhealthy pod(s), '
        "above 5; 3 failing pod(s): api-6d4cf-k2x9p (CrashLoopBackOff), "
        'api-6d4cf-q7m4w (CrashLoopBackOff), api-6d4cf-h5v2c (CrashLoopBackOff)"',
        "auto-recovery: restart namespace=shop deployment=worker "
        'before="revision 12" after="revision 13" reason="6 unhealthy pod(s), '
        "above 5; 3 failing pod(s): worker-84c6d-5lq8v (Failed), "
        'worker-84c6d-t6c1m (CrashLoopBackOff), worker-84c6d-8vj3q (Failed)"',
    ]
    assert result.lines("done") == [
        'auto-recovery: done namespaces="shop billing" unhealthy=6 restarted=2 '
        "scaled=0 skipped=0 failed=0 dry_run=false"
    ]
    assert result.restarted_at("shop", "api") is not None
    assert result.restarted_at("shop", "web") is None
    assert result.restarted_at("billing", "ledger") is None


def test_no_restart_until_more_pods_than_the_threshold_are_unhealthy(run) -> None:
    result = run("failing", config=settings(unhealthy_threshold=6))

    assert result.status == 0, result.stderr
    assert result.changes == []
    assert [line.split(" reason=")[0] for line in result.lines("skip")] == [
        "auto-recovery: skip restart namespace=shop deployment=api replicas=3",
        "auto-recovery: skip restart namespace=shop deployment=worker replicas=2",
    ]
    assert all(
        'reason="6 unhealthy pod(s), restarts start above 6;' in line
        for line in result.lines("skip")
    )


def test_a_deployment_near_its_memory_limit_gets_one_more_replica(
    run, shell: str
) -> None:
    result = run("memory", shell=shell)

    assert result.status == 0, result.stderr
    # Two hot pods of api, one scale; --current-replicas guards against a
    # concurrent change.
    # Each scale is preceded by recording its time on the Deployment.
    assert result.changes == [
        annotate("billing", "ledger"),
        "scale deployment/ledger -n billing --current-replicas=2 --replicas=3",
        annotate("shop", "api"),
        "scale deployment/api -n shop --current-replicas=3 --replicas=4",
    ]
    assert result.scaled_at("shop", "api") is not None
    assert result.scaled_at("shop", "cart") is None
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
    assert result.scales == [
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
    assert result.scales == [
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
        annotate("shop", "search"),
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
        r'reason="scaled at [0-9T:-]+Z, within the cooldown of 600s;', skips[1]
    )

    # Without cooldowns (the settings refuse less than 5m; the script takes
    # any number), everything that qualifies is acted on.
    eager = run(
        "cooldown",
        env={"RESTART_COOLDOWN_SECONDS": "0", "SCALE_COOLDOWN_SECONDS": "0"},
    )
    assert sorted(eager.changes) == [
        annotate("shop", "cart"),
        annotate("shop", "search"),
        "rollout restart deployment/api -n shop",
        "rollout restart deployment/worker -n shop",
        "scale deployment/cart -n shop --current-replicas=2 --replicas=3",
        "scale deployment/search -n shop --current-replicas=2 --replicas=3",
    ]


def test_leftovers_of_an_old_replicaset_do_not_trigger_a_restart(
    run, shell: str
) -> None:
    result = run("leftover_evicted", shell=shell)

    assert result.status == 0, result.stderr
    assert result.changes == []
    assert result.lines("skip") == [
        "auto-recovery: skip restart namespace=shop deployment=api replicas=2 "
        'reason="1 unhealthy pod(s), restarts start above 5; 1 failing pod(s): '
        'api-6d4cf-q7m4w (CrashLoopBackOff)"'
    ]
    assert result.lines("done")[0].startswith(
        'auto-recovery: done namespaces="shop billing" unhealthy=1 restarted=0'
    )


def test_an_evicted_pod_of_a_healthy_deployment_is_not_a_failure(
    run, shell: str
) -> None:
    result = run("evicted_current", shell=shell)

    assert result.status == 0, result.stderr
    assert result.changes == ["rollout restart deployment/worker -n shop"]
    assert result.lines("skip") == []
    assert result.lines("done")[0].startswith(
        'auto-recovery: done namespaces="shop billing" unhealthy=6 restarted=1'
    )


def test_failed_job_pods_are_ignored(run, shell: str) -> None:
    result = run("job_pods", shell=shell)

    assert result.status == 0, result.stderr
    assert result.changes == []
    (skip,) = result.lines("skip")
    assert 'reason="1 unhealthy pod(s), restarts start above 5;' in skip
    assert "invoices" not in result.stdout


@pytest.mark.parametrize(
    ("reason", "counted"),
    [
        ("Evicted", False),
        ("Shutdown", False),
        ("NodeShutdown", False),
        ("Terminated", False),
        ("NodeAffinity", False),
        ("OutOfpods", False),
        ("UnexpectedAdmissionError", True),
        ("", True),
    ],
)
def test_only_failed_pods_kubernetes_did_not_replace_count(
    run, reason: str, counted: bool
) -> None:
    state = cluster("evicted_current")
    (evicted,) = [
        p for p in state["objects"]["pods"] if p["metadata"]["name"].endswith("z8r2n")
    ]
    evicted["status"] = (
        {"phase": "Failed", "reason": reason} if reason else {"phase": "Failed"}
    )
    result = run(state, config=settings(unhealthy_threshold=0))

    api = "rollout restart deployment/api -n shop"
    assert (api in result.changes) is counted
    expected = 7 if counted else 6
    assert f"unhealthy={expected} " in result.lines("done")[0]


def test_a_blocked_replica_is_not_scaled_again_within_the_cooldown(
    run, shell: str
) -> None:
    # A quota or admission webhook refuses the added pod: no new pod, so only
    # the recorded time can hold the next run back.
    first = run("memory", shell=shell)
    assert first.replicas("shop", "api") == 4
    scaled_at = first.scaled_at("shop", "api")
    assert scaled_at is not None

    for _ in range(2):
        again = run(first.state, shell=shell)
        assert again.status == 0, again.stderr
        assert again.changes == []
        assert again.replicas("shop", "api") == 4
        assert again.scaled_at("shop", "api") == scaled_at
        assert any(
            line.startswith(
                "auto-recovery: skip scale namespace=shop deployment=api replicas=4 "
                f'reason="scaled at {scaled_at}, within the cooldown of 600s;'
            )
            for line in again.lines("skip")
        )

    # Once the cooldown has passed, one more replica.
    state = first.state
    for obj in state["objects"]["deployments"]:
        if SCALED_AT_ANNOTATION in obj["metadata"].get("annotations", {}):
            old = datetime.now(UTC) - timedelta(seconds=601)
            obj["metadata"]["annotations"][SCALED_AT_ANNOTATION] = old.strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
    later = run(state, shell=shell)
    assert "scale deployment/api -n shop --current-replicas=4 --replicas=5" in (
        later.scales
    )


def crash_looping(count: int) -> dict:
    """A cluster of ``count`` Deployments, each with one crash-looping pod,
    or with a pod at 95% of its memory limit."""
    objects: dict[str, list[dict]] = {
        "deployments": [],
        "replicasets": [],
        "pods": [],
        "podmetrics": [],
        "horizontalpodautoscalers": [],
    }
    for i in range(count):
        name = f"app{i:03d}"
        owner = {"apiVersion": "apps/v1", "controller": True}
        objects["deployments"].append(
            {
                "metadata": {
                    "name": name,
                    "namespace": "shop",
                    "annotations": {"deployment.kubernetes.io/revision": "1"},
                },
                "spec": {"replicas": 1, "template": {"metadata": {}}},
            }
        )
        objects["replicasets"].append(
            {
                "metadata": {
                    "name": f"{name}-rs",
                    "namespace": "shop",
                    "ownerReferences": [{**owner, "kind": "Deployment", "name": name}],
                },
                "spec": {"replicas": 1},
            }
        )
        objects["pods"].append(
            {
                "metadata": {
                    "name": f"{name}-rs-p",
                    "namespace": "shop",
                    "ownerReferences": [
                        {**owner, "kind": "ReplicaSet", "name": f"{name}-rs"}
                    ],
                },
                "spec": {
                    "containers": [
                        {"name": "c", "resources": {"limits": {"memory": "100Mi"}}}
                    ]
                },
                "status": {
                    "phase": "Running",
                    "containerStatuses": [
                        {
                            "name": "c",
                            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        }
                    ],
                },
            }
        )
        objects["podmetrics"].append(
            {
                "metadata": {"name": f"{name}-rs-p", "namespace": "shop"},
                "containers": [{"name": "c", "usage": {"memory": "95Mi"}}],
            }
        )
    return {"objects": objects, "failures": []}


@pytest.mark.parametrize("dry_run", [False, True], ids=["live", "dry-run"])
def test_each_run_restarts_and_scales_at_most_its_limit(run, dry_run: bool) -> None:
    result = run(crash_looping(300), config=settings(dry_run=dry_run))

    assert result.status == 0, result.stderr
    prefix = "dry-run: would " if dry_run else ""
    restarts = result.lines(f"{prefix}restart")
    scales = result.lines(f"{prefix}scale")
    assert [line.split(" before=")[0] for line in restarts] == [
        f"auto-recovery: {prefix}restart namespace=shop deployment=app00{i}"
        for i in range(3)
    ]
    assert len(scales) == 3
    if not dry_run:
        assert len([c for c in result.changes if c.startswith("rollout ")]) == 3
        assert len(result.scales) == 3
    limited = [line for line in result.lines("skip") if "limit reached" in line]
    assert len(limited) == 2 * 297
    assert limited[0].startswith(
        "auto-recovery: skip restart namespace=shop deployment=app003 replicas=1 "
        'reason="skipped: limit reached (3 restarts per run); 300 unhealthy pod(s)'
    )
    assert any("limit reached (3 scales per run); pod " in line for line in limited)
    assert result.lines("done")[0].startswith(
        'auto-recovery: done namespaces="shop billing" unhealthy=300 '
        "restarted=3 scaled=3 skipped=594 failed=0"
    )

    wider = run(
        crash_looping(10),
        config=settings(dry_run=dry_run, max_restarts_per_run=5, max_scales_per_run=1),
    )
    assert "restarted=5 scaled=1 skipped=14 " in wider.lines("done")[0]


@pytest.mark.parametrize(
    ("value", "warning"),
    [
        (
            "yesterday",
            "restartedAt yesterday is not an RFC 3339 time; treated as "
            "absent, so no cooldown applies",
        ),
        ("2024-13-01T09:00:00Z", "restartedAt 2024-13-01T09:00:00Z is not an"),
        ("2024-03-01T09:00:00+99:99", "restartedAt 2024-03-01T09:00:00+99:99 is not"),
    ],
)
def test_a_malformed_restart_time_is_logged_and_gives_no_cooldown(
    run, shell: str, value: str, warning: str
) -> None:
    state = cluster("cooldown")
    api = next(
        d for d in state["objects"]["deployments"] if d["metadata"]["name"] == "api"
    )
    api["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"
    ] = value
    result = run(state, shell=shell)

    assert result.status == 0, result.stderr
    assert "rollout restart deployment/api -n shop" in result.changes
    (line,) = result.lines("warning")
    assert line.startswith(
        "auto-recovery: warning namespace=shop deployment=api replicas=3 reason="
    )
    assert warning in line


@pytest.mark.parametrize(
    ("ahead", "restarted"), [(3600, True), (86400 * 365 * 10, True), (120, False)]
)
def test_a_restart_time_far_in_the_future_is_ignored(
    run, shell: str, ahead: int, restarted: bool
) -> None:
    state = cluster("cooldown")
    api = next(
        d for d in state["objects"]["deployments"] if d["metadata"]["name"] == "api"
    )
    future = datetime.now(UTC) + timedelta(seconds=ahead)
    api["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"
    ] = future.strftime("%Y-%m-%dT%H:%M:%SZ")
    result = run(state, shell=shell)

    assert result.status == 0, result.stderr
    assert ("rollout restart deployment/api -n shop" in result.changes) is restarted
    warnings = result.lines("warning")
    if restarted:
        (line,) = warnings
        assert re.search(r"s in the future, more than 300s; ignored\"$", line), line
    else:
        # Within five minutes: clock skew, believed; api is in its cooldown.
        assert warnings == []


def test_a_malformed_scale_time_is_logged_and_gives_no_cooldown(run) -> None:
    state = cluster("cooldown")
    cart = next(
        d for d in state["objects"]["deployments"] if d["metadata"]["name"] == "cart"
    )
    cart["metadata"]["annotations"][SCALED_AT_ANNOTATION] = "soon"
    result = run(state)

    assert "scale deployment/cart -n shop --current-replicas=2 --replicas=3" in (
        result.scales
    )
    (line,) = result.lines("warning")
    assert "deployment=cart" in line and "scaled-at soon is not an RFC 3339" in line


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
    assert scales.scales == [
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
            'before="revision 3" after="revision 4" reason="6 unhealthy pod(s), '
            "above 5; 3 failing pod(s): api-6d4cf-k2x9p (CrashLoopBackOff), "
            "api-6d4cf-q7m4w (CrashLoopBackOff), api-6d4cf-h5v2c "
            '(CrashLoopBackOff)" failed (kubectl exit 1): ',
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
    tried = [c for c in result.changes if not c.startswith("annotate ")]
    assert any(change.startswith(attempted) for change in tried)
    made = [change for change in tried if not change.startswith(attempted)]
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
        assert not any(words(c)[0] == "annotate" for r in runs for c in r.calls)
    else:
        assert ("apps", "deployments", "patch") in requests
        assert ("apps", "deployments/scale", "update") in requests
        # Recording the scale time (kubectl annotate: get and patch of the
        # Deployment) needs nothing the restart does not already need.
        annotations = [
            request
            for result in runs
            for call in result.calls
            if words(call)[0] == "annotate"
            for request in call["requests"]
        ]
        assert {(r["group"], r["resource"], r["verb"]) for r in annotations} == {
            ("apps", "deployments", "get"),
            ("apps", "deployments", "patch"),
        }


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
        scale_cooldown="5m",
        max_restarts_per_run=2,
        max_scales_per_run=4,
    )
    env = {e["name"]: e["value"] for e in container(synth(config)[1])["env"]}
    assert env == {
        "NAMESPACES": "shop billing",
        "DRY_RUN": "true" if dry_run else "false",
        "UNHEALTHY_THRESHOLD": "5",
        "MEMORY_THRESHOLD_PERCENT": "90",
        "MAX_REPLICAS": "6",
        "RESTART_COOLDOWN_SECONDS": "3600",
        "SCALE_COOLDOWN_SECONDS": "300",
        "MAX_RESTARTS_PER_RUN": "2",
        "MAX_SCALES_PER_RUN": "4",
        "HOME": "/tmp",
    }


# --- settings -----------------------------------------------------------------


def test_defaults_report_before_they_act() -> None:
    config = AutoRecoverySettings(namespaces=["shop"])
    assert config.dry_run is True
    assert config.image == "docker.io/bitnamilegacy/kubectl:1.27.14"
    assert (config.unhealthy_threshold, config.memory_threshold_percent) == (5, 80)
    assert config.max_replicas == 10
    assert (config.max_restarts_per_run, config.max_scales_per_run) == (3, 3)


@pytest.mark.parametrize(
    "schedule",
    ["* * * * *", "*/5 * * * *", "0 0 1 1 0", "59 23 31 12 6", "0,30 8-18/2 * 1-6 1-5"],
)
def test_settings_accept_valid_schedules(schedule: str) -> None:
    assert settings(schedule=schedule).schedule == schedule


def test_the_script_records_the_annotation_the_module_names() -> None:
    assert f"SCALED_AT={SCALED_AT_ANNOTATION}\n" in SCRIPT.read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"namespaces": []}, "at least 1 item"),
        ({"namespaces": ["shop", "shop"]}, "more than once"),
        ({"namespaces": ["shop", "kube-system"]}, "cluster's own components"),
        ({"namespaces": ["Shop"]}, "not a DNS label"),
        ({"image": "docker.io/bitnamilegacy/kubectl:latest"}, "moving tag"),
        ({"schedule": "every minute"}, "must be five fields"),
        ({"schedule": "*/5  * * * *"}, "must be five fields"),
        ({"schedule": "99 99 99 99 99"}, "minute field '99' has 99, outside 0-59"),
        ({"schedule": "0 24 * * *"}, "hour field '24' has 24, outside 0-23"),
        ({"schedule": "0 0 0 * *"}, "day of month field '0' has 0, outside 1-31"),
        ({"schedule": "0 0 * 13 *"}, "month field '13' has 13, outside 1-12"),
        ({"schedule": "0 0 * * 7"}, "day of week field '7' has 7, outside 0-6"),
        ({"schedule": "*/0 * * * *"}, "minute field '*/0' has a step of 0"),
        ({"schedule": "- - - - -"}, "minute field '-' has an invalid part '-'"),
        ({"schedule": "0 1,,2 * * *"}, "hour field '1,,2' has an invalid part ''"),
        ({"schedule": "30-10 * * * *"}, "range 30-10, which runs backwards"),
        ({"schedule": "5/15 * * * *"}, "step on a single number"),
        ({"schedule": "* * * * MON"}, "day of week field 'MON' has an invalid"),
        ({"restart_cooldown": "0s"}, "restart_cooldown must be at least 5m, not '0s'"),
        ({"restart_cooldown": "4m59s"}, "restart_cooldown must be at least 5m"),
        ({"scale_cooldown": "0s"}, "scale_cooldown must be at least 5m, not '0s'"),
        ({"scale_cooldown": "1m"}, "scale_cooldown must be at least 5m"),
        ({"max_restarts_per_run": 0}, "greater than or equal to 1"),
        ({"max_scales_per_run": 0}, "greater than or equal to 1"),
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
