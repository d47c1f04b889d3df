"""The ordering rule, back pressure, and the simulator that replays traces through the rule."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from klieg_platform import scheduler
from klieg_platform.backlog import Backlog
from klieg_platform.scheduler import (
    DEFAULT_TIERS,
    Blocked,
    Elsewhere,
    Job,
    Tier,
    admit,
    estimate_start_s,
    parse_tiers,
    pick,
    pick_for_worker,
    pick_strict,
    retry_after_s,
)
from klieg_platform.simulator import (
    RunStats,
    simulate,
    simulate_per_worker,
)
from klieg_platform.traces import (
    AppSpec,
    Cluster,
    Request,
    Trace,
    read_trace,
    write_trace,
)

pytestmark = pytest.mark.timeout(60)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scheduling.py"


def job(name: str, tier: str, at: float, tenant: str = "", app: str = "image") -> Job:
    return Job(name, tier, tenant or f"{tier}-tenant", app, at)


def ids(found: Job | None) -> str | None:
    return None if found is None else found.id


# -- tiers ---------------------------------------------------------------------------------------


def test_default_tiers_rank_paid_first_and_bound_lower_tiers_tighter() -> None:
    assert [(t.name, t.slo_s, t.rank) for t in DEFAULT_TIERS] == [
        ("enterprise", 60, 0),
        ("api", 120, 1),
        ("plus", 300, 2),
        ("light", 600, 3),
        ("free", 1800, 4),
    ]
    bounds = [t.max_queued for t in DEFAULT_TIERS]
    assert bounds == sorted(bounds, reverse=True)


def test_parse_tiers_order_is_rank() -> None:
    tiers = parse_tiers(" gold:30:50 , bronze:900:5")
    assert tiers == (Tier("gold", 30.0, 50, 0), Tier("bronze", 900.0, 5, 1))


@pytest.mark.parametrize(
    "spec", ["", "gold:30", "gold:30:5:1", "gold:x:5", "gold:0:5", "gold:30:-1", "a:1:1,a:2:2"]
)
def test_parse_tiers_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_tiers(spec)


# -- pick ----------------------------------------------------------------------------------------


def test_empty_queues_pick_nothing() -> None:
    assert pick({}, 0.0) is None
    assert pick({"free": [], "enterprise": []}, 0.0) is None
    assert pick_strict({"free": []}, 0.0) is None


def test_fifo_within_a_tier() -> None:
    queue = [job("first", "api", 10.0), job("second", "api", 5.0)]
    assert ids(pick({"api": queue}, 20.0)) == "first"
    assert ids(pick({"api": queue}, 5000.0)) == "first"
    assert ids(pick({"api": queue[::-1]}, 20.0)) == "second"


def test_paid_first_while_everyone_is_within_slo() -> None:
    queues = {
        "free": [job("free", "free", 0.0)],  # 1000/1800 of its SLO used
        "plus": [job("plus", "plus", 800.0)],  # 200/300
        "enterprise": [job("ent", "enterprise", 999.0)],  # 1/60
    }
    assert ids(pick(queues, 1000.0)) == "ent"
    del queues["enterprise"]
    assert ids(pick(queues, 1000.0)) == "plus"


def test_an_over_slo_free_job_beats_a_within_slo_enterprise_job() -> None:
    queues = {
        "enterprise": [job("ent", "enterprise", 1850.0)],  # 50/60: within
        "free": [job("free", "free", 0.0)],  # 1900/1800: over
    }
    assert ids(pick(queues, 1900.0)) == "free"
    assert ids(pick(queues, 1799.0 + 0.0)) == "ent"  # free at 1799/1800: still within
    assert ids(pick_strict(queues, 1900.0)) == "ent"


def test_among_over_slo_candidates_the_highest_wait_over_slo_wins() -> None:
    now = 10_000.0
    api_x3 = job("api", "api", now - 360.0)  # 3.0
    free_x2 = job("free", "free", now - 3600.0)  # 2.0
    ent_x1 = job("ent", "enterprise", now - 61.0)  # ~1.02
    assert ids(pick({"api": [api_x3], "free": [free_x2], "enterprise": [ent_x1]}, now)) == "api"
    free_x4 = job("free", "free", now - 7200.0)  # 4.0: the longest wait/SLO, not the paid tier
    assert ids(pick({"api": [api_x3], "free": [free_x4], "enterprise": [ent_x1]}, now)) == "free"


def test_ties_go_to_the_lower_rank_then_the_earlier_job() -> None:
    now = 1000.0
    queues = {
        "api": [job("api", "api", now - 240.0)],  # 2.0
        "enterprise": [job("ent", "enterprise", now - 120.0)],  # 2.0
    }
    assert ids(pick(queues, now)) == "ent"
    same_rank = (Tier("a", 10.0, 100, 0), Tier("b", 20.0, 100, 0))
    queues = {"a": [job("a", "a", now - 20.0)], "b": [job("b", "b", now - 40.0)]}  # both 2.0
    assert ids(pick(queues, now, tiers=same_rank)) == "b"


def test_a_capped_tenant_is_skipped_then_served_once_under_cap() -> None:
    queue = [
        job("busy-1", "free", 0.0, tenant="busy"),
        job("busy-2", "free", 1.0, tenant="busy"),
        job("calm-1", "free", 2.0, tenant="calm"),
    ]
    caps = {"busy": 2, "calm": 2}
    at_cap = {"busy": 2}
    for fn in (pick, pick_strict):
        found = fn({"free": queue}, 10.0, inflight_by_tenant=at_cap, tenant_caps=caps)
        assert ids(found) == "calm-1"
        found = fn({"free": queue}, 10.0, inflight_by_tenant={"busy": 1}, tenant_caps=caps)
        assert ids(found) == "busy-1"
    # Uncapped tenants (missing from tenant_caps) are never skipped.
    assert ids(pick({"free": queue}, 10.0, inflight_by_tenant={"busy": 99})) == "busy-1"


def test_a_capped_tenant_does_not_block_other_tiers() -> None:
    queues = {
        "enterprise": [job("ent", "enterprise", 0.0, tenant="acme")],
        "free": [job("free", "free", 0.0, tenant="bob")],
    }
    found = pick(queues, 10.0, inflight_by_tenant={"acme": 5}, tenant_caps={"acme": 5})
    assert ids(found) == "free"


def test_app_caps_skip_jobs_of_a_capped_app() -> None:
    queue = [
        job("video-1", "api", 0.0, app="video"),
        job("image-1", "api", 1.0, app="image"),
    ]
    caps = {"video": 3}
    for fn in (pick, pick_strict):
        assert (
            ids(fn({"api": queue}, 5.0, inflight_by_app={"video": 3}, app_caps=caps)) == "image-1"
        )
        assert (
            ids(fn({"api": queue}, 5.0, inflight_by_app={"video": 2}, app_caps=caps)) == "video-1"
        )


def test_capped_jobs_ahead_never_hide_a_candidate() -> None:
    capped = [job(f"c{k}", "free", float(k), tenant="busy") for k in range(5000)]
    video = [job(f"v{k}", "free", 5000.0 + k, tenant=f"t{k}", app="video") for k in range(5000)]
    queues: dict[str, Sequence[Job]] = {"free": [*capped, *video, job("ok", "free", 1e4)]}
    counts: dict[str, Any] = {
        "inflight_by_tenant": {"busy": 1}, "tenant_caps": {"busy": 1},
        "inflight_by_app": {"video": 2}, "app_caps": {"video": 2},
    }  # fmt: skip
    assert ids(pick(queues, 2e4, **counts)) == "ok"
    backlog = Backlog(tenant_caps=counts["tenant_caps"], app_caps=counts["app_caps"])
    running = [job("r0", "free", 0.0, tenant="busy"),
               *(job(f"r{k}", "free", 0.0, tenant="x", app="video") for k in (1, 2))]  # fmt: skip
    for j in running:  # in flight: "busy" and "video" at their caps
        backlog.add(j)
        backlog.start(j)
    for j in queues["free"]:
        backlog.add(j)
    assert ids(backlog.pick(2e4)) == "ok"


def test_pick_rejects_jobs_of_an_unknown_tier() -> None:
    with pytest.raises(ValueError, match="gold"):
        pick({"gold": [job("g", "gold", 0.0)]}, 1.0)


def test_pick_strict_is_lowest_rank_first_whatever_the_wait() -> None:
    queues = {
        "free": [job("free", "free", 0.0)],  # 100x its SLO
        "light": [job("light-1", "light", 179_000.0), job("light-2", "light", 179_500.0)],
    }
    assert ids(pick_strict(queues, 180_000.0)) == "light-1"
    assert ids(pick(queues, 180_000.0)) == "free"


# -- pick_for_worker (rules W1-W5) ----------------------------------------------------------------

COLD = {"image": 20.0, "audio": 15.0, "video": 90.0}


def wjob(name: str, tier: str, at: float, app: str = "image", gpus: int = 1, fn: str = "") -> Job:
    return Job(name, tier, f"{name}-tenant", app, at, gpus, fn)


def for_worker(
    queues: dict[str, list[Job]],
    now: float,
    *,
    free: int = 8,
    total: int = 8,
    here: Sequence[str] = (),
    elsewhere: Sequence[str] = (),
    **kw: Any,
) -> Job | Blocked | Elsewhere | None:
    return pick_for_worker(queues, now, free_units=free, total_units=total, here=here,
                           elsewhere=elsewhere, cold_start_s=COLD, **kw)  # fmt: skip


def test_job_function_key_defaults_to_the_app_and_units_to_at_least_one() -> None:
    assert Job("j", "api", "t", "image", 0.0).function_key == "image"
    assert Job("j", "api", "t", "image", 0.0, fn="rev1/gen").function_key == "rev1/gen"
    assert Job("j", "api", "t", "image", 0.0, gpus=0).units == 1
    assert Job("j", "api", "t", "image", 0.0, gpus=4).units == 4


def test_w1_best_idle_here_is_taken_even_without_free_units() -> None:
    best = wjob("best", "enterprise", 100.0, app="upscale", gpus=4, fn="r1/upscale")
    queues = {"enterprise": [best], "free": [wjob("small", "free", 0.0)]}
    assert for_worker(queues, 105.0, free=0, here=["r1/upscale"]) is best
    # The function key, not the app name, is what ``here`` names.
    assert for_worker(queues, 105.0, free=0, here=["upscale"]) == Blocked(4)


def test_w2_a_best_idle_elsewhere_is_left_to_the_warm_worker_whatever_its_wait() -> None:
    e1 = wjob("e1", "enterprise", 100.0, fn="r2/image")
    queues = {"enterprise": [e1]}
    assert for_worker(queues, 105.0, elsewhere=["r2/image"]) == Elsewhere()
    assert for_worker(queues, 105.0, elsewhere=["r1/image"]) is e1
    assert for_worker(queues, 1000.0, elsewhere=["r2/image"]) == Elsewhere(), "over its SLO"
    # Before draining for it, and before warm work here: the warm worker takes it at once.
    big = wjob("big", "enterprise", 0.0, app="video", gpus=8)
    warm = wjob("warm", "free", 1.0, app="audio")
    queues = {"enterprise": [big], "free": [warm]}
    assert for_worker(queues, 70.0, free=2, here=["audio"], elsewhere=["video"]) == Elsewhere()
    assert for_worker(queues, 70.0, free=2, here=["audio"]) == Blocked(8)


def test_w3_a_best_that_does_not_fit_blocks_the_worker_and_reserves_it() -> None:
    big = wjob("big", "enterprise", 0.0, app="upscale", gpus=4)
    small = wjob("small", "api", 0.0)  # older, cheaper, warm here: still not taken
    queues = {"enterprise": [big], "api": [small]}
    got = for_worker(queues, 1.0, free=3, here=["image"])
    assert got == Blocked(4) and isinstance(got, Blocked) and got.job is big
    assert for_worker(queues, 1.0, free=4, here=["image"]) is big
    # A job takes at least one unit, whatever its gpus say.
    assert for_worker({"api": [wjob("gpu0", "api", 0.0, gpus=0)]}, 1.0, free=0) == Blocked(1)


def test_w3_a_job_larger_than_the_worker_is_never_a_candidate() -> None:
    huge = wjob("huge", "enterprise", 0.0, app="video", gpus=8)
    later = wjob("later", "enterprise", 1.0)
    queues = {"enterprise": [huge, later], "free": [wjob("free", "free", 0.0)]}
    assert for_worker(queues, 200.0, free=4, total=4) is later  # not Blocked(8)
    assert for_worker(queues, 200.0, free=4, total=8) == Blocked(8)
    assert for_worker({"enterprise": [huge]}, 200.0, free=4, total=4) is None
    assert for_worker({"enterprise": [huge]}, 200.0, free=0, total=0) is None


def test_w3_past_the_reservation_limit_a_worker_backfills_instead_of_draining() -> None:
    big = wjob("big", "enterprise", 0.0, app="upscale", gpus=4)
    small = wjob("small", "api", 0.0)
    other = wjob("other", "free", 0.0, app="video", gpus=8)
    queues = {"enterprise": [big], "api": [small], "free": [other]}
    kw: dict[str, Any] = {"free": 3, "worker": "w1", "reserved": {"w9": other}}
    assert for_worker(queues, 1.0, **kw, max_reserved=2) == Blocked(4)
    assert for_worker(queues, 1.0, **kw, max_reserved=1) is small
    assert for_worker({"enterprise": [big]}, 1.0, **kw, max_reserved=1) is None


def test_w0_a_reservation_is_served_first_by_whoever_fits_it() -> None:
    big = wjob("big", "free", 0.0, app="upscale", gpus=4)
    urgent = wjob("urgent", "enterprise", 100.0)
    queues = {"free": [big], "enterprise": [urgent]}
    held = {"w1": big}
    # The holder drains until it fits, then takes it, whatever else is queued.
    assert for_worker(queues, 101.0, free=3, worker="w1", reserved=held) == Blocked(4)
    assert for_worker(queues, 101.0, free=4, worker="w1", reserved=held) is big
    # Another worker does not see it as a candidate, unless it can run it now.
    assert for_worker(queues, 101.0, free=3, worker="w2", reserved=held) is urgent
    assert for_worker({"free": [big]}, 101.0, free=3, worker="w2", reserved=held) is None
    assert for_worker(queues, 101.0, free=6, worker="w2", reserved=held) is big
    # Over cap by the time it fits: the reservation ends and the job waits like any other.
    capped = {"tenant_caps": {"big-tenant": 1}, "inflight_by_tenant": {"big-tenant": 1}}
    got = for_worker(queues, 101.0, free=4, worker="w1", reserved=held, **capped)
    assert got is urgent


def test_w0_another_workers_reservation_waits_while_warm_work_waits_here() -> None:
    """A worker whose idle runner has work queued serves it, not another worker's reservation
    that would evict that runner for a cold start; without such work, or where the reserved
    job's own function idles here, it takes the reservation."""
    big = wjob("big", "api", 0.0, app="video", gpus=8, fn="r1/video")
    mine = wjob("mine", "free", 50.0, app="video-2", gpus=8, fn="r1/video-2")
    queues = {"api": [big], "free": [mine]}
    held = {"w1": big}
    kw: dict[str, Any] = {"free": 8, "worker": "w2", "reserved": held}
    assert for_worker(queues, 100.0, **kw, here=["r1/video-2"]) is mine
    assert for_worker({"api": [big]}, 100.0, **kw, here=["r1/video-2"]) is big
    assert for_worker(queues, 100.0, **kw, here=["r1/video-2", "r1/video"]) is big
    assert for_worker(queues, 100.0, **kw) is big, "nothing idle here"
    # Warm work that does not fit the free units does not hold the reservation back.
    wide = wjob("wide", "free", 50.0, app="video-2", gpus=16, fn="r1/video-2")
    got = for_worker({"api": [big], "free": [wide]}, 100.0, **kw, total=16, here=["r1/video-2"])
    assert got is big
    small = wjob("small", "free", 50.0, app="image", fn="r1/image")
    got = for_worker({"api": [big], "free": [small]}, 100.0, **kw, here=["r1/image"])
    assert got is small
    capped = {"app_caps": {"image": 1}, "inflight_by_app": {"image": 1}}
    got = for_worker({"api": [big], "free": [small]}, 100.0, **kw, here=["r1/image"], **capped)
    assert got is big, "the warm work is capped: it is not a candidate"


