"""The elasticsearch-setup Job: its objects, and its script run for real.

The script is run with /bin/sh and the machine's curl, as the image's user
(uid 100, gid 101) through ``setpriv``, against a stand-in for Elasticsearch
and Kibana: a Python HTTPS server on 127.0.0.1 inside a private network
namespace (``unshare -n``), with a certificate signed by a throw-away CA that
carries the chart's SAN list. The stand-in records every request (method,
path, body, the Basic credentials) and, while each request is in flight,
reads every process's command line to catch a password on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
import cdk8s
import kubernetes_validate
import pytest

from constructs_lib.common import declared_secrets
from constructs_lib.elastic import ELASTICSEARCH, ClientUser
from constructs_lib.elasticsearch import openssl_subject_alt_name
from constructs_lib.elasticsearch_setup import (
    ACTIVE_DEADLINE_SECONDS,
    BACKOFF_LIMIT,
    CURL_GID,
    CURL_UID,
    SCHEDULE,
    SETUP_DIR,
    USERS_DIR,
    ElasticsearchSetup,
    check_users,
)
from constructs_lib.errors import ConfigurationError
from constructs_lib.integrity import check_references
from constructs_lib.kibana import KIBANA, KIBANA_USER
from tests.conftest import elasticsearch_and_kibana
from tests.objects import get

NAMESPACE = "monitoring"
WRITER_ROLE = {
    "cluster": ["monitor", "manage_ilm"],
    "indices": [
        {"names": ["filebeat-*"], "privileges": ["create_doc", "auto_configure"]}
    ],
}
READER_ROLE = {"indices": [{"names": ["jaeger-*"], "privileges": ["read"]}]}
FILEBEAT = ClientUser(
    "filebeat", "filebeat-elasticsearch", "filebeat_writer", WRITER_ROLE
)
JAEGER = ClientUser("jaeger", "jaeger-elasticsearch", "jaeger_reader", READER_ROLE)
USERS = [KIBANA_USER, FILEBEAT, JAEGER]

# Passwords that need every escape: quotes, backslashes, shell syntax.
PASSWORDS = {
    "elastic": "el\"as\\tic $(id) `id` 'x' %s",
    "kibana_system": "kibana-system-password",
    "filebeat": 'file"beat\\pass word',
    "jaeger": "jaeger $HOME ;& |",
}
TEMPLATE_STEP = """. "$SETUP_LIB"
[ -r "$ELASTIC_PASSWORD_FILE" ] && [ -r "$ES_CA_FILE" ]
es_call PUT /_index_template/sunday-logs '{"index_patterns":["sunday-logs-*"]}'
expect 200
"""
KIBANA_STEP = """. "$SETUP_LIB"
wait_for_kibana 3 0
kibana_call POST /api/data_views/data_view '{"data_view":{"title":"sunday-logs-*"}}'
expect 200
"""
HARNESS_TIMEOUT = 150


def synth(**kwargs: Any) -> tuple[cdk8s.Chart, list[dict[str, Any]]]:
    chart = cdk8s.Chart(cdk8s.Testing.app(), "test")
    ElasticsearchSetup(
        chart,
        "setup",
        namespace=NAMESPACE,
        users=kwargs.pop("users", USERS),
        extra_steps=kwargs.pop("extra_steps", [TEMPLATE_STEP, KIBANA_STEP]),
        **kwargs,
    )
    return chart, cdk8s.Testing.synth(chart)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return synth()[1]


def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cron = get(objects, "CronJob", "elasticsearch-setup")["spec"]
    return cron["jobTemplate"]["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (setup,) = pod(objects)["containers"]
    return setup


def env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container(objects)["env"]}


def files(objects: list[dict[str, Any]]) -> dict[str, str]:
    return get(objects, "ConfigMap", "elasticsearch-setup")["data"]


# --- the objects -------------------------------------------------------------


def test_every_object_is_valid_kubernetes_1_27(objects: list[dict]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, "1.27.0", strict=True)


def test_every_reference_resolves_and_every_secret_is_declared() -> None:
    chart, objects = synth()
    secrets = declared_secrets(chart)
    servers, server_secrets = elasticsearch_and_kibana()
    assert check_references(objects + servers, secrets + server_secrets) == []
    names = {secret.name for secret in secrets}
    assert names == {
        "elasticsearch-elastic",
        "elasticsearch-certs",
        "kibana-elasticsearch",
        "filebeat-elasticsearch",
        "jaeger-elasticsearch",
    }


def test_setup_runs_again_until_it_succeeds_and_after(objects: list[dict]) -> None:
    cron = get(objects, "CronJob", "elasticsearch-setup")["spec"]
    job = cron["jobTemplate"]["spec"]

    assert cron["schedule"] == SCHEDULE
    assert cron["concurrencyPolicy"] == "Forbid"
    # One run ends before the next is due.
    assert ACTIVE_DEADLINE_SECONDS < 600
    assert job["backoffLimit"] == BACKOFF_LIMIT
    assert job["activeDeadlineSeconds"] == ACTIVE_DEADLINE_SECONDS
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    # The wait for the cluster fits in the deadline with room for the rest.
    wait = int(env(objects)["WAIT_ATTEMPTS"]) * (int(env(objects)["WAIT_SECONDS"]) + 5)
    assert wait < ACTIVE_DEADLINE_SECONDS


def test_job_runs_as_the_curl_user_with_nothing_writable(objects: list[dict]) -> None:
    spec = pod(objects)
    assert spec["securityContext"]["runAsUser"] == CURL_UID
    assert spec["securityContext"]["runAsGroup"] == CURL_GID
    assert spec["securityContext"]["fsGroup"] == CURL_GID
    assert spec["automountServiceAccountToken"] is False
    context = container(objects)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert all(mount["readOnly"] for mount in container(objects)["volumeMounts"])
    assert container(objects)["image"] == "curlimages/curl:8.4.0"


def test_each_user_password_is_mounted_where_the_script_reads_it(
    objects: list[dict],
) -> None:
    volumes = {volume["name"]: volume for volume in pod(objects)["volumes"]}
    mounted = {
        mount["mountPath"]: volumes[mount["name"]]
        for mount in container(objects)["volumeMounts"]
    }
    for user in USERS:
        volume = mounted[f"{USERS_DIR}/{user.username}"]
        assert volume["secret"]["secretName"] == user.secret
        assert volume["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert env(objects)["USERS_DIR"] == USERS_DIR
    assert mounted[env(objects)["SETUP_DIR"]]["configMap"]["name"] == (
        "elasticsearch-setup"
    )
    ca_dir = env(objects)["ES_CA_FILE"].rsplit("/", 1)[0]
    assert mounted[ca_dir]["secret"]["secretName"] == "elasticsearch-certs"
    elastic_dir = env(objects)["ELASTIC_PASSWORD_FILE"].rsplit("/", 1)[0]
    assert mounted[elastic_dir]["secret"]["secretName"] == "elasticsearch-elastic"


def test_job_addresses_the_shared_endpoints(objects: list[dict]) -> None:
    assert env(objects)["ES_URL"] == ELASTICSEARCH.url == "https://elasticsearch:9200"
    assert env(objects)["KIBANA_URL"] == KIBANA.url == "http://kibana:5601"
    assert container(objects)["command"] == ["/bin/sh", f"{SETUP_DIR}/setup.sh"]


def test_roles_are_rendered_as_files_once_each() -> None:
    twice = ClientUser("filebeat-2", "filebeat-2-es", "filebeat_writer", WRITER_ROLE)
    _, objects = synth(users=[FILEBEAT, twice], extra_steps=[])
    data = files(objects)
    assert json.loads(data["role-filebeat_writer.json"]) == WRITER_ROLE
    assert data["setup.sh"].count("ensure_role filebeat_writer") == 1
    assert "ensure_user filebeat-2 filebeat_writer" in data["setup.sh"]


def test_no_secret_value_is_rendered() -> None:
    _, objects = synth()
    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    text = json.dumps(objects)
    for password in PASSWORDS.values():
        assert password not in text


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ([ClientUser("elastic", "x")], "never manages the superuser"),
        ([ClientUser("grafana", "grafana-es")], "only the built-in users"),
        (
            [ClientUser("kibana_system", "k", "kibana_writer", {"cluster": []})],
            "is a built-in user",
        ),
        ([ClientUser("a", "a-es", "superuser", {"cluster": ["all"]})], "built in"),
        ([ClientUser("a b", "a-es", "r", {})], "username must be"),
        ([ClientUser("a", "a-es", "r/x", {})], "role_name"),
        ([ClientUser("a", "A_Secret", "r", {})], "not a valid name"),
        ([FILEBEAT, FILEBEAT], "declared twice"),
        (
            [FILEBEAT, ClientUser("b", "b-es", "filebeat_writer", {"cluster": []})],
            "different descriptors",
        ),
        ([ClientUser("kibana_system", "k", "r", None)], "without a role descriptor"),
    ],
)
def test_users_that_cannot_be_created_are_refused(
    users: list[ClientUser], message: str
) -> None:
    assert any(message in problem for problem in check_users(users))
    with pytest.raises(ConfigurationError, match="elasticsearch-setup users"):
        synth(users=users, extra_steps=[])


def test_empty_extra_step_and_moving_image_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="extra step #1 is empty"):
        synth(extra_steps=["  "])
    with pytest.raises(ConfigurationError, match="latest"):
        synth(image="curlimages/curl:latest")


# --- the script, run for real ------------------------------------------------

HARNESS = r'''
"""Serve a recording Elasticsearch/Kibana stand-in; run commands against it."""
import base64
import json
import os
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
lock = threading.Lock()
state = {
    "requests": [],
    "leaks": [],
    "roles": {},
    "users": {},
    "passwords": {},
    "health_failures": spec.get("health_failures", 0),
    "green_after": spec.get("green_after", 0),
}


def private_network():
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    names = sorted(line.split(":")[0].strip() for line in lines)
    if names != ["lo"]:
        raise SystemExit(f"interfaces {names}: run this under unshare -n")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)


def command_lines():
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            found.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return found


def route(record):
    path, _, query = record["path"].partition("?")
    parts = path.strip("/").split("/")
    method = record["method"]
    if record["user"] != "elastic" or record["password"] != spec["elastic_password"]:
        return 401, {"error": "unable to authenticate user"}
    fail = spec.get("fail")
    if fail and [method, path] == fail[:2]:
        return fail[2], {"error": {"type": "injected", "reason": "injected"}}
    if method == "GET" and path == "/_cluster/health":
        if state["health_failures"] > 0:
            state["health_failures"] -= 1
            return 503, {"error": "master_not_discovered_exception"}
        if "wait_for_status" in query and state["green_after"] > 0:
            state["green_after"] -= 1
            return 408, {"status": "red", "timed_out": True}
        return 200, {"status": "green"}
    if method == "GET" and path == "/api/status":
        return 200, {"status": {"overall": {"level": "available"}}}
    if method == "POST" and path == "/api/data_views/data_view":
        if record["headers"].get("kbn-xsrf") is None:
            return 400, {"message": "Request must contain a kbn-xsrf header."}
        return 200, {"data_view": {"id": "x"}}
    if method == "PUT" and parts[0] == "_index_template" and len(parts) == 2:
        return 200, {"acknowledged": True}
    if parts[:2] == ["_security", "role"] and len(parts) == 3 and method == "PUT":
        created = parts[2] not in state["roles"]
        state["roles"][parts[2]] = record["body"]
        return 200, {"role": {"created": created}}
    if parts[:2] == ["_security", "user"] and len(parts) == 3 and method == "PUT":
        if parts[2] in spec["reserved_users"]:
            return 400, {"error": f"user [{parts[2]}] is reserved"}
        created = parts[2] not in state["users"]
        state["users"][parts[2]] = record["body"]["roles"]
        state["passwords"][parts[2]] = record["body"]["password"]
        return 200, {"created": created}
    if (
        parts[:2] == ["_security", "user"]
        and len(parts) == 4
        and parts[3] == "_password"
        and method == "POST"
    ):
        if parts[2] not in spec["reserved_users"] and parts[2] not in state["users"]:
            return 404, {"error": "user not found"}
        state["passwords"][parts[2]] = record["body"]["password"]
        return 200, {}
    return 404, {"error": f"no handler for {method} {path}"}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer()

    do_PUT = do_POST = do_DELETE = do_GET

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode() if length else ""
        user = password = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        leaks = [
            line
            for line in command_lines()
            for secret in spec["secrets"]
            if secret in line
        ]
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"unparsable": raw}
        record = {
            "method": self.command,
            "path": self.path,
            "body": body,
            "user": user,
            "password": password,
            "headers": {
                key.lower(): value
                for key, value in self.headers.items()
                if key.lower() in ("content-type", "kbn-xsrf")
            },
        }
        with lock:
            status, reply = route(record)
            record["status"] = status
            state["requests"].append(record)
            state["leaks"] += leaks
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


private_network()
server = ThreadingHTTPServer(("127.0.0.1", spec.get("port", 0)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(spec["cert"], spec["key"])
server.socket = context.wrap_socket(server.socket, server_side=True)
url = f"https://127.0.0.1:{server.server_address[1]}"
thread = threading.Thread(target=server.serve_forever, daemon=True)
thread.start()
runs = []
try:
    for run in spec["runs"]:
        before = len(state["requests"])
        env = {key: value.replace("{url}", url) for key, value in run["env"].items()}
        process = subprocess.run(
            [
                "setpriv",
                f"--reuid={run['uid']}",
                f"--regid={run['gid']}",
                "--clear-groups",
                "--",
                *run["argv"],
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=run.get("timeout", 60),
            cwd=run["cwd"],
        )
        runs.append(
            {
                "returncode": process.returncode,
                "stdout": process.stdout,
                "stderr": process.stderr,
                "requests": state["requests"][before:],
            }
        )
finally:
    server.shutdown()
    server.server_close()
result = {key: state[key] for key in ("leaks", "roles", "users", "passwords")}
result["runs"] = runs
Path(sys.argv[2]).write_text(json.dumps(result))
'''


@pytest.fixture(scope="module", autouse=True)
def programs() -> None:
    """Every program the live tests use; fail, never skip, when one is missing."""
    for name in ("unshare", "ip", "setpriv", "openssl", "curl", "sh"):
        assert shutil.which(name), (
            f"{name} is missing; `make setup-test` installs it (iproute2, "
            "util-linux, openssl, curl)"
        )
    probe = subprocess.run(
        ["unshare", "-n", "true"], capture_output=True, text=True, timeout=30
    )
    assert probe.returncode == 0, (
        f"cannot make a private network namespace ({probe.stderr.strip()}); "
        "the live tests need root or CAP_SYS_ADMIN"
    )


@pytest.fixture()
def root() -> Iterator[Path]:
    """A directory the script's user may enter but not list."""
    path = Path(tempfile.mkdtemp(prefix="sunday-es-setup-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_certs(directory: Path, subject_alt_name: str) -> dict[str, Path]:
    """A throw-away CA and a server certificate carrying ``subject_alt_name``."""
    directory.mkdir(mode=0o755, exist_ok=True)
    paths = {name: directory / name for name in ("ca.crt", "ca.key", "tls.crt")}
    paths["tls.key"] = directory / "tls.key"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=sunday test CA",
        "-keyout", str(paths["ca.key"]), "-out", str(paths["ca.crt"]),
    )  # fmt: skip
    csr = directory / "tls.csr"
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=elasticsearch",
        "-keyout", str(paths["tls.key"]), "-out", str(csr),
    )  # fmt: skip
    extensions = directory / "san.ext"
    extensions.write_text(
        f"subjectAltName={subject_alt_name}\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl(
        "x509", "-req", "-in", str(csr), "-days", "1",
        "-CA", str(paths["ca.crt"]), "-CAkey", str(paths["ca.key"]),
        "-CAcreateserial", "-extfile", str(extensions), "-out", str(paths["tls.crt"]),
    )  # fmt: skip
    paths["ca.crt"].chmod(0o444)
    return paths


