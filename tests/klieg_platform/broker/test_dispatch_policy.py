"""The live dispatch (Lua in Redis) follows ``scheduler.pick`` and ``pick_for_worker`` exactly.

Random queues across tiers, tenants, apps, functions, GPU sizes, enqueue times and caps are
loaded into a real Redis; then, step by step, the broker's dispatch and the reference policy must
choose the same job (or both take nothing, for the same reason), also with random free and total
units, warm runners here and elsewhere, measured cold starts and completions between steps,
asked by several workers in turn, so that reservations (W3) are held, renewed and taken (W0).
The lane index is checked against the replay's queues as it goes, and a long replay keeps far
more capped jobs at the heads of the queues than any scan window would reach.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pytest

from klieg_platform import keys
from klieg_platform.broker import Blocked, Broker, NewRequest, Outcome
from klieg_platform.broker import Elsewhere as BrokerElsewhere
from klieg_platform.broker import Job as BrokerJob
from klieg_platform.broker.jobs import LOW, NORMAL
from klieg_platform.scheduler import (
    HINT_WAIT_S,
    Job,
    Tier,
    parse_tiers,
    pick,
    pick_for_worker,
)
from klieg_platform.scheduler import Blocked as PolicyBlocked
from klieg_platform.scheduler import Elsewhere as PolicyElsewhere

TIERS = parse_tiers("enterprise:60:1000,api:120:1000,light:600:1000,free:1800:1000")
NOW_MS = 1_800_000_000_000


def _scenario(rng: random.Random) -> tuple[list[NewRequest], list[int], dict[str, int]]:
    tenants = [f"t{i}" for i in range(5)]
    apps = ["a", "b", "c"]
    caps = {t: rng.choice([1, 2]) for t in rng.sample(tenants, 2)}
    low_share = rng.choice([0.0, 0.4])
    reqs, times = [], []
    for i in range(rng.randint(5, 120)):
        tier = rng.choice(TIERS)
        tenant = rng.choice(tenants)
        app = rng.choice(apps)
        reqs.append(
            NewRequest(
                id=f"r{i:03d}",
                owner="o",
                tenant=tenant,
                app=app,
                revision=f"rev-{app}",  # a revision belongs to one app
                function="f",
                endpoint="/",
                pool="CPU",
                payload=b"{}",
                timeout_s=30,
                tier=tier.name,
                tenant_cap=caps.get(tenant, 0),
                priority=LOW if rng.random() < low_share else NORMAL,
            )
        )
        times.append(NOW_MS - int(rng.uniform(0, 3 * tier.slo_s) * 1000))
    return reqs, times, caps


@pytest.mark.parametrize("seed", range(12))
def test_lua_dispatch_matches_the_reference_policy(redis_url: str, seed: int) -> None:
    rng = random.Random(seed)
    reqs, times, caps = _scenario(rng)

    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        try:
            order = sorted(range(len(reqs)), key=lambda i: times[i])
            for i in order:  # each queue is FIFO by enqueue time
                await broker.queue.enqueue(reqs[i], at_ms=times[i])
            queues: dict[str, list[Job]] = defaultdict(list)
            for i in order:
                r = reqs[i]
                queues[r.tier].append(
                    Job(r.id, r.tier, r.tenant, r.app_key, times[i] / 1000, low=r.priority == LOW)
                )
            running: dict[str, int] = defaultdict(int)
            for step in range(len(reqs)):
                now = NOW_MS + step * 1000
                want = pick(queues, now / 1000, tiers=TIERS, inflight_by_tenant=running,
                            tenant_caps=caps)  # fmt: skip
                got = await broker.queue.dispatch(["CPU"], "w", 30, at_ms=now)
                assert _outcome(got) == _outcome(want), f"step {step}"
                if want is None:
                    break
                queues[want.tier].remove(want)
                running[want.tenant] += 1
        finally:
            await broker.close()

    asyncio.run(main())


def test_dispatch_blocks_instead_of_taking_smaller_work(redis_url: str) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        try:

            def req(rid: str, gpus: int) -> NewRequest:
                return NewRequest(
                    id=rid, owner="o", tenant="t", app="a", revision="rev", function="f",
                    endpoint="/", pool="GPU-H100", payload=b"{}", timeout_s=30, tier="api",
                    gpus=gpus,
                )  # fmt: skip

            await broker.queue.enqueue(req("huge", 8), at_ms=NOW_MS - 3000)
            await broker.queue.enqueue(req("big", 4), at_ms=NOW_MS - 2000)
            await broker.queue.enqueue(req("small", 1), at_ms=NOW_MS - 1000)

            async def dispatch(free: int) -> BrokerJob | Blocked | BrokerElsewhere | None:
                return await broker.queue.dispatch(
                    ["GPU-H100"], "w", 30, free_units=free, total_units=4, at_ms=NOW_MS
                )

            got = await dispatch(2)
            assert got == Blocked(4), "the 8-GPU job never fits here; the 4-GPU one waits"
            got = await dispatch(4)
            assert isinstance(got, BrokerJob) and got.id == "big" and got.units == 4
            got = await dispatch(1)
            assert isinstance(got, BrokerJob) and got.id == "small"
            assert await dispatch(4) is None
            got = await broker.queue.dispatch(["GPU-H100"], "w8", 30, free_units=8, total_units=8)
            assert isinstance(got, BrokerJob) and got.id == "huge"
        finally:
            await broker.close()

    asyncio.run(main())


# -- warm affinity and draining: pick_for_worker ---------------------------------------------------

TIERS_MS = tuple(Tier(t.name, t.slo_s * 1000, t.max_queued, t.rank) for t in TIERS)
"""TIERS in milliseconds: the reference then computes wait/SLO and wait < cold start from the
very integers and doubles the Lua uses, so float rounding cannot split them at a boundary."""
APPS = ["a", "b", "c"]
FN_KEYS = [f"{app}-r{k}/{name}" for app in APPS for k in (1, 2) for name in ("f", "g")]
HINTS = ["", "", "lora a", "lora-b"]
HINT_WAIT_MS = HINT_WAIT_S * 1000


@dataclass(frozen=True)
class WarmScenario:
    reqs: list[NewRequest]
    times: list[int]
    tenant_caps: dict[str, int]
    app_caps: dict[str, int]
    low_share: float

    def request(self, rng: random.Random, i: int, tier: Tier, tenant: str, app: str) -> NewRequest:
        """Request ``i``: of a random function of ``app``, size, priority and hint."""
        return NewRequest(
            id=f"r{i:03d}", owner="o", tenant=tenant, app=app,
            revision=f"{app}-r{rng.randint(1, 2)}", function=rng.choice("fg"), endpoint="/",
            pool="GPU", payload=b"{}", timeout_s=30, tier=tier.name,
            tenant_cap=self.tenant_caps.get(tenant, 0), app_cap=self.app_caps.get(f"o/{app}", 0),
            gpus=rng.choice([0, 1, 1, 2, 4, 8]),
            priority=LOW if rng.random() < self.low_share else NORMAL, hint=rng.choice(HINTS),
        )  # fmt: skip


def _warm_scenario(rng: random.Random, n: int | None = None, capped_head: int = 0) -> WarmScenario:
    """Random requests; ``n`` of them (default 5-40). With ``capped_head``, that many of the
    oldest belong to the capped tenants or the capped app, so those wait at every queue's head.
    """
    tenants = [f"t{i}" for i in range(5)]
    tenant_caps = {t: rng.choice([1, 2]) for t in rng.sample(tenants, 2)}
    app_caps = {f"o/{a}": rng.choice([1, 3]) for a in rng.sample(APPS, 1)}
    capped_tenants = sorted(tenant_caps)
    capped_app = next(iter(app_caps)).removeprefix("o/")
    sc = WarmScenario([], [], tenant_caps, app_caps, rng.choice([0.0, 0.3, 0.6]))
    recent_share = rng.choice([0.3, 0.7, 1.0])
    for i in range(n if n is not None else rng.randint(5, 40)):
        tier = rng.choice(TIERS)
        tenant, app = rng.choice(tenants), rng.choice(APPS)
        if i < capped_head:
            if rng.random() < 0.5:
                tenant = rng.choice(capped_tenants)
            else:
                app = capped_app
        sc.reqs.append(sc.request(rng, i, tier, tenant, app))
        recent = rng.random() < recent_share  # within a cold start or so, else up to 3 SLOs
        wait_s = rng.uniform(0, 40) if recent else rng.uniform(0, 3 * tier.slo_s)
        if i < capped_head:  # older than every other request
            wait_s = 4 * tier.slo_s + (capped_head - i)
        sc.times.append(NOW_MS - int(wait_s * 1000))
    return sc


def _outcome(
    got: Job | BrokerJob | Blocked | PolicyBlocked | BrokerElsewhere | PolicyElsewhere | None,
) -> tuple[str, str | int] | None:
    """A comparable form of a dispatch result, Lua's or the reference's."""
    if got is None:
        return None
    if isinstance(got, Blocked | PolicyBlocked):
        return ("blocked", got.units)
    if isinstance(got, BrokerElsewhere | PolicyElsewhere):
        return ("elsewhere", 0)
    return ("job", got.id)


WORKERS = ("w", "w2", "w3")
LEASE_S = 100_000
"""Leases and reservations outlive every replay (the reference has no clock for them)."""


async def _replay_warm(
    seed: int,
    broker: Broker | None,
    *,
    n: int | None = None,
    capped_head: int = 0,
    arrivals: float = 0.2,
) -> Counter[str]:
    """Replay seed's scenario through the reference, and through ``broker`` when given (assert
    they agree at every step), with several workers and their reservations; at each step a
    request arrives with probability ``arrivals``. Returns how often each rule (W0-W5, W1h: W1's
    hint exception, or none) decided."""
    rng = random.Random(seed)
    sc = _warm_scenario(rng, n, capped_head)
    steps = 2 * max(len(sc.reqs), 20)
    order = sorted(range(len(sc.reqs)), key=lambda i: sc.times[i])
    queues: dict[str, list[Job]] = defaultdict(list)
    for i in order:  # each queue is FIFO by enqueue time
        r = sc.reqs[i]
        if broker is not None:
            await broker.queue.enqueue(r, at_ms=sc.times[i])
        fn = f"{r.revision}/{r.function}"
        low = r.priority == LOW
        queues[r.tier].append(
            Job(r.id, r.tier, r.tenant, r.app_key, sc.times[i], r.gpus, fn, low, r.hint)
        )
    by_id = {j.id: j for q in queues.values() for j in q}
    cold_ms: dict[str, float] = {}
    service_ms: dict[str, float] = {}
    """The apps' measured cold starts and mean service times (W4 and W2b weigh them)."""

    async def set_stat(key: str, known: dict[str, float], app_key: str, ms: float | None) -> None:
        if ms is None:
            known.pop(app_key, None)
        else:
            known[app_key] = ms
        if broker is not None:
            if ms is None:
                await broker.redis.hdel(key, app_key)
            else:
                await broker.redis.hset(key, app_key, f"{ms:.1f}")

    async def set_cold(app_key: str, ms: float | None) -> None:
        await set_stat(keys.COLD_STATS, cold_ms, app_key, ms)

    async def set_service(app_key: str, ms: float | None) -> None:
        await set_stat(keys.SERVICE_STATS, service_ms, app_key, ms)

    def some_cold_ms() -> float | None:  # .5 ms: a whole-ms wait never equals a cold start
        return None if rng.random() < 0.2 else rng.randrange(0, 150_000) + 0.5

    def some_service_ms() -> float | None:
        return None if rng.random() < 0.3 else rng.randrange(1, 60_000) + 0.5

    for app in APPS:
        await set_cold(f"o/{app}", some_cold_ms())
        await set_service(f"o/{app}", some_service_ms())
    totals = {w: rng.choice([1, 2, 4, 8]) for w in WORKERS}
    by_tenant: dict[str, int] = defaultdict(int)
    by_app: dict[str, int] = defaultdict(int)
    running: list[tuple[str, str]] = []
    reserved: dict[str, Job] = {}
    rules: Counter[str] = Counter()
    now = NOW_MS
    for step in range(steps):
        now += rng.randrange(0, 3000)
        if rng.random() < arrivals:  # a request arrives now: young while W1's hint window lasts
            r = sc.request(rng, len(by_id), rng.choice(TIERS), f"t{rng.randrange(5)}",
                           rng.choice(APPS))  # fmt: skip
            if broker is not None:
                await broker.queue.enqueue(r, at_ms=now)
            fn, low = f"{r.revision}/{r.function}", r.priority == LOW
            job = Job(r.id, r.tier, r.tenant, r.app_key, now, r.gpus, fn, low, r.hint)
            queues[r.tier].append(job)
            by_id[r.id] = job
        if rng.random() < 0.25:
            await set_cold(f"o/{rng.choice(APPS)}", some_cold_ms())
        if rng.random() < 0.1:
            await set_service(f"o/{rng.choice(APPS)}", some_service_ms())
        if running and rng.random() < 0.6:
            rid, holder = running.pop(rng.randrange(len(running)))
            done = by_id[rid]
            by_tenant[done.tenant] -= 1
            by_app[done.app] -= 1
            if broker is not None:
                assert await broker.queue.complete(rid, holder, Outcome(ok=True, result=b"{}"))
        worker = rng.choice(WORKERS)
        total = totals[worker]
        counts = {
            "inflight_by_tenant": by_tenant, "inflight_by_app": by_app,
            "tenant_caps": sc.tenant_caps, "app_caps": sc.app_caps,
        }  # fmt: skip
        # Often just what the plain pick (best) needs, and the functions of queued jobs, the
        # best's among them, so that every rule and its edges are reached.
        best = pick(_fitting(queues, total, (), reserved, worker), now, tiers=TIERS_MS, **counts)
        free = rng.choice([rng.randint(0, total), total, best.units if best else 0])
        here = rng.sample(FN_KEYS, rng.randint(0, 3))
        elsewhere = rng.sample(FN_KEYS, rng.randint(0, 3))
        queued = [j for q in queues.values() for j in q]
        if queued and rng.random() < 0.5:
            here.append(rng.choice(queued).function_key)
        if best is not None and rng.random() < 0.2:
            here.append(best.function_key)
        if best is not None and rng.random() < 0.4:
            elsewhere.append(best.function_key)
        full = rng.sample(FN_KEYS, rng.randint(0, 1))
        if best is not None and rng.random() < 0.15:
            full.append(best.function_key)
        limit = rng.choice([None, None, 1, 2])  # past it, a worker backfills instead of draining
        pairs = [(fn, h) for fn in FN_KEYS for h in HINTS if h]
        hinted_here = rng.sample(pairs, rng.randint(0, 2))
        hinted_elsewhere = rng.sample(pairs, rng.randint(0, 3))
        if best is not None and best.hint and rng.random() < 0.5:  # the hint idle elsewhere
            hinted_elsewhere.append((best.function_key, best.hint))
            if rng.random() < 0.5:  # and best's function idle here (W1)
                here.append(best.function_key)
            if rng.random() < 0.2:  # ... with that hint too
                hinted_here.append((best.function_key, best.hint))
        want = pick_for_worker(queues, now, tiers=TIERS_MS, **counts, free_units=free,
                               total_units=total, here=here, elsewhere=elsewhere,
                               cold_start_s=cold_ms, full=full, worker=worker,
                               reserved=reserved, max_reserved=limit, hinted_here=hinted_here,
                               hinted_elsewhere=hinted_elsewhere,
                               hint_wait_s=HINT_WAIT_MS, service_s=service_ms)  # fmt: skip
        rule = _rule(want, queues, now, total, here, full, counts, reserved, worker)
        rules[rule] += 1
        plain = pick_for_worker(queues, now, tiers=TIERS_MS, **counts, free_units=free,
                                total_units=total, here=here, elsewhere=elsewhere,
                                cold_start_s=cold_ms, full=full, worker=worker,
                                reserved=reserved, max_reserved=limit, hinted_here=hinted_here,
                                hinted_elsewhere=hinted_elsewhere,
                                hint_wait_s=HINT_WAIT_MS)  # fmt: skip
        if _outcome(plain) != _outcome(want):  # W2b decided: a lane was left to busy runners
            rules["W2b"] += 1
        if broker is not None:
            warm = {"warm_here": here, "warm_elsewhere": elsewhere, "full": full,
                    "hinted_here": hinted_here, "hinted_elsewhere": hinted_elsewhere}  # fmt: skip
            got = await broker.queue.dispatch(
                ["GPU"], worker, LEASE_S, free_units=free, total_units=total, **warm,
                max_reserved=limit, at_ms=now,
            )  # fmt: skip
            context = f"seed {seed} step {step}: {worker} free {free}/{total}, here {here}, " + (
                f"elsewhere {elsewhere}, full {full}, cold {cold_ms}, now {now}, limit {limit}, "
                f"reserved { {w: j.id for w, j in reserved.items()} }"
            )
            assert _outcome(got) == _outcome(want), context
            if isinstance(got, BrokerJob) and isinstance(want, Job):
                assert got.units == want.units, context
        # the reservations, as pick_for_worker's docstring says
        if isinstance(want, PolicyBlocked):
            assert want.job is not None
            reserved[worker] = want.job
        else:
            reserved.pop(worker, None)
        if isinstance(want, Job):
            for w, held in list(reserved.items()):
                if held is want:
                    del reserved[w]
            queues[want.tier].remove(want)
            by_tenant[want.tenant] += 1
            by_app[want.app] += 1
            running.append((want.id, worker))
        if broker is not None and (step % 25 == 0 or step == steps - 1):
            await _assert_index_exact(broker, queues, reserved, counts)
    return rules


