"""Open an incident: write the local report, page PagerDuty, post to Slack.

Usage::

    export PAGERDUTY_API_TOKEN_FILE=~/.config/sunday/pagerduty-token
    export SLACK_WEBHOOK_URL_FILE=~/.config/sunday/slack-webhook-url
    python -m incident open --severity critical \\
        --description "Checkout returns 5xx for 20% of requests" \\
        --service-id PABC123 --from-email oncall@example.com

What one run does, in this order:

1. writes ``<reports-dir>/<id>/incident-report.md`` (Timeline, Impact
   Assessment, Actions Taken, Next Steps, Communication), so the report
   exists before anything goes over the network;
2. creates a PagerDuty incident (``POST <PAGERDUTY_API_URL>/incidents``,
   with the ``From`` header the REST API requires); critical is urgency
   ``high``, warning and info ``low``; the incident id is the
   ``incident_key``, so a retried request cannot open a second incident;
3. posts to the Slack incoming webhook: an attachment coloured by severity
   with the severity, description, time and the PagerDuty outcome;
4. rewrites the report's Timeline and Communication with what happened.

Each attempt has an overall deadline (``--timeout``, default 10 s: connect,
headers and body together; at most 64 KiB of an answer is read) and a call is
retried, at most ``--attempts`` times in all (default 3), on HTTP 429, HTTP
5xx and connection errors; redirects are never followed. If a retried page is
refused because its incident_key is already open (HTTP 400 naming the key, or
409), the earlier attempt created it: that counts as success. Text from a
server is stripped of control and bidi characters, and Markdown-escaped in
the report. Ctrl-C during a call marks it interrupted in the report (it may
have reached the service) and exits 130. A call that fails prints one
line on stderr naming the call and the HTTP status or error; the secret is
never printed, and the report's Communication section says what failed.

Incident ids are ``INC-<UTC date>-<UTC time>-<6 hex digits>``: the random
suffix keeps two incidents opened in the same second apart, and the incident
directory is created exclusively, never reused.

Credentials are read from files or the environment, never from the command
line (an argument that looks like one is refused, and not echoed). For each,
the ``*_FILE`` variable wins over the plain one, and one trailing newline is
stripped from the file:

- ``PAGERDUTY_API_TOKEN_FILE`` or ``PAGERDUTY_API_TOKEN``: a REST API token;
- ``SLACK_WEBHOOK_URL_FILE`` or ``SLACK_WEBHOOK_URL``: the incoming-webhook
  URL, which is itself the secret.

Other settings from the environment: ``PAGERDUTY_API_URL`` (default
https://api.pagerduty.com), and ``PAGERDUTY_SERVICE_ID``,
``PAGERDUTY_PRIORITY_ID`` and ``PAGERDUTY_FROM_EMAIL`` as defaults for
``--service-id``, ``--priority-id`` and ``--from-email``. Every URL must be
https; plain http is accepted only for a loopback address (the tests' sinks).

``--dry-run`` validates everything, writes the report and prints the requests
it would send, with the token and the webhook URL's path redacted; it sends
nothing. ``--no-pagerduty`` and ``--no-slack`` skip a call (and its
credentials).

Exit status: 0 when the report was written and every call succeeded; 1 when
the report was written but a call failed (the report says which); 2 on a
usage or configuration error, or when the report cannot be written, in which
case nothing was sent.
130 when interrupted (Ctrl-C); the report says which call may have gone.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import http.client
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

__all__ = ["main", "new_incident_id", "render_report", "slack_escape"]

PROG = "python -m incident"
SEVERITIES = ("critical", "warning", "info")
URGENCY = {"critical": "high", "warning": "low", "info": "low"}
EMOJI = {
    "critical": ":rotating_light:",
    "warning": ":warning:",
    "info": ":information_source:",
}
COLOURS = {"critical": "#D40E0D", "warning": "#F2A900", "info": "#439FE0"}
DEFAULT_PAGERDUTY_API_URL = "https://api.pagerduty.com"
PAGERDUTY_ACCEPT = "application/vnd.pagerduty+json;version=2"
USER_AGENT = "sunday-incident/1"
MAX_DESCRIPTION = 1024
MAX_SECRET_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0
DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 5
REPORT_NAME = "incident-report.md"

EXIT_OK = 0
EXIT_DELIVERY_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Options that take a value: the argument after one is a value, not a flag.
_VALUE_OPTIONS = frozenset(
    {
        "--severity",
        "--description",
        "--service-id",
        "--priority-id",
        "--from-email",
        "--reports-dir",
        "--timeout",
        "--attempts",
    }
)
_CREDENTIAL_FLAG = re.compile(
    r"token|secret|passw|webhook|api[-_]?key|credential|auth|bearer|cookie",
    re.IGNORECASE,
)
_CREDENTIAL_VALUE = re.compile(
    r"hooks\.slack\.com/|token\s*token=|\bxox[abposr]-|^bearer\s", re.IGNORECASE
)
_SAFE_FLAG_NAME = re.compile(r"--?[A-Za-z][A-Za-z0-9_-]{0,39}")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
_PAGERDUTY_ID = re.compile(r"[A-Za-z0-9]{1,64}")
# An ASCII addr-spec: a dot-atom local part, then a dotted domain name.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})+", re.ASCII)
MAX_EMAIL = 254
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Text from a server: C0 and C1 controls (ESC, BEL, CSI...), DEL, and the
# bidirectional marks, embeddings, overrides and isolates.
_UNSAFE_TEXT = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
    "\u202a-\u202e\u2066-\u2069]"
)
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()<>!|])")
_LINK = re.compile(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%/-]*)?")
# PagerDuty's answer to a second create with the incident_key of an open one.
_DUPLICATE_KEY = re.compile(r"dedup(?:lication)?[ _-]?key|incident[ _-]?key", re.I)
_ALREADY_OPEN = re.compile(r"open incident|already exists|matching", re.I)


class UsageError(Exception):
    """A usage or configuration error; its message holds no secret."""


def clean_text(text: str, *, keep_newlines: bool = False) -> str:
    """Text fit for a terminal: no control characters, no bidi overrides.

    Tabs and line breaks become spaces (``keep_newlines`` keeps ``\\n``).
    """
    if keep_newlines:
        return "\n".join(clean_text(line) for line in text.split("\n"))
    return _UNSAFE_TEXT.sub(
        lambda match: " " if match.group(0) in "\t\r\n\x0b\x0c" else "", text
    )


def markdown_escape(text: str) -> str:
    """Server text for the report: clean, and no link, image or HTML syntax."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", clean_text(text))


