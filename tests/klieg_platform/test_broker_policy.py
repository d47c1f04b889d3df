"""The live dispatch (Lua in Redis) follows ``scheduler.pick`` exactly.

Random queues across tiers, tenants, apps, enqueue times and caps are loaded into a real Redis;
then, step by step, the broker's dispatch and the reference policy must choose the same job.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest

from klieg_platform.broker import Blocked, Broker, NewRequest
from klieg_platform.broker import Job as BrokerJob
from klieg_platform.scheduler import Job, parse_tiers, pick

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
                await broker.enqueue(reqs[i], at_ms=times[i])
            queues: dict[str, list[Job]] = defaultdict(list)
            for i in order:
                r = reqs[i]
                queues[r.tier].append(Job(r.id, r.tier, r.tenant, r.app_key, times[i] / 1000))
            running: dict[str, int] = defaultdict(int)
            for step in range(len(reqs)):
                now = NOW_MS + step * 1000
                want = pick(queues, now / 1000, tiers=TIERS, inflight_by_tenant=running,
                            tenant_caps=caps)  # fmt: skip
                got = await broker.dispatch(["CPU"], "w", 30, at_ms=now)
                assert (got.id if got else None) == (want.id if want else None), f"step {step}"
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

            await broker.enqueue(req("huge", 8), at_ms=NOW_MS - 3000)
            await broker.enqueue(req("big", 4), at_ms=NOW_MS - 2000)
            await broker.enqueue(req("small", 1), at_ms=NOW_MS - 1000)
            kw = {"total_units": 4, "at_ms": NOW_MS}
            got = await broker.dispatch(["GPU-H100"], "w", 30, free_units=2, **kw)
            assert got == Blocked(4), "the 8-GPU job never fits here; the 4-GPU one waits"
            got = await broker.dispatch(["GPU-H100"], "w", 30, free_units=4, **kw)
            assert isinstance(got, BrokerJob) and got.id == "big" and got.units == 4
            got = await broker.dispatch(["GPU-H100"], "w", 30, free_units=1, **kw)
            assert isinstance(got, BrokerJob) and got.id == "small"
            assert await broker.dispatch(["GPU-H100"], "w", 30, free_units=4, **kw) is None
            got = await broker.dispatch(["GPU-H100"], "w8", 30, free_units=8, total_units=8)
            assert isinstance(got, BrokerJob) and got.id == "huge"
        finally:
            await broker.close()

    asyncio.run(main())