def _fitting(
    queues: dict[str, list[Job]],
    total: int,
    full: Collection[str],
    reserved: dict[str, Job],
    worker: str,
) -> dict[str, list[Job]]:
    """The jobs that are candidates for ``worker`` of ``total`` units (by the caps aside): ``pick``
    over these picks ``best`` of ``pick_for_worker`` (W1-W5)."""
    skip = {j.id for w, j in reserved.items() if w != worker}
    return {
        t: [j for j in q if j.units <= total and j.function_key not in full and j.id not in skip]
        for t, q in queues.items()
    }


def _rule(
    got: Job | PolicyBlocked | PolicyElsewhere | None,
    queues: dict[str, list[Job]],
    now: int,
    total: int,
    here: list[str],
    full: list[str],
    counts: dict[str, dict[str, int]],
    reserved: dict[str, Job],
    worker: str,
) -> str:
    """Which rule produced ``got`` (``reserved`` as it was before): the plain pick among the
    worker's candidates is ``best``."""
    if got is None:
        return "none"
    if isinstance(got, PolicyBlocked):
        return "W0" if worker in reserved else "W3"
    if isinstance(got, PolicyElsewhere):
        assert got.job is not None
        return "W1h" if got.job.function_key in here else "W2"  # W1h: its hint idle elsewhere
    if any(got is held for held in reserved.values()):
        return "W0"
    best = pick(_fitting(queues, total, full, reserved, worker), now, tiers=TIERS_MS, **counts)
    if got is not best:
        return "W4"
    return "W1" if got.function_key in here else "W5"