def test_w4_a_young_best_gives_way_to_the_best_warm_candidate() -> None:
    e1 = wjob("e1", "enterprise", 100.0, app="image")  # the pick; 5 s < image's 20 s cold start
    e2 = wjob("e2", "enterprise", 101.0, app="audio")
    a1 = wjob("a1", "api", 90.0, app="audio")  # earlier, but a lower tier than e2
    queues = {"enterprise": [e1, e2], "api": [a1]}
    assert for_worker(queues, 105.0, here=["audio"]) is e2
    assert for_worker({"enterprise": [e1], "api": [a1]}, 105.0, here=["audio"]) is a1
    assert for_worker(queues, 105.0, here=["upscale"]) is e1  # nothing warm queued: cold start


def test_w4_warm_candidates_respect_caps_and_the_worker_size() -> None:
    e1 = wjob("e1", "enterprise", 100.0)
    capped = wjob("capped", "api", 90.0, app="audio")
    big = wjob("big", "api", 91.0, app="audio", gpus=8)
    ok = wjob("ok", "api", 92.0, app="audio")
    queues = {"enterprise": [e1], "api": [capped, big, ok]}
    capped_at = {"capped-tenant": 1}
    got = for_worker(queues, 105.0, free=4, total=4, here=["audio"], tenant_caps=capped_at,
                     inflight_by_tenant=capped_at)  # fmt: skip
    assert got is ok


