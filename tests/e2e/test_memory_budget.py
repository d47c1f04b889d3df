"""A worker under a small memory budget (``KLIEG_WORKER_MEMORY_MB``), with real zygotes and
runners: three apps, each with a zygote of its own (two by their preload, one its revision's
with its code, ``preload_code=True``) and runners of 16 MiB each, do not fit together; cycling
through them stops idle runners and zygotes least recently used first, every request still
completes, and what the worker keeps comes back under the budget."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.platform import TEST_APPS, Platform, running_platform, until

pytestmark = pytest.mark.timeout(300)
BUDGET_MB = 80
"""About one zygote (18 MiB here) and one runner (33 MiB) with room to spare; three of each
take about 150 MiB."""
APPS = ("one", "two", "three")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("budget")
    budget = {"KLIEG_WORKER_MEMORY_MB": str(BUDGET_MB), "KLIEG_ZYGOTES": "4"}
    with running_platform(home, extra_env=budget) as p:
        p.bootstrap()
        for name in APPS:
            p.deploy(TEST_APPS / "budget" / f"{name}.py")
        yield p


def worker(platform: Platform) -> dict[str, Any]:
    with platform.http() as http:
        workers: list[dict[str, Any]] = http.get("/workers").json()["workers"]
    assert len(workers) == 1
    return workers[0]


def test_lru_eviction_across_runners_and_zygotes_loses_no_request(platform: Platform) -> None:
    served: dict[str, list[dict[str, int]]] = {name: [] for name in APPS}
    with platform.http() as http:
        for _ in range(3):
            for name in APPS:
                answer = http.post(f"/local/budget-{name}", json={})
                assert answer.status_code == 200, answer.text
                served[name].append(answer.json())
    # budget-three's module was imported by its revision's zygote, the others' by the runner
    assert all(s["loaded_by"] == s["pid"] for name in ("one", "two") for s in served[name])
    assert all(s["loaded_by"] != s["pid"] for s in served["three"])
    # each app's runner had been stopped by the time its turn came again: a cold start each time
    for name in APPS:
        pids = [s["pid"] for s in served[name]]
        assert len(set(pids)) == 3, (name, pids)
    memory = worker(platform)["memory"]
    assert memory["budget_bytes"] == BUDGET_MB << 20
    assert memory["evicted_runners"] >= 6 and memory["evicted_zygotes"] >= 2, memory

    def settled() -> bool:
        w = worker(platform)
        measured = [*w["runners"], *w["zygotes"]]
        return 0 < w["memory"]["used_bytes"] <= w["memory"]["budget_bytes"] and all(
            p["memory_bytes"] for p in measured
        )

    until("what the worker keeps is back under its budget", settled, 30)
    w = worker(platform)
    kept = sum(p["memory_bytes"] for p in (*w["runners"], *w["zygotes"]))
    assert kept == w["memory"]["used_bytes"]
    for z in w["zygotes"]:
        assert z["env"] and z["pid"] and z["idle_s"] >= 0 and z["forks"] >= 0
    with platform.http() as http:
        metrics = http.get("/metrics").text
    assert "klieg_zygotes{pool=" in metrics and "klieg_zygote_memory_bytes{pool=" in metrics


def test_a_burst_across_the_apps_completes_under_the_budget(platform: Platform) -> None:
    def one_request(name: str) -> int:
        with platform.http() as http:
            return http.post(f"/local/budget-{name}", json={}).status_code

    names = [APPS[i % 3] for i in range(15)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(one_request, names))
    assert codes == [200] * len(names)
    time.sleep(0.1)
    assert worker(platform)["memory"]["evicted_runners"] >= 6