async def _assert_index_exact(
    broker: Broker,
    queues: dict[str, list[Job]],
    reserved: dict[str, Job],
    counts: dict[str, dict[str, int]],
) -> None:
    """The lane index in Redis holds exactly the queued, unreserved jobs, normal and low apart,
    with their tenants (by their flow's head: the first normal job, else the first low one) and
    lanes in order only while under cap; the reservations are the replay's."""
    r = broker.redis
    held = {j.id for j in reserved.values()}

    def under(cap_of: dict[str, int], running: dict[str, int], who: str) -> bool:
        cap = cap_of.get(who)
        return cap is None or running.get(who, 0) < cap

    want: dict[str, dict[str, float]] = {}
    heads: dict[tuple[str, str, str], tuple[bool, float]] = {}  # flow -> (low, score) of its head
    for tier, queue in queues.items():
        for j in queue:
            if j.id in held:
                continue
            score = await r.zscore(keys.queue("GPU", tier), j.id)
            assert score is not None, j
            lane = keys.lane(j.function_key, j.units)
            want.setdefault(keys.flow("GPU", tier, lane, j.tenant, low=j.low), {})[j.id] = score
            heads[(tier, lane, j.tenant)] = min(
                heads.get((tier, lane, j.tenant), (j.low, score)), (j.low, score)
            )
    for (tier, lane, tenant), (_, score) in heads.items():
        if under(counts["tenant_caps"], counts["inflight_by_tenant"], tenant):
            want.setdefault(keys.lane_tenants("GPU", tier, lane), {})[tenant] = score
    for tier, queue in queues.items():
        for j in queue:
            lane = keys.lane(j.function_key, j.units)
            tenants = want.get(keys.lane_tenants("GPU", tier, lane))
            if tenants and under(counts["app_caps"], counts["inflight_by_app"], j.app):
                want.setdefault(keys.lanes("GPU", tier), {})[lane] = min(tenants.values())
    got: dict[str, dict[str, float]] = {}
    for prefix in (keys.FLOW_PREFIX, keys.LOW_FLOW_PREFIX, keys.LANE_PREFIX, keys.LANES_PREFIX):
        async for key in r.scan_iter(match=prefix + "*"):
            members = await r.zrange(key, 0, -1, withscores=True)
            got[key.decode()] = {m.decode(): s for m, s in members}
    assert got == want
    reservations = await r.hgetall(keys.reserved("GPU"))
    assert {w.decode(): i.decode() for w, i in reservations.items()} == {
        w: j.id for w, j in reserved.items()
    }


