"""Failure-to-notification latency of the rendered stack, with production timing.

    from tests.e2e.latency import measure_failure_to_notification
    measure_failure_to_notification(dist_dir="dist")        # host side, as root

scripts/bench.py (section 3) calls this; see docs/benchmarks.md. It runs the
same real programs as tests/test_end_to_end.py, laid out by the same helpers
(tests/e2e/layout.py, with the same substitutions of addresses, mounts and
receiver endpoints), but only the part of the stack the latency needs and
with NO speed-ups: scrape and evaluation intervals, DatabaseDown's ``for``
and every route's ``group_wait`` are as rendered.

Inside a private network namespace (``unshare -n``; this file is also the
helper run there, ``python tests/e2e/latency.py SPEC.json RESULT.json``), on
127.0.0.1 only: the receiver sinks (tests/e2e/sinks.py), PostgreSQL 15,
postgres-exporter, Alertmanager and Prometheus. Once every scrape target is up,
every rule has been evaluated and ``pg_up`` is 1, it waits for the next scrape
of postgres-exporter, then ``stop_offset`` seconds more (random in
[0, scrape interval) unless given, so that one run samples the real spread
instead of always stopping just after a scrape), stops PostgreSQL and waits
for the DatabaseDown trigger at the PagerDuty sink. The scrape jobs of
workloads not started here (node-exporter, redis-exporter) are dropped like
the cluster-only ones, so no other target is down to page.

Bounded: the helper stops itself after ``HELPER_DEADLINE`` seconds and is sent
SIGTERM after ``OUTER_TIMEOUT`` (6 minutes); every process is stopped by its
PID, also on failure, and the temporary root is removed.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tests.e2e.layout import CRITICAL_ALERT, LayoutError, build_spec  # noqa: E402
from tests.e2e.stack import Stack, get_json, main, poll  # noqa: E402
from tests.live.scenario import PG_BIN, assert_private_network  # noqa: E402

HELPER = Path(__file__).resolve()
# What the latency needs; everything else in the manifest is left out.
WORKLOADS = (
    ("Deployment", "postgres-exporter"),
    ("StatefulSet", "alertmanager"),
    ("StatefulSet", "prometheus"),
)
PROGRAMS = (
    "unshare", "ip", "setpriv", "psql", "openssl", "prometheus",
    "prometheus-alertmanager", "prometheus-postgres-exporter",
)  # fmt: skip
HELPER_DEADLINE = 300  # the helper stops itself (and everything) after this
OUTER_TIMEOUT = 360  # and is sent SIGTERM after this
PAGE_TIMEOUT = 180  # after PostgreSQL stops (production worst case: 90 s)
EXPORTER_JOB = "postgres-exporter"


# --- durations and timestamps ------------------------------------------------

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_UNITS["y"] = 365 * 86400


def seconds(duration: str) -> float:
    """A Prometheus/Alertmanager duration ('15s', '1m', '1h30m', '0s')."""
    text = str(duration).strip()
    parts = _DURATION.findall(text)
    if text == "0":
        return 0.0
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def timestamp(rfc3339: str) -> float:
    """Prometheus' RFC 3339 times (nanoseconds, Z) as seconds since the epoch."""
    match = re.fullmatch(r"(.+T[\d:]+)(?:\.(\d+))?(Z|[+-][\d:]+)", rfc3339)
    if not match:
        raise ValueError(f"not an RFC 3339 time: {rfc3339!r}")
    whole, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    return datetime.fromisoformat(whole + zone).timestamp() + float(
        f"0.{fraction or 0}"
    )


# --- the timing as rendered --------------------------------------------------