def test_w4_does_not_take_a_warm_job_that_does_not_fit_the_free_units() -> None:
    e1 = wjob("e1", "enterprise", 100.0)
    warm = wjob("warm", "api", 90.0, app="upscale", gpus=2)
    queues = {"enterprise": [e1], "api": [warm]}
    assert for_worker(queues, 105.0, free=2, here=["upscale"]) is warm
    assert for_worker(queues, 105.0, free=1, here=["upscale"]) is e1  # W5


def test_w4_applies_while_the_best_is_young_or_the_warm_job_about_as_late() -> None:
    e1 = wjob("e1", "enterprise", 100.0)  # image: 20 s cold start, 60 s SLO
    warm = wjob("warm", "api", 95.0, app="audio")  # 120 s SLO
    queues = {"enterprise": [e1], "api": [warm]}
    # young; not young and within its SLO (twice); over its SLO, the warm job about as late
    # (125 s of 120 against 120 s of 60: 1.04 >= WARM_SHARE x 2.0)
    cases = [(119.9, warm), (120.0, e1), (159.0, e1), (220.0, warm)]
    for now, want in cases:
        assert for_worker(queues, now, here=["audio"]) is want, now
    assert scheduler.WARM_SHARE == 0.5
    # Over its SLO, against a warm job far less late (125 s of a 1800 s SLO): the best.
    far = wjob("far", "free", 95.0, app="audio")
    assert for_worker({"enterprise": [e1], "free": [far]}, 220.0, here=["audio"]) is e1
    # An app without a measured cold start is never young.
    other = wjob("other", "enterprise", 100.0, app="unknown")
    assert for_worker({"enterprise": [other], "api": [warm]}, 101.0, here=["audio"]) is other


