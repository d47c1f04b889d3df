"""Runner lifecycle through the real platform: warm reuse, keep-alive expiry, setup failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.platform import APPS, TEST_APPS, Platform

pytestmark = pytest.mark.timeout(240)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("zombie") < 0


def test_setup_runs_once_and_second_request_is_warm(platform: Platform) -> None:
    platform.deploy(APPS / "markdown" / "app.py")
    with platform.http() as http:
        a = http.post("/local/markdown", json={"text": "# Title"})
        assert a.status_code == 200, a.text
        assert a.json()["html"] == "<h1>Title</h1>"
        b = http.post("/local/markdown", json={"text": "*x*"}).json()
        assert b["html"] == "<p><em>x</em></p>"
        assert b["runner_pid"] == a.json()["runner_pid"]
        assert b["setup_calls"] == 1


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))


def test_a_cold_start_forks_from_the_zygote_of_its_env(platform: Platform) -> None:
    """markdown's code imports ``markdown`` (in setup()): deploy records it as the preload, and
    its runner is a child of a zygote of its env that imported it, not of the worker."""
    platform.deploy(APPS / "markdown" / "app.py")
    with platform.http() as http:
        newest = http.get("/apps/markdown/revisions").json()[0]
        assert newest["preload"] == ["markdown", "pydantic"] and newest["preload_code"] is False
        pid = http.post("/local/markdown", json={"text": "x"}).json()["runner_pid"]
    zygote = _parent(pid)
    cmdline = Path(f"/proc/{zygote}/cmdline").read_bytes().split(b"\0")
    assert b"klieg._runtime.zygote" in cmdline, cmdline
    assert cmdline[cmdline.index(b"--preload") + 1] == b"markdown,pydantic"
    assert str(platform.home / "envs").encode() in cmdline[0]


def test_a_revision_whose_own_zygote_refuses_forks_from_its_envs(platform: Platform) -> None:
    """``preload_code=True`` with a module that starts a thread at import: the revision's zygote
    refuses (logged), and the runner forks from the env's zygote, which ran none of its code."""
    platform.deploy(TEST_APPS / "threadedcode" / "app.py")
    with platform.http() as http:
        assert http.get("/apps/threadedcode/revisions").json()[0]["preload_code"] is True
        served = http.post("/local/threadedcode", json={})
        assert served.status_code == 200, served.text
    where = served.json()
    assert where["loaded_by"] == where["pid"]  # its runner imported the code itself
    cmdline = Path(f"/proc/{where['ppid']}/cmdline").read_bytes().split(b"\0")
    assert b"klieg._runtime.zygote" in cmdline and b"--code" not in cmdline, cmdline
    log = (platform.home / "platform.log").read_text()
    assert "a thread was started at import (poller)" in log


def test_idle_runner_stops_after_keep_alive(platform: Platform) -> None:
    platform.deploy(TEST_APPS / "shortlived" / "app.py")
    with platform.http() as http:
        first = http.post("/local/shortlived").json()["pid"]
        assert _alive(first)
        deadline = time.monotonic() + 15
        while _alive(first):
            assert time.monotonic() < deadline, "runner outlived keep_alive=1"
            time.sleep(0.2)
        second = http.post("/local/shortlived").json()["pid"]
        assert second != first


def test_setup_failure_is_visible_and_not_retried_in_a_loop(
    platform: Platform, echo_deployed: object
) -> None:
    platform.deploy(TEST_APPS / "setupfail" / "app.py")
    attempts = platform.home / "setupfail-attempts"
    with platform.http() as http:
        sub = http.post("/queue/local/setupfail", json={"x": 1}).json()
        deadline = time.monotonic() + 60
        while (st := http.get(sub["status_url"], params={"logs": "true"}).json())[
            "status"
        ] != "COMPLETED":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert st["error_type"] == "SetupError"
        assert "weights missing" in st["error"]
        assert any("loading weights" in line["message"] for line in st["logs"])
        r = http.get(sub["response_url"])
        assert r.status_code == 503 and r.json()["error_type"] == "SetupError"
        for _ in range(5):
            again = http.post("/local/setupfail", json={"x": 1})
            assert again.status_code == 503
            assert "retried in" in again.json()["detail"]
        assert attempts.read_text() == "1"
        ok = http.post("/local/echo", json={"text": "still serving"})
        assert ok.status_code == 200


def test_request_timeout_ends_request_and_recycles_runner(platform: Platform) -> None:
    platform.deploy(TEST_APPS / "slow" / "app.py")
    with platform.http() as http:
        fast = http.post("/local/slow/capped", json={"seconds": 0.01}).json()
        started = time.monotonic()
        r = http.post("/local/slow/capped", json={"seconds": 5})
        assert r.status_code == 504 and r.json()["error_type"] == "RequestTimeoutError"
        assert time.monotonic() - started < 4
        assert not _alive(int(fast["pid"]))
        again = http.post("/local/slow/capped", json={"seconds": 0.01}).json()
        assert again["pid"] != fast["pid"]


def test_startup_timeout_fails_with_setup_error(platform: Platform) -> None:
    platform.deploy(TEST_APPS / "slow" / "app.py")
    with platform.http() as http:
        started = time.monotonic()
        r = http.post("/local/slow/slowstart", json={})
        assert r.status_code == 503, r.text
        assert r.json()["error_type"] == "SetupError"
        assert "startup_timeout" in r.json()["detail"]
        assert time.monotonic() - started < 4.5


def test_min_concurrency_keeps_a_runner_warm_before_and_between_requests(
    platform: Platform,
) -> None:
    platform.deploy(TEST_APPS / "prewarm" / "app.py")
    pids_file = platform.home / "prewarm-pids"
    deadline = time.monotonic() + 30
    while not pids_file.exists():
        assert time.monotonic() < deadline, "no runner was started ahead of traffic"
        time.sleep(0.2)
    warm = int(pids_file.read_text().split()[0])
    time.sleep(3)  # well past keep_alive=1
    assert _alive(warm), "the min_concurrency runner was reaped"
    with platform.http() as http:
        assert http.post("/local/prewarm", json={}).json()["pid"] == warm
    time.sleep(3)
    assert _alive(warm)
    assert pids_file.read_text().split() == [str(warm)], "exactly one runner was kept"


def test_a_burst_for_a_one_runner_function_runs_back_to_back(platform: Platform) -> None:
    """Requests left queued while the function's only runner is busy start as soon as it is
    free, not after the worker's idle wait (up to a second each)."""
    import klieg

    platform.deploy(TEST_APPS / "slow" / "app.py")
    app = "local/slow/capped"  # max_concurrency 1
    with klieg.Client(platform.url, platform.key) as client:
        client.run(app, {"seconds": 0.0})
        started = time.monotonic()
        handles = [client.submit(app, {"seconds": 0.1}) for _ in range(12)]
        results = [client.wait(h, timeout=60, interval=0.02) for h in handles]
        elapsed = time.monotonic() - started
    assert len({r["pid"] for r in results}) == 1
    assert elapsed < 4.0, f"12 requests of 0.1 s on one runner took {elapsed:.1f}s"
