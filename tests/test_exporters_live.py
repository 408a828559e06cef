"""The exporters as rendered, run for real against PostgreSQL 15 and Redis.

Each scenario renders a construct, lays out the files its pod would see (the
ConfigMap and Secret volumes, with the pod's modes and fsGroup), and runs
tests/live/scenario.py under ``unshare -n``: the servers and the Debian
builds of the exporters listen on 127.0.0.1 of a private network namespace
only, the exporter runs as the pod's user with the rendered arguments and
environment, and every process is stopped by its PID at the end. Nothing is
mocked; a missing program fails the test and names the set-up target.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import constructs_lib._bridge  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
from cdk8s import App, Chart

from constructs_lib.postgres_exporter import (
    PostgresExporter,
    PostgresExporterSettings,
    load_queries,
)
from constructs_lib.redis_exporter import (
    PASSWORD_FILE_KEY,
    RedisExporter,
    RedisExporterSettings,
    password_file_content,
)
from tests.conftest import ROOT, find_program

HELPER = Path(__file__).parent / "live" / "scenario.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SETUP = "run `make setup-test` (or `make test`)"
SCENARIO_TIMEOUT = 60
MONITOR_USER = "sunday_monitor"

# The design's ConfigMap query, as it was: pg_stat_user_tables has "relname".
DESIGN_QUERIES = """\
pg_stat_user_tables:
  query: "SELECT schemaname, tablename, n_tup_ins, n_tup_upd, n_tup_del, \
n_live_tup, n_dead_tup FROM pg_stat_user_tables"
  master: true
  metrics:
    - schemaname: {usage: "LABEL", description: "Name of the schema"}
    - tablename: {usage: "LABEL", description: "Name of the table"}
    - n_tup_ins: {usage: "COUNTER", description: "Number of rows inserted"}
    - n_tup_upd: {usage: "COUNTER", description: "Number of rows updated"}
    - n_tup_del: {usage: "COUNTER", description: "Number of rows deleted"}
    - n_live_tup: {usage: "GAUGE", description: "Number of live rows"}
    - n_dead_tup: {usage: "GAUGE", description: "Number of dead rows"}
"""
DESIGN_QUERY = yaml.safe_load(DESIGN_QUERIES)["pg_stat_user_tables"]["query"]


# --- running a scenario ----------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def programs() -> None:
    """Every program the scenarios run; fail, never skip, when one is missing."""
    for name in (
        "unshare",
        "ip",
        "setpriv",
        "psql",
        "openssl",
        "redis-server",
        "prometheus-postgres-exporter",
        "prometheus-redis-exporter",
    ):
        find_program(name)
    for name in ("initdb", "postgres", "pg_isready", "pg_basebackup"):
        assert os.access(PG_BIN / name, os.X_OK), (
            f"{PG_BIN / name} is missing (PostgreSQL 15); {SETUP}"
        )
    probe = subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, text=True, timeout=30
    )
    assert probe.returncode == 0, (
        f"cannot make a private network namespace ({probe.stderr.strip()}); the "
        "live tests need root or CAP_SYS_ADMIN"
    )


@pytest.fixture(scope="module")
def scenario_root() -> Iterator[Callable[[], Path]]:
    """Fresh directories the pod's users may enter but not list."""
    made: list[Path] = []

    def make() -> Path:
        root = Path(tempfile.mkdtemp(prefix="sunday-live-"))
        root.chmod(0o711)
        made.append(root)
        return root

    yield make
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