def test_w4_asks_less_of_a_warm_job_when_best_would_start_slower_than_it_serves() -> None:
    """Over its SLO, best (an api image job: 20 s cold start, 2.0 of its SLO waited) against a
    warm enterprise job far less late (0.07 of its SLO): cold-started while its app serves about
    as slowly as it starts, left behind the warm job while a cold start costs four of its
    requests' service. A warm job of a less important tier gets no such favour."""
    best = wjob("best", "api", 100.0)
    warm = wjob("warm", "enterprise", 335.8, app="audio")
    queues = {"enterprise": [warm], "api": [best]}
    assert scheduler.COLD_WEIGHT == 6
    assert scheduler.warm_share(20.0, 5.0) == pytest.approx(0.5 * 0.25**6)
    assert scheduler.warm_share(20.0, 20.0) == scheduler.warm_share(20.0, 0.0) == 0.5
    for service, want in ((5.0, warm), (20.0, best), (None, best)):
        times = {} if service is None else {"image": service}
        assert for_worker(queues, 340.0, here=["audio"], service_s=times) is want, service
    lower = wjob("lower", "free", 214.0, app="audio")  # 126 s of 1800: 0.07 of its SLO
    queues = {"api": [best], "free": [lower]}
    assert for_worker(queues, 340.0, here=["audio"], service_s={"image": 5.0}) is best


