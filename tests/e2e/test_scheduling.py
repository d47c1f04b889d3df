"""Multi-tenant scheduling on the live platform: SLO-normalised order, caps, shedding, access.

Tiers here are short so the tests run in seconds: enterprise (SLO 30 s), api (60 s) and free
(SLO 3 s, at most 3 queued). Every test asserts the order or the counts, not just completion.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from klieg_platform import keys as redis_keys
from tests.e2e.platform import TEST_APPS, Platform, running_platform, wait_for_status

pytestmark = pytest.mark.timeout(240)
TIERS = "enterprise:30:100,api:60:100,free:3:3"


def _platform(home: Any, slots: int) -> Any:
    env = {"KLIEG_TIERS": TIERS, "KLIEG_WORKER_SLOTS": str(slots)}
    return running_platform(home, extra_env=env)


def _setup(p: Platform) -> dict[str, str]:
    """Tenants ops (enterprise, owns the app), ent (enterprise), free1/free2 (free)."""
    with p.admin(key="") as anon:
        p.key = anon.create_key("ops")["key"]
    p.deploy(TEST_APPS / "sched" / "app.py")
    admin = p.admin()
    admin.share("sched", "public")
    keys = {"ops": p.key}
    for name, tier in [("ent", "enterprise"), ("free1", "free"), ("free2", "free")]:
        keys[name] = admin.create_key(name, tier=tier)["key"]
    return keys


def _submit(
    p: Platform, key: str, seconds: float, tag: str, app: str = "sched", priority: str = ""
) -> dict[str, Any]:
    headers = {"X-Fal-Queue-Priority": priority} if priority else {}
    with p.http(key=key) as http:
        r = http.post(f"/queue/ops/{app}", json={"seconds": seconds, "tag": tag}, headers=headers)
        assert r.status_code == 200, r.text
        return dict(r.json())


def _result(p: Platform, key: str, sub: dict[str, Any]) -> dict[str, Any]:
    with p.http(key=key) as http:
        wait_for_status(http, sub["status_url"], "COMPLETED", timeout=60)
        r = http.get(sub["response_url"])
        assert r.status_code == 200, r.text
        return dict(r.json())


@pytest.fixture(scope="module")
def one_slot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, dict[str, str]]]:
    with _platform(tmp_path_factory.mktemp("one-slot"), 1) as p:
        keys = _setup(p)
        _result(p, keys["ops"], _submit(p, keys["ops"], 0, "warm-up"))
        yield p, keys


def test_paid_goes_first_while_everyone_is_within_slo(one_slot: Any) -> None:
    p, keys = one_slot
    blocker = _submit(p, keys["ops"], 0.8, "blocker")
    time.sleep(0.2)
    free = _submit(p, keys["free1"], 0.05, "free")
    ent = _submit(p, keys["ent"], 0.05, "ent")
    started = {
        "free": _result(p, keys["free1"], free)["started"],
        "ent": _result(p, keys["ent"], ent)["started"],
    }
    _result(p, keys["ops"], blocker)
    assert started["ent"] < started["free"]


def test_free_job_past_its_slo_beats_a_fresh_enterprise_job(one_slot: Any) -> None:
    p, keys = one_slot
    blocker = _submit(p, keys["ops"], 4.5, "blocker")
    time.sleep(0.2)
    free = _submit(p, keys["free1"], 0.05, "free")
    time.sleep(3.5)  # free has now waited past its 3 s SLO; enterprise arrives fresh
    ent = _submit(p, keys["ent"], 0.05, "ent")
    free_started = _result(p, keys["free1"], free)["started"]
    ent_started = _result(p, keys["ent"], ent)["started"]
    _result(p, keys["ops"], blocker)
    assert free_started < ent_started


def test_fifo_within_a_tier_and_queue_eta(one_slot: Any) -> None:
    p, keys = one_slot
    blocker = _submit(p, keys["ops"], 1.0, "blocker")
    time.sleep(0.2)
    subs = [_submit(p, keys["ent"], 0.05, f"e{i}") for i in range(3)]
    with p.http(key=keys["ent"]) as http:
        last = http.get(subs[-1]["status_url"]).json()
    assert last["status"] == "IN_QUEUE" and last["queue_position"] == 2
    assert isinstance(last["queue_eta_s"], float) and last["queue_eta_s"] >= 0
    starts = [_result(p, keys["ent"], s)["started"] for s in subs]
    _result(p, keys["ops"], blocker)
    assert starts == sorted(starts)


def test_low_priority_waits_behind_its_tenants_normal_requests_only(one_slot: Any) -> None:
    p, keys = one_slot
    if "ent2" not in keys:
        keys["ent2"] = p.admin().create_key("ent2", tier="enterprise")["key"]
    blocker = _submit(p, keys["ops"], 1.5, "blocker")
    time.sleep(0.2)
    order = [
        ("ent", "low1", "low"), ("ent", "low2", "low"), ("ent2", "theirs", ""),
        ("ent", "normal1", ""), ("ent", "normal2", ""),
    ]  # fmt: skip
    subs = {tag: (who, _submit(p, keys[who], 0.05, tag, priority=pr)) for who, tag, pr in order}
    started = {tag: _result(p, keys[who], sub)["started"] for tag, (who, sub) in subs.items()}
    _result(p, keys["ops"], blocker)
    # ent's normal requests start before its low ones, which were queued first; ent2's request
    # is placed by its own arrival: ahead of ent's (whose first normal one came after it)
    assert sorted(started, key=started.__getitem__) == [
        "theirs",
        "normal1",
        "normal2",
        "low1",
        "low2",
    ]
    # a low request does not wait behind another tenant's normal one queued after it
    blocker = _submit(p, keys["ops"], 1.0, "blocker")
    time.sleep(0.2)
    low = _submit(p, keys["ent"], 0.05, "low", priority="low")
    theirs = _submit(p, keys["ent2"], 0.05, "theirs")
    low_started = _result(p, keys["ent"], low)["started"]
    assert low_started < _result(p, keys["ent2"], theirs)["started"]
    _result(p, keys["ops"], blocker)


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Platform, dict[str, str]]]:
    home = tmp_path_factory.mktemp("two-workers")
    with _platform(home, 1) as p:
        keys = _setup(p)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KLIEG_")}
        env.update(
            KLIEG_HOME=str(home),
            KLIEG_REDIS_URL=f"unix://{home / 'run' / 'redis.sock'}",
            KLIEG_TIERS=TIERS,
        )
        with open(home / "worker2.log", "ab") as log:
            extra = subprocess.Popen(
                [sys.executable, "-m", "klieg_platform.worker", "--slots", "1"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            workers = redis.Redis(unix_socket_path=str(home / "run" / "redis.sock"))
            deadline = time.monotonic() + 60
            while workers.hlen(redis_keys.WORKERS) < 2:  # both heartbeats are in
                assert time.monotonic() < deadline, "the second worker did not start"
                time.sleep(0.1)
            warm = [_submit(p, keys["ops"], 1.0, f"w{i}") for i in range(2)]
            pids = {_result(p, keys["ops"], s)["pid"] for s in warm}
            assert len(pids) == 2, "both workers serve"
            yield p, keys
        finally:
            extra.terminate()
            extra.wait(timeout=30)


def test_capped_tenant_waits_without_blocking_others(two_workers: Any) -> None:
    p, keys = two_workers
    p.admin().set_tenant("free1", max_inflight=1)
    try:
        capped = [_submit(p, keys["free1"], 0.6, f"c{i}") for i in range(3)]
        time.sleep(0.1)
        other = _submit(p, keys["free2"], 0.05, "other")
        runs = [_result(p, keys["free1"], s) for s in capped]
        other_run = _result(p, keys["free2"], other)
    finally:
        p.admin().set_tenant("free1", max_inflight=0)
    runs.sort(key=lambda r: r["started"])
    for a, b in itertools.pairwise(runs):
        assert b["started"] >= a["ended"] - 0.05, "the capped tenant never ran two at once"
    assert other_run["started"] < runs[1]["started"], "the other tenant was not held back"


def test_full_free_queue_sheds_with_429_and_retry_after(two_workers: Any) -> None:
    p, keys = two_workers
    # the blockers hold both slots until the free queue has been tried, on a loaded machine too
    blockers = [_submit(p, keys["ops"], 6.0, f"b{i}") for i in range(2)]
    time.sleep(0.3)
    accepted = [_submit(p, keys["free1"], 0.01, f"f{i}") for i in range(3)]
    with p.http(key=keys["free2"]) as http:
        r = http.post("/queue/ops/sched", json={"seconds": 0.01})
        assert r.status_code == 429, r.text
        assert r.json()["error_type"] == "QueueFullError"
        assert int(r.headers["retry-after"]) >= 1
        sync = http.post("/ops/sched", json={"seconds": 0.01})
        assert sync.status_code == 429
    ent = _submit(p, keys["ent"], 0.01, "ent")  # a paid tier is still accepted
    for sub in accepted:
        _result(p, keys["free1"], sub)
    _result(p, keys["ent"], ent)
    for sub in blockers:
        _result(p, keys["ops"], sub)


def test_private_shared_public_apps(two_workers: Any) -> None:
    p, keys = two_workers
    admin = p.admin()

    def status(tenant: str) -> int:
        with p.http(key=keys[tenant]) as http:
            return http.post("/ops/sched", json={"seconds": 0}).status_code

    admin.share("sched", "private")
    assert [status(t) for t in ("ops", "ent", "free1")] == [200, 404, 404]
    admin.share("sched", "shared", ["ent"])
    assert [status(t) for t in ("ops", "ent", "free1")] == [200, 200, 404]
    admin.share("sched", "public")
    assert [status(t) for t in ("ops", "ent", "free1")] == [200, 200, 200]
    with p.http(key=keys["ent"]) as http:
        r = http.put("/apps/sched/visibility", json={"visibility": "private"})
        assert r.status_code == 404, "only the owner manages its app"
        r = http.put("/tenants/free1", json={"max_inflight": 5})
        assert r.status_code == 403


def test_warm_runner_is_not_cold_started_again_elsewhere(two_workers: Any) -> None:
    p, keys = two_workers
    with p.http(key=keys["ops"]) as http:
        first = http.post("/ops/sched/solo", json={"tag": "first"}).json()["pid"]
        time.sleep(2.5)  # heartbeats carry who holds "solo" warm
        pids = [http.post("/ops/sched/solo", json={"tag": f"n{i}"}).json()["pid"] for i in range(8)]
    assert set(pids) == {first}, "every request went to the one warm runner"


def test_full_worker_evicts_the_least_recently_used_idle_runner(one_slot: Any) -> None:
    p, keys = one_slot
    with p.http(key=keys["ops"]) as http:
        solo = http.post("/ops/sched/solo", json={}).json()["pid"]
        work = http.post("/ops/sched", json={"seconds": 0}).json()["pid"]
    assert work != solo
    deadline = time.monotonic() + 10
    while (
        Path(f"/proc/{solo}").exists() and "zombie" not in Path(f"/proc/{solo}/status").read_text()
    ):
        assert time.monotonic() < deadline, "the idle runner was not evicted for room"
        time.sleep(0.1)


def test_app_cap_holds_across_workers_and_tenants(two_workers: Any) -> None:
    p, keys = two_workers
    p.admin().limit_app("sched", 1)
    try:
        subs = [
            (tenant, _submit(p, keys[tenant], 0.5, tenant)) for tenant in ("ent", "free1", "free2")
        ]
        runs = sorted((_result(p, keys[t], s) for t, s in subs), key=lambda r: r["started"])
    finally:
        p.admin().limit_app("sched", 0)
    for a, b in itertools.pairwise(runs):
        assert b["started"] >= a["ended"] - 0.05, "two requests of a capped app ran at once"


BACKLOG = 100  # deeper than 64 in one tier: a dispatch must see past the capped requests
DEEP_TIERS = "enterprise:30:1000,api:60:1000,free:3:3"


@pytest.fixture(scope="module")
def deep_queues(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Platform, dict[str, str]]]:
    """Two slots, queues deep enough for a long backlog; apps ``sched`` and ``sched2`` (its copy
    under another name), both warm; tenant ``ent2`` (enterprise) besides ``_setup``'s."""
    home = tmp_path_factory.mktemp("deep-queues")
    env = {"KLIEG_TIERS": DEEP_TIERS, "KLIEG_WORKER_SLOTS": "2"}
    with running_platform(home, extra_env=env) as p:
        keys = _setup(p)
        keys["ent2"] = p.admin().create_key("ent2", tier="enterprise")["key"]
        copy = home / "sched2"
        shutil.copytree(TEST_APPS / "sched", copy)
        code = (copy / "app.py").read_text()
        (copy / "app.py").write_text(code.replace('App("sched")', 'App("sched2")'))
        p.deploy(copy / "app.py")
        for app in ("sched", "sched2"):
            _result(p, keys["ops"], _submit(p, keys["ops"], 0, "warm-up", app))
        yield p, keys


