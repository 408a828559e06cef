"""``python -m incident open``, run for real against local PagerDuty and Slack.

Each scenario runs this file as a helper under ``unshare -n``:

    unshare -n python tests/test_incident.py --helper SPEC.json RESULT.json

The helper refuses to run unless loopback is the only network interface,
starts two HTTP sinks on 127.0.0.1 of that private namespace (one standing in
for the PagerDuty REST API, one for the Slack incoming webhook; each records
the method, path, headers and body of every request, and the incident
reports on disk at that moment, and answers as the spec says), then runs the
real command as a subprocess with every endpoint pointed at the sinks. So
nothing, defaults included, can reach PagerDuty, Slack or any other host.
Every wait is bounded; the command is killed by its PID if it overruns, and
the helper by its PID if it does. The secrets are random per test run and
must never appear in stdout, stderr or a report.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, the helper still imports it
    sys.path.insert(0, str(ROOT))

import incident  # noqa: E402

HELPER_TIMEOUT = 90
RUN_TIMEOUT = 40

# Random per run, recognisable as test values; never real.
TOKEN = f"test-pd-token-{secrets.token_hex(12)}"
ENV_TOKEN = f"test-pd-env-token-{secrets.token_hex(12)}"
HOOK_PATH = f"/services/TTEST0000/BTEST0000/{secrets.token_hex(12)}"
ENV_HOOK_PATH = f"/services/TTEST0000/BTEST0000/{secrets.token_hex(12)}env"
SECRETS = (TOKEN, ENV_TOKEN, HOOK_PATH, ENV_HOOK_PATH, HOOK_PATH.rsplit("/")[-1])

PD_INCIDENT = {
    "incident": {
        "id": "PT4KHLK",
        "type": "incident",
        "incident_number": 42,
        "html_url": "https://sunday.pagerduty.test/incidents/PT4KHLK",
    }
}
CREATED = {"status": 201, "body": json.dumps(PD_INCIDENT)}
SLACK_OK = {"status": 200, "body": "ok", "type": "text/html"}
ID = re.compile(r"INC-\d{8}-\d{6}-[0-9a-f]{6}")

# The flags every PagerDuty run passes.
OPEN = [
    "open",
    "--service-id",
    "PSVC001",
    "--from-email",
    "oncall@sunday.test",
]


# --- the helper, inside the private network namespace ----------------------


def assert_private_network() -> None:
    """Bring loopback up; refuse to go on if any other interface exists."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    interfaces = sorted(line.split(":")[0].strip() for line in lines)
    if interfaces != ["lo"]:
        raise RuntimeError(f"interfaces {interfaces}: run this under `unshare -n`")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)


