"""The ``klieg`` command's failures, run as a user runs it: each is one ``error:`` line on stderr
and a non-zero exit, with no traceback unless ``KLIEG_DEBUG=1``; a reader that stops early
(``klieg ... | head -1``) ends it quietly."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

APP_COUNT = 20_000
"""Apps the fake gateway lists for the pipe test: far more output than a pipe buffers."""


def klieg(
    url: str, *args: str, debug: bool = False, key: str = "k_test:secret"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KLIEG_DEBUG"}
    env.update(KLIEG_URL=url, KLIEG_KEY=key)
    if debug:
        env["KLIEG_DEBUG"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "klieg.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_error_line(out: subprocess.CompletedProcess[str], error_type: str) -> str:
    """The single stderr line of a failed command, checked to name ``error_type``."""
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and out.stderr.endswith("\n"), out.stderr
    assert lines[0].startswith(f"error: {error_type}: "), lines[0]
    assert len(lines[0]) > len(f"error: {error_type}: ")
    return lines[0]


class _Reply:
    """What every request to a ``fake_gateway`` at ``url`` is answered with."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status, self.content_type, self.body = status, content_type, body
        self.url = ""


def _handler(reply: _Reply) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def fake_gateway() -> Iterator[_Reply]:
    """A real HTTP server on a loopback port; set the fields of the yielded reply to choose what
    it answers."""
    reply = _Reply(200, "application/json", b"[]")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(reply))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    reply.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield reply
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nothing listens on (a port bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _json_error(error_type: str, detail: str) -> bytes:
    return json.dumps({"detail": detail, "error_type": error_type}).encode()


def test_unreachable_gateway_is_one_line(closed_port_url: str) -> None:
    line = assert_one_error_line(klieg(closed_port_url, "apps", "list"), "UnavailableError")
    assert closed_port_url in line and "refused" in line.lower()


def test_unresolvable_host_is_one_line() -> None:
    out = klieg("http://klieg-cli-test.invalid", "apps", "list")
    assert "klieg-cli-test.invalid" in assert_one_error_line(out, "UnavailableError")


def test_gateway_that_never_answers_times_out_in_one_line() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        out = klieg(url, "--timeout", "0.5", "apps", "list")
    assert url in assert_one_error_line(out, "RequestTimeoutError")


def test_gateway_that_hangs_up_is_one_line() -> None:
    with socket.socket() as rude:
        rude.bind(("127.0.0.1", 0))
        rude.listen(8)
        url = f"http://127.0.0.1:{rude.getsockname()[1]}"

        def hang_up() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = rude.accept()
                    conn.recv(65536)
                    conn.close()

        threading.Thread(target=hang_up, daemon=True).start()
        out = klieg(url, "apps", "list")
    assert url in assert_one_error_line(out, "UnavailableError")


def test_url_without_scheme_is_one_line() -> None:
    line = assert_one_error_line(klieg("127.0.0.1:8000", "apps", "list"), "InvalidRequestError")
    assert "http://" in line


@pytest.mark.parametrize(
    ("status", "error_type", "detail"),
    [
        (401, "AuthenticationError", "invalid API key"),
        (403, "PermissionDeniedError", "admin only"),
        (500, "InternalError", "internal error"),
        (503, "SetupError", "setup() raised RuntimeError: no weights\n  at line 3"),
    ],
)
def test_json_error_replies_are_one_line(
    fake_gateway: _Reply, status: int, error_type: str, detail: str
) -> None:
    fake_gateway.status, fake_gateway.body = status, _json_error(error_type, detail)
    for args in (("apps", "list"), ("call", "local/echo", "--json", "{}")):
        line = assert_one_error_line(klieg(fake_gateway.url, *args), error_type)
        assert line == f"error: {error_type}: {' '.join(detail.split())}"


def test_structured_detail_is_printed_as_json_on_one_line(fake_gateway: _Reply) -> None:
    detail = [{"loc": ["body", "text"], "msg": "Field required"}]
    fake_gateway.status = 422
    fake_gateway.body = json.dumps({"detail": detail, "error_type": "ValidationError"}).encode()
    line = assert_one_error_line(
        klieg(fake_gateway.url, "call", "local/echo", "--json", "{}"),
        "ValidationError",
    )
    assert json.loads(line.removeprefix("error: ValidationError: ")) == detail


def test_html_error_reply_is_one_line_with_status_and_text(fake_gateway: _Reply) -> None:
    fake_gateway.status, fake_gateway.content_type = 502, "text/html"
    fake_gateway.body = (
        b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n"
        b"<center><h1>502 Bad Gateway</h1></center>\n<hr><center>nginx</center>\n"
        + b"<p>padding</p>\n" * 200
        + b"</body>\n</html>\n"
    )
    line = assert_one_error_line(klieg(fake_gateway.url, "apps", "list"), "KliegError")
    assert line.startswith("error: KliegError: HTTP 502 Bad Gateway: 502 Bad Gateway")
    assert "<" not in line and "nginx" in line and len(line) < 300


def test_success_reply_that_is_not_json_is_one_line(fake_gateway: _Reply) -> None:
    fake_gateway.content_type, fake_gateway.body = "text/html", b"<html>\n<p>welcome</p>\n</html>"
    line = assert_one_error_line(klieg(fake_gateway.url, "apps", "list"), "KliegError")
    assert "not JSON" in line and "welcome" in line


def test_debug_shows_the_traceback_above_the_line(
    fake_gateway: _Reply, closed_port_url: str
) -> None:
    fake_gateway.status, fake_gateway.body = 401, _json_error("AuthenticationError", "bad key")
    for url, error_type in (
        (fake_gateway.url, "AuthenticationError"),
        (closed_port_url, "UnavailableError"),
    ):
        out = klieg(url, "apps", "list", debug=True)
        assert out.returncode == 1
        assert out.stderr.startswith("Traceback (most recent call last):")
        assert out.stderr.splitlines()[-1].startswith(f"error: {error_type}: ")


def _bad_input_cases(tmp: Path) -> list[tuple[list[str], str, str]]:
    """(arguments, error type, text the line must hold) of input the command itself rejects."""
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("apps: [unclosed\n")
    bad_shape = tmp / "shape.yaml"
    bad_shape.write_text("apps:\n  echo: [1, 2]\n")
    bad_flow = tmp / "flow.yaml"
    bad_flow.write_text("nodes: {a: {app: local/echo}}\noutput: $missing.x\n")
    missing = str(tmp / "missing.py")
    return [
        (["call", "local/echo", "--json", "notjson"], "InvalidRequestError", "--json"),
        (["call", "local/echo", "--json", '{"text": '], "InvalidRequestError", "--json"),
        (["call", "echo-without-owner"], "InvalidRequestError", "owner/app"),
        (["deploy", missing], "DeployError", missing),
        (["deploy", str(tmp)], "DeployError", str(tmp)),
        (["apply", str(tmp / "missing.yaml")], "FileNotFoundError", "missing.yaml"),
        (["apply", str(tmp)], "IsADirectoryError", str(tmp)),
        (["apply", str(bad_yaml)], "InvalidRequestError", "not YAML"),
        (["apply", str(bad_shape)], "InvalidRequestError", "echo"),
        (["workflow", "create", str(tmp / "missing.yaml")], "FileNotFoundError", "missing.yaml"),
        (["workflow", "create", str(bad_flow)], "ValidationError", "missing"),
        (["revisions", "bad\x01name"], "InvalidRequestError", "URL"),
    ]


def test_bad_input_is_one_line(tmp_path: Path, closed_port_url: str) -> None:
    for args, error_type, needle in _bad_input_cases(tmp_path):
        line = assert_one_error_line(klieg(closed_port_url, *args), error_type)
        assert needle in line, (args, line)


def test_bad_input_with_debug_shows_a_traceback(tmp_path: Path, closed_port_url: str) -> None:
    out = klieg(closed_port_url, "call", "local/echo", "--json", "notjson", debug=True)
    assert out.returncode == 1 and "Traceback (most recent call last):" in out.stderr
    assert out.stderr.splitlines()[-1].startswith("error: InvalidRequestError: --json")


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "soon", "apps", "list"],
        ["--timeout", "0", "apps", "list"],
        ["apps", "limit", "echo", "--max-inflight", "many"],
        ["up", "--port", "99999"],
        ["demo", "--port", "http"],
        ["nonsense"],
    ],
)
def test_usage_errors_are_argparse_errors(closed_port_url: str, args: list[str]) -> None:
    out = klieg(closed_port_url, *args)
    assert out.returncode == 2 and out.stdout == ""
    assert "Traceback" not in out.stderr
    assert out.stderr.startswith("usage: klieg")
    assert out.stderr.splitlines()[-1].startswith("klieg")
    assert ": error: " in out.stderr.splitlines()[-1]


def test_demo_with_missing_apps_folder_is_one_line(tmp_path: Path, closed_port_url: str) -> None:
    out = klieg(closed_port_url, "demo", "--apps", str(tmp_path / "none"))
    assert "none" in assert_one_error_line(out, "InvalidRequestError")


def test_reader_closing_the_pipe_early_ends_quietly(fake_gateway: _Reply) -> None:
    apps = [
        {"owner": "local", "name": f"app{i}", "aliases": {"latest": "r1"}} for i in range(APP_COUNT)
    ]
    fake_gateway.body = json.dumps(apps).encode()
    env = {k: v for k, v in os.environ.items() if k != "KLIEG_DEBUG"}
    env.update(KLIEG_URL=fake_gateway.url, KLIEG_KEY="k_test:secret")
    for args in (["apps", "list"], ["apps", "list", "--json"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "klieg.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
        assert proc.wait(timeout=60) == 141, stderr
        assert first.strip() and stderr == b"", stderr
