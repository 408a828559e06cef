"""The rendered production stack, run for real: alerts flow end to end.

What runs
---------
Everything is taken from ``dist/production.k8s.yaml`` (read with PyYAML) and
run with the Debian programs, each on 127.0.0.1 of a private network
namespace (``unshare -n``; the helper refuses to run if any interface but
loopback exists), as the pod's user with the pod's arguments and environment:
PostgreSQL 15 (TLS on, as ``sslmode=require`` needs), Redis, node-exporter,
postgres-exporter (the ConfigMap ``postgres-exporter-queries`` and the Secret
files as the kubelet mounts them: mode of the volume, group the fsGroup),
redis-exporter, Alertmanager (``alertmanager.yml`` of ``alertmanager-config``,
the receiver credentials written where its ``*_file`` fields point) and
Prometheus (``prometheus.yml`` of ``prometheus-config``, the rules of
``prometheus-rules`` in the rule directory). Sinks stand in for PagerDuty,
Slack, the SMTP relay and any webhook receiver, and record what they receive
(tests/e2e/sinks.py). tests/e2e/layout.py writes the files, tests/e2e/stack.py
runs the scenario inside the namespace; every wait is bounded and every
process is stopped by its PID, also on failure.

Substitutions (the smallest that let the rendered configs run off-cluster)
-------------------------------------------------------------------------
The list actually applied is recomputed at each run (``Layout.notes``) and
printed when a test fails.

* Addresses. Servers listen on ``127.0.0.1:<the rendered port>``
  (``--web.listen-address=:9090`` becomes ``127.0.0.1:9090``; Alertmanager's
  ``--cluster.listen-address=0.0.0.0:9094`` becomes ``127.0.0.1:9094``).
  ``$(POD_IP)`` is 127.0.0.1 and ``$(POD_NAME)`` is ``prometheus-0``, what
  the kubelet fills in; ``$$`` in arguments is a literal ``$`` as the kubelet
  expands it. Mount paths (``/etc/...``, ``/prometheus``, ``/alertmanager``)
  become directories of a temporary root, also inside the configs
  (``rule_files``, ``*_file``); hostPath mounts of node-exporter are the host
  paths themselves.
* Servers the exporters watch: ``DATA_SOURCE_URI``'s host
  ``postgres.sunday-production.svc`` and ``--redis.addr``'s host
  ``redis.sunday-production.svc`` become 127.0.0.1 (port, database and
  ``sslmode`` kept). The test's PostgreSQL runs with ``max_connections=20``
  so that the rendered 80% threshold of HighDatabaseConnections is crossed
  honestly by about 15 idle sessions (added until connections in use pass
  the threshold read from the rendered expression).
* Scrape jobs. Debian's Prometheus has no ``kubernetes_sd``. A job
  discovering pods becomes static targets, one per container port of the
  local pods in the discovered namespaces, each carrying the
  ``__meta_kubernetes_pod_*`` labels discovery would attach (from the
  rendered pod templates, node name ``e2e-node``); the rendered
  ``relabel_configs`` are kept, so they still select the target and set
  ``instance``. This is how ``node-exporter`` runs. A discovery job whose
  rendered relabel_configs keep none of the local pods (``sunday-backend``:
  the application's pods; ``jaeger``: the Jaeger pods) and
  ``kubernetes-nodes`` (role node: the kubelets) need a cluster and are
  dropped. Static targets that name a Service or a StatefulSet pod
  (``postgres-exporter:9187``, ``alertmanager-0.alertmanager-headless:9093``)
  become 127.0.0.1 and the container port behind them, job names and labels
  kept; ``localhost:9090`` becomes ``127.0.0.1:9090``; targets with no local
  program (``grafana``, ``kube-state-metrics``, ``jaeger-*``) and replicas
  other than the first are dropped with their jobs when nothing is left.
  The ``alerting`` targets are handled the same way: the one local
  Alertmanager. The global section, external labels, ``alert_relabel_configs``
  and rule files are otherwise as rendered.
* The ServiceAccount token. Prometheus's projected token volume becomes a
  directory of stand-in files (a made-up token, a made-up cluster CA, the
  namespace), since only a cluster issues them; the jobs that would use
  them (``kubernetes_sd``, the kubelets) are the dropped ones above.
* One replica each. Prometheus runs as ``prometheus-0`` only, Alertmanager
  as ``alertmanager-0`` only; its ``--cluster.peer=`` arguments (DNS names of
  the other pods) are dropped, gossip itself stays on.
* Receivers. Each ``pagerduty_configs`` entry gets ``url:
  http://127.0.0.1:8081/v2/enqueue`` (the default is
  events.pagerduty.com); the Slack webhook URL, which the config reads from
  ``api_url_file``, is written into that file as
  ``http://127.0.0.1:8082/services/...``; ``smtp_smarthost`` becomes
  ``127.0.0.1:587`` (port kept), a sink that offers STARTTLS, so
  ``smtp_require_tls: true`` stays on, with a throw-away certificate that
  Alertmanager trusts through ``SSL_CERT_FILE``. The routing key and the SMTP
  password are random values written to the Secret files the config names.
  A ``webhook_configs`` url goes to a fourth sink. A receiver kind without a
  sink fails the test instead of being contacted, and the rewritten configs
  are checked to name no address but 127.0.0.1 before anything starts.
* Speed (test only). The global ``scrape_interval`` and
  ``evaluation_interval`` are 2s instead of 15s. HighDatabaseConnections'
  ``for: 5m`` becomes ``for: 10s`` (the only rule changed; the expression is
  untouched). DatabaseDown keeps its rendered ``for: 1m``: that assertion
  uses the real rule semantics (pending for the full minute, then paged).
  Alertmanager's group_wait/intervals are as rendered.
* Posted alerts. Two things no rule can trigger honestly are posted to
  Alertmanager's ``/api/v2/alerts``: an ``info`` alert (only the default
  route, email, takes it) and, while DatabaseDown fires, two warnings: one
  with DatabaseDown's ``cluster``/``namespace``/``service``/``instance``
  (the inhibit rule's ``equal`` labels; absent ones stay absent) that must be
  inhibited, and a control that differs only in ``instance`` and must arrive.

Time: about two minutes, one of them DatabaseDown's real ``for: 1m``; the
helper stops itself after 210 s, and is sent SIGTERM after 250 s. The time
from stopping PostgreSQL to the PagerDuty notification is printed.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, find_program
from tests.e2e.layout import build_spec

DIST = ROOT / "dist" / "production.k8s.yaml"
HELPER = Path(__file__).parent / "e2e" / "stack.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SETUP = "run `make setup-test` (or `make test`)"
PROGRAMS = (
    "unshare", "ip", "setpriv", "psql", "openssl", "redis-server",
    "prometheus", "prometheus-alertmanager", "amtool", "prometheus-node-exporter",
    "prometheus-postgres-exporter", "prometheus-redis-exporter",
)  # fmt: skip
HELPER_DEADLINE = 210  # the helper stops itself (and everything) after this
OUTER_TIMEOUT = 250  # and is sent SIGTERM after this


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    """One run of the whole stack; the tests below read what it observed."""
    for name in PROGRAMS:
        find_program(name)
    for name in ("initdb", "postgres", "pg_isready"):
        assert os.access(PG_BIN / name, os.X_OK), (
            f"{PG_BIN / name} is missing (PostgreSQL 15); {SETUP}"
        )
    probe = subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, text=True, timeout=30
    )
    assert probe.returncode == 0, (
        f"cannot make a private network namespace ({probe.stderr.strip()}); the "
        "end-to-end test needs root or CAP_SYS_ADMIN"
    )

    documents = [d for d in yaml.safe_load_all(DIST.read_text()) if d]
    root = Path(tempfile.mkdtemp(prefix="sunday-e2e-"))
    try:
        root.chmod(0o711)  # the pods' users may enter, not list
        spec, layout = build_spec(documents, root)
        spec["deadline_seconds"] = HELPER_DEADLINE
        spec_path, result_path = root / "spec.json", root / "result.json"
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o600)
        output = run_helper(spec_path, result_path)
        if not result_path.exists():
            pytest.fail(f"the helper wrote no result:\n{output}")
        result = json.loads(result_path.read_text())
        result.update(spec=spec, output=output, notes=layout.notes)
        yield result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_helper(spec_path: Path, result_path: Path) -> str:
    """tests/e2e/stack.py in a private network namespace, bounded in time."""
    process = subprocess.Popen(
        [
            "unshare",
            "-n",
            sys.executable,
            str(HELPER),
            str(spec_path),
            str(result_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=OUTER_TIMEOUT)
    except BaseException:
        # SIGTERM lets the helper stop its servers by PID before it exits.
        process.terminate()
        try:
            output, _ = process.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        raise
    return output


def context(stack: dict[str, Any], *logs: str) -> str:
    """What to show when an assertion fails: the helper's error, logs, notes."""
    parts = []
    if stack.get("error"):
        parts.append(f"helper error:\n{stack['error']}")
    for name in logs:
        parts.append(f"--- {name} log (end) ---\n{stack['logs'].get(name, '')[-4000:]}")
    parts.append("timeline: " + json.dumps(stack.get("timeline")))
    parts.append("substitutions:\n  " + "\n  ".join(stack["notes"]))
    return "\n".join(parts)


