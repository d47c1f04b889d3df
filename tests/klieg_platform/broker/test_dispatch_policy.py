"""The live dispatch (Lua in Redis) follows ``scheduler.pick`` and ``pick_for_worker`` exactly.

Random queues across tiers, tenants, apps, functions, GPU sizes, enqueue times and caps are
loaded into a real Redis; then, step by step, the broker's dispatch and the reference policy must
choose the same job (or both take nothing, for the same reason), also with random free and total
units, warm runners here and elsewhere, measured cold starts and completions between steps.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest

from klieg_platform import keys
from klieg_platform.broker import Blocked, Broker, NewRequest, Outcome
from klieg_platform.broker import Elsewhere as BrokerElsewhere
from klieg_platform.broker import Job as BrokerJob
from klieg_platform.scheduler import Blocked as PolicyBlocked
from klieg_platform.scheduler import Elsewhere as PolicyElsewhere
from klieg_platform.scheduler import Job, Tier, parse_tiers, pick, pick_for_worker

TIERS = parse_tiers("enterprise:60:1000,api:120:1000,light:600:1000,free:1800:1000")
NOW_MS = 1_800_000_000_000


def _scenario(rng: random.Random) -> tuple[list[NewRequest], list[int], dict[str, int]]:
    tenants = [f"t{i}" for i in range(5)]
    apps = ["a", "b", "c"]
    caps = {t: rng.choice([1, 2]) for t in rng.sample(tenants, 2)}
    reqs, times = [], []
    for i in range(rng.randint(5, 40)):
        tier = rng.choice(TIERS)
        tenant = rng.choice(tenants)
        app = rng.choice(apps)
        reqs.append(
            NewRequest(
                id=f"r{i:03d}",
                owner="o",
                tenant=tenant,
                app=app,
                revision="rev",
                function="f",
                endpoint="/",
                pool="CPU",
                payload=b"{}",
                timeout_s=30,
                tier=tier.name,
                tenant_cap=caps.get(tenant, 0),
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
                queues[r.tier].append(Job(r.id, r.tier, r.tenant, r.app_key, times[i] / 1000))
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


@dataclass(frozen=True)
class WarmScenario:
    reqs: list[NewRequest]
    times: list[int]
    tenant_caps: dict[str, int]
    app_caps: dict[str, int]


def _warm_scenario(rng: random.Random) -> WarmScenario:
    tenants = [f"t{i}" for i in range(5)]
    tenant_caps = {t: rng.choice([1, 2]) for t in rng.sample(tenants, 2)}
    app_caps = {f"o/{a}": rng.choice([1, 3]) for a in rng.sample(APPS, 1)}
    reqs, times = [], []
    recent_share = rng.choice([0.3, 0.7, 1.0])
    for i in range(rng.randint(5, 40)):
        tier = rng.choice(TIERS)
        tenant, app = rng.choice(tenants), rng.choice(APPS)
        reqs.append(
            NewRequest(
                id=f"r{i:03d}", owner="o", tenant=tenant, app=app,
                revision=f"{app}-r{rng.randint(1, 2)}", function=rng.choice("fg"), endpoint="/",
                pool="GPU", payload=b"{}", timeout_s=30, tier=tier.name,
                tenant_cap=tenant_caps.get(tenant, 0), app_cap=app_caps.get(f"o/{app}", 0),
                gpus=rng.choice([0, 1, 1, 2, 4, 8]),
            )
        )  # fmt: skip
        recent = rng.random() < recent_share  # within a cold start or so, else up to 3 SLOs
        wait_s = rng.uniform(0, 40) if recent else rng.uniform(0, 3 * tier.slo_s)
        times.append(NOW_MS - int(wait_s * 1000))
    return WarmScenario(reqs, times, tenant_caps, app_caps)


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


async def _replay_warm(seed: int, broker: Broker | None) -> Counter[str]:
    """Replay seed's scenario through the reference, and through ``broker`` when given (assert
    they agree at every step). Returns how often each rule (W1-W5, or none) decided."""
    rng = random.Random(seed)
    sc = _warm_scenario(rng)
    order = sorted(range(len(sc.reqs)), key=lambda i: sc.times[i])
    queues: dict[str, list[Job]] = defaultdict(list)
    for i in order:  # each queue is FIFO by enqueue time
        r = sc.reqs[i]
        if broker is not None:
            await broker.queue.enqueue(r, at_ms=sc.times[i])
        fn = f"{r.revision}/{r.function}"
        queues[r.tier].append(Job(r.id, r.tier, r.tenant, r.app_key, sc.times[i], r.gpus, fn))
    by_id = {j.id: j for q in queues.values() for j in q}
    cold_ms: dict[str, float] = {}

    async def set_cold(app_key: str, ms: float | None) -> None:
        if ms is None:
            cold_ms.pop(app_key, None)
        else:
            cold_ms[app_key] = ms
        if broker is not None:
            if ms is None:
                await broker.redis.hdel(keys.COLD_STATS, app_key)
            else:
                await broker.redis.hset(keys.COLD_STATS, app_key, f"{ms:.1f}")

    def some_cold_ms() -> float | None:  # .5 ms: a whole-ms wait never equals a cold start
        return None if rng.random() < 0.2 else rng.randrange(0, 150_000) + 0.5

    for app in APPS:
        await set_cold(f"o/{app}", some_cold_ms())
    by_tenant: dict[str, int] = defaultdict(int)
    by_app: dict[str, int] = defaultdict(int)
    running: list[str] = []
    rules: Counter[str] = Counter()
    now = NOW_MS
    for step in range(2 * len(sc.reqs)):
        now += rng.randrange(0, 3000)
        if rng.random() < 0.25:
            await set_cold(f"o/{rng.choice(APPS)}", some_cold_ms())
        if running and rng.random() < 0.6:
            done = by_id[running.pop(rng.randrange(len(running)))]
            by_tenant[done.tenant] -= 1
            by_app[done.app] -= 1
            if broker is not None:
                assert await broker.queue.complete(done.id, "w", Outcome(ok=True, result=b"{}"))
        total = rng.choice([1, 2, 4, 8])
        counts = {
            "inflight_by_tenant": by_tenant, "inflight_by_app": by_app,
            "tenant_caps": sc.tenant_caps, "app_caps": sc.app_caps,
        }  # fmt: skip
        # Often just what the plain pick (best) needs, and the functions of queued jobs, the
        # best's among them, so that every rule and its edges are reached.
        best = pick(_fitting(queues, total), now, tiers=TIERS_MS, **counts)
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
        want = pick_for_worker(queues, now, tiers=TIERS_MS, **counts, free_units=free,
                               total_units=total, here=here, elsewhere=elsewhere,
                               cold_start_s=cold_ms, full=full)  # fmt: skip
        rules[_rule(want, queues, now, total, here, counts)] += 1
        if broker is not None:
            warm = {"warm_here": here, "warm_elsewhere": elsewhere, "full": full}
            got = await broker.queue.dispatch(
                ["GPU"], "w", 30, free_units=free, total_units=total, **warm, at_ms=now
            )
            context = f"seed {seed} step {step}: free {free}/{total}, here {here}, " + (
                f"elsewhere {elsewhere}, full {full}, cold {cold_ms}, now {now}"
            )
            assert _outcome(got) == _outcome(want), context
            if isinstance(got, BrokerJob) and isinstance(want, Job):
                assert got.units == want.units, context
        if isinstance(want, Job):
            queues[want.tier].remove(want)
            by_tenant[want.tenant] += 1
            by_app[want.app] += 1
            running.append(want.id)
    return rules


def _fitting(queues: dict[str, list[Job]], total: int) -> dict[str, list[Job]]:
    """The jobs a worker of ``total`` units could hold; with fewer than SCAN jobs per queue,
    ``pick`` over these picks ``best`` of ``pick_for_worker``."""
    return {t: [j for j in q if j.units <= total] for t, q in queues.items()}


def _rule(
    got: Job | PolicyBlocked | PolicyElsewhere | None,
    queues: dict[str, list[Job]],
    now: int,
    total: int,
    here: list[str],
    counts: dict[str, dict[str, int]],
) -> str:
    """Which rule produced ``got``: the plain pick among jobs that fit the worker is ``best``."""
    if got is None:
        return "none"
    if isinstance(got, PolicyBlocked):
        return "W2"
    if isinstance(got, PolicyElsewhere):
        return "W4"
    if got is not pick(_fitting(queues, total), now, tiers=TIERS_MS, **counts):
        return "W3"
    return "W1" if got.function_key in here else "W5"


@pytest.mark.parametrize("seed", range(24))
def test_lua_dispatch_matches_pick_for_worker(redis_url: str, seed: int) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        try:
            await _replay_warm(seed, broker)
        finally:
            await broker.close()

    asyncio.run(main())


def test_the_warm_scenarios_exercise_every_rule() -> None:
    rules: Counter[str] = Counter()
    for seed in range(24):
        rules += asyncio.run(_replay_warm(seed, None))
    assert set(rules) == {"W1", "W2", "W3", "W4", "W5", "none"}
    assert min(rules.values()) >= 10, rules


@pytest.mark.parametrize(("cold_ms", "young"), [("20000", False), ("20000.5", True)])
def test_a_job_is_young_while_its_wait_is_below_the_cold_start(
    redis_url: str, cold_ms: str, young: bool
) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3, tiers=TIERS)
        try:
            req = NewRequest(
                id="r", owner="o", tenant="t", app="a", revision="a-r1", function="f",
                endpoint="/", pool="GPU", payload=b"{}", timeout_s=30, tier="api",
            )  # fmt: skip
            await broker.queue.enqueue(req, at_ms=NOW_MS - 20_000)
            await broker.redis.hset(keys.COLD_STATS, "o/a", cold_ms)
            queues = {"api": [Job("r", "api", "t", "o/a", NOW_MS - 20_000, 0, "a-r1/f")]}
            cold = {"o/a": float(cold_ms)}
            want = pick_for_worker(queues, NOW_MS, tiers=TIERS_MS, free_units=1, total_units=1,
                                   elsewhere=["a-r1/f"], cold_start_s=cold)  # fmt: skip
            got = await broker.queue.dispatch(
                ["GPU"], "w", 30, free_units=1, total_units=1, warm_elsewhere=["a-r1/f"],
                at_ms=NOW_MS,
            )  # fmt: skip
            assert _outcome(got) == _outcome(want) == (("elsewhere", 0) if young else ("job", "r"))
        finally:
            await broker.close()

    asyncio.run(main())
