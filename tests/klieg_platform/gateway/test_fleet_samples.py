"""The fleet views' pieces: samples (running totals per owner and for the fleet, and what each
caller sees), and a worker's view (each GPU with what holds it, slots busy)."""

from __future__ import annotations

from klieg_platform.broker import Depth
from klieg_platform.broker.stats import (
    BATCH_LABELS,
    COLD_LABELS,
    REQUEST_LABELS,
    Histogram,
    Snapshot,
)
from klieg_platform.gateway.fleet import pool_views, sample, samples_for, worker_view
from klieg_platform.registry_tables import Tenant


def _snapshot() -> Snapshot:
    run = Histogram((1.0,), REQUEST_LABELS,
                    {("p", "t", "ann/a", "/"): [2, 0], ("p", "t", "ann/a", "/x"): [0, 1],
                     ("p", "t", "bob/b", "/"): [1, 0]},
                    {("p", "t", "ann/a", "/"): 1.5, ("p", "t", "ann/a", "/x"): 3.0,
                     ("p", "t", "bob/b", "/"): 0.5})  # fmt: skip
    cold = Histogram((1.0,), COLD_LABELS, {("p", "ann/a"): [0, 2]}, {("p", "ann/a"): 9.0})
    empty = Histogram((1.0,), BATCH_LABELS)
    return Snapshot(requests={}, queue_s=empty, run_s=run, cold_s=cold, batch=empty, slo={})


def test_a_sample_totals_per_owner_and_for_the_fleet() -> None:
    workers = [{"runners": [{"app": "ann/a", "state": "busy"}, {"app": "bob/b", "state": "idle"},
                            {"app": "ann/a", "state": "starting"}]}]  # fmt: skip
    depths = [Depth("p", "t", 3, 1.0), Depth("p", "u", 2, 0.5)]
    s = sample(_snapshot(), workers, depths, 100.0)
    assert s["queued"] == 5 and s["at"] == 100.0
    assert s["owners"]["ann"] == {"done": 3, "run_s": 4.5, "cold": 2, "busy": 2}
    assert s["owners"]["bob"] == {"done": 1, "run_s": 0.5}
    assert s["fleet"] == {"done": 4, "run_s": 5.0, "cold": 2, "busy": 2}


def test_each_caller_sees_its_own_figures_and_the_admin_the_fleet() -> None:
    s = sample(_snapshot(), [], [Depth("p", "t", 3, 1.0)], 100.0)
    ann = Tenant(id="1", name="ann", tier="free", created_at=0)
    carl = Tenant(id="2", name="carl", tier="free", created_at=0)
    root = Tenant(id="3", name="root", tier="free", created_at=0, admin=True)
    assert samples_for(ann, [s]) == [{"at": 100.0, "done": 3, "run_s": 4.5, "cold": 2}]
    assert samples_for(carl, [s]) == [{"at": 100.0}]
    assert samples_for(root, [s]) == [{"at": 100.0, "queued": 3, **s["fleet"]}]


def test_a_worker_view_shows_each_gpu_with_what_holds_it_and_busy_slots() -> None:
    doc = {"pools": ["GPU-H100"], "slots": 4, "gpu_ids": [0, 1, 2, 3], "seen_ms": 1000,
           "detail": [
               {"function": "r1/big", "app": "ann/a", "state": "busy", "gpus": [0, 1], "slots": 2},
               {"function": "r2/one", "app": "bob/b", "state": "idle", "gpus": [3], "slots": 1},
               {"function": "r3/old", "app": "bob/b", "state": "stopping", "gpus": [], "slots": 0},
           ]}  # fmt: skip
    view = worker_view("w1", doc, 3500)
    assert (view["slots"], view["slots_held"], view["slots_busy"]) == (4, 3, 2)
    assert view["seen_s_ago"] == 2.5 and view["gpu_ids"] == [0, 1, 2, 3]
    assert view["gpus"] == [
        {"id": 0, "app": "ann/a", "function": "r1/big", "state": "busy"},
        {"id": 1, "app": "ann/a", "function": "r1/big", "state": "busy"},
        {"id": 2, "app": None, "function": None, "state": None},
        {"id": 3, "app": "bob/b", "function": "r2/one", "state": "idle"},
    ]
    cpu = worker_view("w2", {"pools": ["CPU"], "slots": 4, "seen_ms": 1000, "detail": []}, 1000)
    assert cpu["gpus"] == [] and cpu["slots_busy"] == 0
    pool = pool_views([view], [])[0]
    assert pool["slots"] == {"total": 4, "held": 3, "busy": 2, "free": 1}


def test_zygotes_and_memory_show_per_worker_and_add_up_per_pool() -> None:
    zygote = {"env": "0123456789ab", "revision": None, "preload": ["torch"], "code": [],
              "pid": 7, "memory_bytes": 300 << 20, "idle_s": 4.0, "forks": 2,
              "children": 1}  # fmt: skip
    memory = {"budget_bytes": 8 << 30, "used_bytes": 1 << 30, "evicted_runners": 3,
              "evicted_zygotes": 1}  # fmt: skip
    gpu = worker_view("w1", {"pools": ["GPU-H100"], "slots": 4, "seen_ms": 0, "detail": [],
                             "zygotes": [zygote, {**zygote, "pid": 8, "memory_bytes": None,
                                                  "revision": "rev-1", "code": ["app"]}],
                             "memory": memory}, 0)  # fmt: skip
    assert gpu["memory"] == memory and [z["pid"] for z in gpu["zygotes"]] == [7, 8]
    both = worker_view("w2", {"pools": ["*"], "slots": 1, "seen_ms": 0, "detail": [],
                              "zygotes": [zygote]}, 0)  # fmt: skip
    assert both["memory"] == dict.fromkeys(memory, 0)  # a heartbeat from before the budget
    old = worker_view("w3", {"pools": ["CPU"], "slots": 1, "seen_ms": 0, "detail": []}, 0)
    assert old["zygotes"] == []
    pools = {p["pool"]: p["zygotes"] for p in pool_views([gpu, both, old], [])}
    assert pools == {
        "GPU-H100": {"count": 3, "memory_bytes": 600 << 20},
        "CPU": {"count": 1, "memory_bytes": 300 << 20},
    }