def require(stack: dict[str, Any], key: str, *logs: str) -> Any:
    assert key in stack, f"the run did not get as far as {key!r}\n" + context(
        stack, *logs
    )
    return stack[key]


def bodies(stack: dict[str, Any], sink: str) -> list[Any]:
    return [json.loads(entry["body"]) for entry in stack["sinks"][sink]]


def timestamp(rfc3339: str) -> float:
    """Prometheus' activeAt (nanoseconds, Z) as seconds since the epoch."""
    match = re.fullmatch(r"(.+T[\d:]+)(?:\.(\d+))?(Z|[+-][\d:]+)", rfc3339)
    assert match, rfc3339
    whole, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(whole + zone).timestamp() + float(
        f"0.{fraction or 0}"
    )


# --- the stack as rendered runs ---------------------------------------------


def test_every_scrape_target_is_up(stack: dict[str, Any]) -> None:
    targets = require(stack, "targets", "prometheus")
    jobs = {t["job"] for t in targets}

    assert jobs >= set(stack["spec"]["expected_jobs"]), context(stack, "prometheus")
    down = [t for t in targets if t["health"] != "up"]
    assert not down, f"{down}\n" + context(stack, "prometheus")
    # The rendered relabel_configs of each discovery job kept exactly the
    # stand-in targets and instance names expected of them (node-exporter:
    # its pod's metrics port, instance = the node's name).
    for job, instances in stack["spec"]["discovered_instances"].items():
        found = sorted(t["instance"] for t in targets if t["job"] == job)
        assert found == instances, (job, found)
    assert stack["spec"]["discovered_instances"].get("node-exporter") == ["e2e-node"]
    for job in ("postgres-exporter", "redis-exporter", "alertmanager", "prometheus"):
        assert job in jobs, context(stack)


