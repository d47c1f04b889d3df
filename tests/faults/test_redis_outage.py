"""A shared Redis (a server of its own on a loopback port, as in a fleet) killed and restarted.

While it is down the gateway answers 503 with ``Retry-After`` and the worker keeps what it runs;
once it is back (from its append-only file) the queue resumes where it was: nothing accepted is
lost, and a request running through the outage is reported once, not run again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.platform import (
    Platform,
    free_port,
    running_platform,
    wait_for_status,
    wait_healthy,
)
from tests.faults.conftest import PrivateRedis, deploy_steady, record, stream

pytestmark = pytest.mark.timeout(240)

LEASE_S = 3.0


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("shared-redis"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fleet(
    shared_redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    env = {"KLIEG_REDIS_URL": shared_redis.url(3), "KLIEG_LEASE_S": str(LEASE_S)}
    with running_platform(tmp_path_factory.mktemp("fleet-home"), extra_env=env) as platform:
        platform.bootstrap()
        deploy_steady(platform)
        yield platform


def _while_down(platform: Platform) -> None:
    """What a caller sees while Redis is down: 503, typed, with Retry-After."""
    health = httpx.get(f"{platform.url}/health", timeout=10)
    assert health.status_code == 503, health.text
    assert health.json()["error_type"] == "UnavailableError"
    assert health.headers["retry-after"] == "1"
    with platform.http() as http:
        submit = http.post("/queue/local/steady", json={"i": 1})
    assert submit.status_code == 503, submit.text
    assert submit.json()["error_type"] == "UnavailableError"
    assert "retry-after" in submit.headers


def test_restarted_shared_redis_under_stream(fleet: Platform, shared_redis: PrivateRedis) -> None:
    def outage() -> None:
        shared_redis.kill()
        time.sleep(0.3)
        _while_down(fleet)
        time.sleep(1.5)
        shared_redis.start()

    s = stream(fleet)
    s.run_for(6, outage)
    tally = s.settle()
    record("shared redis killed and restarted", tally)
    assert tally.completed >= tally.submitted // 3
    wait_healthy(fleet.url)


def test_request_running_through_an_outage_longer_than_its_lease_is_kept(
    fleet: Platform, shared_redis: PrivateRedis
) -> None:
    work_s, down_s = 6.0, LEASE_S + 1.5
    with fleet.http() as http:
        started = time.monotonic()
        sub = http.post("/queue/local/steady", json={"i": 41, "ms": int(work_s * 1000)}).json()
        wait_for_status(http, sub["status_url"], "IN_PROGRESS")
        shared_redis.kill()
        time.sleep(down_s)
        shared_redis.start()
        wait_for_status(http, sub["status_url"], "COMPLETED", timeout=60)
        done_s = time.monotonic() - started
        assert http.get(sub["response_url"]).json() == {"i": 41, "square": 1681}
    # run once: a second run would start after the outage and end past down_s + work_s
    assert done_s < down_s + work_s, f"completed after {done_s:.1f} s: it was run again"