def test_w5_otherwise_the_best_pays_a_cold_start() -> None:
    e1 = wjob("e1", "enterprise", 100.0)
    assert for_worker({"enterprise": [e1]}, 105.0) is e1
    assert for_worker({}, 105.0) is None


def test_w2b_a_young_job_is_left_to_its_apps_busy_runners() -> None:
    """Two image runners busy, 5 s a request, 20 s a cold start: they reach 8 queued requests
    within a cold start, so a young one is not cold-started; another app's job goes instead."""
    a1 = wjob("a1", "enterprise", 100.0)
    b1 = wjob("b1", "api", 101.0, app="video")
    left = {"inflight_by_app": {"image": 2}, "service_s": {"image": 5.0, "video": 120.0}}
    queues = {"enterprise": [a1], "api": [b1]}
    assert for_worker(queues, 105.0, **left) is b1  # a1 (the best) is left to the busy runners
    assert for_worker({"enterprise": [a1]}, 105.0, **left) is None  # and no GPU takes it
    # ... not once it has waited a cold start, nor with no runner busy, nor while a runner of
    # its function idles somewhere (W1, W2), nor without a measured service time
    assert for_worker(queues, 100.0 + COLD["image"], **left) is a1
    assert for_worker(queues, 105.0, service_s=left["service_s"]) is a1
    assert isinstance(for_worker(queues, 105.0, elsewhere=["image"], **left), Elsewhere)
    assert for_worker(queues, 105.0, inflight_by_app={"image": 2}) is a1
    # nor when its queue is longer than the busy runners reach within a cold start: 2 runners x
    # 20 s / 5 s = 8 requests
    many = [wjob(f"a{k}", "enterprise", 100.0 + k / 100) for k in range(1, 10)]
    assert for_worker({"enterprise": many[:8], "api": [b1]}, 105.0, **left) is b1
    assert for_worker({"enterprise": many, "api": [b1]}, 105.0, **left) is many[0]


@pytest.mark.parametrize("seed", range(20))
def test_pick_for_worker_without_warmth_or_limits_is_pick(seed: int) -> None:
    rng = random.Random(seed)
    queues: dict[str, list[Job]] = {}
    for k in range(rng.randint(0, 30)):
        tier = rng.choice(DEFAULT_TIERS)
        queues.setdefault(tier.name, []).append(
            Job(f"j{k}", tier.name, f"t{rng.randint(0, 4)}", "image", rng.uniform(0, 4000),
                rng.randint(0, 8))
        )  # fmt: skip
    for queue in queues.values():
        queue.sort(key=lambda j: j.enqueued_at)
    caps = {"inflight_by_tenant": {"t0": 1, "t1": 3}, "tenant_caps": {"t0": 1, "t1": 2}}
    got = pick_for_worker(queues, 4000.0, tiers=DEFAULT_TIERS, free_units=8, total_units=8, **caps)
    assert got == pick(queues, 4000.0, tiers=DEFAULT_TIERS, **caps)


# -- back pressure and ETA -------------------------------------------------------------------------