def test_every_rule_loads_and_evaluates(stack: dict[str, Any]) -> None:
    rules = require(stack, "rules", "prometheus")
    rendered = stack["spec"]["rendered"]
    broken = [r for r in rules if r["health"] != "ok" or r["lastError"]]

    assert sorted(r["name"] for r in rules) == sorted(rendered["alert_names"])
    assert not broken, broken
    runtime = stack["prometheus_runtime"]
    assert runtime["prometheus_config_last_reload_successful"] == ["1"]
    assert set(runtime["prometheus_rule_evaluation_failures_total"]) == {"0"}
    assert runtime["prometheus_notifications_alertmanagers_discovered"] == ["1"]
    by_name = {r["name"]: r for r in rules}
    # DatabaseDown keeps its rendered `for`; only the one rule was shortened.
    assert by_name["DatabaseDown"]["duration"] == 60
    assert rendered["rules"]["DatabaseDown"]["for"] == "1m"
    assert by_name["HighDatabaseConnections"]["duration"] == 10


def test_postgres_custom_queries_scrape_without_errors(stack: dict[str, Any]) -> None:
    metrics = require(stack, "postgres_metrics", "postgres-exporter")

    assert [s["value"][1] for s in metrics["pg_up"]] == ["1"]
    assert [s["value"][1] for s in metrics["pg_exporter_last_scrape_error"]] == ["0"]
    assert [s["value"][1] for s in metrics["pg_exporter_user_queries_load_error"]] == [
        "0"
    ]
    missing = [name for name, found in metrics["custom"].items() if not found]
    assert not missing, f"custom query metrics missing: {missing}"
    tables = {
        s["metric"]["relname"]
        for s in metrics["custom"]["pg_stat_user_tables_n_live_tup"]
    }
    assert {"boards", "items"} <= tables