def _replay_live(redis_url: str, seed: int, **options: Any) -> None:
    """``_replay_warm`` through a broker on ``redis_url`` (``options``: its keywords)."""

    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        try:
            await _replay_warm(seed, broker, **options)
        finally:
            await broker.close()

    asyncio.run(main())


@pytest.mark.parametrize("seed", range(24))
def test_lua_dispatch_matches_pick_for_worker(redis_url: str, seed: int) -> None:
    _replay_live(redis_url, seed)


@pytest.mark.parametrize("seed", range(3))
def test_lua_dispatch_matches_pick_for_worker_behind_long_capped_heads(
    redis_url: str, seed: int
) -> None:
    """300 queued, the 200 oldest of capped tenants or a capped app: far more than any scan
    window; the index must still find exactly the reference's candidates."""

    _replay_live(redis_url, 100 + seed, n=300, capped_head=200)


@pytest.mark.parametrize("seed", range(8))
def test_lua_dispatch_matches_pick_for_worker_as_hinted_requests_arrive(
    redis_url: str, seed: int
) -> None:
    """Requests arriving as the workers dispatch: the best one is often young, so W1's hint
    exception (a runner reporting its hint idles elsewhere) decides often."""

    _replay_live(redis_url, 200 + seed, n=2, arrivals=0.8)