def is_email(text: str) -> bool:
    return len(text) <= MAX_EMAIL and bool(_EMAIL.fullmatch(text))


# --- secrets ---------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """A credential and where it came from (the name of a variable)."""

    value: str = field(repr=False)
    source: str

    def __str__(self) -> str:
        return "<redacted>"


class Redactor:
    """Replaces every known secret, and its quoted forms, with ``<redacted>``."""

    MIN_LENGTH = 8

    def __init__(self) -> None:
        self._values: list[str] = []

    def add(self, value: str) -> None:
        if len(value) < self.MIN_LENGTH:
            return
        forms = {
            value,
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote(value),
            json.dumps(value)[1:-1],
        }
        self._values = sorted(set(self._values) | forms, key=len, reverse=True)

    def add_url(self, url: str) -> None:
        """A webhook URL: all of it, its path and its long path segments."""
        self.add(url)
        parts = urllib.parse.urlsplit(url)
        self.add(parts.path)
        for segment in parts.path.split("/"):
            if len(segment) >= 12:
                self.add(segment)
        if parts.query:
            self.add(parts.query)

    @property
    def values(self) -> list[str]:
        return list(self._values)

    def __call__(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, "<redacted>")
        return text


def _read_regular_file(path: str, limit: int, what: str, variable: str) -> bytes:
    """At most ``limit`` bytes of a regular file; never opens a FIFO or device.

    Checked before opening (a FIFO would block the open) and again on the
    open descriptor (opened non-blocking), so a swap in between is caught.
    """
    shown = clean_text(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UsageError(f"{what}: {variable} ({shown}) is not a regular file")
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        descriptor = os.open(path, flags)
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise UsageError(
                    f"{what}: {variable} ({shown}) is not a regular file"
                )
            os.set_blocking(handle.fileno(), True)
            return handle.read(limit)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(
            f"{what}: cannot read {variable} ({shown}): {reason}"
        ) from None


def strip_one_newline(value: str) -> str:
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value


def read_secret(env: Mapping[str, str], name: str, what: str) -> Secret | None:
    """The secret from ``$NAME_FILE`` (which wins) or ``$NAME``; None if unset."""
    file_variable = f"{name}_FILE"
    path = env.get(file_variable, "")
    if path:
        raw = _read_regular_file(path, MAX_SECRET_BYTES + 1, what, file_variable)
        if len(raw) > MAX_SECRET_BYTES:
            raise UsageError(f"{what}: the file in {file_variable} is too large")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(
                f"{what}: the file in {file_variable} is not UTF-8 text"
            ) from None
        source = file_variable
    else:
        text = env.get(name, "")
        if not text:
            return None
        source = name
    value = strip_one_newline(text)
    if not value:
        raise UsageError(f"{what} from {source} is empty")
    if not _TOKEN_CHARS.fullmatch(value):
        raise UsageError(
            f"{what} from {source} contains spaces, control or non-ASCII "
            "characters (only one trailing newline is stripped)"
        )
    return Secret(value, source)


def refuse_credential_arguments(argv: Sequence[str]) -> None:
    """Refuse flags and values that look like credentials, without echoing."""
    hint = (
        "credentials are never taken on the command line (shell history, ps); "
        "use PAGERDUTY_API_TOKEN_FILE or SLACK_WEBHOOK_URL_FILE"
    )
    previous_takes_value = False
    for position, argument in enumerate(argv, 1):
        is_value = previous_takes_value
        previous_takes_value = False
        if _CREDENTIAL_VALUE.search(argument):
            raise UsageError(
                f"refusing argument {position}: it looks like a credential "
                f"(not shown); {hint}"
            )
        if is_value or not argument.startswith("-") or argument == "-":
            continue
        name = argument.split("=", 1)[0]
        if _CREDENTIAL_FLAG.search(name):
            shown = name if _SAFE_FLAG_NAME.fullmatch(name) else f"argument {position}"
            raise UsageError(f"refusing {shown}: {hint}")
        previous_takes_value = name in _VALUE_OPTIONS and "=" not in argument


def refuse_secrets_in_arguments(argv: Sequence[str], redactor: Redactor) -> None:
    """A loaded secret pasted into any argument is refused, not sent on."""
    for position, argument in enumerate(argv, 1):
        if redactor(argument) != argument:
            raise UsageError(
                f"refusing argument {position}: it contains a configured secret "
                "(not shown); remove it from the command line and rotate it"
            )


# --- settings --------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str, *, show: bool) -> urllib.parse.SplitResult:
    """An http(s) URL; plain http only to loopback. ``show`` echoes it."""
    shown = f" ({url})" if show else " (not shown)"
    if _CONTROL.search(url) or any(character.isspace() for character in url):
        raise UsageError(f"{what}{shown} contains spaces or control characters")
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise UsageError(f"{what}{shown} has an invalid port") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(f"{what}{shown} is not an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{what}{shown} must not hold a user name or password")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise UsageError(
            f"{what}{shown} must use https (plain http only to a loopback address)"
        )
    return parts


def display_host(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


@dataclass(frozen=True)
class PagerDutyTarget:
    endpoint: str
    token: Secret
    from_email: str
    service_id: str
    priority_id: str | None


@dataclass(frozen=True)
class SlackTarget:
    url: Secret
    display: str


def pagerduty_target(
    args: argparse.Namespace, env: Mapping[str, str], redactor: Redactor
) -> PagerDutyTarget:
    token = read_secret(env, "PAGERDUTY_API_TOKEN", "PagerDuty API token")
    if token is None:
        raise UsageError(
            "PagerDuty API token missing: set PAGERDUTY_API_TOKEN_FILE (a file "
            "holding the token) or PAGERDUTY_API_TOKEN, or pass --no-pagerduty"
        )
    redactor.add(token.value)
    base = env.get("PAGERDUTY_API_URL") or DEFAULT_PAGERDUTY_API_URL
    parts = check_url(base, "PAGERDUTY_API_URL", show=True)
    if parts.query or parts.fragment:
        raise UsageError(f"PAGERDUTY_API_URL ({base}) must not have a query")
    endpoint = base.rstrip("/") + "/incidents"

    service_id = args.service_id or env.get("PAGERDUTY_SERVICE_ID", "")
    if not service_id:
        raise UsageError(
            "PagerDuty service missing: pass --service-id or set "
            "PAGERDUTY_SERVICE_ID (or pass --no-pagerduty)"
        )
    if not _PAGERDUTY_ID.fullmatch(service_id):
        raise UsageError("--service-id must be a PagerDuty id such as PABC123")
    priority_id = args.priority_id or env.get("PAGERDUTY_PRIORITY_ID") or None
    if priority_id is not None and not _PAGERDUTY_ID.fullmatch(priority_id):
        raise UsageError("--priority-id must be a PagerDuty id such as P53ZZH5")
    from_email = args.from_email or env.get("PAGERDUTY_FROM_EMAIL", "")
    if not from_email:
        raise UsageError(
            "PagerDuty requester missing: pass --from-email (the email of a "
            "PagerDuty user; the REST API requires it) or set PAGERDUTY_FROM_EMAIL"
        )
    if not is_email(from_email):
        raise UsageError(
            "--from-email (or PAGERDUTY_FROM_EMAIL) is not an ASCII email address"
        )
    return PagerDutyTarget(endpoint, token, from_email, service_id, priority_id)


def slack_target(env: Mapping[str, str], redactor: Redactor) -> SlackTarget:
    url = read_secret(env, "SLACK_WEBHOOK_URL", "Slack webhook URL")
    if url is None:
        raise UsageError(
            "Slack webhook URL missing: set SLACK_WEBHOOK_URL_FILE (a file "
            "holding the URL) or SLACK_WEBHOOK_URL, or pass --no-slack"
        )
    redactor.add_url(url.value)
    parts = check_url(url.value, f"Slack webhook URL from {url.source}", show=False)
    return SlackTarget(url, f"{parts.scheme}://{display_host(parts)}/<redacted>")


# --- the incident and its report -------------------------------------------


@dataclass
class Incident:
    id: str
    severity: str
    description: str
    opened: datetime
    opened_by: str
    timeline: list[str] = field(default_factory=list)
    communication: dict[str, str] = field(default_factory=dict)


def new_incident_id(now: datetime) -> str:
    """``INC-YYYYmmdd-HHMMSS-xxxxxx`` in UTC, with a random suffix."""
    return f"INC-{now.astimezone(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def now_utc() -> datetime:
    return datetime.now(UTC)


def render_report(incident: Incident) -> str:
    """The report's Markdown; Timeline and Communication as they stand."""
    timeline = "\n".join(f"- {entry}" for entry in incident.timeline)
    communication = "\n".join(
        f"- {name}: {status}" for name, status in incident.communication.items()
    )
    return f"""\
# Incident {incident.id}

- **Severity:** {incident.severity}
- **Status:** open
- **Opened:** {utc(incident.opened)}
- **Opened by:** {incident.opened_by}

## Description

{incident.description}

## Timeline

{timeline}

## Impact Assessment

- **Affected services:** _to be assessed_
- **Affected customers:** _to be assessed_
- **Started at:** _to be assessed_
- **Customer-facing symptoms:** _to be assessed_

## Actions Taken

- _none yet: add each action with its UTC time_

## Next Steps

- [ ] Acknowledge the page and name an incident commander
- [ ] Assess the impact and update this report
- [ ] Identify the root cause
- [ ] Mitigate and verify the fix
- [ ] Resolve the PagerDuty incident
- [ ] Schedule the post-mortem

## Communication

{communication}
- [ ] Status page: update it if customers are affected
"""


def create_incident_dir(reports_dir: Path, opened: datetime) -> tuple[str, Path]:
    """A new directory for a new id; never one that already exists."""
    try:
        reports_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(
            f"cannot create the reports directory {reports_dir}: "
            f"{error.strerror or error}"
        ) from None
    if not reports_dir.is_dir():
        raise UsageError(f"{reports_dir} is not a directory")
    for _ in range(10):
        incident_id = new_incident_id(opened)
        directory = reports_dir / incident_id
        try:
            directory.mkdir(mode=0o755)
        except FileExistsError:
            continue
        except OSError as error:
            raise UsageError(
                f"cannot create {directory}: {error.strerror or error}"
            ) from None
        return incident_id, directory
    raise UsageError(f"could not find an unused incident id in {reports_dir}")


def write_new_file(path: Path, text: str) -> None:
    """Create ``path``; fail if anything, a symlink included, is there."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(path, flags, 0o644)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def replace_file(path: Path, text: str) -> None:
    """Rewrite ``path`` atomically: the old text stays until the new is whole."""
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


# --- HTTP ------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following it could carry the token elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Call:
    """One request as it will be sent, and as it may be shown."""

    name: str
    url: str
    display_url: str
    headers: dict[str, str]
    display_headers: dict[str, str]
    payload: dict[str, Any]

    def show(self) -> str:
        lines = [f"{self.name} request:", f"POST {self.display_url}"]
        lines += [f"{key}: {value}" for key, value in self.display_headers.items()]
        lines.append(json.dumps(self.payload, indent=2, ensure_ascii=False))
        return "\n".join(lines)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    attempts: int
    status: int | None = None
    detail: str = ""
    body: bytes = b""
    # A retry rejected because the earlier attempt's incident already exists.
    duplicate: bool = False

    def describe(self) -> str:
        tries = f"after {self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        what = f"HTTP {self.status}" if self.status is not None else "no response"
        detail = f": {self.detail}" if self.detail else ""
        return f"{what} {tries}{detail}"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_excerpt(body: bytes, redact: Redactor) -> str:
    """PagerDuty's error message and errors, else the start of the body.

    Redacted before it is cut short, so no part of a secret is left.
    """
    text = clean_text(redact(body.decode("utf-8", errors="replace")))
    try:
        document = json.loads(text)
    except ValueError:
        return _one_line(text)
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        parts = [str(error.get("message", ""))]
        errors = error.get("errors")
        if isinstance(errors, list):
            parts += [str(item) for item in errors]
        return _one_line(clean_text("; ".join(part for part in parts if part)))
    return _one_line(text)


def _describe_error(error: BaseException, timeout: float) -> str:
    reason: object = error
    if isinstance(error, urllib.error.URLError) and not isinstance(
        error, urllib.error.HTTPError
    ):
        reason = error.reason
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(reason, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(reason, ssl.SSLError):
        return clean_text(f"TLS error: {reason}")
    if isinstance(reason, OSError) and reason.strerror:
        return clean_text(reason.strerror)
    return clean_text(f"{type(reason).__name__}: {reason}")


def is_duplicate_key_rejection(status: int, body: bytes) -> bool:
    """PagerDuty refusing a create whose incident_key has an open incident."""
    if status == 409:
        return True
    if status != 400:
        return False
    text = body.decode("utf-8", errors="replace")
    return bool(_DUPLICATE_KEY.search(text) and _ALREADY_OPEN.search(text))


class _Deadline:
    """One attempt's overall deadline; when it passes, its sockets are shut.

    The socket timeout only bounds each read, so a server trickling a byte at
    a time could otherwise hold an attempt for ever.
    """

    def __init__(self, seconds: float) -> None:
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.expires - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError("the attempt's deadline passed")
        return left

    def watch(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connections.append(connection)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:
        return
    try:  # wakes a blocked read; the plain method also works on a TLS socket
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        self._deadline.watch(self)
        self.timeout = min(self.timeout or MAX_TIMEOUT, self._deadline.remaining())
        super().connect()


class _DeadlineHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        """``HTTPSConnection.connect``, with the handshake under the deadline."""
        self._deadline.watch(self)
        self.timeout = min(self.timeout or MAX_TIMEOUT, self._deadline.remaining())
        http.client.HTTPConnection.connect(self)
        server_hostname = self._tunnel_host or self.host
        self.sock = self._context.wrap_socket(
            self.sock, server_hostname=server_hostname, do_handshake_on_connect=False
        )
        if self._deadline.expired:
            raise TimeoutError("the attempt's deadline passed")
        self.sock.do_handshake()


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(_DeadlineHTTPConnection, deadline=self._deadline)
        return self.do_open(connection, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connection = functools.partial(
            _DeadlineHTTPSConnection, deadline=self._deadline
        )
        return self.do_open(connection, req)


def _read_body(response: Any, deadline: _Deadline) -> tuple[bytes, bool]:
    """At most MAX_RESPONSE_BYTES, in chunks; and whether the deadline cut it."""
    read = getattr(response, "read1", None) or response.read
    chunks: list[bytes] = []
    size = 0
    try:
        while size < MAX_RESPONSE_BYTES and not deadline.expired:
            chunk = read(min(16 * 1024, MAX_RESPONSE_BYTES - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (OSError, http.client.HTTPException, ValueError):
        if not deadline.expired:
            raise
    return b"".join(chunks), deadline.expired


def send(
    call: Call,
    *,
    timeout: float,
    attempts: int,
    redact: Redactor,
    sleep: Any = time.sleep,
    duplicate: Callable[[int, bytes], bool] | None = None,
) -> Outcome:
    """POST ``call``; retry on 429, 5xx and connection errors, no redirects.

    ``timeout`` bounds each attempt as a whole (connect, send, headers and
    body). ``duplicate`` says whether an error answer to a retry means the
    earlier attempt, whose answer was lost, did the work.
    """
    host = urllib.parse.urlsplit(call.url).hostname or ""
    proxies = {} if is_loopback(host) else None
    data = json.dumps(call.payload).encode("utf-8")
    last = Outcome(ok=False, attempts=0)
    may_have_landed = False  # an earlier attempt may have reached the server
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(
            call.url, data=data, headers=call.headers, method="POST"
        )
        delay = min(0.5 * 2 ** (attempt - 1), 4.0)
        deadline = _Deadline(timeout)
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(proxies),
            _NoRedirect(),
            _DeadlineHTTPHandler(deadline),
            _DeadlineHTTPSHandler(deadline),
        )
        try:
            with opener.open(request, timeout=timeout) as response:
                # A 2xx is the answer even if the deadline cuts the body short.
                body, _ = _read_body(response, deadline)
                return Outcome(True, attempt, response.status, body=body)
        except urllib.error.HTTPError as error:
            try:
                body, cut = _read_body(error, deadline)
            except (OSError, http.client.HTTPException, ValueError):
                body, cut = b"", False
            finally:
                error.close()
            if attempt > 1 and may_have_landed and duplicate is not None:
                if duplicate(error.code, body):
                    return Outcome(True, attempt, error.code, duplicate=True)
            detail = _error_excerpt(body, redact) or redact(
                clean_text(str(error.reason or ""))
            )
            if cut:
                detail = f"{detail} (answer cut off after {timeout:g} s)".lstrip()
            last = Outcome(False, attempt, error.code, str(detail), body)
            if error.code != 429 and error.code < 500:
                return last
            may_have_landed = may_have_landed or error.code >= 500
            retry_after = (error.headers or {}).get("Retry-After", "")
            if error.code == 429 and retry_after.isdigit():
                delay = min(float(retry_after), 10.0)
        except (OSError, http.client.HTTPException, ValueError) as error:
            if deadline.expired:
                reason = f"timed out after {timeout:g} s"
            else:
                reason = redact(_describe_error(error, timeout))
            last = Outcome(False, attempt, None, reason)
            reason_type = getattr(error, "reason", error)
            if not isinstance(reason_type, ConnectionRefusedError | socket.gaierror):
                may_have_landed = True
        finally:
            deadline.cancel()
        if attempt < attempts:
            sleep(delay)
    return last


def pagerduty_call(incident: Incident, target: PagerDutyTarget) -> Call:
    title = incident.description
    if len(title) > MAX_DESCRIPTION:
        title = title[: MAX_DESCRIPTION - 1] + "…"
    details = (
        f"Severity: {incident.severity}\n"
        f"Opened {utc(incident.opened)} by {incident.opened_by} with the "
        f"incident command; local report {incident.id}.\n\n"
        f"{incident.description}"
    )
    body: dict[str, Any] = {
        "type": "incident",
        "title": title,
        "service": {"id": target.service_id, "type": "service_reference"},
        "urgency": URGENCY[incident.severity],
        "incident_key": incident.id,
        "body": {"type": "incident_body", "details": details},
    }
    if target.priority_id:
        body["priority"] = {"id": target.priority_id, "type": "priority_reference"}
    headers = {
        "Accept": PAGERDUTY_ACCEPT,
        "Content-Type": "application/json",
        "From": target.from_email,
        "User-Agent": USER_AGENT,
    }
    shown = dict(headers, Authorization="Token token=<redacted>")
    headers["Authorization"] = f"Token token={target.token.value}"
    return Call(
        "PagerDuty",
        target.endpoint,
        target.endpoint,
        headers,
        shown,
        {"incident": body},
    )


def slack_escape(text: str) -> str:
    """Slack's three control characters, so ``<!channel>`` stays text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_call(incident: Incident, target: SlackTarget, pagerduty: str) -> Call:
    severity = incident.severity
    headline = (
        f"[{severity.upper()}] Incident {incident.id}: "
        f"{slack_escape(incident.description)}"
    )
    payload = {
        "text": f"{EMOJI[severity]} {headline}",
        "attachments": [
            {
                "color": COLOURS[severity],
                "fallback": headline,
                "title": f"Incident {incident.id} opened",
                "fields": [
                    {"title": "Severity", "value": severity, "short": True},
                    {"title": "Incident", "value": incident.id, "short": True},
                    {
                        "title": "Description",
                        "value": slack_escape(incident.description),
                        "short": False,
                    },
                    {"title": "Time", "value": utc(incident.opened), "short": True},
                    {"title": "PagerDuty", "value": pagerduty, "short": True},
                ],
                "footer": f"opened by {slack_escape(incident.opened_by)}",
                "ts": int(incident.opened.timestamp()),
            }
        ],
    }
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    return Call("Slack", target.url.value, target.display, headers, headers, payload)


def pagerduty_created(body: bytes) -> tuple[str, str]:
    """The created incident's ``id #number`` and https ``html_url``, if any."""
    try:
        document = json.loads(body.decode("utf-8"))
        created = document["incident"]
    except (ValueError, KeyError, TypeError):
        return "", ""
    if not isinstance(created, dict):
        return "", ""
    name = " ".join(
        part
        for part in (
            str(created.get("id") or ""),
            f"#{created['incident_number']}" if created.get("incident_number") else "",
        )
        if part
    )
    link = str(created.get("html_url") or "")
    if not _LINK.fullmatch(link):
        link = ""
    return _one_line(clean_text(name), 60), link


# --- the command -----------------------------------------------------------


_ARGUMENT_ERROR = re.compile(r"argument ([A-Za-z-]{1,40}|\{open\}): (.*)", re.S)
_SAFE_ARGUMENT_ERRORS = (
    "expected one argument",
    "must be ",  # the type checkers' own messages, below
)
_CHOICES = {"command": ("open",), "{open}": ("open",), "--severity": SEVERITIES}


def _value_free(message: str) -> str:
    """argparse's message with no value the user typed (it may be a secret)."""
    hidden = "(not shown, in case it is a secret)"
    if message.startswith("the following arguments are required: "):
        return message  # option names only
    if message.startswith("unrecognized arguments"):
        return "unrecognized arguments (not shown, in case one is a secret)"
    match = _ARGUMENT_ERROR.fullmatch(message)
    if match is None:
        return f"invalid arguments {hidden}"
    name, rest = match.groups()
    if rest.startswith(_SAFE_ARGUMENT_ERRORS) and "'" not in rest:
        return message
    if rest.startswith("invalid choice") and name in _CHOICES:
        return f"argument {name}: invalid choice {hidden}; choose from " + ", ".join(
            _CHOICES[name]
        )
    return f"argument {name}: invalid value {hidden}"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors never echo a value (one may be a secret)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_value_free(message)}\n")


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most {MAX_TIMEOUT}")
    return value


def _attempts(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_ATTEMPTS}") from None
    if not 1 <= value <= MAX_ATTEMPTS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_ATTEMPTS}")
    return value