def test_every_dashboard_query_parses_and_local_ones_return_data(
    stack: dict[str, Any],
) -> None:
    queries = require(stack, "dashboards", "prometheus")

    assert queries, "no PromQL found in ConfigMap grafana-dashboards"
    rejected = [q for q in queries if q["status"] != 200]
    assert not rejected, json.dumps(rejected, indent=1)
    local = [q for q in queries if q["local"]]
    assert local, "no dashboard query over node_*, pg_* or redis_* metrics"
    empty = [q for q in local if not q["series"]]
    assert not empty, json.dumps(empty, indent=1)


# --- alerts reach the receivers ---------------------------------------------


def test_a_real_warning_reaches_slack(stack: dict[str, Any]) -> None:
    connections = require(stack, "connections", "alertmanager", "prometheus")
    assert "slack_at" in connections, context(stack, "alertmanager")
    alert = "HighDatabaseConnections"
    messages = [b for b in bodies(stack, "slack") if alert in json.dumps(b)]
    rendered = stack["spec"]["rendered"]["alertmanager"]
    slack = next(
        r["slack_configs"][0]
        for r in rendered["receivers"]
        if r["name"] == "slack-warnings"
    )

    assert messages, stack["sinks"]["slack"]
    first = messages[0]
    assert first["channel"] == slack["channel"]
    attachment = first["attachments"][0]
    assert attachment["title"] == slack["title"]
    assert "is running out of connections" in attachment["text"]
    assert "*Severity:* warning" in attachment["text"]
    # External labels reach Alertmanager (they are absent at rule evaluation).
    assert "*Environment:* production" in attachment["text"]
    paths = {e["path"] for e in stack["sinks"]["slack"]}
    assert paths == {"/services/T00000000/B00000000/e2e"}, paths
    assert not [b for b in bodies(stack, "pagerduty") if alert in json.dumps(b)]