def rendered_timing(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The four settings the latency depends on, read from the manifest."""

    def config_map(name: str, key: str | None = None) -> Any:
        found = [
            d
            for d in documents
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
        ]
        if len(found) != 1:
            raise LayoutError(f"expected one ConfigMap {name!r}, found {len(found)}")
        data = found[0].get("data") or {}
        return yaml.safe_load(data[key]) if key else data

    prometheus = config_map("prometheus-config", "prometheus.yml")
    glob = prometheus.get("global", {})
    job = next(
        (j for j in prometheus["scrape_configs"] if j["job_name"] == EXPORTER_JOB),
        None,
    )
    if job is None:
        raise LayoutError(f"prometheus.yml has no job {EXPORTER_JOB!r}")
    timing: dict[str, Any] = {
        "scrape_interval": job.get("scrape_interval", glob.get("scrape_interval", "1m"))
    }
    rule = None
    for text in config_map("prometheus-rules").values():
        for group in yaml.safe_load(text).get("groups", []):
            for candidate in group.get("rules", []):
                if candidate.get("alert") == CRITICAL_ALERT:
                    rule = candidate
                    timing["evaluation_interval"] = group.get(
                        "interval", glob.get("evaluation_interval", "1m")
                    )
    if rule is None:
        raise LayoutError(f"rule {CRITICAL_ALERT} is not in the rendered rules")
    timing["rule_for"] = rule.get("for", "0s")

    alertmanager = config_map("alertmanager-config", "alertmanager.yml")
    pagers = {
        r["name"]
        for r in alertmanager.get("receivers", [])
        if r.get("pagerduty_configs")
    }
    waits: list[str] = []

    def walk(route: dict[str, Any], receiver: str | None, wait: str) -> None:
        receiver = route.get("receiver", receiver)
        wait = route.get("group_wait", wait)
        if receiver in pagers:
            waits.append(wait)
        for child in route.get("routes", []):
            walk(child, receiver, wait)

    walk(alertmanager["route"], None, "30s")  # Alertmanager's default group_wait
    if not waits:
        raise LayoutError("no route of alertmanager.yml leads to a PagerDuty receiver")
    timing["group_wait"] = ", ".join(sorted(set(waits)))
    timing["pagerduty_receivers"] = sorted(pagers)
    return timing


def check_expected(timing: dict[str, Any], expected: dict[str, str | None]) -> None:
    """Refuse to measure other timing than the caller expects."""
    wrong = []
    for key, value in expected.items():
        if value is None:
            continue
        rendered = [seconds(v) for v in str(timing[key]).split(", ")]
        if rendered != [seconds(value)]:
            wrong.append(f"{key}: expected {value}, rendered {timing[key]}")
    if wrong:
        raise ValueError(
            "this measures the rendered timing, unchanged; it differs from what "
            "was asked: " + "; ".join(wrong)
        )


# --- host side -----------------------------------------------------------------


def preflight() -> None:
    missing = [name for name in PROGRAMS if not shutil.which(name)]
    missing += [
        str(PG_BIN / name)
        for name in ("initdb", "postgres", "pg_isready")
        if not os.access(PG_BIN / name, os.X_OK)
    ]
    if missing:
        raise RuntimeError(
            f"missing {', '.join(missing)}; run `make setup-test` (or `make test`)"
        )
    probe = subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        raise RuntimeError(
            f"cannot make a private network namespace ({probe.stderr.strip()}); "
            "the latency run needs root or CAP_SYS_ADMIN"
        )


def run_in_private_network(
    helper: Path, spec_path: Path, result_path: Path, timeout: float
) -> str:
    """``unshare -n python HELPER SPEC RESULT``, bounded; its output."""
    process = subprocess.Popen(
        [
            "unshare",
            "-n",
            sys.executable,
            str(helper),
            str(spec_path),
            str(result_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
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


def measure_failure_to_notification(
    dist_dir: str | Path | None = None,
    environment: str = "production",
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    rule_for: str | None = None,
    group_wait: str | None = None,
    stop_offset: float | None = None,
) -> dict[str, Any]:
    """Seconds from stopping PostgreSQL to DatabaseDown at the PagerDuty sink.

    Runs ``<dist_dir>/<environment>.k8s.yaml`` (default: the project's
    dist/) with its rendered timing. ``scrape_interval``,
    ``evaluation_interval``, ``rule_for`` and ``group_wait`` are what the
    caller expects the rendered manifest to hold (postgres-exporter's scrape
    interval, the evaluation interval of DatabaseDown's group, its ``for``,
    the group_wait of the routes to the PagerDuty receiver); they are
    checked, never applied: a mismatch raises ValueError. ``stop_offset`` is
    the delay after a scrape of postgres-exporter at which PostgreSQL is
    stopped (default: random in [0, scrape interval)).

    Returns a mapping with ``latency_seconds`` and how it splits up.
    """
    started = time.monotonic()
    manifest = Path(dist_dir or ROOT / "dist") / f"{environment}.k8s.yaml"
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    timing = rendered_timing(documents)
    check_expected(
        timing,
        {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
            "rule_for": rule_for,
            "group_wait": group_wait,
        },
    )
    scrape = seconds(timing["scrape_interval"])
    evaluation = seconds(timing["evaluation_interval"])
    if stop_offset is None:
        stop_offset = random.uniform(0, scrape)
    if not 0 <= stop_offset < scrape:
        raise ValueError(f"stop_offset {stop_offset} is not in [0, {scrape:g})")
    preflight()

    root = Path(tempfile.mkdtemp(prefix="sunday-latency-"))
    try:
        root.chmod(0o711)  # the pods' users may enter, not list
        spec, layout = build_spec(
            documents, root, interval=None, for_overrides={}, workloads=WORKLOADS
        )
        spec["deadline_seconds"] = HELPER_DEADLINE
        spec["latency"] = {
            "scrape_seconds": scrape,
            "evaluation_seconds": evaluation,
            "stop_offset": stop_offset,
            "page_timeout": PAGE_TIMEOUT,
        }
        spec_path, result_path = root / "spec.json", root / "result.json"
        spec_path.write_text(json.dumps(spec))
        spec_path.chmod(0o600)
        output = run_in_private_network(HELPER, spec_path, result_path, OUTER_TIMEOUT)
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        down = result.get("database_down", {})
        if result.get("error") or "latency_seconds" not in down:
            report_failure(result, output, layout.notes)
            last = (result.get("error") or "no result written").strip().splitlines()
            raise RuntimeError(f"latency run failed: {last[-1] if last else '?'}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return summary(result, timing, stop_offset, time.monotonic() - started)


def report_failure(result: dict[str, Any], output: str, notes: list[str]) -> None:
    """What went wrong, on stderr (stdout is the caller's)."""
    parts = [f"helper output (end):\n{output[-3000:]}"]
    for name, text in (result.get("logs") or {}).items():
        parts.append(f"--- {name} log (end) ---\n{text[-2000:]}")
    parts.append("timeline: " + json.dumps(result.get("timeline")))
    parts.append("substitutions:\n  " + "\n  ".join(notes))
    print("\n".join(parts), file=sys.stderr, flush=True)


def summary(
    result: dict[str, Any], timing: dict[str, Any], offset: float, duration: float
) -> dict[str, Any]:
    """The latency and its terms (see docs/benchmarks.md).

    Observed: the stop, the page, the last scrape before the stop (scrapes
    repeat on a fixed grid, so the first failing one follows from it) and
    ``activeAt``. Computed: the firing evaluation, ``for`` rounded up to
    whole evaluations after ``activeAt`` (evaluations are on a grid too).
    """
    down = result["database_down"]
    seen = result["latency"]
    stopped, paged = down["stopped_at"], down["pagerduty_at"]
    scrape = seconds(timing["scrape_interval"])
    evaluation = seconds(timing["evaluation_interval"])
    hold = seconds(timing["rule_for"])
    # Scrapes of a target start at a fixed phase of its interval.
    last = seen["last_scrape_before_stop"]
    first_failing = last + scrape * max(1, math.ceil((stopped - last) / scrape))
    active_at = min(timestamp(a["activeAt"]) for a in down["prometheus_alerts"])
    fired_at = active_at + math.ceil(hold / evaluation) * evaluation
    triggers = [
        e
        for e in result["sinks"]["pagerduty"]
        if CRITICAL_ALERT in e["body"]
        and json.loads(e["body"]).get("event_action") == "trigger"
    ]
    others = {
        sink: len(entries) - (len(triggers) if sink == "pagerduty" else 0)
        for sink, entries in result["sinks"].items()
    }
    return {
        "latency_seconds": round(paged - stopped, 2),
        "runs": 1,
        "timing": timing,
        "stop_offset_seconds": round(offset, 2),
        "terms_seconds": {
            "stop_to_first_failing_scrape": round(first_failing - stopped, 2),
            "scrape_to_pending_evaluation": round(active_at - first_failing, 2),
            "pending_until_firing": round(fired_at - active_at, 2),
            "firing_to_pagerduty_sink": round(paged - fired_at, 2),
        },
        "states_seen_after_stop": {
            state: round(at - stopped, 2) for state, at in down["states_seen"].items()
        },
        "other_deliveries": others,
        "timeline": result["timeline"],
        "run_seconds": round(duration, 1),
    }


# --- inside the namespace ------------------------------------------------------


class LatencyStack(Stack):
    """Only what the DatabaseDown path needs, with the rendered timing."""

    def run(self) -> None:
        spec = self.spec
        timing = spec["latency"]
        assert_private_network()
        self.start_sinks()
        postgres = self.start_postgres()
        for exporter in spec["exporters"]:  # postgres-exporter only
            self.start_process(exporter)
        self.start_process(spec["alertmanager"])
        self.start_process(spec["prometheus"])
        # The first scrape and evaluation come within one interval of start.
        wait = timing["scrape_seconds"] + timing["evaluation_seconds"] + 30
        self.check_targets(timeout=wait)
        self.check_rules(timeout=wait)
        poll(
            "pg_up 1 in Prometheus",
            lambda: [
                s
                for s in self.vector(f'pg_up{{job="{EXPORTER_JOB}"}}')
                if s["value"][1] == "1"
            ],
            wait,
        )
        self.mark("pg_up is 1")
        # Stop at a chosen phase of the scrape interval, not just after the
        # scrape that showed pg_up 1 (which would always wait a full one).
        before = self.last_scrape()

        def next_scrape() -> float:
            started = self.last_scrape()
            return started if started > before else 0.0

        after = poll(
            f"the next scrape of {EXPORTER_JOB}",
            next_scrape,
            timing["scrape_seconds"] + 10,
            every=0.1,
        )
        time.sleep(max(0.0, timing["stop_offset"] - (time.time() - after)))
        self.result["latency"] = {
            "last_scrape_before_stop": self.last_scrape(),
            "scrape_seen_at": after,
        }
        self.stop_postgres(postgres, timeout=timing["page_timeout"])

    def last_scrape(self) -> float:
        """When the current scrape of postgres-exporter started (epoch)."""
        status, body = get_json(f"{self.prometheus}/api/v1/targets")
        if status != 200:
            raise RuntimeError(f"/api/v1/targets: {status} {body}")
        (target,) = [
            t
            for t in body["data"]["activeTargets"]
            if t["labels"].get("job") == EXPORTER_JOB
        ]
        return timestamp(target["lastScrape"])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:], stack_class=LatencyStack))