def test_the_warm_scenarios_exercise_every_rule() -> None:
    rules: Counter[str] = Counter()
    for seed in range(24):
        rules += asyncio.run(_replay_warm(seed, None))
    for seed in range(8):
        rules += asyncio.run(_replay_warm(200 + seed, None, n=2, arrivals=0.8))
    assert set(rules) == {"W0", "W1", "W1h", "W2", "W2b", "W3", "W4", "W5", "none"}
    assert min(rules.values()) >= 10, rules


@pytest.mark.parametrize(("cold_ms", "young"), [("20000", False), ("20000.5", True)])
def test_a_job_is_young_while_its_wait_is_below_the_cold_start(
    redis_url: str, cold_ms: str, young: bool
) -> None:
    """Young, the best job lets a warm one go first (W4); no longer young, it is cold-started."""

    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        try:
            for rid, fn, waited in (("r", "f", 20_000), ("q", "g", 10_000)):
                req = NewRequest(
                    id=rid, owner="o", tenant="t", app="a", revision="a-r1", function=fn,
                    endpoint="/", pool="GPU", payload=b"{}", timeout_s=30, tier="api",
                )  # fmt: skip
                await broker.queue.enqueue(req, at_ms=NOW_MS - waited)
            await broker.redis.hset(keys.COLD_STATS, "o/a", cold_ms)
            queues = {
                "api": [
                    Job("r", "api", "t", "o/a", NOW_MS - 20_000, 0, "a-r1/f"),
                    Job("q", "api", "t", "o/a", NOW_MS - 10_000, 0, "a-r1/g"),
                ]
            }
            cold = {"o/a": float(cold_ms)}
            want = pick_for_worker(queues, NOW_MS, tiers=TIERS_MS, free_units=1, total_units=1,
                                   here=["a-r1/g"], cold_start_s=cold)  # fmt: skip
            got = await broker.queue.dispatch(
                ["GPU"], "w", 30, free_units=1, total_units=1, warm_here=["a-r1/g"],
                at_ms=NOW_MS,
            )  # fmt: skip
            assert _outcome(got) == _outcome(want) == ("job", "q" if young else "r")
        finally:
            await broker.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("service_ms", "warm", "taken"), [("5000", "q", "q"), ("20000", "q", "r"), ("5000", "p", "r")]
)
def test_a_warm_job_goes_first_under_overload_while_best_would_start_slower_than_it_serves(
    redis_url: str, service_ms: str, warm: str, taken: str
) -> None:
    """Best ("r": 2.0 of the api SLO waited; its app starts in 20 s) against a warm request far
    less late ("q": 0.07 of the enterprise SLO): the warm one goes first while best's app serves
    in a quarter of its cold start (W4, ``warm_share``), best while it serves as slowly; best
    too against a warm request of a less important tier ("p", free)."""

    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        try:
            reqs = (("r", "a", "f", "api", 240_000), ("q", "b", "g", "enterprise", 4_200),
                    ("p", "c", "h", "free", 125_000))  # fmt: skip
            for rid, app, fn, tier, waited in reqs:
                req = NewRequest(
                    id=rid, owner="o", tenant=f"t-{rid}", app=app, revision=f"{app}-r1",
                    function=fn, endpoint="/", pool="GPU", payload=b"{}", timeout_s=30,
                    tier=tier,
                )  # fmt: skip
                await broker.queue.enqueue(req, at_ms=NOW_MS - waited)
            await broker.redis.hset(keys.COLD_STATS, "o/a", "20000.0")
            await broker.redis.hset(keys.SERVICE_STATS, "o/a", service_ms)
            queues = {
                "enterprise": [Job("q", "enterprise", "t-q", "o/b", NOW_MS - 4_200, 0, "b-r1/g")],
                "api": [Job("r", "api", "t-r", "o/a", NOW_MS - 240_000, 0, "a-r1/f")],
                "free": [Job("p", "free", "t-p", "o/c", NOW_MS - 125_000, 0, "c-r1/h")],
            }
            here = ["b-r1/g" if warm == "q" else "c-r1/h"]
            want = pick_for_worker(queues, NOW_MS, tiers=TIERS_MS, free_units=1, total_units=1,
                                   here=here, cold_start_s={"o/a": 20_000.0},
                                   service_s={"o/a": float(service_ms)})  # fmt: skip
            got = await broker.queue.dispatch(
                ["GPU"], "w", 30, free_units=1, total_units=1, warm_here=here, at_ms=NOW_MS
            )
            assert _outcome(got) == _outcome(want) == ("job", taken)
        finally:
            await broker.close()

    asyncio.run(main())