def test_admit_bounds_each_tier_and_free_sheds_first() -> None:
    bound = {t.name: t.max_queued for t in DEFAULT_TIERS}
    assert admit("free", bound["free"] - 1)
    assert not admit("free", bound["free"])
    assert admit("enterprise", bound["free"])
    shed_at = {name: next(n for n in range(0, 30_000, 100) if not admit(name, n)) for name in bound}
    assert shed_at["free"] < shed_at["light"] < shed_at["plus"] < shed_at["api"]
    assert shed_at["api"] < shed_at["enterprise"]
    assert not admit("gold", 0, parse_tiers("gold:10:0"))
    with pytest.raises(ValueError):
        admit("platinum", 0)


@pytest.mark.parametrize(
    ("ahead", "service", "capacity", "expected"),
    [
        (0, 10.0, 4, 1),  # clamped up to 1
        (10, 3.0, 4, 8),  # ceil(7.5)
        (100, 6.0, 0, 600),  # capacity 0 counts as 1; 600 is the ceiling
        (10_000, 60.0, 1, 600),
        (40, 1.0, 8, 5),
    ],
)
def test_retry_after_is_the_drain_time_clamped(
    ahead: int, service: float, capacity: int, expected: int
) -> None:
    assert retry_after_s(ahead, service, capacity) == expected


def test_estimate_start_adds_a_cold_start_only_without_a_warm_runner() -> None:
    assert estimate_start_s(0, 10.0, 4, 30.0, warm=True) == 0.0
    assert estimate_start_s(8, 10.0, 4, 30.0, warm=True) == 20.0
    assert estimate_start_s(8, 10.0, 4, 30.0, warm=False) == 50.0
    assert estimate_start_s(3, 10.0, 0, 0.0, warm=False) == 30.0


def test_module_has_no_clock() -> None:
    assert not hasattr(scheduler, "time")


# -- simulator -------------------------------------------------------------------------------------


def cluster(workers: int, gpus: int, apps: dict[str, AppSpec], caps: dict[str, int]) -> Cluster:
    return Cluster(workers, gpus, DEFAULT_TIERS, apps, caps)


def test_simulator_waits_for_warm_runners_and_counts_cold_starts() -> None:
    apps = {"gen": AppSpec("gen", cold_start_s=5.0, num_gpus=1)}
    reqs = tuple(Request(0.0, "api", f"t{k}", "gen", 10.0) for k in range(3))
    stats = simulate(Trace(cluster(1, 2, apps, {}), reqs))
    api = stats.tiers["api"]
    # Two start at once (cold); the third waits for the first (5 s cold + 10 s) and reuses it.
    assert api.requests == 3
    assert api.p50_wait_s == 0.0
    assert api.max_wait_over_slo == pytest.approx(15.0 / 120.0)
    assert stats.cold_starts == 2
    assert stats.makespan_s == pytest.approx(25.0)
    assert stats.gpu_utilisation == pytest.approx(30.0 / (2 * 25.0))
    assert stats.cold_start_gpu_s == {"gen": 10.0}  # two cold starts of 5 s on one GPU each
    assert stats.cold_start_gpu_share == pytest.approx(10.0 / (2 * 25.0))


def per_worker(trace: Trace) -> RunStats:
    return simulate_per_worker(trace)


def no_affinity(trace: Trace) -> RunStats:
    return simulate(trace)


@pytest.mark.parametrize("replay", [no_affinity, per_worker])
def test_simulator_keeps_a_big_job_from_being_starved_by_small_ones(
    replay: Callable[[Trace], RunStats],
) -> None:
    apps = {"small": AppSpec("small", 0.0, 1), "big": AppSpec("big", 0.0, 4)}
    reqs = [Request(0.0, "plus", "a", "small", 10.0), Request(1.0, "enterprise", "b", "big", 10.0)]
    reqs += [Request(2.0 + k, "api", f"c{k}", "small", 10.0) for k in range(20)]
    stats = replay(Trace(cluster(1, 4, apps, {}), tuple(reqs)))
    # The big job, picked at t=1 with 3 GPUs free, holds the dispatch until the first small job
    # ends at t=10; the small jobs arriving from t=2 do not take the 3 free GPUs before it.
    assert stats.tiers["enterprise"].max_wait_over_slo * 60.0 == pytest.approx(9.0)
    assert stats.tiers["api"].p50_wait_s >= 15.0


