"""Runner hints with real workers and runners: a request's ``X-Fal-Runner-Hint`` goes to the
runner whose app reported that hint (``provide_hints()``), on the same worker or on another
one, and to any other runner at once when that one is busy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from klieg_platform import keys
from tests.e2e.platform import TEST_APPS, Platform, running_platform, until, wait_for_status

pytestmark = pytest.mark.timeout(240)
LORA = "/local/falcompat/lora"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A platform whose own worker serves only GPU-H100: the CPU workers the tests start serve
    falcompat's ``/lora`` (a runner loads LoRAs and reports those it holds as hints)."""
    home = tmp_path_factory.mktemp("hints")
    with running_platform(home, extra_env={"KLIEG_WORKER_POOLS": "GPU-H100"}) as p:
        p.bootstrap()
        p.deploy(TEST_APPS / "falcompat" / "app.py")
        yield p


class CpuWorkers:
    """CPU workers of the platform's home, started by a test and all stopped after it."""

    def __init__(self, p: Platform) -> None:
        self.p = p
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis = redis.Redis(unix_socket_path=str(p.home / "run" / "redis.sock"))

    def start(self, slots: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
        env.update(KLIEG_HOME=str(self.p.home), KLIEG_DRAIN_S="2",
                   KLIEG_REDIS_URL=f"unix://{self.p.home / 'run' / 'redis.sock'}")  # fmt: skip
        with open(self.p.home / "cpu-workers.log", "ab") as log:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "klieg_platform.worker", "--pool", "CPU",
                 "--slots", str(slots)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip

    def heartbeats(self) -> list[dict[str, Any]]:
        docs = [json.loads(v) for v in self.redis.hvals(keys.WORKERS)]
        return [d for d in docs if d["pools"] == ["CPU"]]

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=30)
        self.redis.close()


@pytest.fixture
def workers(platform: Platform) -> Iterator[CpuWorkers]:
    started = CpuWorkers(platform)
    try:
        yield started
    finally:
        started.close()
    until("the CPU workers are gone", lambda: not started.heartbeats(), 30)


def generate(p: Platform, lora: str, hint: str | None = None, seconds: float = 0.0) -> Any:
    headers = {"X-Fal-Runner-Hint": hint} if hint else {}
    with p.http() as http:
        r = http.post(LORA, json={"lora": lora, "seconds": seconds}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()


def load_two_loras(p: Platform) -> dict[str, int]:
    """Two runners, made at once, one loading LoRA "a", the other "b": {lora: runner pid}."""
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda lora: generate(p, lora, seconds=1.5), ["a", "b"]))
    pids = {run["lora"]: run["pid"] for run in runs}
    assert len(set(pids.values())) == 2, runs
    return pids


def test_a_hinted_request_goes_to_the_runner_that_reported_its_hint_or_at_once_to_another(
    platform: Platform, workers: CpuWorkers
) -> None:
    workers.start(slots=2)
    pids = load_two_loras(platform)
    # without the hint the worker would take its most recently used idle runner each time
    for lora in "ababa":
        assert generate(platform, lora, hint=lora)["pid"] == pids[lora], lora
    # the runner holding "a" is busy: a request hinted "a" does not wait for it
    with platform.http() as http:
        busy = http.post("/queue" + LORA, json={"lora": "a", "seconds": 3},
                         headers={"X-Fal-Runner-Hint": "a"}).json()  # fmt: skip
        until("the long request runs", lambda: http.get(busy["status_url"]).json()["status"]
              == "IN_PROGRESS", 30)  # fmt: skip
        other = generate(platform, "a", hint="a")
        wait_for_status(http, busy["status_url"], "COMPLETED", timeout=30)
        long_run = http.get(busy["response_url"]).json()
    assert long_run["pid"] == pids["a"] and other["pid"] == pids["b"]
    assert other["ended"] < long_run["ended"]


def test_across_workers_a_hinted_request_goes_to_the_worker_holding_its_hint(
    platform: Platform, workers: CpuWorkers
) -> None:
    workers.start(slots=1)
    workers.start(slots=1)
    until("both CPU workers heartbeat", lambda: len(workers.heartbeats()) == 2, 60)
    pids = load_two_loras(platform)  # one runner on each worker
    until(
        "each worker advertises its idle runner's LoRA",
        lambda: sorted(h[1] for d in workers.heartbeats() for h in d["hints"]) == ["a", "b"],
        30,
    )
    time.sleep(1.5)  # a housekeeping round more: each has read the other's heartbeat
    # both workers are idle and either may be woken first: the one without the hint leaves the
    # request to the other (W1's exception); by chance alone all eight would land right 1/256
    for lora in "abbaabab":
        assert generate(platform, lora, hint=lora)["pid"] == pids[lora], lora