def _gpu_req(
    rid: str, gpus: int, tenant: str = "t", app: str = "a", tenant_cap: int = 0
) -> NewRequest:
    return NewRequest(
        id=rid, owner="o", tenant=tenant, app=app, revision=f"{app}-r1", function="f",
        endpoint="/", pool="GPU", payload=b"{}", timeout_s=30, tier="api", gpus=gpus,
        tenant_cap=tenant_cap,
    )  # fmt: skip


def test_a_reservation_keeps_the_job_for_the_worker_draining_for_it(redis_url: str) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        q = broker.queue
        try:
            await q.enqueue(_gpu_req("big", 2), at_ms=NOW_MS - 2000)
            await q.enqueue(_gpu_req("small", 1), at_ms=NOW_MS - 1000)
            got = await q.dispatch(["GPU"], "a", 30, free_units=1, total_units=2, at_ms=NOW_MS)
            assert got == Blocked(2)
            assert await broker.redis.hget(keys.reserved("GPU"), "a") == b"big"
            # another worker of the same size serves the queue instead of draining for it too
            got = await q.dispatch(["GPU"], "b", 30, free_units=1, total_units=2, at_ms=NOW_MS)
            assert isinstance(got, BrokerJob) and got.id == "small"
            got = await q.dispatch(["GPU"], "a", 30, free_units=1, total_units=2, at_ms=NOW_MS)
            assert got == Blocked(2), "still draining: the reservation holds"
            state = await q.get("big")
            assert state is not None and state.status == "IN_QUEUE"
            got = await q.dispatch(["GPU"], "a", 30, free_units=2, total_units=2, at_ms=NOW_MS)
            assert isinstance(got, BrokerJob) and got.id == "big" and got.units == 2
            assert await broker.redis.hlen(keys.reserved("GPU")) == 0
        finally:
            await broker.close()

    asyncio.run(main())