class Sink:
    """An HTTP server on 127.0.0.1 that records requests and answers by script."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.workdir: Path | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}
        )
        self.thread.daemon = True
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reset(self, responses: list[dict[str, Any]], workdir: Path) -> None:
        with self.lock:
            self.requests, self.responses, self.workdir = [], responses, workdir

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def _reports(self) -> dict[str, str]:
        if self.workdir is None:
            return {}
        return {
            str(path.relative_to(self.workdir)): path.read_text()
            for path in sorted(self.workdir.glob("**/incident-report.md"))
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 1 << 20))
                headers = [[key, value] for key, value in self.headers.items()]
                with sink.lock:
                    index = len(sink.requests)
                    sink.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": headers,
                            "body": body.decode("utf-8", errors="replace"),
                            "reports": sink._reports(),
                        }
                    )
                    response = sink.responses[min(index, len(sink.responses) - 1)]
                time.sleep(response.get("delay", 0))
                if response.get("trickle"):
                    self.trickle(response)
                    return
                if response.get("echo"):
                    # A server that repeats a request header back in its error.
                    name = response["echo"]
                    errors = [f"{name}: {self.headers.get(name)}"]
                    text = json.dumps({"error": {"message": "echo", "errors": errors}})
                else:
                    text = response.get("body", "")
                payload = text.encode()
                try:
                    self.send_response(response["status"])
                    self.send_header(
                        "Content-Type", response.get("type", "application/json")
                    )
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in response.get("headers", {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (a timeout scenario)

            def trickle(self, response: dict[str, Any]) -> None:
                """Answer one byte at a time, from the status line or the body."""
                payload = response.get("body", "").encode()
                head = (
                    f"HTTP/1.1 {response['status']} Whatever\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                fast, slow = b"", head + payload
                if response["trickle"] == "body":
                    fast, slow = head, payload
                stop = time.monotonic() + 30  # bounded whatever happens
                try:
                    self.wfile.write(fast)
                    for byte in slow:
                        if time.monotonic() > stop:
                            break
                        self.wfile.write(bytes([byte]))
                        time.sleep(0.25)
                except OSError:
                    pass  # the client gave up, as it should
                self.close_connection = True

            do_POST = do_GET = do_PUT = handle_one

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def fill(text: str, urls: dict[str, str]) -> str:
    for name, url in urls.items():
        text = text.replace("{" + name + "}", url)
    return text


def helper(spec_path: Path, result_path: Path) -> None:
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    # subprocess.run kills the running command by its PID on the way out.
    signal.signal(signal.SIGTERM, stop)
    assert_private_network()
    spec = json.loads(spec_path.read_text())
    sinks = {"pagerduty": Sink("pagerduty"), "slack": Sink("slack")}
    urls = {name: sink.url for name, sink in sinks.items()}
    results = []
    try:
        for number, run in enumerate(spec["runs"]):
            workdir = Path(spec["root"]) / f"run-{number}"
            workdir.mkdir(parents=True)
            for name, sink in sinks.items():
                sink.reset(spec["responses"][name], workdir)
            for relative, content in run.get("files", {}).items():
                path = workdir / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(fill(content, urls))
                path.chmod(0o600)
            for relative in run.get("fifos", []):
                (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
                os.mkfifo(workdir / relative, 0o600)
            env = {key: fill(value, urls) for key, value in run["env"].items()}
            argv = [fill(argument, urls) for argument in run["argv"]]
            started = time.monotonic()
            process = subprocess.Popen(
                [sys.executable, "-m", "incident", *argv],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                if run.get("interrupt"):
                    # Ctrl-C once the call to this sink is under way.
                    sink = sinks[run["interrupt"]]
                    while time.monotonic() - started < RUN_TIMEOUT / 2:
                        with sink.lock:
                            if sink.requests:
                                break
                        time.sleep(0.05)
                    time.sleep(0.3)
                    process.send_signal(signal.SIGINT)
                stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
                returncode = process.returncode
            except subprocess.TimeoutExpired:
                process.kill()  # by its PID
                stdout, stderr = process.communicate()
                returncode = f"killed after {RUN_TIMEOUT} s"
            elapsed = time.monotonic() - started
            files = {
                str(path.relative_to(workdir)): path.read_text()
                for path in sorted(workdir.glob("**/*"))
                if path.is_file()
                and not path.is_fifo()
                and path.parts[len(workdir.parts)] != "secrets"
            }
            with sinks["pagerduty"].lock, sinks["slack"].lock:
                requests = {name: list(sink.requests) for name, sink in sinks.items()}
            results.append(
                {
                    "returncode": returncode,
                    "stdout": stdout,
                    "stderr": stderr,
                    "elapsed": elapsed,
                    "files": files,
                    "requests": requests,
                    "urls": urls,
                }
            )
    finally:
        for sink in sinks.values():
            sink.close()
    result_path.write_text(json.dumps({"runs": results}))


# --- the tests' side --------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def private_network() -> None:
    """The scenarios need `unshare -n` and `ip`; fail, never skip."""
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode == 0, (
        f"cannot make a private network namespace ({probe.stderr.strip()}); "
        "these tests need root (or CAP_SYS_ADMIN), util-linux and iproute2"
    )


def scenario(
    tmp_path: Path,
    runs: list[dict[str, Any]],
    pagerduty: list[dict[str, Any]] | None = None,
    slack: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run the helper in a private network namespace; its result per run."""
    spec_path, result_path = tmp_path / "spec.json", tmp_path / "result.json"
    spec = {
        "root": str(tmp_path / "runs"),
        "runs": runs,
        "responses": {
            "pagerduty": pagerduty or [CREATED],
            "slack": slack or [SLACK_OK],
        },
    }
    spec_path.write_text(json.dumps(spec))
    spec_path.chmod(0o600)
    command = [
        "unshare",
        "-n",
        sys.executable,
        str(Path(__file__).resolve()),
        "--helper",
        str(spec_path),
        str(result_path),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"helper ran past {HELPER_TIMEOUT} s:\n{output}")
    assert process.returncode == 0, f"helper failed:\n{output}"
    return json.loads(result_path.read_text())["runs"]


def base_env(**extra: str) -> dict[str, str]:
    """No inherited credentials or proxies: only what a scenario sets."""
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PAGERDUTY_API_URL": "{pagerduty}",
        **extra,
    }


def credential_files() -> dict[str, str]:
    return {
        "secrets/pagerduty-token": TOKEN + "\n",
        "secrets/slack-webhook-url": "{slack}" + HOOK_PATH + "\n",
    }


def with_files(argv: list[str], **env: str) -> dict[str, Any]:
    """A run whose credentials come from files."""
    return {
        "argv": argv,
        "env": base_env(
            PAGERDUTY_API_TOKEN_FILE="secrets/pagerduty-token",
            SLACK_WEBHOOK_URL_FILE="secrets/slack-webhook-url",
            **env,
        ),
        "files": credential_files(),
    }


def headers(request: dict[str, Any]) -> dict[str, str]:
    return {key.lower(): value for key, value in request["headers"]}


def body(request: dict[str, Any]) -> dict[str, Any]:
    return json.loads(request["body"])


def reports(run: dict[str, Any]) -> dict[str, str]:
    return {
        path: text
        for path, text in run["files"].items()
        if path.endswith("/incident-report.md")
    }


def only_report(run: dict[str, Any]) -> tuple[str, str]:
    found = reports(run)
    assert len(found) == 1, f"expected one report, found {sorted(found)}"
    return next(iter(found.items()))


