"""Nothing accepted is lost: real processes are killed (-9) under queued and running requests.

A dedicated platform (one worker slot, 2 s leases) so the kills do not disturb other tests.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.platform import (
    TEST_APPS,
    Platform,
    platform_pids,
    running_platform,
    wait_for_status,
    wait_healthy,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def fragile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    env = {"KLIEG_WORKER_SLOTS": "1", "KLIEG_LEASE_S": "2"}
    with running_platform(tmp_path_factory.mktemp("fragile"), extra_env=env) as p:
        p.bootstrap()
        p.deploy(TEST_APPS / "semantics" / "app.py")
        yield p


def _one(pids: list[int], what: str) -> int:
    assert len(pids) == 1, f"expected one {what} process, found {pids}"
    return pids[0]


def _wait_new_pid(home: Path, module: str, old: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in platform_pids(home, module) if p != old]
        if pids:
            return pids[0]
        time.sleep(0.1)
    raise AssertionError(f"{module} was not restarted")


def test_killed_worker_its_request_is_requeued_and_completes(fragile: Platform) -> None:
    with fragile.http() as http:
        sub = http.post("/queue/local/semantics/sleep", json={"n": 1.5}).json()
        queued = http.post("/queue/local/semantics/sleep", json={"n": 0.1}).json()
        wait_for_status(http, sub["status_url"], "IN_PROGRESS")
        worker = _one(platform_pids(fragile.home, "klieg_platform.worker"), "worker")
        os.kill(worker, signal.SIGKILL)
        _wait_new_pid(fragile.home, "klieg_platform.worker", worker)
        done = wait_for_status(http, sub["status_url"], "COMPLETED", timeout=60)
        assert "error" not in done
        assert http.get(sub["response_url"]).status_code == 200
        wait_for_status(http, queued["status_url"], "COMPLETED", timeout=60)
        assert http.get(queued["response_url"]).status_code == 200


def test_restarted_gateway_loses_nothing(fragile: Platform) -> None:
    with fragile.http() as http:
        subs = [http.post("/queue/local/semantics/sleep", json={"n": 0.3}).json() for _ in range(4)]
    gateway = _one(platform_pids(fragile.home, "klieg_platform.gateway"), "gateway")
    os.kill(gateway, signal.SIGKILL)
    _wait_new_pid(fragile.home, "klieg_platform.gateway", gateway)
    wait_healthy(fragile.url, 30)
    with fragile.http() as http:
        for sub in subs:
            wait_for_status(http, sub["status_url"], "COMPLETED", timeout=60)
            assert http.get(sub["response_url"]).status_code == 200


def test_cancel_queued_request(fragile: Platform) -> None:
    with fragile.http() as http:
        busy = http.post("/queue/local/semantics/sleep", json={"n": 2}).json()
        wait_for_status(http, busy["status_url"], "IN_PROGRESS")
        queued = http.post("/queue/local/semantics/sleep", json={"n": 0}).json()
        assert http.get(queued["status_url"]).json()["status"] == "IN_QUEUE"
        r = http.put(queued["cancel_url"])
        assert r.status_code == 202
        done = http.get(queued["status_url"]).json()
        assert done["status"] == "COMPLETED" and done["error_type"] == "RequestCancelledError"
        assert http.get(queued["response_url"]).status_code == 499
        wait_for_status(http, busy["status_url"], "COMPLETED")
        assert http.get(busy["response_url"]).status_code == 200


def test_deadline_passes_while_queued(fragile: Platform) -> None:
    with fragile.http() as http:
        busy = http.post("/queue/local/semantics/sleep", json={"n": 2.5}).json()
        wait_for_status(http, busy["status_url"], "IN_PROGRESS")
        late = http.post(
            "/queue/local/semantics/sleep",
            json={"n": 0},
            headers={"X-Fal-Request-Timeout": "1.2"},
        ).json()
        done = wait_for_status(http, late["status_url"], "COMPLETED", timeout=30)
        assert done["error_type"] == "RequestTimeoutError"
        assert "deadline" in done["error"]


def test_result_ttl_expires_records(tmp_path: Path) -> None:
    env = {"KLIEG_RESULT_TTL_S": "1"}
    with running_platform(tmp_path / "ttl", extra_env=env) as p:
        p.bootstrap()
        p.deploy(TEST_APPS / "echo2" / "app.py")
        with p.http() as http:
            sub = http.post("/queue/local/echo2", json={"text": "ab"}).json()
            wait_for_status(http, sub["status_url"], "COMPLETED")
            assert http.get(sub["response_url"]).json() == {"text": "ba"}
            time.sleep(2.2)
            gone = http.get(sub["response_url"])
            assert gone.status_code == 404 and gone.json()["error_type"] == "NotFoundError"