def test_database_down_pages_pagerduty(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    down = require(stack, "database_down", "alertmanager", "prometheus")
    assert "pagerduty_at" in down, context(stack, "alertmanager", "prometheus")
    with capsys.disabled():
        print(
            "\n[end-to-end] PostgreSQL stopped -> DatabaseDown at PagerDuty: "
            f"{down['latency_seconds']:.1f} s (rule for: 1m, scrape and evaluation "
            "every 2s, critical group_wait 0s)"
        )
    triggers = [
        b
        for b in bodies(stack, "pagerduty")
        if b.get("event_action") == "trigger" and "DatabaseDown" in json.dumps(b)
    ]
    key = next(
        value
        for field, value in stack["spec"]["credentials"].items()
        if field.endswith("routing_key_file")
    )

    assert triggers, stack["sinks"]["pagerduty"]
    event = triggers[0]
    assert event["routing_key"] == key  # read from the Secret file
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["summary"].startswith(
        "DatabaseDown: PostgreSQL is unreachable from 127.0.0.1:9187"
    )
    assert {e["path"] for e in stack["sinks"]["pagerduty"]} == {"/v2/enqueue"}
    # The real rule semantics: pending for the rendered minute, then firing,
    # and not paged before the minute is up.
    assert "pending" in down["states_seen"] and "firing" in down["states_seen"]
    (alert,) = down["prometheus_alerts"]
    assert alert["state"] == "firing"
    active_at = timestamp(alert["activeAt"])
    assert active_at >= down["stopped_at"] - 0.5
    assert down["pagerduty_at"] - active_at >= 60 - 0.5, (active_at, down)


def test_a_warning_sharing_a_firing_criticals_labels_is_inhibited(
    stack: dict[str, Any],
) -> None:
    info = require(stack, "inhibition", "alertmanager")
    assert "probe_status" in info, context(stack, "alertmanager")
    source = info["source"]
    equal = stack["spec"]["inhibition"]["equal"]

    # The probe carries exactly the critical's values of the `equal` labels.
    for label in equal:
        assert info["probe_labels"].get(label) == source["labels"].get(label)
    assert source["labels"]["severity"] == "critical"
    assert info["probe_status"] == [
        {
            "state": "suppressed",
            "inhibitedBy": [source["fingerprint"]],
            "silencedBy": [],
        }
    ]
    assert info["probe_delivered"] == {
        "pagerduty": 0,
        "slack": 0,
        "smtp": 0,
        "webhook": 0,
    }
    assert "control_delivered_at" in info  # the same warning elsewhere arrives
    inhibited = json.loads(info["amtool_inhibited"]["stdout"] or "[]")
    active = json.loads(info["amtool_active"]["stdout"] or "[]")
    assert info["amtool_inhibited"]["rc"] == 0, info["amtool_inhibited"]
    assert [a["labels"]["alertname"] for a in inhibited] == ["InhibitionProbe"]
    assert active == []


def test_unrouted_alerts_are_emailed_over_starttls(stack: dict[str, Any]) -> None:
    require(stack, "email", "alertmanager")
    mails = [m for m in stack["sinks"]["smtp"] if "EmailRouteProbe" in m["data"]]
    rendered = stack["spec"]["rendered"]["alertmanager"]
    default = next(r for r in rendered["receivers"] if r["name"] == "default")
    password = next(
        value
        for field, value in stack["spec"]["credentials"].items()
        if field.endswith("smtp_auth_password_file")
    )

    assert mails, stack["sinks"]["smtp"]
    mail = mails[0]
    assert mail["tls"] is True
    assert mail["auth"] == {
        "mechanism": mail["auth"]["mechanism"],
        "username": rendered["global"]["smtp_auth_username"],
        "password": password,  # read from the Secret file
    }
    assert rendered["global"]["smtp_from"] in mail["mail_from"]
    assert [default["email_configs"][0]["to"] in r for r in mail["rcpt_to"]] == [True]
    message = email.message_from_string(mail["data"], policy=email.policy.default)
    assert message["Subject"] == "Sunday.com Alert: EmailRouteProbe"
    text = message.get_body(("plain",))
    assert text is not None and "Severity: info" in text.get_content()


def test_nothing_else_pages_or_posts_to_slack(stack: dict[str, Any]) -> None:
    """Only the alerts this scenario raised reach PagerDuty and Slack.

    An always-firing rule (a heartbeat such as Watchdog) or a rule the local
    stack trips by accident must not page anyone.
    """
    require(stack, "inhibition")
    paged = {
        b["payload"]["summary"].split(":")[0]
        for b in bodies(stack, "pagerduty")
        if b.get("event_action") == "trigger"
    }
    slack = {b["attachments"][0]["fallback"].split()[1] for b in bodies(stack, "slack")}

    assert paged == {"DatabaseDown"}, paged
    assert slack == {"HighDatabaseConnections", "InhibitionControl"}, slack


def test_alertmanager_and_prometheus_log_no_errors(stack: dict[str, Any]) -> None:
    require(stack, "logs")
    for name in ("alertmanager", "prometheus"):
        errors = [
            line
            for line in stack["logs"].get(name, "").splitlines()
            if "level=error" in line
        ]
        assert not errors, f"{name}:\n" + "\n".join(errors)
