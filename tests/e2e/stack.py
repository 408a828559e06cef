"""Run the rendered monitoring stack inside a private network namespace.

    unshare -n python tests/e2e/stack.py SPEC.json RESULT.json

tests/test_end_to_end.py has already laid out, under the spec's ``root``,
the files every pod would see and the process spec of each container (see
tests/e2e/layout.py). This script starts PostgreSQL 15, Redis, the sinks,
the exporters, Alertmanager and Prometheus on 127.0.0.1 of the namespace,
drives the scenario (targets, custom queries, dashboards, a warning, stopping
PostgreSQL, inhibition) and writes what it observed to RESULT.json; the test
makes the assertions. Every wait is bounded, every process is stopped by its
PID before this script exits, also on failure or on SIGTERM, and the result
is written even when a step fails (with ``error`` set).

It refuses to run where any network interface but loopback exists.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import traceback
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.sinks import HttpSink, Record, SmtpSink  # noqa: E402
from tests.live.scenario import (  # noqa: E402
    LOOPBACK,
    SEED_SQL,
    Postgres,
    Processes,
    ScenarioTimeout,
    answers,
    as_user,
    assert_private_network,
    http_get,
    minimal_env,
    run_redis,
    sql_literal,
)

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def poll(
    what: str, check: Callable[[], Any], timeout: float, every: float = 0.5
) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def get_json(url: str) -> tuple[int, Any]:
    status, text = http_get(url, timeout=10)
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, {"raw": text}


def post_json(url: str, payload: Any) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with _DIRECT.open(request, timeout=10) as response:
        return response.status


class Stack:
    def __init__(self, spec: dict[str, Any], result: dict[str, Any]) -> None:
        self.spec = spec
        self.root = Path(spec["root"])
        self.result = result
        self.processes = Processes()
        self.sinks: dict[str, Any] = {}
        self.records: dict[str, Record] = {}
        self.held: list[subprocess.Popen[bytes]] = []
        self.logs: dict[str, Path] = {}
        self.started = time.time()
        result["timeline"] = []
        self.prometheus = spec["prometheus"]["url"]
        self.alertmanager = spec["alertmanager"]["url"]

    def mark(self, event: str) -> float:
        now = time.time()
        self.result["timeline"].append([round(now - self.started, 2), event])
        return now

    # --- processes --------------------------------------------------------

    def start_process(self, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
        log = self.root / f"{spec['name']}.log"
        self.logs[spec["name"]] = log
        process = self.processes.start(
            spec["name"],
            as_user(spec["uid"], spec["gid"], spec.get("groups")) + spec["argv"],
            log=log,
            env=spec["env"],
            cwd=Path(spec["cwd"]),
        )

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{spec['name']} exited with {process.returncode}:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            return answers(spec["url"] + spec["ready_path"])

        poll(f"{spec['name']} readiness ({spec['ready_path']})", ready, 45, every=0.2)
        self.mark(f"{spec['name']} ready")
        return process

    def start_sinks(self) -> None:
        sinks = self.spec["sinks"]
        for name in ("pagerduty", "slack", "smtp", "webhook"):
            self.records[name] = Record(Path(sinks[name]["record"]))
        self.sinks["pagerduty"] = HttpSink(
            sinks["pagerduty"]["port"],
            self.records["pagerduty"],
            status=202,
            body='{"status":"success","message":"Event processed"}',
            content_type="application/json",
        )
        self.sinks["slack"] = HttpSink(
            sinks["slack"]["port"],
            self.records["slack"],
            status=200,
            body="ok",
            content_type="text/plain",
        )
        self.sinks["webhook"] = HttpSink(
            sinks["webhook"]["port"],
            self.records["webhook"],
            status=200,
            body="ok",
            content_type="text/plain",
        )
        self.sinks["smtp"] = SmtpSink(
            sinks["smtp"]["port"],
            self.records["smtp"],
            cert=Path(sinks["smtp"]["cert"]),
            key=Path(sinks["smtp"]["key"]),
        )
        for sink in self.sinks.values():
            sink.start()
        self.mark("sinks listening")

    def start_postgres(self) -> Postgres:
        pg = self.spec["postgres"]
        server = Postgres(self.root / "postgres", pg["port"], self.processes)
        self.logs["postgres"] = server.log
        server.init()
        server.enable_ssl()  # the rendered DSN says sslmode=require
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(f"max_connections = {pg['max_connections']}\n")
        server.start()
        server.superuser(
            f"CREATE ROLE {pg['monitor_user']} LOGIN "
            f"PASSWORD {sql_literal(pg['monitor_password'])} IN ROLE pg_monitor;\n"
            f'CREATE DATABASE "{pg["database"]}";\n'
        )
        server.superuser(SEED_SQL, database=pg["database"])
        self.mark("PostgreSQL ready")
        return server

    # --- Prometheus and Alertmanager APIs -----------------------------------

    def query(self, expr: str) -> tuple[int, Any]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        return get_json(url)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        status, body = self.query(expr)
        if status != 200:
            raise RuntimeError(f"query {expr!r} failed ({status}): {body}")
        return body["data"]["result"]

    def am_alerts(self, **params: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode(
            [("filter", f'{k}="{v}"') for k, v in params.items()]
        )
        status, body = get_json(f"{self.alertmanager}/api/v2/alerts?{query}")
        if status != 200:
            raise RuntimeError(f"Alertmanager /api/v2/alerts: {status} {body}")
        return body

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        payload = [
            {
                "labels": alert["labels"],
                "annotations": alert.get("annotations", {}),
                "startsAt": now.isoformat(),
                "endsAt": (now + timedelta(minutes=10)).isoformat(),
                "generatorURL": "http://127.0.0.1/e2e",
            }
            for alert in alerts
        ]
        status = post_json(f"{self.alertmanager}/api/v2/alerts", payload)
        if status != 200:
            raise RuntimeError(f"posting alerts: HTTP {status}")

    def delivered(self, sink: str, text: str) -> list[dict[str, Any]]:
        return [e for e in self.records[sink].entries() if text in json.dumps(e)]

    # --- the scenario -------------------------------------------------------

    def run(self) -> None:
        spec, result = self.spec, self.result
        assert_private_network()
        self.start_sinks()
        postgres = self.start_postgres()
        run_redis({"port": spec["redis"]["port"]}, self.root, self.processes)
        self.logs["redis"] = self.root / "redis" / "server.log"
        self.mark("Redis ready")
        for exporter in spec["exporters"]:
            self.start_process(exporter)
        self.start_process(spec["alertmanager"])
        self.start_process(spec["prometheus"])

        self.check_targets()
        self.check_rules()
        self.check_postgres_metrics()
        self.check_dashboards()

        # The default route (email) takes every alert no severity route
        # matches; one is posted directly, so the path is checked whatever
        # the rules hold.
        self.post_alerts([spec["email_probe"]])
        self.mark("email probe posted")

        self.trigger_connections(postgres)
        result["email"] = {
            "delivered_at": poll(
                "email probe at the SMTP sink",
                lambda: self.delivered(
                    "smtp", spec["email_probe"]["labels"]["alertname"]
                ),
                40,
            )[0]["time"]
        }
        self.mark("email probe delivered")

        self.stop_postgres(postgres)
        self.check_inhibition()

    def check_targets(self, timeout: float = 30) -> None:
        expected = set(self.spec["expected_jobs"])

        def all_up() -> list[dict[str, Any]] | None:
            status, body = get_json(f"{self.prometheus}/api/v1/targets")
            if status != 200:
                return None
            active = body["data"]["activeTargets"]
            self.result["targets"] = [
                {
                    "job": t["labels"].get("job"),
                    "instance": t["labels"].get("instance"),
                    "labels": t["labels"],
                    "scrapeUrl": t["scrapeUrl"],
                    "health": t["health"],
                    "lastError": t["lastError"],
                }
                for t in active
            ]
            self.result["dropped_targets"] = len(body["data"]["droppedTargets"])
            jobs = {t["labels"].get("job") for t in active}
            return (
                active
                if jobs >= expected and all(t["health"] == "up" for t in active)
                else None
            )

        try:
            poll("every scrape target up", all_up, timeout)
        finally:
            self.mark("targets checked")

    def check_rules(self, timeout: float = 20) -> None:
        def evaluated() -> list[dict[str, Any]] | None:
            status, body = get_json(f"{self.prometheus}/api/v1/rules")
            if status != 200:
                return None
            rules = [
                {
                    "group": group["name"],
                    "file": group["file"],
                    "name": rule["name"],
                    "type": rule["type"],
                    "health": rule["health"],
                    "lastError": rule.get("lastError", ""),
                    "duration": rule.get("duration"),
                    "query": rule["query"],
                }
                for group in body["data"]["groups"]
                for rule in group["rules"]
            ]
            self.result["rules"] = rules
            return (
                rules
                if rules and all(r["health"] != "unknown" for r in rules)
                else None
            )

        poll("every rule evaluated once", evaluated, timeout)
        self.result["prometheus_runtime"] = {
            name: [s["value"][1] for s in self.vector(name)]
            for name in (
                "prometheus_config_last_reload_successful",
                "prometheus_rule_evaluation_failures_total",
                "prometheus_notifications_alertmanagers_discovered",
            )
        }
        self.mark("rules checked")

    def check_postgres_metrics(self) -> None:
        metrics = self.spec["custom_metrics"]

        def present() -> dict[str, Any] | None:
            found = {
                m: len(self.vector(f'{m}{{job="postgres-exporter"}}')) for m in metrics
            }
            return found if all(found.values()) else None

        try:
            poll("custom query metrics in Prometheus", present, 20)
        finally:
            self.result["postgres_metrics"] = {
                "custom": {
                    m: self.vector(f'{m}{{job="postgres-exporter"}}') for m in metrics
                },
                **{
                    name: self.vector(f'{name}{{job="postgres-exporter"}}')
                    for name in (
                        "pg_up",
                        "pg_exporter_last_scrape_error",
                        "pg_exporter_user_queries_load_error",
                    )
                },
            }
            self.mark("postgres metrics checked")

    def check_dashboards(self) -> None:
        queries = self.spec["dashboards"]
        deadline = time.monotonic() + 30
        for query in queries:
            while True:
                status, body = self.query(query["query"])
                query["status"] = status
                query["errorType"] = body.get("errorType")
                query["error"] = body.get("error")
                query["series"] = len(body["data"]["result"]) if status == 200 else None
                # rate() over [5m] needs two samples: give it a few scrapes.
                if status != 200 or not query["local"] or query["series"]:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        self.result["dashboards"] = queries
        self.mark("dashboard queries checked")

    def trigger_connections(self, postgres: Postgres) -> None:
        """Fill PostgreSQL's connection slots past the rendered threshold."""
        spec = self.spec["connections"]
        pg = self.spec["postgres"]
        alert = spec["alert"]
        baseline = poll(
            "pg_stat_activity_count in Prometheus",
            lambda: self.vector('sum(pg_stat_activity_count{job="postgres-exporter"})'),
            20,
        )
        in_use = int(float(baseline[0]["value"][1]))
        needed = math.floor(spec["threshold"] * pg["max_connections"] + 1e-9) + 1
        count = max(1, needed - in_use)
        env = minimal_env(
            PGPASSWORD=postgres.superuser_password,
            PGCONNECT_TIMEOUT="5",
            PGAPPNAME="e2e-held-session",
        )
        with (self.root / "held-sessions.log").open("ab") as log:
            for _ in range(count):
                self.held.append(
                    subprocess.Popen(
                        [
                            "psql",
                            "-X",
                            "-q",
                            "-h",
                            LOOPBACK,
                            "-p",
                            str(pg["port"]),
                            "-U",
                            "postgres",
                            "-d",
                            pg["database"],
                        ],
                        stdin=subprocess.PIPE,
                        stdout=log,
                        stderr=log,
                        env=env,
                    )  # fmt: skip
                )
        poll(
            f"{count} idle sessions",
            lambda: (
                postgres.superuser(
                    "SELECT count(*) >= "
                    f"{count} FROM pg_stat_activity WHERE application_name = "
                    "'e2e-held-session'"
                ).strip()
                == "t"
            ),
            20,
        )
        opened = self.mark(f"{count} sessions held (in use before: {in_use})")
        self.result["connections"] = {
            "in_use_before": in_use,
            "held": count,
            "max_connections": pg["max_connections"],
            "opened_at": opened,
        }
        delivered = poll(
            f"{alert} at the Slack sink",
            lambda: self.delivered("slack", alert),
            90,
        )
        self.result["connections"]["slack_at"] = delivered[0]["time"]
        self.result["connections"]["alert_states"] = self.vector(
            f'ALERTS{{alertname="{alert}"}}'
        )
        self.mark(f"{alert} delivered to Slack")
        self.release_sessions()

    def release_sessions(self) -> None:
        for process in self.held:
            if process.poll() is None and process.stdin:
                process.stdin.close()
        for process in self.held:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.held.clear()

    def stop_postgres(self, postgres: Postgres, timeout: float = 120) -> None:
        alert = self.spec["database_down"]["alert"]
        assert postgres.process is not None
        self.processes.stop(postgres.process)
        stopped = self.mark("PostgreSQL stopped")
        seen: dict[str, float] = {}

        def paged() -> list[dict[str, Any]]:
            for sample in self.vector(f'ALERTS{{alertname="{alert}"}}'):
                seen.setdefault(sample["metric"]["alertstate"], time.time())
            return [
                e
                for e in self.delivered("pagerduty", alert)
                if json.loads(e["body"]).get("event_action") == "trigger"
            ]

        info: dict[str, Any] = {"stopped_at": stopped, "states_seen": seen}
        self.result["database_down"] = info
        delivered = poll(f"{alert} at the PagerDuty sink", paged, timeout, every=0.5)
        info["pagerduty_at"] = delivered[0]["time"]
        info["latency_seconds"] = delivered[0]["time"] - stopped
        status, body = get_json(f"{self.prometheus}/api/v1/alerts")
        info["prometheus_alerts"] = [
            a for a in body["data"]["alerts"] if a["labels"].get("alertname") == alert
        ]
        self.mark(f"{alert} delivered to PagerDuty")

    def check_inhibition(self) -> None:
        spec = self.spec["inhibition"]
        source = poll(
            f"{spec['source_alert']} active in Alertmanager",
            lambda: [
                a
                for a in self.am_alerts(alertname=spec["source_alert"])
                if a["status"]["state"] == "active"
            ],
            20,
        )[0]
        # The inhibit rule's `equal` labels as the critical has them (absent
        # ones stay absent), plus Prometheus' external labels for the templates.
        copied = [*spec["equal"], *spec["external_labels"]]
        equal = {k: source["labels"][k] for k in copied if k in source["labels"]}
        differing = next(k for k in ("instance", *spec["equal"]) if k in equal)
        probe = {
            "labels": {**equal, **spec["target_labels"], "alertname": spec["probe"]},
            "annotations": {
                "summary": "warning sharing the critical's labels (must be inhibited)",
                "description": "posted by tests/test_end_to_end.py",
            },
        }
        control = {
            "labels": {
                **probe["labels"],
                differing: equal[differing] + "-elsewhere",
                "alertname": spec["control"],
            },
            "annotations": {
                "summary": f"the same warning with another {differing} (delivered)",
                "description": "posted by tests/test_end_to_end.py",
            },
        }
        self.post_alerts([probe, control])
        posted = self.mark("inhibition probe and control posted")
        info: dict[str, Any] = {
            "source": {
                "labels": source["labels"],
                "fingerprint": source["fingerprint"],
            },
            "probe_labels": probe["labels"],
            "control_labels": control["labels"],
            "posted_at": posted,
        }
        self.result["inhibition"] = info
        delivered = poll(
            "inhibition control at the Slack sink",
            lambda: self.delivered("slack", spec["control"]),
            40,
        )
        info["control_delivered_at"] = delivered[0]["time"]
        # Both groups were created together with the same group_wait; give
        # the probe's group a few more seconds to (not) notify.
        time.sleep(3)
        info["probe_status"] = [
            a["status"] for a in self.am_alerts(alertname=spec["probe"])
        ]
        info["probe_delivered"] = {
            sink: len(self.delivered(sink, spec["probe"]))
            for sink in ("pagerduty", "slack", "smtp", "webhook")
        }
        base = [
            "amtool", f"--alertmanager.url={self.alertmanager}", "alert", "query",
            "--output=json",
        ]  # fmt: skip
        for key, extra in (
            ("amtool_inhibited", ["--inhibited"]),
            ("amtool_active", []),
        ):
            run = subprocess.run(
                [*base, *extra, f"alertname={spec['probe']}"],
                capture_output=True, text=True, timeout=30, env=minimal_env(),
            )  # fmt: skip
            info[key] = {
                "rc": run.returncode,
                "stdout": run.stdout,
                "stderr": run.stderr,
            }
        self.mark("inhibition checked")

    # --- clean-up -----------------------------------------------------------

    def close(self) -> None:
        try:
            self.release_sessions()
        finally:
            self.processes.stop_all()
            for sink in self.sinks.values():
                sink.stop()
        self.result["sinks"] = {
            name: record.entries() for name, record in self.records.items()
        }
        self.result["logs"] = {
            name: path.read_text(errors="replace") if path.exists() else ""
            for name, path in self.logs.items()
        }


def main(spec_path: str, result_path: str, stack_class: type[Stack] = Stack) -> int:
    """Run ``stack_class(spec, result).run()``, then close it, whatever happens."""
    spec = json.loads(Path(spec_path).read_text())
    result: dict[str, Any] = {"error": None}

    def give_up(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        raise ScenarioTimeout(f"stopped by signal {signum} or the deadline")

    signal.signal(signal.SIGTERM, give_up)
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(int(spec["deadline_seconds"]))
    stack = stack_class(spec, result)
    code = 0
    try:
        stack.run()
    except BaseException:
        result["error"] = traceback.format_exc()
        print(result["error"], flush=True)
        code = 1
    finally:
        signal.alarm(0)
        # Nothing may interrupt the clean-up; it kills what ignores SIGTERM.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stack.close()
        except BaseException:
            result["error"] = (result["error"] or "") + traceback.format_exc()
            code = 1
        Path(result_path).write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