def test_per_worker_a_young_job_waits_for_the_worker_holding_it_warm() -> None:
    # Three 1-GPU workers: "long" jobs fill w0 and w1 and a "gen" job cold-starts on w2; the
    # first long job ends at 16 (its runner stays idle on w0). At 20 a gen job arrives: w0 asks
    # first (W2: gen is idle elsewhere), then w2 runs it warm (W1).
    def trace(gen_cold_s: float) -> Trace:
        apps = {"gen": AppSpec("gen", gen_cold_s, 1), "long": AppSpec("long", 0.0, 1)}
        reqs = (
            Request(0.0, "api", "l1", "long", 16.0),
            Request(0.0, "api", "l2", "long", 1000.0),
            Request(0.0, "api", "a", "gen", 5.0),
            Request(20.0, "api", "c", "gen", 5.0),
        )
        return Trace(cluster(3, 1, apps, {}), reqs)

    stats = per_worker(trace(10.0))
    assert stats.cold_starts == 3  # l1, l2, a; c reused a's runner
    assert stats.tiers["api"].max_wait_over_slo == 0.0
    # Without a cold start to save, the same: a runner of gen idles on w2, which serves c.
    assert per_worker(trace(0.0)).cold_starts == 3


def test_per_worker_a_young_pick_gives_way_to_warm_work() -> None:
    # One 1-GPU worker. At 8 its audio runner goes idle; the pick is the api image job (queued
    # at 1, young: 7 s < its 20 s cold start), but a free-tier audio job is queued: W3 runs it
    # warm first, then the image job cold at 13. The whole-cluster pick runs the image job at
    # 8, evicting the audio runner, and the audio job cold at 33.
    apps = {"audio": AppSpec("audio", 3.0, 1), "image": AppSpec("image", 20.0, 1)}
    reqs = (
        Request(0.0, "api", "a", "audio", 5.0),
        Request(1.0, "api", "b", "image", 5.0),
        Request(2.0, "free", "c", "audio", 5.0),
    )
    trace = Trace(cluster(1, 1, apps, {}), reqs)
    warm, plain = per_worker(trace), no_affinity(trace)
    assert warm.cold_starts == 2 and plain.cold_starts == 3
    assert warm.tiers["free"].max_wait_over_slo * 1800.0 == pytest.approx(6.0)
    assert warm.tiers["api"].max_wait_over_slo * 120.0 == pytest.approx(12.0)
    assert plain.tiers["free"].max_wait_over_slo * 1800.0 == pytest.approx(31.0)
    assert plain.tiers["api"].max_wait_over_slo * 120.0 == pytest.approx(7.0)


def test_per_worker_dispatch_saves_cold_starts_below_capacity() -> None:
    trace = bench().generate(1.0, 32, 3, 0.7)
    warm, plain = per_worker(trace), no_affinity(trace)
    assert warm.cold_starts < plain.cold_starts * 0.55
    assert min(s.slo_attainment for s in warm.tiers.values()) >= 0.95


def overload_trace() -> Trace:
    """Three hours at 9/8 of capacity: enterprise alone needs 7 of the 8 GPUs, free 2 more."""
    apps = {"gen": AppSpec("gen", cold_start_s=5.0, num_gpus=1)}
    reqs: list[Request] = []
    for k in range(3 * 3600):
        if k % 10 < 7:  # 0.7 req/s x 10 s
            reqs.append(Request(float(k), "enterprise", f"ent-{k % 7}", "gen", 10.0))
        if k % 5 == 0:  # 0.2 req/s x 10 s
            reqs.append(Request(k + 0.5, "free", f"free-{k % 97}", "gen", 10.0))
    caps = {"enterprise": 8, "free": 2}
    return Trace(cluster(2, 4, apps, caps), tuple(reqs))


def test_under_overload_the_policy_does_not_starve_free_and_strict_priority_does() -> None:
    trace = overload_trace()
    policy = simulate(trace)
    baseline = simulate(trace, strict=True)
    assert policy.makespan_s == pytest.approx(baseline.makespan_s, rel=0.01)
    p_ent, p_free = policy.tiers["enterprise"], policy.tiers["free"]
    b_ent, b_free = baseline.tiers["enterprise"], baseline.tiers["free"]
    # Strict priority: enterprise never waits long, free waits 3x its SLO and more.
    assert b_ent.max_wait_over_slo < 0.5
    assert b_free.max_wait_over_slo > 2.5
    # The policy: the worst tier is less late, free less so than under strict priority, and
    # both tiers are equally late relative to their SLOs (within 2x of each other).
    assert max(p_ent.max_wait_over_slo, p_free.max_wait_over_slo) < b_free.max_wait_over_slo
    assert p_free.max_wait_over_slo < b_free.max_wait_over_slo
    assert p_free.p50_wait_s < b_free.p50_wait_s
    assert p_free.slo_attainment > b_free.slo_attainment
    ratio = p_ent.max_wait_over_slo / p_free.max_wait_over_slo
    assert 0.5 < ratio < 2.0
    assert b_free.max_wait_over_slo / b_ent.max_wait_over_slo > 10.0


