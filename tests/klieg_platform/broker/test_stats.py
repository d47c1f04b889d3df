"""The metrics' counts in Redis: what the scripts count as requests complete (per endpoint), what
workers add (cold starts, batch sizes), and the snapshot ``GET /metrics`` renders; counts of an
older Klieg, without the endpoint label, are left out of it."""

from __future__ import annotations

import dataclasses
import time

import pytest

from klieg_platform import keys
from klieg_platform.broker import Broker, Outcome
from klieg_platform.broker import scripts as lua
from klieg_platform.scheduler import DEFAULT_TIERS
from tests.klieg_platform.broker.test_queue import new, run

pytestmark = pytest.mark.timeout(30)
APP = ("CPU", "free", "alice/echo", "/say")


def test_completions_are_counted_by_status_with_queue_and_run_times(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        await b.stats.publish_slos(DEFAULT_TIERS)
        empty = await b.stats.snapshot()
        assert empty.requests == {} and empty.queue_s.buckets == {} and empty.slo == {}
        at = int(time.time() * 1000)
        late, fast, failing, cancelled = new(), new(), new(), new()
        free_slo_ms = int(next(t for t in DEFAULT_TIERS if t.name == "free").slo_s * 1000)
        await b.queue.enqueue(late, at_ms=at - free_slo_ms - 5000)
        await b.queue.enqueue(fast)
        await b.queue.enqueue(failing)
        for _ in range(3):
            assert await b.queue.dispatch(["CPU"], "w1", 30) is not None
        await b.queue.enqueue(cancelled)
        assert await b.queue.cancel(cancelled.id) == 1
        assert await b.queue.complete(late.id, "w1", Outcome(ok=True, result=b"1"))
        assert await b.queue.complete(fast.id, "w1", Outcome(ok=True, result=b"2"))
        error = {"detail": "no", "error_type": "AppError"}
        assert await b.queue.complete(failing.id, "w1", Outcome(ok=False, error=error))
        snap = await b.stats.snapshot()
        assert snap.requests == {(*APP, "ok"): 2, (*APP, "error"): 1, (*APP, "cancelled"): 1}
        # three started: their queue and run times; the one cancelled in the queue never ran
        queued = snap.queue_s.buckets[APP]
        assert len(queued) == len(lua.DURATIONS) + 1 and sum(queued) == 3
        assert snap.queue_s.sums[APP] >= free_slo_ms / 1000 + 4.9
        assert sum(snap.run_s.buckets[APP]) == 3 and snap.run_s.sums[APP] < 5
        assert snap.slo == {"free": (2, 3)}

    run(redis_url, body)


def test_completions_wait_as_lines_and_are_folded_in_groups_and_before_a_read(
    redis_url: str,
) -> None:
    async def body(b: Broker) -> None:
        await b.stats.publish_slos(DEFAULT_TIERS)
        n = lua.METRICS_FOLD + 6
        reqs = [new() for _ in range(n)]
        for req in reqs:
            await b.queue.enqueue(req)
        for _ in reqs:
            assert await b.queue.dispatch(["CPU"], "w1", 30) is not None
        for req in reqs:
            assert await b.queue.complete(req.id, "w1", Outcome(ok=True, result=b"1"))
        # the 64th completion folded the first 64 in; six lines wait for the next read
        assert await b.redis.llen(keys.METRICS_PENDING) == 6
        folded = await b.redis.hget(keys.METRICS_REQUESTS, "|".join((*APP, "ok")))
        assert int(folded) == lua.METRICS_FOLD
        snap = await b.stats.snapshot()
        assert await b.redis.llen(keys.METRICS_PENDING) == 0
        assert snap.requests == {(*APP, "ok"): n}
        assert sum(snap.queue_s.buckets[APP]) == n and sum(snap.run_s.buckets[APP]) == n
        assert snap.slo == {"free": (n, n)}

    run(redis_url, body)


def test_cold_starts_and_batches_are_counted_in_their_histograms(redis_url: str) -> None:
    """A batch is counted by the completion of the one request that carries its size."""

    async def body(b: Broker) -> None:
        await b.stats.record_cold_start("GPU-H100", "alice/video", 0.3)
        await b.stats.record_cold_start("GPU-H100", "alice/video", 42.0)
        embed = [dataclasses.replace(new(), endpoint="/embed") for _ in range(5)]
        root = [dataclasses.replace(new(), endpoint="/") for _ in range(2)]
        for req in (*embed, *root):
            await b.queue.enqueue(req)
        for _ in range(7):
            assert await b.queue.dispatch(["CPU"], "w1", 30) is not None
        sizes = {embed[0].id: 1, embed[1].id: 8, embed[2].id: 8, embed[3].id: 500, root[0].id: 3}
        for req in (*embed, *root):
            done = Outcome(ok=True, result=b"1")
            assert await b.queue.complete(req.id, "w1", done, batch=sizes.get(req.id, 0))
            record = await b.redis.hgetall(keys.request(req.id))
            assert b"batch" not in record and record[b"outcome"] == b"ok"
        snap = await b.stats.snapshot()
        cold = snap.cold_s.buckets[("GPU-H100", "alice/video")]
        assert cold[lua.DURATIONS.index(0.5)] == 1 and cold[lua.DURATIONS.index(60.0)] == 1
        assert snap.cold_s.sums[("GPU-H100", "alice/video")] == pytest.approx(42.3)
        assert await b.stats.mean_time("cold", "alice/video") == pytest.approx(8.64)
        batch = snap.batch.buckets[("CPU", "alice/echo", "/embed")]
        assert batch[0] == 1 and batch[lua.BATCH_SIZES.index(8.0)] == 2 and batch[-1] == 1
        assert sum(snap.batch.buckets[("CPU", "alice/echo", "/")]) == 1
        assert snap.batch.sums[("CPU", "alice/echo", "/")] == 3
        # a completion whose lease is lost counts nothing
        late = new()
        await b.queue.enqueue(late)
        assert await b.queue.dispatch(["CPU"], "w1", 30) is not None
        assert not await b.queue.complete(late.id, "w2", Outcome(ok=True), batch=4)
        assert ("CPU", "alice/echo", "/say") not in (await b.stats.snapshot()).batch.buckets

    run(redis_url, body)


def test_each_endpoint_is_counted_apart_and_older_counts_are_left_out(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        # counted by a Klieg before the endpoint label: pool|tier|app|status, pool|tier|app|i
        await b.redis.hset(keys.METRICS_REQUESTS, "CPU|free|alice/echo|ok", 7)
        await b.redis.hset(
            keys.METRICS_QUEUE_S,
            mapping={"CPU|free|alice/echo|1": 7, "CPU|free|alice/echo|sum": 0.1},
        )
        await b.redis.hset(keys.METRICS_BATCH, "CPU|alice/echo|2", 1)
        say, shout, odd = new(), dataclasses.replace(new(), endpoint="/shout"), new()
        odd = dataclasses.replace(odd, endpoint="/a|b")  # a path may hold the separator
        for req in (say, shout, odd):
            await b.queue.enqueue(req)
        for _ in range(3):
            assert await b.queue.dispatch(["CPU"], "w1", 30) is not None
        for req in (say, shout, odd):
            assert await b.queue.complete(req.id, "w1", Outcome(ok=True, result=b"1"))
        snap = await b.stats.snapshot()
        app = APP[:3]
        assert snap.requests == {(*app, "/say", "ok"): 1, (*app, "/shout", "ok"): 1,
                                 (*app, "/a|b", "ok"): 1}  # fmt: skip
        for hist in (snap.queue_s, snap.run_s):
            assert {k: sum(v) for k, v in hist.buckets.items()} == {
                (*app, "/say"): 1,
                (*app, "/shout"): 1,
                (*app, "/a|b"): 1,
            }
            assert hist.app_key((*app, "/a|b")) == "alice/echo"
        assert snap.batch.buckets == {}

    run(redis_url, body)


def test_webhook_tries_are_counted_by_result(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        ok, flaky = new(), new()
        for req in (ok, flaky):
            await b.queue.enqueue(req)
        assert await b.claims.record_webhook(ok.id, None, 0, 3) == 1
        assert await b.claims.record_webhook(flaky.id, "503", 0, 2) == 1
        assert await b.claims.record_webhook(flaky.id, "503", 0, 2) == 2
        assert await b.claims.record_webhook("gone", None, 0, 3) == -1
        snap = await b.stats.snapshot()
        assert snap.webhooks == {
            ("alice/echo", "delivered"): 1, ("alice/echo", "retried"): 1,
            ("alice/echo", "failed"): 1,
        }  # fmt: skip

    run(redis_url, body)


def test_the_fleet_sampler_keeps_an_hour_and_puts_lost_slos_back(redis_url: str) -> None:
    from klieg_platform import keys
    from klieg_platform.gateway.fleet import FleetSampler

    async def body(b: Broker) -> None:
        await b.redis.delete(keys.FLEET_SAMPLES, keys.SLO)  # as a flushed Redis would be
        sampler = FleetSampler(b, 10.0)
        assert sampler.kept == 360 and FleetSampler(b, 3.0).kept == 1200  # an hour of them
        SAMPLES_KEPT = sampler.kept
        first = await sampler.take()
        assert await b.stats.samples() == [first]
        assert await b.redis.hlen(keys.SLO) == len(b.queue.tiers)
        for _ in range(3):
            await b.stats.add_sample({"at": 0}, SAMPLES_KEPT)
        assert (await b.stats.samples())[0] == first  # oldest first
        for i in range(SAMPLES_KEPT + 5):
            await b.stats.add_sample({"at": i}, SAMPLES_KEPT)
        kept = await b.stats.samples()
        assert len(kept) == SAMPLES_KEPT and kept[-1] == {"at": SAMPLES_KEPT + 4}

    run(redis_url, body)


def test_depths_count_the_requests_waiting_past_their_slo(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        free_slo_ms = int(next(t for t in DEFAULT_TIERS if t.name == "free").slo_s * 1000)
        at = int(time.time() * 1000)
        for age in (free_slo_ms + 5000, free_slo_ms + 1000, 0):
            await b.queue.enqueue(new(), at_ms=at - age)
        cell = next(d for d in await b.queue.depths() if (d.pool, d.tier) == ("CPU", "free"))
        assert (cell.queued, cell.overdue) == (3, 2)
        assert cell.oldest_wait_s >= (free_slo_ms + 5000) / 1000

    run(redis_url, body)
