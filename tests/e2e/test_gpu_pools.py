"""GPU pools on the live platform: a worker declares ``--pool GPU-H100 --gpus 4`` (logical GPUs
on this machine); runners get their own CUDA_VISIBLE_DEVICES; a 4-GPU job is not starved by a
stream of warm 1-GPU jobs (they pass it only while it has waited less than its cold start);
CPU work stays on the CPU worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.platform import (
    TEST_APPS,
    Platform,
    platform_process,
    running_platform,
    wait_for_status,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def gpu_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("gpu")
    with running_platform(home, extra_env={"KLIEG_WORKER_POOLS": "CPU"}) as p:
        p.bootstrap()
        p.deploy(TEST_APPS / "gpus" / "app.py")
        args = ["klieg_platform.worker", "--pool", "GPU-H100", "--gpus", "4"]
        with platform_process(home, args, "gpu-worker.log"):
            yield p


def _submit(p: Platform, path: str, seconds: float, tag: str) -> dict[str, Any]:
    with p.http() as http:
        r = http.post(f"/queue/local/gpus/{path}", json={"seconds": seconds, "tag": tag})
        assert r.status_code == 200, r.text
        return dict(r.json())


def _result(p: Platform, sub: dict[str, Any]) -> dict[str, Any]:
    with p.http() as http:
        wait_for_status(http, sub["status_url"], "COMPLETED", timeout=90)
        r = http.get(sub["response_url"])
        assert r.status_code == 200, r.text
        return dict(r.json())


def test_runners_get_disjoint_gpus(gpu_platform: Platform) -> None:
    subs = [_submit(gpu_platform, "pair", 1.0, f"p{i}") for i in range(2)]
    runs = [_result(gpu_platform, s) for s in subs]
    sets = [set(r["devices"].split(",")) for r in runs]
    assert all(len(s) == 2 for s in sets)
    assert sets[0].isdisjoint(sets[1]) and sets[0] | sets[1] == {"0", "1", "2", "3"}
    assert runs[0]["started"] < runs[1]["ended"] and runs[1]["started"] < runs[0]["ended"]


def test_cpu_work_runs_on_the_cpu_worker(gpu_platform: Platform) -> None:
    run = _result(gpu_platform, _submit(gpu_platform, "cpu", 0, "cpu"))
    assert run["devices"] is None


def test_big_job_is_not_starved_by_small_ones(gpu_platform: Platform) -> None:
    _result(gpu_platform, _submit(gpu_platform, "quad", 0, "warm"))
    first = [_submit(gpu_platform, "one", 1.0, f"a{i}") for i in range(4)]
    big = _submit(gpu_platform, "quad", 0.2, "big")
    later = [_submit(gpu_platform, "one", 1.0, f"b{i}") for i in range(6)]
    big_run = _result(gpu_platform, big)
    assert big_run["devices"] == "0,1,2,3"
    later_runs = [_result(gpu_platform, s) for s in later]
    first_runs = [_result(gpu_platform, s) for s in first]
    assert all(r["ended"] <= big_run["started"] + 0.05 for r in first_runs)
    # warm small work may pass the big job only while it has waited less than a cold start
    overtakers = [r for r in later_runs if r["started"] < big_run["started"]]
    assert len(overtakers) <= 1, [r["tag"] for r in overtakers]