def _email(text: str) -> str:
    if not is_email(text):
        raise argparse.ArgumentTypeError(
            "must be an ASCII email address such as oncall@example.com"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Incident response: report, PagerDuty page, Slack message.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    open_ = commands.add_parser(
        "open",
        help="open an incident",
        description=(
            "Write the incident report, then create the PagerDuty incident and "
            "post to Slack. Credentials come from PAGERDUTY_API_TOKEN_FILE (or "
            "PAGERDUTY_API_TOKEN) and SLACK_WEBHOOK_URL_FILE (or "
            "SLACK_WEBHOOK_URL), never from the command line."
        ),
        allow_abbrev=False,
    )
    open_.add_argument("--severity", required=True, choices=SEVERITIES)
    open_.add_argument(
        "--description", required=True, help="one line: the PagerDuty title"
    )
    open_.add_argument(
        "--service-id", help="PagerDuty service id (default $PAGERDUTY_SERVICE_ID)"
    )
    open_.add_argument(
        "--priority-id",
        help="PagerDuty priority id, optional (default $PAGERDUTY_PRIORITY_ID)",
    )
    open_.add_argument(
        "--from-email",
        type=_email,
        help="email of the PagerDuty user opening it (default $PAGERDUTY_FROM_EMAIL)",
    )
    open_.add_argument(
        "--reports-dir",
        type=Path,
        default=Path("incidents"),
        help="where <id>/incident-report.md is written (default: incidents)",
    )
    open_.add_argument(
        "--dry-run",
        action="store_true",
        help="write the report and print the requests (secrets redacted); send none",
    )
    open_.add_argument("--no-pagerduty", action="store_true", help="do not page")
    open_.add_argument("--no-slack", action="store_true", help="do not post to Slack")
    open_.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        help=f"seconds per HTTP attempt (default {DEFAULT_TIMEOUT:g})",
    )
    open_.add_argument(
        "--attempts",
        type=_attempts,
        default=DEFAULT_ATTEMPTS,
        help=f"attempts per call, 1 to {MAX_ATTEMPTS} (default {DEFAULT_ATTEMPTS})",
    )
    return parser


