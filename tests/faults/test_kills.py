"""kill -9, in turn, of each process of ``klieg up`` under a steady stream: nothing lost.

One platform for the module (embedded Redis); each test streams for a few seconds, kills one
process a third of the way in, settles, and checks the tally: every accepted request completed
with its own result or failed with a typed reason, and none ran more often than it was
dispatched (``stream.py``).
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.platform import Platform, platform_pids, wait_healthy
from tests.faults.conftest import kill_one, process_pids, record, runner_pids, stream

pytestmark = pytest.mark.timeout(240)

SECONDS = float(os.environ.get("KLIEG_FAULT_SECONDS", "6"))
"""How long each stream runs (``bench/soak.py`` runs them longer)."""


def _after(platform: Platform, fault: str) -> None:
    """The platform serves again after the fault."""
    wait_healthy(platform.url)
    with platform.http() as http:
        response = http.post("/local/steady", json={"i": 12, "ms": 0})
        assert response.json() == {"i": 12, "square": 144}, (fault, response.text)


def test_killed_worker(steady: Platform) -> None:
    s = stream(steady)
    s.run_for(SECONDS, lambda: kill_one(steady.home, "klieg_platform.worker"))
    tally = s.settle()
    record("worker killed", tally)
    assert tally.completed >= tally.submitted // 2
    _after(steady, "worker")


def test_killed_runners_mid_request(steady: Platform) -> None:
    """Every runner killed at once while the stream keeps them busy (60 ms a request, about
    three at a time): the requests they held go back to the queue (``retries``), so some
    request shows a second attempt, which proves a runner was killed mid-request."""
    killed: list[int] = []

    def kill_runners() -> None:
        runners = runner_pids(steady.home)
        assert runners, "no runner to kill"
        for pid in runners:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    s = stream(steady, ms=60)
    s.run_for(SECONDS, kill_runners)
    tally = s.settle()
    record(f"{len(killed)} runners killed mid-request", tally)
    assert tally.retried > 0, f"no request was running on the killed runners: {tally.figures()}"
    assert tally.completed >= tally.submitted // 2
    log = (steady.home / "platform.log").read_text()
    assert "; retrying (attempt 1)" in log, "the worker logged no request retried after a crash"
    _after(steady, "runner")


def test_killed_gateway(steady: Platform) -> None:
    s = stream(steady)
    s.run_for(SECONDS, lambda: kill_one(steady.home, "klieg_platform.gateway"))
    tally = s.settle()
    record("gateway killed", tally)
    assert tally.completed >= tally.submitted // 3
    _after(steady, "gateway")


def test_killed_embedded_redis(steady: Platform) -> None:
    def kill_redis() -> None:
        pids = process_pids("redis-server", steady.home)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)

    before = set(process_pids("redis-server", steady.home))
    s = stream(steady)
    s.run_for(SECONDS, kill_redis)
    tally = s.settle()
    record("embedded redis killed", tally)
    assert tally.completed >= tally.submitted // 3
    after = set(process_pids("redis-server", steady.home))
    assert after and not after & before, "redis was not restarted"
    # the worker and gateway rode it out: neither was restarted
    assert len(platform_pids(steady.home, "klieg_platform.worker")) == 1
    _after(steady, "redis")
    log = (steady.home / "platform.log").read_text()
    assert "redis exited (signal SIGKILL)" in log
    assert "Redis is back after" in log