def run_scenario(root: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run tests/live/scenario.py in a private network namespace."""
    spec_path, result_path = root / "spec.json", root / "result.json"
    spec_path.write_text(
        json.dumps({**spec, "root": str(root), "deadline_seconds": 50})
    )
    spec_path.chmod(0o600)
    helper = [sys.executable, str(HELPER), str(spec_path), str(result_path)]
    process = subprocess.Popen(
        ["unshare", "-n", *helper],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the scenario stop its servers by PID before it exits.
        process.terminate()
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"scenario ran past {SCENARIO_TIMEOUT} s:\n{output}")
    assert process.returncode == 0, f"scenario failed:\n{output}"
    return json.loads(result_path.read_text())


def synthesize(build: Callable[[Chart], Any]) -> list[dict[str, Any]]:
    app = App()
    chart = Chart(app, "live")
    build(chart)
    return chart.to_json()


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict:
    found = [
        obj
        for obj in objects
        if obj["kind"] == kind and name in (None, obj["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_as_files(
    objects: list[dict[str, Any]],
    *,
    root: Path,
    binary: str,
    port: int,
    secrets: dict[str, dict[str, str]],
    config_overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The rendered pod's container, as a process spec for the scenario.

    Each mounted ConfigMap or Secret becomes a directory of its keys with the
    volume's mode, owned by root and the pod's fsGroup as the kubelet does;
    the container's arguments and environment are rewritten to those paths,
    and its listen address to the namespace's loopback. ``secrets`` gives
    the values an operator would store; ``config_overrides`` replaces keys of
    the rendered ConfigMaps.
    """
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    context = pod["securityContext"]
    fs_group = context.get("fsGroup")
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts_dir = root / "mounts"
    mounts_dir.mkdir(mode=0o755)
    host_paths: dict[str, Path] = {}
    for volume_mount in container.get("volumeMounts", []):
        volume = volumes[volume_mount["name"]]
        if "configMap" in volume:
            source = volume["configMap"]
            data = dict(one(objects, "ConfigMap", source["name"])["data"])
            data.update(config_overrides or {})
        else:
            source = volume["secret"]
            data = secrets[source["secretName"]]
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        directory = mounts_dir / volume["name"]
        directory.mkdir(mode=0o755)
        for item in items:
            path = directory / item["path"]
            path.write_text(data[item["key"]])
            path.chmod(source["defaultMode"])
            os.chown(path, 0, fs_group if fs_group is not None else 0)
        host_paths[volume_mount["mountPath"]] = directory

    def localize(text: str) -> str:
        for mount_path, directory in host_paths.items():
            text = text.replace(f"{mount_path}/", f"{directory}/")
        return text

    assert all("value" in env for env in container.get("env", [])), container["env"]
    env = {env["name"]: localize(env["value"]) for env in container.get("env", [])}
    args = [localize(arg) for arg in container.get("args", [])]
    listen = f"--web.listen-address=:{port}"
    assert listen in args, args
    args[args.index(listen)] = f"--web.listen-address=127.0.0.1:{port}"
    return {
        "argv": [binary, *args],
        "env": env,
        "uid": context["runAsUser"],
        "gid": context["runAsGroup"],
        "groups": [fs_group] if fs_group is not None else None,
        "url": f"http://127.0.0.1:{port}",
        "ready_path": container["readinessProbe"]["httpGet"]["path"],
    }


def free_port() -> int:
    """Any port: nothing else listens in a fresh network namespace."""
    return random.randint(20000, 29999)


# --- reading the exposition format -----------------------------------------

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})? (?P<value>\S+)"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = dict(_LABEL.findall(match.group("labels") or ""))
        found.append((match.group("name"), labels, float(match.group("value"))))
    return found


def series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(labels, value) for found, labels, value in samples(text) if found == name]


def value_of(text: str, name: str, **labels: str) -> float:
    matching = [
        value
        for found, value in series(text, name)
        if all(found.get(key) == want for key, want in labels.items())
    ]
    assert len(matching) == 1, f"{name}{labels}: {series(text, name)}"
    return matching[0]


def last_scrape(run: dict[str, Any]) -> str:
    scrape = run["scrapes"][-1]
    assert scrape["status"] == 200, scrape["text"][:2000]
    return scrape["text"]


# --- postgres-exporter -----------------------------------------------------