def check_description(text: str) -> str:
    description = text.strip()
    if not description:
        raise UsageError("--description is empty")
    if _CONTROL.search(description):
        raise UsageError("--description must be one line without control characters")
    if len(description) > MAX_DESCRIPTION:
        raise UsageError(f"--description is longer than {MAX_DESCRIPTION} characters")
    return description


def opened_by(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    email = args.from_email or env.get("PAGERDUTY_FROM_EMAIL", "")
    if email and is_email(email):
        return email
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return _CONTROL.sub("", user) or "unknown"


class Console:
    """stdout and stderr, through the redactor, one line per message."""

    def __init__(self, out: TextIO, err: TextIO, redactor: Redactor) -> None:
        self.out, self.err, self.redact = out, err, redactor

    def say(self, text: str) -> None:
        text = clean_text(self.redact(text), keep_newlines=True)
        print(text, file=self.out, flush=True)

    def fail(self, text: str) -> None:
        text = _one_line(clean_text(self.redact(text)), 400)
        print(f"incident: {text}", file=self.err)
        self.err.flush()


def open_incident(
    args: argparse.Namespace,
    argv: Sequence[str],
    env: Mapping[str, str],
    console: Console,
) -> int:
    redactor = console.redact
    description = check_description(args.description)
    pagerduty = None if args.no_pagerduty else pagerduty_target(args, env, redactor)
    slack = None if args.no_slack else slack_target(env, redactor)
    refuse_secrets_in_arguments(argv, redactor)

    opened = now_utc()
    incident_id, directory = create_incident_dir(args.reports_dir, opened)
    incident = Incident(
        incident_id, args.severity, description, opened, opened_by(args, env)
    )
    incident.timeline.append(
        f"{utc(opened)}: incident opened, severity {args.severity}, "
        f"by {incident.opened_by}"
    )
    pending = "dry run, nothing sent" if args.dry_run else "pending"
    incident.communication["PagerDuty"] = (
        "skipped (--no-pagerduty): page the on-call by hand if needed"
        if pagerduty is None
        else pending
    )
    incident.communication["Slack"] = (
        "skipped (--no-slack)" if slack is None else pending
    )
    report = directory / REPORT_NAME
    try:
        write_new_file(report, redactor(render_report(incident)))
    except OSError as error:
        raise UsageError(
            f"cannot write {report}: {error.strerror or error}; nothing was sent"
        ) from None
    console.say(f"report written: {report}")

    if args.dry_run:
        console.say("dry run: nothing is sent; these requests would be:")
        if pagerduty is not None:
            console.say(pagerduty_call(incident, pagerduty).show())
        if slack is not None:
            summary = "would be paged" if pagerduty is not None else "not paged"
            console.say(slack_call(incident, slack, summary).show())
        return EXIT_OK

    state = {"failed": False, "current": ""}
    try:
        _deliver(args, incident, pagerduty, slack, console, state)
    except KeyboardInterrupt:
        return _interrupted(incident, report, state["current"], console)
    failed = state["failed"]

    try:
        replace_file(report, redactor(render_report(incident)))
    except OSError as error:
        console.fail(
            f"could not update {report} with the outcome "
            f"({error.strerror or error}); it still holds the opening entry"
        )
        return EXIT_DELIVERY_FAILED
    if failed:
        console.say(f"report updated: {report} (see Communication for what failed)")
        return EXIT_DELIVERY_FAILED
    console.say(f"report updated: {report}")
    return EXIT_OK


def _deliver(
    args: argparse.Namespace,
    incident: Incident,
    pagerduty: PagerDutyTarget | None,
    slack: SlackTarget | None,
    console: Console,
    state: dict[str, Any],
) -> None:
    """Page, then post; ``state`` says which call is under way, what failed."""
    redactor = console.redact
    slack_summary = "not paged by this tool (--no-pagerduty)"
    if pagerduty is not None:
        state["current"] = "PagerDuty"
        outcome = send(
            pagerduty_call(incident, pagerduty),
            timeout=args.timeout,
            attempts=args.attempts,
            redact=redactor,
            duplicate=is_duplicate_key_rejection,
        )
        when = utc(now_utc())
        urgency = URGENCY[args.severity]
        if outcome.duplicate:
            status = (
                "incident created (confirmed by duplicate-key rejection: a retry "
                f"was refused as incident key {incident.id} is open), "
                f"urgency {urgency}"
            )
            incident.communication["PagerDuty"] = status
            incident.timeline.append(f"{when}: PagerDuty {status}")
            console.say(f"PagerDuty: {status}")
            slack_summary = "paged"
        elif outcome.ok:
            name, link = pagerduty_created(outcome.body)
            created = f"incident {name} created" if name else "incident created"
            status = f"{created}, urgency {urgency}" + (f": {link}" if link else "")
            shown = f"incident {markdown_escape(name)} created" if name else created
            entry = f"{shown}, urgency {urgency}" + (f": {link}" if link else "")
            incident.communication["PagerDuty"] = entry
            incident.timeline.append(f"{when}: PagerDuty {entry}")
            console.say(f"PagerDuty: {status}")
            label = slack_escape(name or "incident")
            slack_summary = f"<{link}|{label}>" if link else "paged"
        else:
            state["failed"] = True
            detail = outcome.describe()
            escaped = markdown_escape(redactor(detail))
            incident.communication["PagerDuty"] = (
                f"**FAILED** ({escaped}); nobody was paged by this tool: "
                "page the on-call by hand"
            )
            incident.timeline.append(f"{when}: PagerDuty page FAILED ({escaped})")
            console.fail(f"PagerDuty: POST {pagerduty.endpoint} failed: {detail}")
            slack_summary = f"page FAILED ({slack_escape(detail)})"

    if slack is not None:
        state["current"] = "Slack"
        outcome = send(
            slack_call(incident, slack, slack_summary),
            timeout=args.timeout,
            attempts=args.attempts,
            redact=redactor,
        )
        when = utc(now_utc())
        if outcome.ok:
            incident.communication["Slack"] = "posted to the incident webhook"
            incident.timeline.append(f"{when}: Slack notified")
            console.say("Slack: message posted")
        else:
            state["failed"] = True
            detail = outcome.describe()
            escaped = markdown_escape(redactor(detail))
            incident.communication["Slack"] = (
                f"**FAILED** ({escaped}); post in the incident channel by hand"
            )
            incident.timeline.append(f"{when}: Slack message FAILED ({escaped})")
            console.fail(
                f"Slack: POST to the webhook at {slack.display} failed: {detail}"
            )
    state["current"] = ""


def _interrupted(
    incident: Incident, report: Path, current: str, console: Console
) -> int:
    """Ctrl-C during a call: say so in the report and in one line; exit 130."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the write end
    try:
        when = utc(now_utc())
        if current:
            incident.communication[current] = (
                f"interrupted (the request may have reached {current}; "
                "check before retrying)"
            )
            incident.timeline.append(f"{when}: interrupted during the {current} call")
        else:
            incident.timeline.append(f"{when}: interrupted")
        for name, status in incident.communication.items():
            if status == "pending":
                incident.communication[name] = "not sent (interrupted)"
        try:
            replace_file(report, console.redact(render_report(incident)))
            saved = f"{report} says so"
        except OSError as error:
            saved = f"could not update {report} ({error.strerror or error})"
        during = f" during the {current} call" if current else ""
        check = f"; check {current} before retrying" if current else ""
        console.fail(f"interrupted{during}{check}; {saved}")
    finally:
        signal.signal(signal.SIGINT, previous)
    return EXIT_INTERRUPTED


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    console = Console(stdout or sys.stdout, stderr or sys.stderr, Redactor())
    try:
        refuse_credential_arguments(argv)
    except UsageError as error:
        console.fail(f"error: {error}")
        return EXIT_USAGE
    try:
        args = build_parser().parse_args(argv)
        return open_incident(args, argv, env, console)
    except UsageError as error:
        console.fail(f"error: {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.fail("interrupted; if a report was written, read it before retrying")
        return EXIT_INTERRUPTED