def test_trace_round_trip_and_validation() -> None:
    trace = overload_trace()
    out = io.StringIO()
    write_trace(trace, out)
    first = json.loads(out.getvalue().splitlines()[0])
    assert first["tiers"]["free"] == {
        "slo_s": 1800.0,
        "rank": 4,
        "max_queued": 1000,
        "tenant_cap": 2,
    }
    again = read_trace(io.StringIO(out.getvalue()))
    assert again == trace
    bad = out.getvalue().replace('"app": "gen"', '"app": "nope"', 1)
    with pytest.raises(ValueError, match="unknown tier or app"):
        read_trace(io.StringIO(bad))
    head = {
        "workers": 1,
        "gpus_per_worker": 2,
        "tiers": {"free": {"slo_s": 1800}, "api": {"slo_s": 120, "max_queued": 1}},
        "apps": {"a": {"cold_start_s": 1, "num_gpus": 2}},
    }
    lines = [json.dumps(head)]
    lines += [
        json.dumps({"t": t, "tier": "api", "tenant": "x", "app": "a", "service_s": 5})
        for t in (2, 0, 1)  # read_trace sorts by t
    ]
    plain = "\n".join(lines) + "\n"
    parsed = read_trace(io.StringIO(plain))
    assert [r.t for r in parsed.requests] == [0.0, 1.0, 2.0]
    assert [(t.name, t.rank) for t in parsed.cluster.tiers] == [("api", 0), ("free", 1)]
    stats = simulate(parsed)
    assert stats.tiers["api"].shed == 1  # one running, one queued, the third over max_queued
    assert stats.tiers["api"].requests == 2
    with pytest.raises(ValueError, match="GPUs"):
        read_trace(io.StringIO(plain.replace('"num_gpus": 2', '"num_gpus": 3')))


# -- the benchmark script --------------------------------------------------------------------------


def bench() -> ModuleType:
    if str(BENCH.parent) not in sys.path:  # as when it runs as a script: its helpers beside it
        sys.path.append(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_scheduling", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_load_matches_the_requested_fraction() -> None:
    module = bench()
    trace = module.generate(1.0, 64, 3, 0.5)
    windows = module.demand_windows(trace)
    assert 0.4 < sum(windows) / len(windows) < 0.6
    launch = module.demand_windows(module.generate(1.0, 64, 3, None))
    assert max(launch) > 1.3 and min(launch) < 0.8


def test_bench_prints_one_json_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    module = bench()
    saved = tmp_path / "trace.jsonl"
    assert module.main(["--hours", "0.25", "--gpus", "32", "--write-trace", str(saved)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert set(result["policy"]["tiers"]) == {t.name for t in DEFAULT_TIERS}
    assert set(result) >= {"policy", "policy_no_affinity", "baseline", "trace", "targets"}
    assert result["trace"]["gpus"] == 32
    assert set(result["targets"]) >= {"below_capacity_attainment_min", "overload_worst_over_best"}
    # the GPU time in cold starts, split by the archetype of the apps that paid it
    for run in ("policy", "baseline"):
        kinds = result[run]["cold_start_gpu_share_by_kind"]
        assert set(kinds) <= set(module.APP_MIX) and kinds
        assert sum(kinds.values()) == pytest.approx(result[run]["cold_start_gpu_share"], abs=5e-4)
    assert module.main(["--trace", str(saved)]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed["policy"] == {**result["policy"], "wall_s": replayed["policy"]["wall_s"]}


def test_the_autoscaler_in_the_loop_holds_the_slos_with_fewer_gpu_hours() -> None:
    module = bench()
    trace = module.generate(1.0, 256, 2, 0.4)
    result = module.measure(trace, "load 0.4", 2, module.Autoscaling())
    scaled = result["policy_autoscaled"]
    assert sum(t["requests"] for t in scaled["tiers"].values()) == len(trace.requests)
    figures = result["targets"]["autoscaled"]
    assert set(figures["slo_attainment"]) == {t.name for t in DEFAULT_TIERS}
    # 0.4 of the fleet's work: the fixed fleet of 32 workers idles much of the time; the
    # autoscaled one meets the SLOs as well with far fewer GPU-hours
    assert min(figures["slo_attainment"].values()) >= 0.95
    assert figures["gpu_hours"] < 0.85 * figures["fixed_gpu_hours"]
    assert figures["workers_mean"] < 28 and figures["workers_peak"] <= 32


def test_jobs_of_a_function_at_max_concurrency_here_are_left_for_others() -> None:
    queues = {
        "free": [job("a1", "free", 0, app="a"), job("b1", "free", 1, app="b")],
    }
    kw = {"tiers": DEFAULT_TIERS, "free_units": 4, "total_units": 4}
    assert ids(pick_for_worker(queues, 10, **kw)) == "a1"  # type: ignore[arg-type]
    got = pick_for_worker(queues, 10, full=["a"], **kw)  # type: ignore[arg-type]
    assert ids(got) == "b1", "a's runners are all busy here: b goes instead of hoarding a1"
    assert pick_for_worker(queues, 10, full=["a", "b"], **kw) is None  # type: ignore[arg-type]