@pytest.fixture(scope="module")
def postgres_run(scenario_root: Callable[[], Path]) -> dict[str, Any]:
    """PostgreSQL 15 with TLS, and the exporter as rendered, twice.

    "rendered" runs the construct's queries; "design" the same pod with the
    design's original pg_stat_user_tables query, which must be caught.
    """
    root = scenario_root()
    port = free_port()
    password = "p@ss:w/rd?#%&'" + secrets.token_hex(8)
    settings = PostgresExporterSettings(
        data_source_uri=f"127.0.0.1:{port}/sunday?sslmode=require"
    )
    objects = synthesize(
        lambda chart: PostgresExporter(
            chart, "pg", settings=settings, namespace="monitoring"
        )
    )
    # A Secret made from files (kubectl --from-file) often keeps the files'
    # final newline; the exporter trims it.
    credentials = {
        settings.credentials_secret: {
            "username": MONITOR_USER + "\n",
            "password": password,
        }
    }
    exporters = {}
    for name, overrides in (("rendered", None), ("design", DESIGN_QUERIES)):
        run_root = root / name
        run_root.mkdir(mode=0o711)
        exporters[name] = pod_as_files(
            objects,
            root=run_root,
            binary="prometheus-postgres-exporter",
            port=9187,
            secrets=credentials,
            config_overrides={"queries.yaml": overrides} if overrides else None,
        )
    result = run_scenario(
        root,
        {
            "kind": "postgres",
            "port": port,
            "ssl": True,
            "monitor": {"user": MONITOR_USER, "password": password},
            "sql_checks": [spec["query"] for spec in load_queries().values()]
            + [DESIGN_QUERY],
            "exporters": exporters,
        },
    )
    result["password"] = password
    result["port"] = port
    return result


def test_postgres_exporter_logs_in_with_the_secret_files_over_tls(
    postgres_run: dict[str, Any],
) -> None:
    run = postgres_run["exporters"]["rendered"]
    text = last_scrape(run)

    assert series(text, "pg_up") == [({}, 1.0)]
    assert run["ssl_connections"] >= 1


def test_postgres_exporter_scrapes_without_errors(
    postgres_run: dict[str, Any],
) -> None:
    run = postgres_run["exporters"]["rendered"]

    for scrape in run["scrapes"]:
        assert scrape["status"] == 200
        assert series(scrape["text"], "pg_exporter_last_scrape_error") == [({}, 0.0)]
    text = last_scrape(run)
    (loaded,) = series(text, "pg_exporter_user_queries_load_error")
    assert loaded[0]["filename"].endswith("/queries/queries.yaml")
    assert loaded[1] == 0.0
    assert {value for _, value in series(text, "pg_scrape_collector_success")} == {1.0}
    assert "level=error" not in run["log"], run["log"]
    assert "Error running query" not in run["log"], run["log"]


def test_every_custom_query_is_exported(postgres_run: dict[str, Any]) -> None:
    text = last_scrape(postgres_run["exporters"]["rendered"])
    server = f"127.0.0.1:{postgres_run['port']}"

    for prefix, spec in load_queries().items():
        labels = {"server"}
        for column in spec["metrics"]:
            ((name, detail),) = column.items()
            if detail["usage"] == "LABEL":
                labels.add(name)
        for column in spec["metrics"]:
            ((name, detail),) = column.items()
            if detail["usage"] == "LABEL":
                continue
            found = series(text, f"{prefix}_{name}")
            assert found, f"{prefix}_{name} is missing"
            assert {frozenset(found_labels) for found_labels, _ in found} == {
                frozenset(labels)
            }
            assert {found_labels["server"] for found_labels, _ in found} == {server}