def _queue(p: Platform, key: str, app: str, n: int, seconds: float) -> list[dict[str, Any]]:
    with p.http(key=key) as http:
        subs = []
        for i in range(n):
            r = http.post(f"/queue/ops/{app}", json={"seconds": seconds, "tag": f"q{i}"})
            assert r.status_code == 200, r.text
            subs.append(dict(r.json()))
        return subs


def _drain(p: Platform, key: str, subs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cancel what is still queued (newest first) and wait for all of ``subs`` to complete; the
    results of those that ran to the end, in the order they started."""
    runs = []
    with p.http(key=key) as http:
        for sub in reversed(subs):
            if http.get(sub["status_url"]).json()["status"] == "IN_QUEUE":
                http.put(sub["cancel_url"])
        for sub in subs:
            wait_for_status(http, sub["status_url"], "COMPLETED", timeout=60)
            r = http.get(sub["response_url"])
            if r.status_code == 200 and "started" in r.json():
                runs.append(dict(r.json()))
    return sorted(runs, key=lambda r: r["started"])


def _one_at_a_time(runs: list[dict[str, Any]]) -> bool:
    return all(b["started"] >= a["ended"] - 0.05 for a, b in itertools.pairwise(runs))


def test_capped_app_backlog_does_not_delay_another_app(deep_queues: Any) -> None:
    p, keys = deep_queues
    p.admin().limit_app("sched2", 1)
    try:
        backlog = _queue(p, keys["ops"], "sched2", BACKLOG, 0.25)
        submitted = time.time()
        other = [_submit(p, keys["ops"], 0.05, f"other{i}") for i in range(2)]
        other_runs = [_result(p, keys["ops"], s) for s in other]
        with p.http(key=keys["ops"]) as http:
            last = http.get(backlog[-1]["status_url"]).json()["status"]
            wait_for_status(http, backlog[2]["status_url"], "COMPLETED", timeout=30)
    finally:
        p.admin().limit_app("sched2", 0)
        runs = _drain(p, keys["ops"], backlog)
    waited = max(r["started"] for r in other_runs) - submitted
    ahead = sum(r["started"] < other_runs[0]["started"] for r in runs)
    assert waited < 3.0, (
        f"the other app's requests started {waited:.1f} s after they were submitted, once "
        f"{ahead} of the {BACKLOG} queued requests of the capped app had started"
    )
    assert last == "IN_QUEUE", "the capped app still had a backlog when the other app ran"
    assert len(runs) >= 3 and _one_at_a_time(runs), "two requests of a capped app ran at once"


def test_capped_tenant_backlog_does_not_delay_another_tenant(deep_queues: Any) -> None:
    p, keys = deep_queues
    p.admin().set_tenant("ent", max_inflight=1)
    try:
        backlog = _queue(p, keys["ent"], "sched", BACKLOG, 0.25)
        submitted = time.time()
        other = [_submit(p, keys["ent2"], 0.05, f"other{i}") for i in range(2)]
        other_runs = [_result(p, keys["ent2"], s) for s in other]
        with p.http(key=keys["ent"]) as http:
            last = http.get(backlog[-1]["status_url"]).json()["status"]
            wait_for_status(http, backlog[2]["status_url"], "COMPLETED", timeout=30)
    finally:
        p.admin().set_tenant("ent", max_inflight=0)
        runs = _drain(p, keys["ent"], backlog)
    waited = max(r["started"] for r in other_runs) - submitted
    ahead = sum(r["started"] < other_runs[0]["started"] for r in runs)
    assert waited < 3.0, (
        f"the other tenant's requests started {waited:.1f} s after they were submitted, once "
        f"{ahead} of the {BACKLOG} queued requests of the capped tenant had started"
    )
    assert last == "IN_QUEUE", "the capped tenant still had a backlog when the other tenant ran"
    assert len(runs) >= 3 and _one_at_a_time(runs), "the capped tenant ran two at once"