def test_a_reservation_of_a_silent_worker_expires_and_others_take_reservations_that_fit(
    redis_url: str,
) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        q = broker.queue
        try:
            await q.enqueue(_gpu_req("big", 2), at_ms=NOW_MS - 2000)
            got = await q.dispatch(["GPU"], "a", 30, free_units=1, total_units=2, at_ms=NOW_MS)
            assert got == Blocked(2)
            # within the lease, b (1 free) does not drain for it: a does
            got = await q.dispatch(["GPU"], "b", 30, free_units=1, total_units=2, at_ms=NOW_MS)
            assert got is None
            # a went silent: past its lease the job is a candidate again, and b drains for it
            later = NOW_MS + 30_001
            got = await q.dispatch(["GPU"], "b", 30, free_units=1, total_units=2, at_ms=later)
            assert got == Blocked(2)
            assert await broker.redis.hgetall(keys.reserved("GPU")) == {b"b": b"big"}
            # a worker with room takes another's reservation that fits (W0)
            got = await q.dispatch(["GPU"], "c", 30, free_units=4, total_units=4, at_ms=later)
            assert isinstance(got, BrokerJob) and got.id == "big"
            assert await broker.redis.hlen(keys.reserved("GPU")) == 0
        finally:
            await broker.close()

    asyncio.run(main())


@pytest.mark.parametrize(("here", "taken"), [("b-r1/f", "warm"), ("c-r1/f", "big"), ("", "big")])
def test_another_workers_reservation_waits_while_warm_work_waits_here(
    redis_url: str, here: str, taken: str
) -> None:
    """W0's exception, against the reference: worker b, whose idle runner of app b has a request
    queued, serves that one and leaves worker a's reservation to a; with an idle runner of an
    app with nothing queued (c), or none, it takes the reservation."""

    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        q = broker.queue
        try:
            await q.enqueue(_gpu_req("big", 2, tenant="t-big"), at_ms=NOW_MS - 2000)
            got = await q.dispatch(["GPU"], "a", 30, free_units=1, total_units=2, at_ms=NOW_MS)
            assert got == Blocked(2)
            warm = NewRequest(
                id="warm", owner="o", tenant="t-warm", app="b", revision="b-r1", function="f",
                endpoint="/", pool="GPU", payload=b"{}", timeout_s=30, tier="free", gpus=2,
            )  # fmt: skip
            await q.enqueue(warm, at_ms=NOW_MS - 1000)
            big = Job("big", "api", "t-big", "o/a", NOW_MS - 2000, 2, "a-r1/f")
            queues = {
                "api": [big],
                "free": [Job("warm", "free", "t-warm", "o/b", NOW_MS - 1000, 2, "b-r1/f")],
            }
            idle = [here] if here else []
            want = pick_for_worker(queues, NOW_MS, tiers=TIERS_MS, free_units=2, total_units=2,
                                   here=idle, worker="b", reserved={"a": big})  # fmt: skip
            got = await q.dispatch(["GPU"], "b", 30, free_units=2, total_units=2,
                                   warm_here=idle, at_ms=NOW_MS)  # fmt: skip
            assert _outcome(got) == _outcome(want) == ("job", taken)
            reserved = await broker.redis.hgetall(keys.reserved("GPU"))
            assert reserved == ({b"a": b"big"} if taken == "warm" else {})
        finally:
            await broker.close()

    asyncio.run(main())