def test_table_activity_is_counted_per_table(postgres_run: dict[str, Any]) -> None:
    text = last_scrape(postgres_run["exporters"]["rendered"])
    items = {"datname": "sunday", "schemaname": "public", "relname": "items"}

    assert value_of(text, "pg_stat_user_tables_n_tup_ins", **items) == 200
    assert value_of(text, "pg_stat_user_tables_n_tup_upd", **items) == 66
    assert value_of(text, "pg_stat_user_tables_n_tup_del", **items) == 20
    assert value_of(text, "pg_stat_user_tables_n_live_tup", **items) == 180
    assert value_of(text, "pg_stat_user_tables_n_live_tup", relname="boards") == 5
    assert value_of(text, "pg_database_size", datname="sunday") > 0


def test_replication_lag_reads_zero_on_a_primary(postgres_run: dict[str, Any]) -> None:
    text = last_scrape(postgres_run["exporters"]["rendered"])

    assert series(text, "pg_replication_lag") == [
        ({"server": f"127.0.0.1:{postgres_run['port']}"}, 0.0)
    ]


def test_series_the_database_rules_use_carry_the_labels_they_expect(
    postgres_run: dict[str, Any],
) -> None:
    text = last_scrape(postgres_run["exporters"]["rendered"])
    label_sets = {
        "pg_up": set(),
        "pg_stat_activity_count": {"datname", "server", "state"},
        "pg_stat_activity_max_tx_duration": {"datname", "server", "state"},
        "pg_settings_max_connections": {"server"},
        "pg_replication_lag": {"server"},
    }

    for name, labels in label_sets.items():
        found = series(text, name)
        assert found, f"{name} is missing"
        assert {frozenset(found_labels) for found_labels, _ in found} == {
            frozenset(labels)
        }, name
    rules = (ROOT / "rules" / "database.yml").read_text()
    used = set(re.findall(r"\bpg_[a-z0-9_]+", _expressions(rules)))
    exported = {name for name, _, _ in samples(text)}
    assert used and used <= exported, sorted(used - exported)


def _expressions(rules_text: str) -> str:
    document = yaml.safe_load(rules_text)
    return "\n".join(
        rule["expr"] for group in document["groups"] for rule in group["rules"]
    )


def test_no_credential_reaches_the_log_or_the_metrics(
    postgres_run: dict[str, Any],
) -> None:
    run = postgres_run["exporters"]["rendered"]

    assert postgres_run["password"] not in run["log"]
    for scrape in run["scrapes"]:
        assert postgres_run["password"] not in scrape["text"]


def test_custom_queries_run_clean_as_the_monitoring_role(
    postgres_run: dict[str, Any],
) -> None:
    checks = {check["query"]: check for check in postgres_run["sql"]}

    for prefix, spec in load_queries().items():
        check = checks[spec["query"]]
        assert check["ok"], f"{prefix}: {check['error']}"
        assert check["rows"], f"{prefix} returned no rows"


def test_the_designs_table_query_fails_and_is_caught(
    postgres_run: dict[str, Any],
) -> None:
    check = next(c for c in postgres_run["sql"] if c["query"] == DESIGN_QUERY)
    run = postgres_run["exporters"]["design"]
    text = last_scrape(run)

    assert not check["ok"]
    assert 'column "tablename" does not exist' in check["error"]
    assert series(text, "pg_up") == [({}, 1.0)]
    assert series(text, "pg_exporter_last_scrape_error") == [({}, 1.0)]
    assert not series(text, "pg_stat_user_tables_n_live_tup")
    assert 'pq: column \\"tablename\\" does not exist' in run["log"]


def test_custom_queries_run_clean_on_a_streaming_standby(
    scenario_root: Callable[[], Path],
) -> None:
    password = secrets.token_urlsafe(16)
    primary, standby = random.sample(range(30000, 39999), 2)
    queries = load_queries()
    result = run_scenario(
        scenario_root(),
        {
            "kind": "postgres",
            "port": primary,
            "replica_port": standby,
            "monitor": {"user": MONITOR_USER, "password": password},
            "sql_checks": [spec["query"] for spec in queries.values()],
        },
    )
    checks = {check["query"]: check for check in result["replica_sql"]}

    assert result["replica_in_recovery"] == "t"
    for prefix, spec in queries.items():
        check = checks[spec["query"]]
        assert check["ok"], f"{prefix}: {check['error']}"
    assert checks[queries["pg_replication"]["query"]]["rows"] == ["0"]