def incident_id(report_path: str) -> str:
    match = ID.search(report_path)
    assert match, report_path
    return match.group(0)


def section(report: str, title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", report, re.M | re.S)
    assert match, f"no {title} section in:\n{report}"
    return match.group(1)


def assert_no_secrets(run: dict[str, Any]) -> None:
    slack_url = run["urls"]["slack"]
    texts = {"stdout": run["stdout"], "stderr": run["stderr"], **run["files"]}
    for where, text in texts.items():
        for secret in (*SECRETS, slack_url + HOOK_PATH):
            assert secret not in text, f"a secret appears in {where}:\n{text}"


def stderr_lines(run: dict[str, Any]) -> list[str]:
    return run["stderr"].splitlines()


# --- scenarios ---------------------------------------------------------------


def test_opens_incident_pages_pagerduty_and_posts_to_slack(tmp_path: Path) -> None:
    description = "Checkout returns 5xx <!channel> & retries"
    run = with_files(
        [
            *OPEN,
            "--severity",
            "critical",
            "--description",
            description,
            "--priority-id",
            "PPRI001",
        ],
        # A proxy that does not exist: loopback endpoints must bypass it.
        HTTP_PROXY="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
    )
    [result] = scenario(tmp_path, [run])
    assert result["returncode"] == 0, result
    assert result["stderr"] == ""
    path, report = only_report(result)
    number = incident_id(path)
    assert path == f"incidents/{number}/incident-report.md"

    [page] = result["requests"]["pagerduty"]
    assert page["method"] == "POST"
    assert page["path"] == "/incidents"
    sent = headers(page)
    assert sent["authorization"] == f"Token token={TOKEN}"
    assert sent["from"] == "oncall@sunday.test"
    assert sent["accept"] == "application/vnd.pagerduty+json;version=2"
    assert sent["content-type"] == "application/json"
    created = body(page)["incident"]
    assert created["type"] == "incident"
    assert created["title"] == description
    assert created["service"] == {"id": "PSVC001", "type": "service_reference"}
    assert created["priority"] == {"id": "PPRI001", "type": "priority_reference"}
    assert created["urgency"] == "high"
    assert created["incident_key"] == number
    assert created["body"]["type"] == "incident_body"
    assert description in created["body"]["details"]
    # The report was on disk, still pending, before PagerDuty was called.
    assert list(page["reports"]) == [path]
    assert "- PagerDuty: pending" in page["reports"][path]

    [message] = result["requests"]["slack"]
    assert message["method"] == "POST"
    assert message["path"] == HOOK_PATH
    assert headers(message)["content-type"] == "application/json"
    assert "authorization" not in headers(message)
    posted = body(message)
    escaped = "Checkout returns 5xx &lt;!channel&gt; &amp; retries"
    assert escaped in posted["text"] and "<!channel>" not in posted["text"]
    [attachment] = posted["attachments"]
    assert attachment["color"] == "#D40E0D"
    fields = {field["title"]: field["value"] for field in attachment["fields"]}
    assert fields["Severity"] == "critical"
    assert fields["Description"] == escaped
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", fields["Time"])
    assert fields["Incident"] == number
    html_url = PD_INCIDENT["incident"]["html_url"]
    assert fields["PagerDuty"] == f"<{html_url}|PT4KHLK #42>"

    for heading in (
        "Description",
        "Timeline",
        "Impact Assessment",
        "Actions Taken",
        "Next Steps",
        "Communication",
    ):
        section(report, heading)
    assert description in section(report, "Description")
    assert "- [ ] " in section(report, "Next Steps")
    communication = section(report, "Communication")
    assert "PagerDuty: incident PT4KHLK #42 created, urgency high" in communication
    assert html_url in communication
    assert "- Slack: posted" in communication
    assert "Slack notified" in section(report, "Timeline")
    assert f"report written: {path}" in result["stdout"]
    assert_no_secrets(result)


def test_pagerduty_500_fails_with_one_line_and_keeps_the_report(
    tmp_path: Path,
) -> None:
    run = with_files(
        [*OPEN, "--severity", "warning", "--description", "Queue backlog growing"]
    )
    # The failing server echoes the request's headers, token included.
    [result] = scenario(
        tmp_path, [run], pagerduty=[{"status": 500, "echo": "Authorization"}]
    )
    assert result["returncode"] == 1, result
    [line] = stderr_lines(result)
    assert line.startswith("incident: PagerDuty: POST "), line
    assert "HTTP 500 after 3 attempts" in line
    assert "Token token=<redacted>" in line  # the echo, redacted
    assert TOKEN not in line

    # Bounded retries, each the same request (the same incident_key).
    pages = result["requests"]["pagerduty"]
    assert len(pages) == 3
    assert len({page["body"] for page in pages}) == 1

    _, report = only_report(result)
    communication = section(report, "Communication")
    assert "PagerDuty: **FAILED** (HTTP 500 after 3 attempts" in communication
    assert "page the on-call by hand" in communication
    assert "- Slack: posted" in communication
    assert "PagerDuty page FAILED" in section(report, "Timeline")
    # Slack still hears of the incident, and that the page failed.
    [message] = result["requests"]["slack"]
    fields = {
        field["title"]: field["value"]
        for field in body(message)["attachments"][0]["fields"]
    }
    assert fields["PagerDuty"].startswith("page FAILED (HTTP 500")
    assert_no_secrets(result)


def test_retries_a_503_then_succeeds(tmp_path: Path) -> None:
    run = with_files([*OPEN, "--severity", "critical", "--description", "DB down"])
    [result] = scenario(tmp_path, [run], pagerduty=[{"status": 503}, CREATED])
    assert result["returncode"] == 0, result
    pages = result["requests"]["pagerduty"]
    assert len(pages) == 2 and pages[0]["body"] == pages[1]["body"]
    assert len(result["requests"]["slack"]) == 1
    assert_no_secrets(result)


def test_a_client_error_is_not_retried_and_is_explained(tmp_path: Path) -> None:
    error = {"error": {"message": "Invalid Input Provided", "code": 2001}}
    error["error"]["errors"] = ["Requester User Not Found"]
    run = with_files([*OPEN, "--severity", "info", "--description", "Slow reports"])
    [result] = scenario(
        tmp_path, [run], pagerduty=[{"status": 400, "body": json.dumps(error)}]
    )
    assert result["returncode"] == 1
    assert len(result["requests"]["pagerduty"]) == 1
    [line] = stderr_lines(result)
    assert "HTTP 400 after 1 attempt: Invalid Input Provided; Requester User" in line
    assert_no_secrets(result)


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    redirect = {"status": 307, "headers": {"Location": "{pagerduty}/elsewhere"}}
    run = with_files([*OPEN, "--severity", "critical", "--description", "x"])
    [result] = scenario(tmp_path, [run], pagerduty=[redirect])
    assert result["returncode"] == 1
    assert [page["path"] for page in result["requests"]["pagerduty"]] == ["/incidents"]
    assert "HTTP 307" in result["stderr"]
    assert_no_secrets(result)


def test_slack_failure_names_the_call_not_the_webhook(tmp_path: Path) -> None:
    run = with_files([*OPEN, "--severity", "critical", "--description", "API down"])
    [result] = scenario(
        tmp_path,
        [run],
        slack=[{"status": 404, "body": "no_service", "type": "text/html"}],
    )
    assert result["returncode"] == 1
    [line] = stderr_lines(result)
    assert line.startswith("incident: Slack: POST to the webhook at http://127.0.0.1:")
    assert line.endswith("/<redacted> failed: HTTP 404 after 1 attempt: no_service")
    assert len(result["requests"]["pagerduty"]) == 1
    _, report = only_report(result)
    communication = section(report, "Communication")
    assert "- Slack: **FAILED** (HTTP 404 after 1 attempt" in communication
    assert "PagerDuty: incident PT4KHLK #42 created" in communication
    assert_no_secrets(result)


def test_each_attempt_has_a_timeout_and_the_attempts_are_bounded(
    tmp_path: Path,
) -> None:
    run = with_files(
        [
            *OPEN,
            "--severity",
            "critical",
            "--description",
            "Hung API",
            "--timeout",
            "0.5",
            "--attempts",
            "2",
        ]
    )
    [result] = scenario(tmp_path, [run], pagerduty=[{**CREATED, "delay": 3}])
    assert result["returncode"] == 1, result
    assert len(result["requests"]["pagerduty"]) == 2
    [line] = stderr_lines(result)
    assert "no response after 2 attempts: timed out after 0.5 s" in line
    assert result["elapsed"] < 10
    assert len(result["requests"]["slack"]) == 1
    assert_no_secrets(result)


def test_severity_maps_to_urgency_and_colour(tmp_path: Path) -> None:
    runs = [
        with_files([*OPEN, "--severity", severity, "--description", severity])
        for severity in ("critical", "warning", "info")
    ]
    results = scenario(tmp_path, runs)
    seen = []
    for result in results:
        assert result["returncode"] == 0, result
        [page] = result["requests"]["pagerduty"]
        [message] = result["requests"]["slack"]
        seen.append(
            (
                body(page)["incident"]["urgency"],
                body(message)["attachments"][0]["color"],
            )
        )
    assert seen == [("high", "#D40E0D"), ("low", "#F2A900"), ("low", "#439FE0")]


def test_missing_or_unreadable_credentials_are_clear_errors(tmp_path: Path) -> None:
    argv = [*OPEN, "--severity", "critical", "--description", "x"]
    files = credential_files()
    runs = [
        {"argv": argv, "env": base_env(), "files": {}},
        {
            "argv": argv,
            "env": base_env(PAGERDUTY_API_TOKEN_FILE="secrets/pagerduty-token"),
            "files": files,
        },
        {
            "argv": argv,
            "env": base_env(
                PAGERDUTY_API_TOKEN_FILE="secrets/absent",
                SLACK_WEBHOOK_URL_FILE="secrets/slack-webhook-url",
            ),
            "files": files,
        },
        {
            "argv": ["open", "--severity", "critical", "--description", "x"],
            "env": base_env(
                PAGERDUTY_API_TOKEN_FILE="secrets/pagerduty-token",
                SLACK_WEBHOOK_URL_FILE="secrets/slack-webhook-url",
            ),
            "files": files,
        },
        {
            "argv": [*argv[:3], "--severity", "critical", "--description", "x"],
            "env": base_env(
                PAGERDUTY_API_TOKEN_FILE="secrets/pagerduty-token",
                SLACK_WEBHOOK_URL_FILE="secrets/slack-webhook-url",
            ),
            "files": files,
        },
        {
            "argv": argv,
            "env": base_env(
                PAGERDUTY_API_TOKEN_FILE="secrets/empty",
                SLACK_WEBHOOK_URL_FILE="secrets/slack-webhook-url",
            ),
            "files": {**files, "secrets/empty": "\n"},
        },
    ]
    expected = [
        "PagerDuty API token missing: set PAGERDUTY_API_TOKEN_FILE",
        "Slack webhook URL missing: set SLACK_WEBHOOK_URL_FILE",
        "PagerDuty API token: cannot read PAGERDUTY_API_TOKEN_FILE "
        "(secrets/absent): No such file or directory",
        "PagerDuty service missing: pass --service-id",
        "PagerDuty requester missing: pass --from-email",
        "PagerDuty API token from PAGERDUTY_API_TOKEN_FILE is empty",
    ]
    results = scenario(tmp_path, runs)
    for result, message in zip(results, expected, strict=True):
        assert result["returncode"] == 2, result
        [line] = stderr_lines(result)
        assert line == f"incident: error: {message}" or line.startswith(
            f"incident: error: {message}"
        ), line
        assert result["requests"] == {"pagerduty": [], "slack": []}
        assert reports(result) == {}
        assert_no_secrets(result)


def test_credential_file_wins_over_the_environment(tmp_path: Path) -> None:
    argv = [*OPEN, "--severity", "critical", "--description", "x"]
    both = with_files(
        argv,
        PAGERDUTY_API_TOKEN=ENV_TOKEN,
        SLACK_WEBHOOK_URL="{slack}" + ENV_HOOK_PATH,
    )
    both["files"]["secrets/pagerduty-token"] = TOKEN + "\r\n"
    environment_only = {
        "argv": argv,
        "env": base_env(
            PAGERDUTY_API_TOKEN=ENV_TOKEN,
            SLACK_WEBHOOK_URL="{slack}" + ENV_HOOK_PATH,
        ),
    }
    from_file, from_env = scenario(tmp_path, [both, environment_only])
    for result in (from_file, from_env):
        assert result["returncode"] == 0, result
        assert_no_secrets(result)
    [page] = from_file["requests"]["pagerduty"]
    assert headers(page)["authorization"] == f"Token token={TOKEN}"
    assert [m["path"] for m in from_file["requests"]["slack"]] == [HOOK_PATH]
    [page] = from_env["requests"]["pagerduty"]
    assert headers(page)["authorization"] == f"Token token={ENV_TOKEN}"
    assert [m["path"] for m in from_env["requests"]["slack"]] == [ENV_HOOK_PATH]


def test_dry_run_sends_nothing_and_redacts(tmp_path: Path) -> None:
    run = with_files(
        [*OPEN, "--severity", "critical", "--description", "Rehearsal", "--dry-run"]
    )
    [result] = scenario(tmp_path, [run])
    assert result["returncode"] == 0, result
    assert result["requests"] == {"pagerduty": [], "slack": []}
    out = result["stdout"]
    assert "dry run: nothing is sent" in out
    assert f"POST {result['urls']['pagerduty']}/incidents" in out
    assert "Authorization: Token token=<redacted>" in out
    assert "From: oncall@sunday.test" in out
    assert f"POST {result['urls']['slack']}/<redacted>" in out
    assert '"incident_key": "INC-' in out and '"urgency": "high"' in out
    _, report = only_report(result)
    assert "- PagerDuty: dry run, nothing sent" in section(report, "Communication")
    assert_no_secrets(result)


def test_credentials_on_the_command_line_are_refused(tmp_path: Path) -> None:
    argv = [*OPEN, "--severity", "critical", "--description"]
    slack_url = "https://hooks.slack.com" + HOOK_PATH
    attempts = [
        [*argv, "x", "--token", TOKEN],
        [*argv, "x", f"--pagerduty-api-token={TOKEN}"],
        [*argv, "x", "--slack-webhook-url", "{slack}" + HOOK_PATH],
        [*argv, slack_url],
        [*argv, f"paged with {TOKEN}"],  # the configured token, pasted
        [*argv, "x", TOKEN],  # unrecognized: argparse must not echo it
    ]
    results = scenario(tmp_path, [with_files(command) for command in attempts])
    for result in results:
        assert result["returncode"] == 2, result
        assert "refusing" in result["stderr"] or "not shown" in result["stderr"]
        assert result["requests"] == {"pagerduty": [], "slack": []}
        assert reports(result) == {}
        assert_no_secrets(result)
        assert "hooks.slack.com" not in result["stderr"]
    assert "refusing --token:" in results[0]["stderr"]
    assert "refusing --pagerduty-api-token:" in results[1]["stderr"]


def test_plain_http_to_another_host_is_refused_before_anything(
    tmp_path: Path,
) -> None:
    argv = [*OPEN, "--severity", "critical", "--description", "x"]
    remote_api = with_files(argv, PAGERDUTY_API_URL="http://pagerduty.invalid")
    remote_hook = with_files(argv)
    remote_hook["files"]["secrets/slack-webhook-url"] = (
        "http://hooks.invalid" + HOOK_PATH
    )
    api, hook = scenario(tmp_path, [remote_api, remote_hook])
    assert api["returncode"] == hook["returncode"] == 2
    assert (
        "PAGERDUTY_API_URL (http://pagerduty.invalid) must use https" in (api["stderr"])
    )
    assert (
        "Slack webhook URL from SLACK_WEBHOOK_URL_FILE (not shown) must use"
        in (hook["stderr"])
    )
    for result in (api, hook):
        assert reports(result) == {}
        assert_no_secrets(result)


def test_report_only_needs_no_credentials(
    tmp_path: Path,
) -> None:
    run = {
        "argv": [
            "open",
            "--severity",
            "info",
            "--description",
            "Log shipping delayed",
            "--no-pagerduty",
            "--no-slack",
            "--reports-dir",
            "var/incidents",
        ],
        "env": base_env(),
        # An earlier incident in the same directory, left alone.
        "files": {"var/incidents/INC-20000101-000000-aaaaaa/incident-report.md": ""},
    }
    [result] = scenario(tmp_path, [run])
    assert result["returncode"] == 0, result
    assert result["requests"] == {"pagerduty": [], "slack": []}
    new = [path for path, text in reports(result).items() if text]
    [path] = new
    assert path.startswith("var/incidents/INC-")
    communication = section(result["files"][path], "Communication")
    assert "PagerDuty: skipped (--no-pagerduty)" in communication
    assert "Slack: skipped (--no-slack)" in communication


def subdir(tmp_path: Path, name: str) -> Path:
    """A fresh directory for one more scenario in the same test."""
    path = tmp_path / name
    path.mkdir()
    return path


DUPLICATE_KEY = {
    "status": 400,
    "body": json.dumps(
        {
            "error": {
                "message": "Invalid Input Provided",
                "code": 2001,
                "errors": [
                    "Open incident with matching dedup key already exists on "
                    "this service"
                ],
            }
        }
    ),
}


def test_a_retry_refused_as_a_duplicate_confirms_the_page(tmp_path: Path) -> None:
    argv = [*OPEN, "--severity", "critical", "--description", "Lost answer"]
    run = with_files([*argv, "--timeout", "0.5", "--attempts", "3"])
    # The first request creates the incident but answers after the client's
    # timeout; the retry, with the same incident_key, is refused.
    [result] = scenario(
        subdir(tmp_path, "lost"),
        [run],
        pagerduty=[{**CREATED, "delay": 2}, DUPLICATE_KEY],
    )
    assert result["returncode"] == 0, result
    assert result["stderr"] == ""
    pages = result["requests"]["pagerduty"]
    assert len(pages) == 2 and pages[0]["body"] == pages[1]["body"]
    _, report = only_report(result)
    communication = section(report, "Communication")
    assert "- PagerDuty: incident created (confirmed by duplicate-key rejection" in (
        communication
    )
    assert "FAILED" not in report
    assert "confirmed by duplicate-key rejection" in result["stdout"]
    [message] = result["requests"]["slack"]
    fields = {
        field["title"]: field["value"]
        for field in body(message)["attachments"][0]["fields"]
    }
    assert fields["PagerDuty"] == "paged"
    assert_no_secrets(result)

    # The same refusal of a first attempt is not ours: it stays a failure.
    [first] = scenario(subdir(tmp_path, "first"), [run], pagerduty=[DUPLICATE_KEY])
    assert first["returncode"] == 1, first
    assert len(first["requests"]["pagerduty"]) == 1
    assert "PagerDuty: **FAILED** (HTTP 400" in only_report(first)[1]


def test_server_text_is_sanitised_on_stderr_and_in_the_report(tmp_path: Path) -> None:
    hostile = (
        "\x1b[2J\x1b]8;;https://evil.test\x07Click\x1b]8;;\x07 "
        "\u202eevil\u202c \u2066iso\u2069 \x9b31m "
        "[fake](https://evil.test) ![img](https://evil.test/x.png) <b>bold</b>"
    )
    error = {"error": {"message": "Bad", "errors": [hostile]}}
    run = with_files([*OPEN, "--severity", "critical", "--description", "x"])
    [failed] = scenario(
        subdir(tmp_path, "error"),
        [run],
        pagerduty=[{"status": 400, "body": json.dumps(error)}],
    )
    created = {
        "incident": {
            "id": "P\x1b[31mX\u202eY [a](https://evil.test)",
            "incident_number": 7,
            "html_url": "https://sunday.pagerduty.test/x)[b](https://evil.test",
        }
    }
    [succeeded] = scenario(
        subdir(tmp_path, "created"),
        [run],
        pagerduty=[{"status": 201, "body": json.dumps(created)}],
    )
    unsafe = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
    for result in (failed, succeeded):
        _, report = only_report(result)
        for where, text in (
            ("stdout", result["stdout"]),
            ("stderr", result["stderr"]),
            ("report", report),
        ):
            assert not unsafe.search(text), f"{where}: {text!r}"
        assert "](https://evil.test" not in report
        assert "<b>" not in report
        assert_no_secrets(result)
    assert failed["returncode"] == 1
    [line] = stderr_lines(failed)
    assert "Click" in line and "evil" in line  # the text stays, made inert
    assert r"\[fake\]\(https://evil.test\)" in only_report(failed)[1]
    assert succeeded["returncode"] == 0, succeeded
    communication = section(only_report(succeeded)[1], "Communication")
    # ESC and the override are gone; "[31m" is left as inert, escaped text.
    assert r"P\[31mXY \[a\]\(https://evil.test\) #7 created" in communication
    assert "sunday.pagerduty.test" not in communication  # the bad link is dropped


def test_a_trickling_server_cannot_outlast_the_deadline(tmp_path: Path) -> None:
    run = with_files(
        [
            *OPEN,
            "--severity",
            "critical",
            "--description",
            "Trickle",
            "--timeout",
            "1",
            "--attempts",
            "2",
        ]
    )
    # Each would take far longer than the timeout: a byte every 0.25 s, first
    # from the status line on, then from the body on.
    long = json.dumps({"error": {"message": "x" * 200}})
    [result] = scenario(
        tmp_path,
        [run],
        pagerduty=[
            {"status": 503, "body": long, "trickle": "start"},
            {"status": 503, "body": long, "trickle": "body"},
        ],
    )
    assert result["returncode"] == 1, result
    assert len(result["requests"]["pagerduty"]) == 2
    # 2 attempts of 1 s, 0.5 s between them, plus start-up and Slack.
    assert result["elapsed"] < 2 * 1 + 0.5 + 2.5, result["elapsed"]
    [line] = stderr_lines(result)
    assert "HTTP 503 after 2 attempts" in line
    assert "answer cut off after 1 s" in line
    assert len(result["requests"]["slack"]) == 1
    assert_no_secrets(result)


def test_ctrl_c_during_a_call_is_recorded_and_exits_130(tmp_path: Path) -> None:
    run = with_files(
        [*OPEN, "--severity", "critical", "--description", "Stop", "--timeout", "20"]
    )
    run["interrupt"] = "pagerduty"
    [result] = scenario(tmp_path, [run], pagerduty=[{**CREATED, "delay": 15}])
    assert result["returncode"] == 130, result
    assert result["elapsed"] < 10
    assert "Traceback" not in result["stderr"]
    [line] = stderr_lines(result)
    assert line.startswith("incident: interrupted during the PagerDuty call"), line
    _, report = only_report(result)
    communication = section(report, "Communication")
    assert (
        "- PagerDuty: interrupted (the request may have reached PagerDuty; "
        "check before retrying)" in communication
    )
    assert "- Slack: not sent (interrupted)" in communication
    assert "pending" not in report
    assert result["requests"]["slack"] == []
    assert_no_secrets(result)


def test_a_non_ascii_email_is_a_usage_error_before_anything(tmp_path: Path) -> None:
    argv = ["open", "--severity", "critical", "--description", "x"]
    runs = [
        with_files([*argv, "--service-id", "PSVC001", "--from-email", email])
        for email in ("oncäll@sunday.test", "oncall@例え.test", "on call@x.test")
    ]
    runs.append(with_files([*argv, "--service-id", "PSVC001"]))
    runs[-1]["env"]["PAGERDUTY_FROM_EMAIL"] = "oncall@sündäy.test"
    results = scenario(tmp_path, runs)
    for result in results:
        assert result["returncode"] == 2, result
        assert result["requests"] == {"pagerduty": [], "slack": []}
        assert reports(result) == {}
        assert "Traceback" not in result["stderr"]
        for value in ("oncäll", "例え", "on call", "sündäy"):
            assert value not in result["stderr"]
    assert "--from-email: must be an ASCII email address" in results[0]["stderr"]
    assert "not an ASCII email address" in results[-1]["stderr"]


def test_argparse_errors_never_echo_a_value(tmp_path: Path) -> None:
    secret = f"s3cr3t-{secrets.token_hex(12)}"  # nothing the pre-check knows
    rest = ["--description", "x", "--no-pagerduty", "--no-slack"]
    attempts = [
        [secret, "--severity", "critical", *rest],
        ["open", "--severity", secret, *rest],
        ["open", "--severity", "info", "--timeout", secret, *rest],
        ["open", "--severity", "info", "--attempts", secret, *rest],
        ["open", "--severity", "info", "--from-email", secret, *rest],
        ["open", "--severity", "info", f"--dry-run={secret}", *rest],
    ]
    results = scenario(tmp_path, [with_files(argv) for argv in attempts])
    for result in results:
        assert result["returncode"] == 2, result
        assert secret not in result["stderr"] + result["stdout"], result["stderr"]
        assert secret[:10] not in result["stderr"]
        assert "error:" in result["stderr"]
        assert reports(result) == {}
    assert "invalid choice (not shown" in results[0]["stderr"]
    assert "choose from critical, warning, info" in results[1]["stderr"]
    assert "argument --timeout: must be a number" in results[2]["stderr"]
    assert "argument --attempts: must be 1 to 5" in results[3]["stderr"]


def test_a_fifo_as_a_token_file_is_refused(tmp_path: Path) -> None:
    run = with_files([*OPEN, "--severity", "critical", "--description", "x"])
    run["env"]["PAGERDUTY_API_TOKEN_FILE"] = "secrets/fifo"
    run["fifos"] = ["secrets/fifo"]
    [result] = scenario(tmp_path, [run])
    assert result["returncode"] == 2, result
    assert result["elapsed"] < 10
    [line] = stderr_lines(result)
    assert line == (
        "incident: error: PagerDuty API token: PAGERDUTY_API_TOKEN_FILE "
        "(secrets/fifo) is not a regular file"
    )
    assert result["requests"] == {"pagerduty": [], "slack": []}
    assert reports(result) == {}


# --- in-process units (no network) ------------------------------------------


def test_incident_ids_are_utc_stamped_with_a_random_suffix() -> None:
    from datetime import UTC, datetime

    moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    first, second = incident.new_incident_id(moment), incident.new_incident_id(moment)
    assert ID.fullmatch(first) and first.startswith("INC-20240506-070809-")
    assert first != second


def test_an_existing_incident_directory_is_never_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(incident.secrets, "token_hex", lambda n: next(suffixes))
    first_id, first = incident.create_incident_dir(tmp_path, moment)
    (first / "incident-report.md").write_text("taken")
    second_id, second = incident.create_incident_dir(tmp_path, moment)
    assert first_id == "INC-20240506-070809-aaaaaa"
    assert second_id == "INC-20240506-070809-bbbbbb"
    assert (first / "incident-report.md").read_text() == "taken"
    with pytest.raises(FileExistsError):
        incident.write_new_file(first / "incident-report.md", "again")


def test_one_trailing_newline_is_stripped_and_nothing_else() -> None:
    assert incident.strip_one_newline("abc\n") == "abc"
    assert incident.strip_one_newline("abc\r\n") == "abc"
    assert incident.strip_one_newline("abc\n\n") == "abc\n"
    with pytest.raises(incident.UsageError, match="contains spaces"):
        incident.read_secret({"X": "abc def"}, "X", "token")


def test_redactor_catches_quoted_forms() -> None:
    redact = incident.Redactor()
    redact.add_url("https://hooks.slack.test/services/T0/B0/abcdefghijklmnop")
    redact.add("tok/en+with spaces?")
    text = (
        "https://hooks.slack.test/services/T0/B0/abcdefghijklmnop "
        "/services/T0/B0/abcdefghijklmnop abcdefghijklmnop "
        "tok%2Fen%2Bwith%20spaces%3F"
    )
    assert "abcdefghijklmnop" not in redact(text)
    assert "tok" not in redact(text)


def test_an_error_body_is_redacted_before_it_is_cut_short() -> None:
    redact = incident.Redactor()
    redact.add(TOKEN)
    # The token straddles the point where the one-line excerpt is cut.
    body = ("x" * 170 + f" Token token={TOKEN} " + "y" * 300).encode()
    excerpt = incident._error_excerpt(body, redact)
    assert len(excerpt) <= 200 and TOKEN[:12] not in excerpt


def test_flags_that_merely_mention_auth_in_a_value_are_allowed() -> None:
    incident.refuse_credential_arguments(
        ["open", "--description", "-auth service failing", "--severity", "info"]
    )
    with pytest.raises(incident.UsageError, match="refusing --api-key"):
        incident.refuse_credential_arguments(["open", "--api-key", "x"])


def test_duplicate_key_rejections_are_recognised() -> None:
    def rejected(message: str) -> bool:
        text = json.dumps({"error": {"message": "Invalid", "errors": [message]}})
        return incident.is_duplicate_key_rejection(400, text.encode())

    assert rejected("Open incident with matching dedup key already exists")
    assert rejected("Incident Key already exists for an open incident")
    assert not rejected("Requester User Not Found")
    assert not rejected("Incident Key is too long")
    assert incident.is_duplicate_key_rejection(409, b"")
    assert not incident.is_duplicate_key_rejection(500, DUPLICATE_KEY["body"].encode())


def test_clean_text_and_markdown_escape() -> None:
    text = "a\x1b[31mb\x07c\u202ed\u2066e\x9bf\tg"
    assert incident.clean_text(text) == "a[31mbcdef g"
    assert incident.markdown_escape("[x](y) <z> !") == r"\[x\]\(y\) \<z\> \!"


if __name__ == "__main__":
    if sys.argv[1:2] != ["--helper"] or len(sys.argv) != 4:
        sys.exit("usage: unshare -n python tests/test_incident.py --helper SPEC RESULT")
    helper(Path(sys.argv[2]), Path(sys.argv[3]))
