"""A worker that is told to stop (SIGTERM) drains, with real worker and runner processes: it takes
no more work; a request that finishes within its drain completes there, once; a request longer
than the drain goes back to the queue at once (long before its lease would expire) and another
worker completes it, the attempt not counted; a batch leased ahead but not started goes back at
once while the running batch finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from klieg_platform import keys
from tests.e2e.platform import TEST_APPS, Platform, running_platform, wait_for_status

pytestmark = pytest.mark.timeout(300)
LEASE_S = 30  # the hand-back must come long before a lease this long would expire


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform whose own worker serves only GPU-H100: CPU requests wait for the workers the
    tests start and stop."""
    home = tmp_path_factory.mktemp("drain")
    with running_platform(home, extra_env={"KLIEG_WORKER_POOLS": "GPU-H100"}) as p:
        p.bootstrap()
        p.deploy(TEST_APPS / "slow" / "app.py")
        p.deploy(TEST_APPS / "batcher" / "app.py")
        yield p


class Workers:
    """CPU workers started as processes of the platform's home; every one stopped at the end."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, drain_s: float, *args: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
        env.update(KLIEG_HOME=str(self.home), KLIEG_LEASE_S=str(LEASE_S),
                   KLIEG_DRAIN_S=str(drain_s),
                   KLIEG_REDIS_URL=f"unix://{self.home / 'run' / 'redis.sock'}")  # fmt: skip
        with open(self.home / "drain-workers.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "klieg_platform.worker", "--pool", "CPU", *args],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(platform: Platform) -> Iterator[Workers]:
    started = Workers(platform.home)
    try:
        yield started
    finally:
        started.close()


def record(p: Platform, rid: str) -> dict[str, str]:
    """The request's record as Redis holds it (the lease holder and the attempts included)."""
    with redis.Redis(unix_socket_path=str(p.home / "run" / "redis.sock")) as r:
        raw: dict[bytes, bytes] = r.hgetall(keys.request(rid))
    return {k.decode(): v.decode() for k, v in raw.items()}


def served_by(rec: dict[str, str], proc: subprocess.Popen[bytes]) -> bool:
    """Whether the record's lease holder is ``proc`` (worker ids are host-pid-suffix)."""
    return f"-{proc.pid}-" in rec.get("worker", "")


def submit(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post(f"/queue/local/{path}", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def until(check: Any, timeout_s: float, what: str) -> float:
    """Poll ``check()`` until it is true; the seconds it took."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def running_on_a_runner(http: httpx.Client, sub: dict[str, Any]) -> bool:
    body = http.get(sub["status_url"], params={"logs": "1"}).json()
    return body["status"] == "IN_PROGRESS" and any(
        "sleeping" in line["message"] for line in body.get("logs") or []
    )


def test_a_request_within_the_drain_completes_there_once(
    platform: Platform, workers: Workers
) -> None:
    a = workers.start(30)
    with platform.http() as http:
        sub = submit(http, "slow", {"seconds": 5})
        until(lambda: running_on_a_runner(http, sub), 120, "the request on a runner")
        a.send_signal(signal.SIGTERM)
        later = submit(http, "slow", {"seconds": 0.1})  # the stopping worker must not take it
        done = wait_for_status(http, sub["status_url"], "COMPLETED", timeout=30)
        assert http.get(sub["response_url"]).json()["slept"] == 5
        assert a.wait(timeout=30) == 0
        rec = record(platform, sub["request_id"])
        assert served_by(rec, a) and rec["attempts"] == "1", rec
        assert sum("sleeping" in line["message"] for line in done["logs"]) == 1, done["logs"]
        waiting = record(platform, later["request_id"])
        assert waiting["status"] == "IN_QUEUE" and waiting.get("attempts", "0") == "0", waiting
        b = workers.start(5)
        wait_for_status(http, later["status_url"], "COMPLETED", timeout=120)
        assert served_by(record(platform, later["request_id"]), b)


def test_a_request_longer_than_the_drain_is_handed_back_at_once(
    platform: Platform, workers: Workers
) -> None:
    drain_s = 2.0
    a = workers.start(drain_s)
    with platform.http() as http:
        sub = submit(http, "slow", {"seconds": 8})
        until(lambda: running_on_a_runner(http, sub), 120, "the request on a runner")
        a.send_signal(signal.SIGTERM)
        took = until(lambda: record(platform, sub["request_id"])["status"] == "IN_QUEUE",
                     LEASE_S, "back in the queue")  # fmt: skip
        assert took < drain_s + 5, f"back in the queue after {took:.1f} s (lease: {LEASE_S} s)"
        assert record(platform, sub["request_id"]).get("attempts") == "0"
        assert a.wait(timeout=30) == 0
        b = workers.start(5)
        wait_for_status(http, sub["status_url"], "COMPLETED", timeout=120)
        assert http.get(sub["response_url"]).json()["slept"] == 8
        rec = record(platform, sub["request_id"])
        assert served_by(rec, b) and rec["attempts"] == "1", rec


def test_a_batch_leased_ahead_goes_back_while_the_running_batch_finishes(
    platform: Platform, workers: Workers
) -> None:
    a = workers.start(30, "--slots", "1")
    with platform.http() as http:
        subs = [submit(http, "batcher", {"value": i, "sleep": 6}) for i in range(8)]
        ids = [s["request_id"] for s in subs]

        def states() -> list[str]:
            return [record(platform, rid)["status"] for rid in ids]

        # one batch of 4 runs; the next 4 are leased ahead while it does
        until(lambda: states() == ["IN_PROGRESS"] * 8, 120, "8 requests leased")
        a.send_signal(signal.SIGTERM)
        until(lambda: states().count("IN_QUEUE") == 4, 5, "the batch leased ahead handed back")
        ahead = [rid for rid, s in zip(ids, states(), strict=True) if s == "IN_QUEUE"]
        first = [rid for rid in ids if rid not in ahead]
        assert all(record(platform, rid).get("attempts") == "0" for rid in ahead)
        assert a.wait(timeout=60) == 0
        for rid in first:  # the running batch finished on the stopping worker
            rec = record(platform, rid)
            assert rec["status"] == "COMPLETED" and rec["outcome"] == "ok", rec
            assert served_by(rec, a) and rec["attempts"] == "1", rec
        assert states().count("IN_QUEUE") == 4
        b = workers.start(5, "--slots", "1")
        for sub in subs:
            wait_for_status(http, sub["status_url"], "COMPLETED", timeout=120)
        for i, sub in enumerate(subs):
            out = http.get(sub["response_url"]).json()
            assert out["doubled"] == 2 * i and out["batch_size"] == 4, out
        for rid in ahead:
            rec = record(platform, rid)
            assert served_by(rec, b) and rec["attempts"] == "1", rec


def test_klieg_ups_way_of_stopping_workers_waits_for_the_drain(
    platform: Platform, workers: Workers
) -> None:
    """``local.stop_workers`` (``klieg up`` and the local autoscaler adapter): SIGTERM, then wait
    while the worker finishes what runs, within its drain."""
    from klieg_platform.local import stop_workers

    a = workers.start(30)
    with platform.http() as http:
        sub = submit(http, "slow", {"seconds": 4})
        until(lambda: running_on_a_runner(http, sub), 120, "the request on a runner")
        started = time.monotonic()
        stop_workers([a], drain_s=30)
        took = time.monotonic() - started
        assert a.returncode == 0 and took < 30, (a.returncode, took)
        rec = record(platform, sub["request_id"])
        assert rec["status"] == "COMPLETED" and served_by(rec, a), rec