# --- redis-exporter --------------------------------------------------------


def redis_exporter(
    root: Path, port: int, *, password_secret: str | None, file_text: str | None
) -> dict[str, Any]:
    settings = RedisExporterSettings(
        redis_addr=f"redis://127.0.0.1:{port}", password_secret=password_secret
    )
    objects = synthesize(
        lambda chart: RedisExporter(
            chart, "redis", settings=settings, namespace="monitoring"
        )
    )
    root.mkdir(mode=0o711)
    return pod_as_files(
        objects,
        root=root,
        binary="prometheus-redis-exporter",
        port=9121,
        secrets={password_secret: {PASSWORD_FILE_KEY: file_text}}
        if password_secret
        else {},
    )


def test_redis_exporter_reaches_a_redis_without_password(
    scenario_root: Callable[[], Path],
) -> None:
    root = scenario_root()
    port = free_port()
    exporter = redis_exporter(
        root / "plain", port, password_secret=None, file_text=None
    )

    result = run_scenario(
        root, {"kind": "redis", "port": port, "exporters": {"plain": exporter}}
    )
    run = result["exporters"]["plain"]
    text = last_scrape(run)

    assert "--redis.password-file" not in " ".join(exporter["argv"])
    assert series(text, "redis_up") == [({}, 1.0)]
    assert series(text, "redis_exporter_last_scrape_error") == [({"err": ""}, 0.0)]
    assert value_of(text, "redis_db_keys", db="db0") == 20
    assert "level=error" not in run["log"], run["log"]


@pytest.fixture(scope="module")
def redis_password_run(scenario_root: Callable[[], Path]) -> dict[str, Any]:
    """Redis with requirepass; the exporter with the file as documented, and
    with one keyed by the address without its scheme."""
    root = scenario_root()
    port = free_port()
    password = "r3d!s p@ss:" + secrets.token_hex(8)
    addr = f"redis://127.0.0.1:{port}"
    exporters = {
        "documented": redis_exporter(
            root / "documented",
            port,
            password_secret="redis-exporter",
            file_text=password_file_content(addr, password),
        ),
        "misspelled": redis_exporter(
            root / "misspelled",
            port,
            password_secret="redis-exporter",
            file_text=json.dumps({f"127.0.0.1:{port}": password}),
        ),
    }
    result = run_scenario(
        root,
        {
            "kind": "redis",
            "port": port,
            "requirepass": password,
            "exporters": exporters,
        },
    )
    result["password"] = password
    return result


def test_redis_exporter_logs_in_with_the_password_file(
    redis_password_run: dict[str, Any],
) -> None:
    run = redis_password_run["exporters"]["documented"]
    text = last_scrape(run)

    assert series(text, "redis_up") == [({}, 1.0)]
    assert series(text, "redis_exporter_last_scrape_error") == [({"err": ""}, 0.0)]
    assert value_of(text, "redis_db_keys", db="db0") == 20
    # 1.45 reports a loaded password file at level "error"; nothing else may be.
    errors = [line for line in run["log"].splitlines() if "level=error" in line]
    assert all("Loaded 1 entries from" in line for line in errors), errors
    assert redis_password_run["password"] not in run["log"]
    assert redis_password_run["password"] not in text


def test_a_password_file_keyed_without_the_scheme_is_not_used(
    redis_password_run: dict[str, Any],
) -> None:
    run = redis_password_run["exporters"]["misspelled"]
    text = last_scrape(run)

    assert series(text, "redis_up") == [({}, 0.0)]
    assert "NOAUTH" in run["log"]
