"""Local stand-ins for PagerDuty, Slack and an SMTP relay, for the e2e test.

Each sink listens on 127.0.0.1 only (inside the test's private network
namespace), answers the way the real service answers a well-formed request,
and appends one JSON line per request it receives to its record file. Nothing
here ever connects anywhere.

The SMTP sink speaks just enough ESMTP for Alertmanager's client: EHLO,
STARTTLS (with a throw-away self-signed certificate, so the rendered
``smtp_require_tls: true`` stays on), AUTH PLAIN/LOGIN (offered only after
STARTTLS, like a real relay), MAIL, RCPT, DATA, RSET, NOOP and QUIT.
"""

from __future__ import annotations

import base64
import json
import socketserver
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class Record:
    """An append-only JSON-lines file, safe to write from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.touch()

    def add(self, entry: dict[str, Any]) -> None:
        line = json.dumps({"time": time.time(), **entry})
        with self._lock, self.path.open("a") as out:
            out.write(line + "\n")

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            text = self.path.read_text()
        return [json.loads(line) for line in text.splitlines() if line]


class _Sink:
    server: socketserver.BaseServer

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2}
        )
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class HttpSink(_Sink):
    """Records every request; answers with a fixed status and body."""

    def __init__(
        self, port: int, record: Record, *, status: int, body: str, content_type: str
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length).decode(errors="replace")
                record.add(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": payload,
                    }
                )
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PUT = do_GET = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, port), Handler)


class _ThreadingTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class SmtpSink(_Sink):
    """A minimal ESMTP server with STARTTLS and AUTH that accepts every mail."""

    def __init__(self, port: int, record: Record, *, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))

        class Handler(socketserver.StreamRequestHandler):
            timeout = 30

            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")
                self.wfile.flush()

            def read_line(self) -> str | None:
                raw = self.rfile.readline(65536)
                return raw.decode(errors="replace").rstrip("\r\n") if raw else None

            def handle(self) -> None:
                session: dict[str, Any] = {"tls": False, "auth": None}
                envelope: dict[str, Any] = {"mail_from": None, "rcpt_to": []}
                self.reply(f"220 {LOOPBACK} ESMTP e2e sink")
                while (line := self.read_line()) is not None:
                    verb, _, rest = line.partition(" ")
                    verb = verb.upper()
                    if verb in ("EHLO", "HELO"):
                        session["hello"] = rest
                        if verb == "HELO":
                            self.reply(f"250 {LOOPBACK}")
                            continue
                        lines = [LOOPBACK, "8BITMIME", "SIZE 10485760"]
                        lines.append(
                            "AUTH PLAIN LOGIN" if session["tls"] else "STARTTLS"
                        )
                        for item in lines[:-1]:
                            self.reply(f"250-{item}")
                        self.reply(f"250 {lines[-1]}")
                    elif verb == "STARTTLS" and not session["tls"]:
                        self.reply("220 2.0.0 Ready to start TLS")
                        self.request = context.wrap_socket(
                            self.request, server_side=True
                        )
                        self.rfile = self.request.makefile("rb")
                        self.wfile = self.request.makefile("wb")
                        session["tls"] = True
                    elif verb == "AUTH" and session["tls"]:
                        session["auth"] = self.authenticate(rest)
                        self.reply("235 2.7.0 Authentication successful")
                    elif verb == "MAIL":
                        envelope = {"mail_from": rest, "rcpt_to": []}
                        self.reply("250 2.1.0 OK")
                    elif verb == "RCPT":
                        envelope["rcpt_to"].append(rest)
                        self.reply("250 2.1.5 OK")
                    elif verb == "DATA":
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        lines = []
                        while (data := self.read_line()) is not None and data != ".":
                            lines.append(data[1:] if data.startswith("..") else data)
                        record.add(
                            {
                                "tls": session["tls"],
                                "hello": session.get("hello"),
                                "auth": session["auth"],
                                **envelope,
                                "data": "\r\n".join(lines),
                            }
                        )
                        self.reply("250 2.0.0 OK queued")
                    elif verb in ("RSET", "NOOP"):
                        self.reply("250 2.0.0 OK")
                    elif verb == "QUIT":
                        self.reply("221 2.0.0 Bye")
                        return
                    else:
                        self.reply("502 5.5.2 Command not recognised")

            def authenticate(self, rest: str) -> dict[str, Any]:
                mechanism, _, initial = rest.partition(" ")
                mechanism = mechanism.upper()
                if mechanism == "PLAIN":
                    if not initial:
                        self.reply("334 ")
                        initial = self.read_line() or ""
                    _, user, password = (
                        base64.b64decode(initial).decode().split("\0", 2)
                    )
                else:
                    self.reply("334 " + base64.b64encode(b"Username:").decode())
                    user = base64.b64decode(self.read_line() or "").decode()
                    self.reply("334 " + base64.b64encode(b"Password:").decode())
                    password = base64.b64decode(self.read_line() or "").decode()
                return {"mechanism": mechanism, "username": user, "password": password}

        self.server = _ThreadingTCPServer((LOOPBACK, port), Handler)
