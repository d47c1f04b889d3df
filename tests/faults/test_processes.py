"""``klieg up``'s supervision: restarts with a capped, doubling backoff; a taken port or a foreign
server on it stops ``klieg up`` with the reason before it claims to be up."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from klieg_platform import local
from klieg_platform.config import Settings
from klieg_platform.local import BACKOFF_FIRST_S, BACKOFF_MAX_S, STABLE_S, Child, exit_status
from tests.e2e.platform import free_port

pytestmark = pytest.mark.timeout(120)


def _dies(code: int) -> Child:
    argv = [sys.executable, "-c", f"raise SystemExit({code})"]
    return Child("flaky", lambda: subprocess.Popen(argv))


def _death(child: Child, now: float) -> float:
    """Let the child die, notice it at ``now``; the pause before its restart."""
    assert child.proc is not None
    child.proc.wait(timeout=30)
    child.check(now)
    assert child.due is not None
    return round(child.due - now, 6)  # due is now + the pause: the clock's size rounds it


def test_quick_deaths_back_off_doubling_up_to_the_cap(capsys: pytest.CaptureFixture[str]) -> None:
    child = _dies(3)
    child.start()
    pauses = []
    for _ in range(9):
        now = child.started_at + 1.0
        pauses.append(_death(child, now))
        child.check(now + pauses[-1])  # due: started again
        assert child.due is None and child.proc is not None
    assert pauses[:4] == [
        BACKOFF_FIRST_S,
        2 * BACKOFF_FIRST_S,
        4 * BACKOFF_FIRST_S,
        8 * BACKOFF_FIRST_S,
    ]
    assert max(pauses) == BACKOFF_MAX_S and pauses[-1] == BACKOFF_MAX_S
    assert child.restarts == 9
    err = capsys.readouterr().err
    assert "klieg up: flaky exited (status 3) after 1.0 s; restarting in 0.5 s" in err
    assert "flaky restarted (restart 9)" in err


def test_a_child_that_ran_long_restarts_at_once_and_resets_its_backoff() -> None:
    child = _dies(1)
    child.start()
    assert _death(child, child.started_at + 0.1) == BACKOFF_FIRST_S
    child.check(child.due or 0.0)
    assert _death(child, child.started_at + 0.1) == 2 * BACKOFF_FIRST_S
    child.check(child.due or 0.0)
    assert child.proc is not None
    first = child.proc
    first.wait(timeout=30)
    child.check(child.started_at + STABLE_S + 1)  # noticed and started again in one step
    assert child.due is None and child.proc is not first and child.restarts == 3
    assert _death(child, child.started_at + 0.1) == BACKOFF_FIRST_S


def test_exit_status_in_words() -> None:
    assert exit_status(-9) == "signal SIGKILL"
    assert exit_status(2) == "status 2"


@pytest.fixture()
def foreign_server() -> Iterator[int]:
    """Another HTTP server on a loopback port, answering ``/health`` with 200 as ours would."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_klieg_up_on_a_taken_port_exits_with_the_reason(
    foreign_server: int, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
    env["KLIEG_HOME"] = str(tmp_path / "home")
    cmd = [sys.executable, "-m", "klieg.cli", "up", "--port", str(foreign_server)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"port {foreign_server} on 127.0.0.1 is already in use" in done.stderr
    assert "Klieg is up" not in done.stdout
    assert not list((tmp_path / "home" / "run").glob("redis.sock")), "redis left running"


def test_health_from_another_server_is_not_taken_for_ours(foreign_server: int) -> None:
    url = f"http://127.0.0.1:{foreign_server}"
    with pytest.raises(SystemExit, match="not healthy"):
        local.wait_healthy([url], 1.5, {}, "our-token")


def test_a_taken_queue_port_is_found_too() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        settings = Settings(port=free_port(), queue_port=taken)
        with pytest.raises(SystemExit, match=f"port {taken} on 127.0.0.1 is already in use"):
            local.check_ports(settings)
