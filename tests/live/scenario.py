"""Run one live exporter scenario inside a private network namespace.

    unshare -n python tests/live/scenario.py SPEC.json RESULT.json

The test that calls this has already written, under the spec's ``root``, the
files a pod would see (the Secret and ConfigMap volumes) and rewritten the
exporter's rendered arguments and environment to point at them. This script
starts the servers (PostgreSQL 15, optionally a streaming standby, or Redis)
on 127.0.0.1 of the namespace, runs the exporter as the pod's user, scrapes
it, and writes what it saw to RESULT.json. Every wait is bounded, and every
process it starts is stopped by its PID before it exits, also on failure.

It refuses to run where any network interface but loopback exists, so it
never serves on, or reaches, a real network.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")
LOOPBACK = "127.0.0.1"
DATABASE = "sunday"

# Enough rows, updates and deletes that every pg_stat_user_tables column moves.
SEED_SQL = """
CREATE TABLE boards (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE items (
    id bigserial PRIMARY KEY,
    board_id bigint NOT NULL REFERENCES boards,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false
);
INSERT INTO boards (name) SELECT 'board ' || n FROM generate_series(1, 5) AS n;
INSERT INTO items (board_id, title)
    SELECT 1 + n % 5, 'item ' || n FROM generate_series(1, 200) AS n;
UPDATE items SET done = true WHERE id % 3 = 0;
DELETE FROM items WHERE id % 10 = 0;
"""


class ScenarioTimeout(Exception):
    """The scenario ran past its deadline."""


class Processes:
    """The processes this scenario started, stopped newest first by PID."""

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env if env is not None else minimal_env(),
                cwd=cwd,
            )
        self._running.append((name, process, stop_signal))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        for entry in list(self._running):
            if entry[1] is process:
                self._stop(*entry)
                self._running.remove(entry)

    def stop_all(self) -> None:
        while self._running:
            self._stop(*self._running.pop())

    @staticmethod
    def _stop(name: str, process: subprocess.Popen[bytes], stop_signal: int) -> None:
        if process.poll() is not None:
            return
        os.kill(process.pid, stop_signal)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            print(f"{name} (pid {process.pid}) ignored its stop signal; killing it")
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def minimal_env(**extra: str) -> dict[str, str]:
    """An environment with no inherited PG*, REDIS* or proxy variables."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", **extra}


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` every 0.1 s; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} was not ready after {timeout:.0f} s")


def assert_private_network() -> None:
    """Bring loopback up; refuse to go on if any other interface exists."""
    # /proc/self/net/dev lists this process's namespace; /sys/class/net
    # would list the namespace sysfs was mounted in.
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    interfaces = sorted(line.split(":")[0].strip() for line in lines)
    if interfaces != ["lo"]:
        raise RuntimeError(
            f"network interfaces {interfaces} found: run this under `unshare -n`"
        )
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)


def as_user(uid: int, gid: int, groups: list[int] | None = None) -> list[str]:
    """A command prefix that runs the rest as ``uid:gid`` with only ``groups``."""
    extra = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", *extra, "--"]


# No proxy, whatever the environment says: requests go to loopback only.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 20) -> tuple[int, str]:
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def answers(url: str) -> bool:
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False


def run_exporter(
    name: str, spec: dict[str, Any], root: Path, processes: Processes
) -> dict[str, Any]:
    """Start an exporter as the pod's user and scrape it; it keeps running."""
    log = root / f"exporter-{name}.log"
    process = processes.start(
        f"exporter {name}",
        as_user(spec["uid"], spec["gid"], spec.get("groups")) + spec["argv"],
        log=log,
        env=spec["env"],
        cwd=root,
    )
    url = spec["url"]

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"exporter {name} exited with {process.returncode}")
        # The path the rendered readiness probe asks for.
        return answers(f"{url}{spec['ready_path']}")

    wait_until(f"exporter {name}", ready, timeout=15)
    scrapes = []
    for _ in range(spec.get("scrapes", 2)):
        status, text = http_get(f"{url}/metrics")
        scrapes.append({"status": status, "text": text})
    return {"process": process, "log": log, "scrapes": scrapes}


def finish(seen: dict[str, Any], processes: Processes) -> dict[str, Any]:
    """Stop a running exporter; return its scrapes and its whole log."""
    processes.stop(seen.pop("process"))
    seen["log"] = seen["log"].read_text()
    return seen


# --- PostgreSQL ------------------------------------------------------------


class Postgres:
    """A PostgreSQL 15 cluster of this scenario, run as the ``postgres`` user."""

    def __init__(self, home: Path, port: int, processes: Processes) -> None:
        self.home = home
        self.data = home / "data"
        self.port = port
        self.processes = processes
        self.user = pwd.getpwnam("postgres")
        self.log = home / "server.log"
        self.superuser_password = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None

    def as_postgres(self) -> list[str]:
        return as_user(self.user.pw_uid, self.user.pw_gid)

    def make_home(self) -> None:
        self.home.mkdir(mode=0o700)
        (self.home / "run").mkdir(mode=0o700)
        for path in (self.home, self.home / "run"):
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def init(self) -> None:
        self.make_home()
        password_file = self.home / "superuser-password"
        password_file.write_text(self.superuser_password + "\n")
        os.chown(password_file, self.user.pw_uid, self.user.pw_gid)
        password_file.chmod(0o600)
        self.run(
            [
                str(PG_BIN / "initdb"),
                f"--pgdata={self.data}",
                "--username=postgres",
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            as_postgres=True,
        )
        password_file.unlink()

    def enable_ssl(self) -> None:
        """A throw-away self-signed certificate, as sslmode=require accepts."""
        key, cert = self.home / "server.key", self.home / "server.crt"
        self.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "1",
                "-subj", f"/CN={LOOPBACK}",
            ]
        )  # fmt: skip
        for path in (key, cert):
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
            path.chmod(0o600)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")

    def start(self) -> None:
        self.process = self.processes.start(
            f"postgres :{self.port}",
            self.as_postgres()
            + [
                str(PG_BIN / "postgres"),
                "-D", str(self.data),
                "-c", f"listen_addresses={LOOPBACK}",
                "-c", f"port={self.port}",
                "-c", f"unix_socket_directories={self.home / 'run'}",
                "-c", "fsync=off",
            ],
            log=self.log,
            # SIGINT is PostgreSQL's fast shutdown: sessions end, data is kept.
            stop_signal=signal.SIGINT,
        )  # fmt: skip
        wait_until("PostgreSQL", self.ready, timeout=30)

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited:\n{self.log.read_text()}")
        probe = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(self.port)],
            timeout=10,
            env=minimal_env(),
        )
        return probe.returncode == 0

    def run(self, argv: list[str], *, as_postgres: bool = False, **env: str) -> str:
        result = subprocess.run(
            (self.as_postgres() if as_postgres else []) + argv,
            capture_output=True,
            text=True,
            timeout=60,
            env=minimal_env(**env),
            cwd=self.home if as_postgres else None,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({result.returncode}):\n{result.stdout}"
                f"{result.stderr}"
            )
        return result.stdout

    def psql(
        self,
        sql: str,
        *,
        database: str = "postgres",
        user: str = "postgres",
        password: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run SQL over TCP; the password goes in the environment, not argv."""
        return subprocess.run(
            [
                "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", LOOPBACK, "-p", str(self.port), "-U", user, "-d", database,
                "-f", "-",
            ],
            input=sql,
            capture_output=True,
            text=True,
            timeout=30,
            env=minimal_env(
                PGPASSWORD=password or self.superuser_password,
                PGCONNECT_TIMEOUT="5",
            ),
        )  # fmt: skip

    def superuser(self, sql: str, database: str = "postgres") -> str:
        result = self.psql(sql, database=database)
        if result.returncode != 0:
            raise RuntimeError(f"SQL failed: {sql}\n{result.stderr}")
        return result.stdout


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def run_postgres(spec: dict[str, Any], root: Path, processes: Processes) -> dict:
    result: dict[str, Any] = {}
    primary = Postgres(root / "primary", spec["port"], processes)
    primary.init()
    if spec.get("ssl"):
        primary.enable_ssl()
    primary.start()

    monitor = spec["monitor"]
    primary.superuser(
        f"CREATE ROLE {monitor['user']} LOGIN "
        f"PASSWORD {sql_literal(monitor['password'])} IN ROLE pg_monitor;\n"
        f"CREATE DATABASE {DATABASE};\n"
    )
    # The session ends with psql, which flushes its table statistics.
    primary.superuser(SEED_SQL, database=DATABASE)

    result["sql"] = [
        sql_check(primary, query, monitor) for query in spec.get("sql_checks", [])
    ]

    if spec.get("replica_port"):
        replica = Postgres(root / "replica", spec["replica_port"], processes)
        replica.make_home()
        replica.superuser_password = primary.superuser_password
        replica.run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h", LOOPBACK, "-p", str(primary.port), "-U", "postgres",
                "-D", str(replica.data), "--write-recovery-conf",
                "--wal-method=stream", "--checkpoint=fast", "--no-sync",
            ],
            as_postgres=True,
            PGPASSWORD=primary.superuser_password,
        )  # fmt: skip
        # Spelled out, so the standby need not find the password elsewhere.
        with (replica.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"primary_conninfo = 'host={LOOPBACK} port={primary.port} "
                f"user=postgres password={primary.superuser_password}'\n"
            )
        replica.start()
        wait_until(
            "the standby's WAL receiver",
            lambda: (
                replica.superuser("SELECT status FROM pg_stat_wal_receiver").strip()
                == "streaming"
            ),
            timeout=20,
        )
        # New rows on the primary, then wait until the standby replayed them,
        # so the lag query sees a standby that has caught up.
        primary.superuser(
            "INSERT INTO boards (name) VALUES ('after the standby');",
            database=DATABASE,
        )
        wait_until(
            "the standby's replay",
            lambda: (
                replica.superuser(
                    "SELECT count(*) FROM boards WHERE name = 'after the standby'",
                    database=DATABASE,
                ).strip()
                == "1"
            ),
            timeout=20,
        )
        result["replica_in_recovery"] = replica.superuser(
            "SELECT pg_is_in_recovery()"
        ).strip()
        result["replica_sql"] = [
            sql_check(replica, query, monitor) for query in spec.get("sql_checks", [])
        ]

    result["exporters"] = {}
    for name, exporter in spec.get("exporters", {}).items():
        seen = run_exporter(name, exporter, root, processes)
        # Asked while the exporter still holds its connection open.
        seen["ssl_connections"] = int(
            primary.superuser(
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity "
                f"USING (pid) WHERE ssl AND usename = {sql_literal(monitor['user'])}"
            ).strip()
        )
        result["exporters"][name] = finish(seen, processes)
    result["server_log"] = primary.log.read_text()
    return result


def sql_check(server: Postgres, query: str, monitor: dict[str, str]) -> dict:
    """Run one query as the monitoring role, the way the exporter would."""
    run = server.psql(
        query, database=DATABASE, user=monitor["user"], password=monitor["password"]
    )
    return {
        "query": query,
        "ok": run.returncode == 0,
        "rows": [line for line in run.stdout.splitlines() if line],
        "error": run.stderr,
    }


# --- Redis -----------------------------------------------------------------


def redis_command(port: int, *words: str, password: str | None = None) -> str:
    """Send commands in Redis's protocol; return the last reply's first line."""

    def encode(*parts: str) -> bytes:
        chunks = [f"*{len(parts)}\r\n".encode()]
        for part in parts:
            data = part.encode()
            chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(chunks)

    with socket.create_connection((LOOPBACK, port), timeout=5) as connection:
        reader = connection.makefile("rb")
        if password is not None:
            connection.sendall(encode("AUTH", password))
            reader.readline()
        connection.sendall(encode(*words))
        return reader.readline().decode().rstrip("\r\n")


def run_redis(spec: dict[str, Any], root: Path, processes: Processes) -> dict:
    port = spec["port"]
    password = spec.get("requirepass")
    home = root / "redis"
    home.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody")
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    lines = [
        f"bind {LOOPBACK}",
        f"port {port}",
        "protected-mode yes",
        'save ""',
        "appendonly no",
        f"dir {home}",
    ]
    if password is not None:
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'requirepass "{quoted}"')
    conf = home / "redis.conf"
    conf.write_text("\n".join(lines) + "\n")
    os.chown(conf, nobody.pw_uid, nobody.pw_gid)
    conf.chmod(0o600)
    log = home / "server.log"
    server = processes.start(
        "redis-server",
        as_user(nobody.pw_uid, nobody.pw_gid) + ["redis-server", str(conf)],
        log=log,
    )

    def ready() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{log.read_text()}")
        try:
            return redis_command(port, "PING", password=password) == "+PONG"
        except OSError:
            return False

    wait_until("Redis", ready, timeout=15)
    for index in range(20):
        redis_command(port, "SET", f"board:{index}", "x" * index, password=password)

    result: dict[str, Any] = {"exporters": {}}
    for name, exporter in spec.get("exporters", {}).items():
        seen = run_exporter(name, exporter, root, processes)
        result["exporters"][name] = finish(seen, processes)
    result["server_log"] = log.read_text()
    return result


# --- main ------------------------------------------------------------------

SCENARIOS = {"postgres": run_postgres, "redis": run_redis}


def main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    processes = Processes()

    def give_up(signum: int, frame: Any) -> None:
        # Once is enough: a second signal must not interrupt the clean-up.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        raise ScenarioTimeout(f"stopped by signal {signum} or deadline")

    signal.signal(signal.SIGTERM, give_up)
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(int(spec.get("deadline_seconds", 50)))
    try:
        assert_private_network()
        result = SCENARIOS[spec["kind"]](spec, root, processes)
    except BaseException:
        traceback.print_exc()
        for log in sorted(root.rglob("*.log")):
            print(f"--- {log} ---\n{log.read_text(errors='replace')[-4000:]}")
        return 1
    finally:
        signal.alarm(0)
        processes.stop_all()
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