def test_cancelling_a_reserved_job_ends_its_reservation(redis_url: str) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        q = broker.queue
        try:
            await q.enqueue(_gpu_req("big", 2), at_ms=NOW_MS - 2000)
            await q.enqueue(_gpu_req("small", 1), at_ms=NOW_MS - 1000)
            got = await q.dispatch(["GPU"], "a", 30, free_units=1, total_units=2, at_ms=NOW_MS)
            assert got == Blocked(2)
            assert await q.cancel("big") == 1
            assert await broker.redis.hlen(keys.reserved("GPU")) == 0
            assert await broker.redis.zcard(keys.reserved_until("GPU")) == 0
            got = await q.dispatch(["GPU"], "a", 30, free_units=1, total_units=2, at_ms=NOW_MS)
            assert isinstance(got, BrokerJob) and got.id == "small"
        finally:
            await broker.close()

    asyncio.run(main())


async def _commands(broker: Broker) -> int:
    stats = await broker.redis.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def test_a_dispatch_costs_the_same_behind_10_or_10000_capped_jobs(redis_server_url: str) -> None:
    """Redis commands per dispatch (scripts' included, from ``INFO commandstats`` of the
    session's own embedded server) do not grow with the capped jobs queued ahead (behind 10 the
    taken job may empty its lane, a few commands more)."""

    async def main() -> None:
        tiers = parse_tiers("enterprise:60:20000,api:120:20000,light:600:20000,free:1800:20000")
        broker = Broker.from_url(redis_server_url, result_ttl_s=60, max_attempts=3, tiers=tiers)
        q = broker.queue
        await broker.redis.flushdb()
        rng = random.Random(7)
        try:

            def req(rid: str, tenant: str, app: str, tier: str) -> NewRequest:
                return NewRequest(
                    id=rid, owner="o", tenant=tenant, app=app, revision=f"{app}-r1",
                    function="f", endpoint="/", pool="GPU", payload=b"{}", timeout_s=30,
                    tier=tier, tenant_cap=1 if tenant == "capped" else 0,
                    app_cap=1 if app == "capped" else 0,
                )  # fmt: skip

            at = NOW_MS - 3_600_000
            for rid, tenant, app in (("t0", "capped", "a"), ("a0", "t", "capped")):
                await q.enqueue(req(rid, tenant, app, "api"), at_ms=at)
                got = await q.dispatch(["GPU"], "w", 30, at_ms=NOW_MS)
                assert isinstance(got, BrokerJob) and got.id == rid
            queued, costs = 0, []
            for n in (10, 10_000):
                batch = []
                for i in range(queued, n):  # the capped tenant's and the capped app's, oldest
                    tenant, app = ("capped", "a") if i % 2 else ("t", "capped")
                    batch.append(req(f"c{i}", tenant, app, rng.choice(TIERS).name))
                for start in range(0, len(batch), 500):
                    chunk = batch[start : start + 500]
                    at += 1
                    await asyncio.gather(*(q.enqueue(r, at_ms=at) for r in chunk))
                queued = n
                await q.enqueue(req(f"free{n}", "u", "a", "free"), at_ms=NOW_MS - 1000)
                before = await _commands(broker)
                got = await q.dispatch(["GPU"], "w", 30, at_ms=NOW_MS)
                costs.append(await _commands(broker) - before - 2)  # less INFO and EVALSHA
                assert isinstance(got, BrokerJob) and got.id == f"free{n}"
            print(f"redis commands per dispatch behind 10 / 10000 capped jobs: {costs}")
            assert max(costs) <= 40 and costs[1] <= costs[0], costs
        finally:
            await broker.close()

    asyncio.run(main())
