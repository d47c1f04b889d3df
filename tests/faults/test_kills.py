"""kill -9, in turn, of each process of ``klieg up`` under a steady stream: nothing lost.

One platform for the module (embedded Redis); each test streams for a few seconds, kills one
process a third of the way in, settles, and checks the tally: every accepted request completed
with its own result or failed with a typed reason.
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


def test_killed_runner_mid_request(steady: Platform) -> None:
    def kill_runner() -> None:
        runners = runner_pids(steady.home)
        assert runners, "no runner to kill"
        os.kill(runners[0], signal.SIGKILL)

    s = stream(steady, ms=60)
    s.run_for(SECONDS, kill_runner)
    tally = s.settle()
    record("runner killed mid-request", tally)
    assert tally.completed >= tally.submitted // 2
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