def write_secret(path: Path, value: str) -> None:
    """A file as a Secret volume in the pod shows it: 0440, group fsGroup."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.write_text(value)
    os.chown(path, 0, CURL_GID)
    path.chmod(0o440)


def run_harness(root: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """Run HARNESS in a private network namespace; return what it saw."""
    harness, spec_path, result = (
        root / "harness.py",
        root / "spec.json",
        root / "result.json",
    )
    harness.write_text(HARNESS)
    spec_path.write_text(json.dumps(spec))
    process = subprocess.run(
        ["unshare", "-n", sys.executable, str(harness), str(spec_path), str(result)],
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    return json.loads(result.read_text())


def pod_files(
    root: Path,
    objects: list[dict[str, Any]],
    passwords: dict[str, str],
    *,
    ca: Path,
) -> dict[str, str]:
    """Lay out the pod's files under ``root``; return the Job's env, re-pointed."""
    setup_dir = root / "setup"
    setup_dir.mkdir(mode=0o755)
    for name, text in files(objects).items():
        (setup_dir / name).write_text(text)
        (setup_dir / name).chmod(0o444)
    write_secret(root / "elastic" / "password", passwords["elastic"])
    for user, password in passwords.items():
        if user != "elastic":
            write_secret(root / "users" / user / "password", password)
    job_env = env(objects)
    return {
        **job_env,
        "PATH": "/usr/bin:/bin",
        "ES_URL": "{url}",
        "KIBANA_URL": "{url}",
        "ES_CA_FILE": str(ca),
        "ELASTIC_PASSWORD_FILE": str(root / "elastic" / "password"),
        "SETUP_DIR": str(setup_dir),
        "USERS_DIR": str(root / "users"),
        "WAIT_SECONDS": "0",
    }


def setup_run(
    root: Path, run_env: dict[str, str], argv: list[str] | None = None
) -> dict[str, Any]:
    return {
        "argv": argv or ["/bin/sh", f"{run_env['SETUP_DIR']}/setup.sh"],
        "env": run_env,
        "uid": CURL_UID,
        "gid": CURL_GID,
        "cwd": str(root),
    }


def live(
    root: Path,
    *,
    objects: list[dict[str, Any]] | None = None,
    passwords: dict[str, str] | None = None,
    runs: int = 1,
    env_changes: dict[str, str] | None = None,
    argv: list[str] | None = None,
    **server: Any,
) -> dict[str, Any]:
    objects = objects if objects is not None else synth()[1]
    passwords = passwords or PASSWORDS
    certs = make_certs(
        root / "certs", openssl_subject_alt_name(NAMESPACE) + ",IP:127.0.0.1"
    )
    run_env = {
        **pod_files(root, objects, passwords, ca=certs["ca.crt"]),
        **(env_changes or {}),
    }
    spec = {
        "cert": str(certs["tls.crt"]),
        "key": str(certs["tls.key"]),
        "elastic_password": passwords["elastic"].rstrip("\n"),
        "reserved_users": ["kibana_system", "elastic"],
        "secrets": [p.rstrip("\n") for p in passwords.values()],
        "runs": [setup_run(root, run_env, argv)] * runs,
        **server,
    }
    return run_harness(root, spec)


def calls(run: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(r["method"], r["path"], r["status"]) for r in run["requests"]]


def test_the_watcher_would_catch_a_password_on_a_command_line(root: Path) -> None:
    # The control for the test below. curl blanks its own -u argument once
    # it has read it, but not a request body given as an argument.
    careless = [
        "/bin/sh",
        "-c",
        'password=$(cat "$ELASTIC_PASSWORD_FILE"); curl -q -s -X GET '
        '--cacert "$ES_CA_FILE" -u "elastic:$password" --data-binary "$password" '
        '"$ES_URL/_cluster/health"',
    ]
    seen = live(root, argv=careless)

    assert seen["runs"][0]["requests"][0]["status"] == 200
    assert seen["leaks"]


def test_script_creates_roles_users_and_passwords_then_runs_the_steps(
    root: Path,
) -> None:
    seen = live(root, health_failures=2)
    (run,) = seen["runs"]

    assert run["returncode"] == 0, run["stderr"]
    health = ("GET", "/_cluster/health?wait_for_status=yellow&timeout=5s")
    assert calls(run) == [
        (*health, 503),
        (*health, 503),
        (*health, 200),
        ("POST", "/_security/user/kibana_system/_password", 200),
        ("PUT", "/_security/role/filebeat_writer", 200),
        ("PUT", "/_security/user/filebeat", 200),
        ("PUT", "/_security/role/jaeger_reader", 200),
        ("PUT", "/_security/user/jaeger", 200),
        ("PUT", "/_index_template/sunday-logs", 200),
        ("GET", "/api/status", 200),
        ("POST", "/api/data_views/data_view", 200),
    ]
    # Every request logs in as elastic, with the password from its file.
    assert {(r["user"], r["password"]) for r in run["requests"]} == {
        ("elastic", PASSWORDS["elastic"])
    }
    assert all(
        r["headers"]["content-type"] == "application/json" for r in run["requests"]
    )
    assert run["requests"][-1]["headers"]["kbn-xsrf"]
    assert seen["roles"] == {
        "filebeat_writer": WRITER_ROLE,
        "jaeger_reader": READER_ROLE,
    }
    assert seen["users"] == {
        "filebeat": ["filebeat_writer"],
        "jaeger": ["jaeger_reader"],
    }
    assert seen["passwords"] == {
        user: PASSWORDS[user] for user in ("kibana_system", "filebeat", "jaeger")
    }
    assert run["requests"][5]["body"]["metadata"] == {
        "managed_by": "elasticsearch-setup"
    }


def test_no_password_is_on_a_command_line_or_in_the_log(root: Path) -> None:
    seen = live(root)
    (run,) = seen["runs"]

    assert run["returncode"] == 0, run["stderr"]
    assert seen["leaks"] == []
    for password in PASSWORDS.values():
        assert password not in run["stdout"] + run["stderr"]


def test_second_run_sends_the_same_requests_and_changes_nothing(root: Path) -> None:
    seen = live(root, runs=2)
    first, second = seen["runs"]

    assert first["returncode"] == second["returncode"] == 0, second["stderr"]
    assert calls(second) == calls(first)
    assert [r["body"] for r in second["requests"]] == [
        r["body"] for r in first["requests"]
    ]
    assert seen["users"] == {
        "filebeat": ["filebeat_writer"],
        "jaeger": ["jaeger_reader"],
    }


def test_an_error_stops_the_job_with_the_http_status(root: Path) -> None:
    seen = live(root, fail=["PUT", "/_security/role/filebeat_writer", 403])
    (run,) = seen["runs"]

    assert run["returncode"] != 0
    assert "PUT /_security/role/filebeat_writer answered HTTP 403" in run["stderr"]
    assert calls(run)[-1] == ("PUT", "/_security/role/filebeat_writer", 403)
    assert "filebeat" not in seen["users"]


def test_a_refused_password_is_reported_without_the_password(root: Path) -> None:
    seen = live(root, fail=["PUT", "/_security/user/filebeat", 400])
    (run,) = seen["runs"]

    assert run["returncode"] != 0
    assert "PUT /_security/user/filebeat answered HTTP 400" in run["stderr"]
    assert PASSWORDS["filebeat"] not in run["stderr"]


def test_waiting_for_the_cluster_is_bounded(root: Path) -> None:
    seen = live(root, health_failures=100, env_changes={"WAIT_ATTEMPTS": "3"})
    (run,) = seen["runs"]

    assert run["returncode"] != 0
    assert len(run["requests"]) == 3
    assert "after 3 attempts; last answer HTTP 503" in run["stderr"]


def test_a_server_not_signed_by_the_ca_gets_no_request(root: Path) -> None:
    other = make_certs(root / "other", "DNS:elsewhere")
    seen = live(
        root, env_changes={"ES_CA_FILE": str(other["ca.crt"]), "WAIT_ATTEMPTS": "2"}
    )
    (run,) = seen["runs"]

    assert run["returncode"] != 0
    assert run["requests"] == []
    assert "HTTP 000" in run["stderr"]


def test_password_files_are_read_like_the_images_read_them(root: Path) -> None:
    passwords = {
        **PASSWORDS,
        "kibana_system": "trailing-newline\n",
        "jaeger": "two\nlines",
    }
    seen = live(root, passwords=passwords)
    (run,) = seen["runs"]

    # The trailing newline is dropped; a password of two lines is refused.
    assert seen["passwords"]["kibana_system"] == "trailing-newline"
    assert run["returncode"] != 0
    assert "control character" in run["stderr"]
    assert ("PUT", "/_security/user/jaeger") not in [
        (r["method"], r["path"]) for r in run["requests"]
    ]
