"""The Redis broker against real servers (embedded and the machine's): queue, lease, complete."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from klieg_platform import keys
from klieg_platform.broker import Broker, Elsewhere, Job, NewRequest, Outcome, now_ms
from klieg_platform.config import HISTORY_GRACE_S, HISTORY_MAX

pytestmark = pytest.mark.timeout(30)

TTL_S = 120
Body = Callable[[Broker], Awaitable[None]]


def run(url: str, body: Body, *, max_attempts: int = 3, history_max: int = HISTORY_MAX) -> None:
    """Run ``body`` with a fresh broker on ``url`` in a new event loop."""

    async def main() -> None:
        broker = Broker.from_url(
            url, result_ttl_s=TTL_S, max_attempts=max_attempts, history_max=history_max
        )
        try:
            await body(broker)
        finally:
            await broker.close()

    asyncio.run(main())


def new(pool: str = "CPU", rid: str | None = None, payload: bytes = b'{"x": 1}') -> NewRequest:
    return NewRequest(
        id=rid or uuid.uuid4().hex,
        owner="alice",
        tenant="t-alice",
        app="echo",
        revision="rev-1",
        function="echo",
        endpoint="/say",
        pool=pool,
        payload=payload,
        timeout_s=30.0,
    )


async def enqueue_spaced(b: Broker, *reqs: NewRequest) -> None:
    """Enqueue in order, a few ms apart, so enqueue times differ."""
    for req in reqs:
        await b.queue.enqueue(req)
        await asyncio.sleep(0.005)


async def subscribe(b: Broker) -> aioredis.client.PubSub:
    pubsub = b.redis.pubsub()
    await pubsub.subscribe(b.streams.channel(keys.DONE_CHANNEL))
    confirm = await pubsub.get_message(timeout=5)
    assert confirm is not None and confirm["type"] == "subscribe"
    return pubsub


async def next_done(pubsub: aioredis.client.PubSub) -> bytes:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        msg: dict[str, Any] | None = await pubsub.get_message(
            ignore_subscribe_messages=True, timeout=1
        )
        if msg is not None:
            assert msg["channel"].startswith(keys.DONE_CHANNEL.encode())
            data: bytes = msg["data"]
            return data
    raise AssertionError("no message on the done channel within 5s")


def test_enqueue_then_get_shows_in_queue_with_position(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        reqs = [new(), new(), new()]
        before = now_ms()
        await enqueue_spaced(b, *reqs)
        for position, req in enumerate(reqs):
            state = await b.queue.get(req.id)
            assert state is not None
            assert (state.status, state.queue_position, state.attempts) == ("IN_QUEUE", position, 0)
            assert (state.owner, state.tenant, state.app, state.pool) == (
                "alice",
                "t-alice",
                "echo",
                "CPU",
            )
            assert state.created_ms >= before and state.started_ms is None
            assert state.outcome is None and state.error is None
            assert await b.queue.outcome(req.id) is None
        await b.queue.dispatch(["CPU"], "w1", 30)
        positions = [(await b.queue.get(r.id)) for r in reqs[1:]]
        assert [s.queue_position for s in positions if s] == [0, 1]
        assert await b.queue.get("no-such-id") is None

    run(redis_url, body)


def test_enqueue_is_atomic(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        assert await b.redis.exists(keys.request(req.id)) == 1
        assert await b.redis.zscore(keys.queue("CPU", "free"), req.id) is not None
        assert await b.redis.sismember(keys.POOLS, "CPU")
        assert await b.redis.llen(keys.wake("CPU")) == 1
        assert await b.redis.llen(keys.wake(keys.ALL_POOLS)) == 1

        ids = [uuid.uuid4().hex for _ in range(150)]
        torn: list[str] = []
        stop = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                for rid in ids:
                    async with b.redis.pipeline(transaction=True) as pipe:
                        pipe.exists(keys.request(rid))
                        pipe.zscore(keys.queue("GPU-X", "free"), rid)
                        record, score = await pipe.execute()
                    if bool(record) != (score is not None):
                        torn.append(rid)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(b.queue.enqueue(new("GPU-X", rid)) for rid in ids))
        stop.set()
        await watcher
        assert torn == []
        assert await b.redis.zcard(keys.queue("GPU-X", "free")) == len(ids)
        assert await b.redis.llen(keys.wake("GPU-X")) <= 64

    run(redis_url, body)


def test_dispatch_is_fifo_across_two_enqueues(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        first, second = new(), new()
        await enqueue_spaced(b, first, second)
        a = await b.queue.dispatch(["CPU"], "w1", 30)
        c = await b.queue.dispatch(["CPU"], "w1", 30)
        assert a is not None and c is not None
        assert [a.id, c.id] == [first.id, second.id]
        assert await b.queue.dispatch(["CPU"], "w1", 30) is None

    run(redis_url, body)


def test_dispatch_is_fifo_for_requests_enqueued_in_the_same_millisecond(redis_url: str) -> None:
    """Back-to-back enqueues share a millisecond; their order must still be kept (ids are
    random, so ties must not be broken by id)."""

    async def body(b: Broker) -> None:
        reqs = [new(rid=f"{9 - i}-{uuid.uuid4().hex}") for i in range(10)]
        for req in reqs:
            await b.queue.enqueue(req)
        positions = [(await b.queue.get(r.id)) for r in reqs]
        assert [s.queue_position for s in positions if s] == list(range(10))
        got = [await b.queue.dispatch(["CPU"], "w1", 30) for _ in reqs]
        assert [j.id for j in got if j] == [r.id for r in reqs]

    run(redis_url, body)


def test_dispatch_pools(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        gpu, cpu = new("GPU-H100"), new("CPU")
        await enqueue_spaced(b, gpu, cpu)
        assert await b.queue.dispatch(["GPU-A100"], "w1", 30) is None
        only_cpu = await b.queue.dispatch(["CPU"], "w1", 30)
        assert only_cpu is not None and only_cpu.id == cpu.id
        assert await b.queue.dispatch(["CPU"], "w1", 30) is None
        anything = await b.queue.dispatch(["*"], "w2", 30)
        assert anything is not None and anything.id == gpu.id
        assert await b.queue.dispatch(["*"], "w2", 30) is None

    run(redis_url, body)


def test_dispatch_star_and_pool_lists_take_the_oldest_of_every_pool(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        reqs = [new("GPU-H100"), new("CPU"), new("GPU-A100"), new("CPU")]
        await enqueue_spaced(b, *reqs)
        both = await b.queue.dispatch(["CPU", "GPU-A100"], "w1", 30)
        assert both is not None and both.id == reqs[1].id
        order = [await b.queue.dispatch(["*"], "w1", 30) for _ in range(3)]
        assert [j.id for j in order if j] == [reqs[0].id, reqs[2].id, reqs[3].id]

    run(redis_url, body)


def test_dispatch_moves_to_in_progress_with_a_lease(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new(payload=b'{"prompt": "cat"}')
        await b.queue.enqueue(req)
        before = now_ms()
        job = await b.queue.dispatch(["CPU"], "w1", 30)
        after = now_ms()
        assert job == Job(
            id=req.id,
            revision="rev-1",
            function="echo",
            endpoint="/say",
            payload=b'{"prompt": "cat"}',
            timeout_s=30.0,
            owner="alice",
            app="echo",
            attempts=1,
            tenant="t-alice",
        )
        state = await b.queue.get(req.id)
        assert state is not None
        assert (state.status, state.attempts, state.queue_position) == ("IN_PROGRESS", 1, None)
        assert state.started_ms is not None and before <= state.started_ms <= after
        assert await b.redis.hget(keys.request(req.id), "worker") == b"w1"
        lease = await b.redis.zscore(keys.INFLIGHT, req.id)
        assert lease is not None and before + 30_000 <= lease <= after + 30_000
        assert await b.redis.zcard(keys.queue("CPU", "free")) == 0

    run(redis_url, body)


def test_complete_by_the_lease_holder(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        await b.queue.dispatch(["CPU"], "w1", 30)
        pubsub = await subscribe(b)
        logs = [{"message": "hi", "level": "INFO", "timestamp": "t"}]
        outcome = Outcome(ok=True, result=b'{"y": 2}', logs=logs)
        assert await b.queue.complete(req.id, "w1", outcome) is True
        assert await next_done(pubsub) == req.id.encode()
        await pubsub.aclose()
        state = await b.queue.get(req.id, with_logs=True)
        assert state is not None
        assert (state.status, state.outcome, state.http_status) == ("COMPLETED", "ok", 200)
        assert state.logs == logs and state.error is None
        assert await b.queue.outcome(req.id) == Outcome(ok=True, result=b'{"y": 2}')
        assert state.finished_ms is not None
        assert 0 < await b.redis.ttl(keys.request(req.id)) <= TTL_S
        assert await b.redis.zscore(keys.INFLIGHT, req.id) is None
        assert await b.queue.complete(req.id, "w1", outcome) is False

    run(redis_url, body)


def test_complete_with_an_error_outcome(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        await b.queue.dispatch(["CPU"], "w1", 30)
        error = {"detail": {"type": "ValueError", "message": "no"}, "error_type": "AppError"}
        assert await b.queue.complete(req.id, "w1", Outcome(ok=False, error=error, http_status=500))
        state = await b.queue.get(req.id)
        assert state is not None
        assert (state.status, state.outcome, state.http_status) == ("COMPLETED", "error", 500)
        assert state.error == error
        assert await b.queue.outcome(req.id) == Outcome(ok=False, error=error, http_status=500)

    run(redis_url, body)


def test_complete_by_another_worker_is_refused(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        await b.queue.dispatch(["CPU"], "w1", 30)
        lease = await b.redis.zscore(keys.INFLIGHT, req.id)
        assert await b.queue.complete(req.id, "w2", Outcome(ok=True, result=b"late")) is False
        state = await b.queue.get(req.id)
        assert state is not None
        assert (state.status, state.outcome) == ("IN_PROGRESS", None)
        assert await b.queue.outcome(req.id) is None
        assert await b.redis.zscore(keys.INFLIGHT, req.id) == lease
        assert await b.redis.ttl(keys.request(req.id)) == -1
        assert await b.queue.complete(req.id, "w1", Outcome(ok=True, result=b"mine")) is True
        done = await b.queue.outcome(req.id)
        assert done is not None and done.result == b"mine"

    run(redis_url, body)


def test_renew_extends_the_lease_only_for_the_holder(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        await b.queue.dispatch(["CPU"], "w1", 1)
        first = await b.redis.zscore(keys.INFLIGHT, req.id)
        assert first is not None
        assert await b.queue.renew_many([req.id], "w2", 60) == 0
        assert await b.redis.zscore(keys.INFLIGHT, req.id) == first
        assert await b.queue.renew_many([req.id], "w1", 60) == 1
        renewed = await b.redis.zscore(keys.INFLIGHT, req.id)
        assert renewed is not None and renewed >= first + 58_000
        await b.queue.complete(req.id, "w1", Outcome(ok=True))
        assert await b.queue.renew_many([req.id], "w1", 60) == 0
        assert await b.redis.zscore(keys.INFLIGHT, req.id) is None
        assert await b.queue.renew_many(["unknown"], "w1", 60) == 0

    run(redis_url, body)


def test_renew_many_renews_only_the_leases_the_worker_holds(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        mine, theirs, done = new(), new(), new()
        for req in (mine, theirs, done):
            await b.queue.enqueue(req)
        assert isinstance(await b.queue.dispatch(["CPU"], "w1", 1), Job)
        assert isinstance(await b.queue.dispatch(["CPU"], "w2", 1), Job)
        assert isinstance(await b.queue.dispatch(["CPU"], "w1", 1), Job)
        await b.queue.complete(done.id, "w1", Outcome(ok=True))
        before = await b.redis.zscore(keys.INFLIGHT, theirs.id)
        ids = [mine.id, theirs.id, done.id, "unknown"]
        assert await b.queue.renew_many(ids, "w1", 60) == 1
        renewed = await b.redis.zscore(keys.INFLIGHT, mine.id)
        assert renewed is not None and renewed >= now_ms() + 58_000
        assert await b.redis.zscore(keys.INFLIGHT, theirs.id) == before
        assert await b.redis.zscore(keys.INFLIGHT, done.id) is None
        assert await b.queue.renew_many([], "w1", 60) == 0

    run(redis_url, body)


def test_complete_records_logs_and_service_time_with_the_outcome(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        await b.queue.dispatch(["CPU"], "w1", 30)
        lines = [{"message": f"line {i}", "level": "INFO"} for i in range(3)]
        outcome = Outcome(ok=True, result=b'{"y": 2}', logs=lines)
        assert await b.queue.complete(req.id, "w1", outcome, service=("alice/echo", 0.25))
        assert await b.streams.logs(req.id) == lines
        assert 0 < await b.redis.ttl(keys.logs(req.id)) <= TTL_S
        assert await b.stats.mean_time("service", "alice/echo") == 0.25
        second = new()
        await b.queue.enqueue(second)
        await b.queue.dispatch(["CPU"], "w1", 30)
        slow = ("alice/echo", 0.5)
        assert await b.queue.complete(second.id, "w1", Outcome(ok=True), service=slow)
        assert await b.stats.mean_time("service", "alice/echo") == pytest.approx(0.3)
        assert await b.streams.logs(second.id) == []
        many = [{"message": str(i)} for i in range(1500)]  # more than a script carries
        third = new()
        await b.queue.enqueue(third)
        await b.queue.dispatch(["CPU"], "w1", 30)
        assert await b.queue.complete(third.id, "w1", Outcome(ok=True, logs=many))
        assert await b.streams.logs(third.id) == many

    run(redis_url, body)


def test_a_refused_completion_records_no_logs_and_no_service_time(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        await b.queue.dispatch(["CPU"], "w1", 30)
        outcome = Outcome(ok=True, logs=[{"message": "late"}])
        assert not await b.queue.complete(req.id, "w2", outcome, service=("alice/echo", 1.0))
        assert await b.streams.logs(req.id) == []
        assert await b.stats.mean_time("service", "alice/echo") is None

    run(redis_url, body)


def test_requeue_expired_puts_it_back_at_its_original_position(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        first, second = new(), new()
        await enqueue_spaced(b, first, second)
        job = await b.queue.dispatch(["CPU"], "w1", 0.05)
        assert job is not None and job.id == first.id
        assert await b.queue.requeue_expired() == 0
        await asyncio.sleep(0.15)
        assert await b.queue.requeue_expired() == 1
        state = await b.queue.get(first.id)
        assert state is not None
        assert (state.status, state.queue_position, state.attempts) == ("IN_QUEUE", 0, 1)
        later = await b.queue.get(second.id)
        assert later is not None and later.queue_position == 1
        assert await b.redis.zscore(keys.INFLIGHT, first.id) is None
        assert await b.queue.complete(first.id, "w1", Outcome(ok=True)) is False
        again = await b.queue.dispatch(["CPU"], "w2", 30)
        assert again is not None and (again.id, again.attempts) == (first.id, 2)

    run(redis_url, body)


def test_requeue_keeps_live_leases(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        await b.queue.dispatch(["CPU"], "w1", 30)
        assert await b.queue.requeue_expired() == 0
        state = await b.queue.get(req.id)
        assert state is not None and state.status == "IN_PROGRESS"

    run(redis_url, body)


def test_requeue_past_max_attempts_fails_with_worker_lost(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        for attempt in (1, 2):
            job = await b.queue.dispatch(["CPU"], f"w{attempt}", 0.05)
            assert job is not None and job.attempts == attempt
            await asyncio.sleep(0.12)
            if attempt == 2:
                pubsub = await subscribe(b)
            assert await b.queue.requeue_expired() == 1
        assert await next_done(pubsub) == req.id.encode()
        await pubsub.aclose()
        state = await b.queue.get(req.id)
        assert state is not None
        assert (state.status, state.outcome, state.http_status) == ("COMPLETED", "error", 500)
        assert state.error is not None and state.error["error_type"] == "WorkerLostError"
        assert 0 < await b.redis.ttl(keys.request(req.id)) <= TTL_S
        assert await b.queue.dispatch(["CPU"], "w3", 30) is None
        assert await b.queue.complete(req.id, "w2", Outcome(ok=True)) is False

    run(redis_url, body, max_attempts=2)


def test_cancel(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        queued, running = new(), new()
        await enqueue_spaced(b, running, queued)
        await b.queue.dispatch(["CPU"], "w1", 30)
        pubsub = await subscribe(b)
        assert await b.queue.cancel(queued.id) == 1
        assert await next_done(pubsub) == queued.id.encode()
        await pubsub.aclose()
        state = await b.queue.get(queued.id)
        assert state is not None
        assert (state.status, state.outcome, state.http_status) == ("COMPLETED", "error", 499)
        assert state.error is not None
        assert state.error["error_type"] == "RequestCancelledError"
        assert state.queue_position is None
        assert await b.redis.zscore(keys.queue("CPU", "free"), queued.id) is None
        assert 0 < await b.redis.ttl(keys.request(queued.id)) <= TTL_S
        assert await b.queue.dispatch(["CPU"], "w2", 30) is None

        assert await b.queue.cancel(running.id) == 2
        still = await b.queue.get(running.id)
        assert still is not None and still.status == "IN_PROGRESS"
        await b.queue.complete(running.id, "w1", Outcome(ok=True, result=b"{}"))
        assert await b.queue.cancel(running.id) == 0
        assert await b.queue.cancel(queued.id) == 0
        assert await b.queue.cancel("no-such-id") == -1

    run(redis_url, body)


def test_wait_for_work_returns_promptly_after_an_enqueue(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        async def enqueue_later(pool: str) -> None:
            await asyncio.sleep(0.2)
            await b.queue.enqueue(new(pool))

        wakes = b.queue.wakes()
        try:
            for waiting_on, pool in ((["CPU"], "CPU"), (["*"], "GPU-H100")):
                await b.redis.delete(keys.wake("CPU"), keys.wake(keys.ALL_POOLS))
                start = time.monotonic()
                producer = asyncio.create_task(enqueue_later(pool))
                await asyncio.wait_for(wakes.wait(waiting_on, 10), 8)
                elapsed = time.monotonic() - start
                await producer
                assert 0.15 <= elapsed < 2, elapsed
        finally:
            wakes.close()

    run(redis_url, body)


def test_wait_for_work_times_out_without_work_for_its_pools(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        wakes = b.queue.wakes()
        try:
            start = time.monotonic()
            await wakes.wait(["CPU"], 0.3)
            assert 0.25 <= time.monotonic() - start < 3
            await b.queue.enqueue(new("GPU-H100"))
            start = time.monotonic()
            await wakes.wait(["CPU"], 0.3)
            assert 0.25 <= time.monotonic() - start < 3
        finally:
            wakes.close()

    run(redis_url, body)


def test_a_wake_token_names_its_request_s_function_and_a_busy_one_is_passed_over(
    redis_url: str,
) -> None:
    """An enqueue's token is its "revision/function"; a wait told that function cannot start
    here passes such tokens over (no dispatch for nothing) until its deadline, and returns at
    once on any other token."""

    async def body(b: Broker) -> None:
        await b.redis.delete(keys.wake("CPU"), keys.wake(keys.ALL_POOLS))
        await b.queue.enqueue(new("CPU"))
        assert await b.redis.lrange(keys.wake("CPU"), 0, -1) == [b"rev-1/echo"]
        assert await b.redis.lrange(keys.wake(keys.ALL_POOLS), 0, -1) == [b"rev-1/echo"]
        asked: list[str] = []

        def startable(fn: str) -> bool:
            asked.append(fn)
            return fn != "rev-1/echo"

        wakes = b.queue.wakes()
        try:
            start = time.monotonic()
            await wakes.wait(["CPU"], 0.4, startable)
            assert 0.35 <= time.monotonic() - start < 3, "passed over, to the deadline"
            assert asked == ["rev-1/echo"] and await b.redis.llen(keys.wake("CPU")) == 0
            for token in ("rev-1/echo", "rev-2/other"):
                await b.redis.rpush(keys.wake("CPU"), token)
            start = time.monotonic()
            await wakes.wait(["CPU"], 5.0, startable)
            assert time.monotonic() - start < 1.0, "another function's token wakes it"
            await b.queue.nudge("CPU", "rev-1/echo")  # a runner of it freed, busy again since
            await b.queue.nudge("CPU")  # keys.WAKE_ANY: anything may be startable
            start = time.monotonic()
            await wakes.wait(["CPU"], 5.0, startable)
            assert time.monotonic() - start < 1.0
            assert asked == ["rev-1/echo", "rev-1/echo", "rev-2/other"], "WAKE_ANY: not asked"
            start = time.monotonic()
            await wakes.wait(["CPU"], 0.3, startable)
            assert time.monotonic() - start >= 0.25, "the freed runner's token, passed over"
            assert asked[-1] == "rev-1/echo" and await b.redis.llen(keys.wake("CPU")) == 0
        finally:
            wakes.close()

    run(redis_url, body)


def test_a_request_left_to_a_warm_peer_wakes_that_peer_alone(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new("CPU")
        await b.queue.enqueue(req)
        lists = [keys.wake("CPU"), keys.wake(keys.ALL_POOLS)]
        own = [keys.wake(keys.own_wake(w)) for w in ("w-warm", "w-other")]
        await b.redis.delete(*lists, *own)
        fn = f"{req.revision}/{req.function}"
        elsewhere = {fn: ["w-warm"]}
        got = await b.queue.dispatch(["*"], "w-cold", 30, warm_elsewhere=elsewhere)
        assert isinstance(got, Elsewhere)
        assert [await b.redis.llen(k) for k in (*lists, *own)] == [0, 0, 1, 0]
        assert 0 < await b.redis.ttl(own[0]) <= 60, "a gone worker's list does not stay"
        # the warm peer, woken, takes it with its idle runner
        taken = await b.queue.dispatch(["*"], "w-warm", 30, warm_here=[fn])
        assert isinstance(taken, Job) and taken.id == req.id
        # no holder named: the pool's workers are woken, as before
        await b.queue.enqueue(new("CPU"))
        await b.redis.delete(*lists)
        got = await b.queue.dispatch(["*"], "w-cold", 30, warm_elsewhere=[fn])
        assert isinstance(got, Elsewhere)
        assert await b.redis.llen(keys.wake(keys.ALL_POOLS)) == 1

    run(redis_url, body)


def test_payload_and_results_are_bytes_exact(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        payload = json.dumps({"text": "héllo \u0000 ✓", "n": list(range(50))}).encode()
        req = new(payload=payload)
        await b.queue.enqueue(req)
        job = await b.queue.dispatch(["CPU"], "w1", 30)
        assert job is not None and job.payload == payload
        result = bytes(range(256))
        await b.queue.complete(req.id, "w1", Outcome(ok=True, result=result))
        done = await b.queue.outcome(req.id)
        assert done is not None and done.result == result

    run(redis_url, body)


def test_a_queued_status_always_has_a_position(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        req = new()
        await b.queue.enqueue(req)
        original = b.queue._position

        async def dispatched_meanwhile(*args: Any, **kwargs: Any) -> Any:
            await b.queue.dispatch(["CPU"], "w1", 30)  # the request starts between the two reads
            return await original(*args, **kwargs)

        b.queue._position = dispatched_meanwhile  # type: ignore[method-assign]
        state = await b.queue.get(req.id)
        assert state is not None and state.status == "IN_QUEUE" and state.queue_position == 0

    run(redis_url, body)


def test_dispatch_for_fills_a_batch_with_one_endpoints_requests_in_order(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        other = NewRequest(**{**new().__dict__, "id": uuid.uuid4().hex, "endpoint": "/other"})
        reqs = [new() for _ in range(4)]
        await enqueue_spaced(b, reqs[0], other, *reqs[1:])
        jobs = await b.queue.dispatch_for("CPU", "rev-1", "echo", "/say", 3, "w1", 30)
        assert [j.id for j in jobs] == [r.id for r in reqs[:3]]
        assert all(j.units == 0 and j.attempts == 1 and j.endpoint == "/say" for j in jobs)
        state = await b.queue.get(jobs[0].id)
        assert state is not None and state.status == "IN_PROGRESS"
        rest = await b.queue.dispatch_for("CPU", "rev-1", "echo", "/say", 8, "w1", 30)
        assert [j.id for j in rest] == [reqs[3].id]
        assert await b.queue.dispatch_for("CPU", "rev-1", "echo", "/say", 8, "w1", 30) == []
        job = await b.queue.dispatch(["CPU"], "w2", 30)
        assert isinstance(job, Job) and job.id == other.id

    run(redis_url, body)


def test_dispatch_for_respects_the_tenant_cap(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        tenant = f"t-{uuid.uuid4().hex[:8]}"
        reqs = [
            NewRequest(**{**new().__dict__, "id": uuid.uuid4().hex, "tenant": tenant,
                          "tenant_cap": 2})
            for _ in range(3)
        ]  # fmt: skip
        await enqueue_spaced(b, *reqs)
        jobs = await b.queue.dispatch_for("CPU", "rev-1", "echo", "/say", 3, "w1", 30)
        assert [j.id for j in jobs] == [r.id for r in reqs[:2]]
        await b.queue.complete(jobs[0].id, "w1", Outcome(ok=True, result=b"{}"))
        more = await b.queue.dispatch_for("CPU", "rev-1", "echo", "/say", 3, "w1", 30)
        assert [j.id for j in more] == [reqs[2].id]

    run(redis_url, body)


def test_completed_returns_on_the_message_or_on_a_reread_after_a_lost_one(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        loop = asyncio.get_running_loop()
        req = new()
        await b.queue.enqueue(req)
        await b.queue.dispatch(["CPU"], "w1", 30)
        told: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.05, told.set_result, None)
        await asyncio.wait_for(b.queue.completed(req.id, told, poll_s=5.0), 1.0)  # the message

        lost: asyncio.Future[None] = loop.create_future()  # never set: the message was lost
        waiting = asyncio.create_task(b.queue.completed(req.id, lost, poll_s=0.05))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # IN_PROGRESS: still waiting
        assert await b.queue.complete(req.id, "w1", Outcome(ok=True, result=b"{}")) is True
        await asyncio.wait_for(waiting, 1.0)  # the re-read saw COMPLETED

        gone: asyncio.Future[None] = loop.create_future()
        await asyncio.wait_for(b.queue.completed(uuid.uuid4().hex, gone, poll_s=0.05), 1.0)

    run(redis_url, body)


def test_a_request_with_a_reply_channel_completes_there_with_its_outcome(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        channel = keys.reply(f"gw-{uuid.uuid4().hex}")
        done = b.streams.channel(keys.DONE_CHANNEL)
        pubsub = b.redis.pubsub()
        await pubsub.subscribe(channel, done)
        for _ in range(2):
            assert (await pubsub.get_message(timeout=5) or {}).get("type") == "subscribe"

        async def published() -> tuple[bytes, bytes]:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert msg is not None
            return msg["channel"], msg["data"]

        ok = replace(new(), reply_to=channel)
        await b.queue.enqueue(ok)
        await b.queue.dispatch(["CPU"], "w1", 30)
        result = b'{"text": "two\\nlines"}\n'  # whatever bytes the endpoint returned
        assert await b.queue.complete(ok.id, "w1", Outcome(ok=True, result=result))
        where, data = await published()
        assert where == channel.encode()
        assert Outcome.from_reply(data) == (ok.id, Outcome(ok=True, result=result))

        failed = replace(new(), reply_to=channel)
        await b.queue.enqueue(failed)
        assert await b.queue.cancel(failed.id) == 1
        where, data = await published()
        rid, outcome = Outcome.from_reply(data)
        assert (where, rid, outcome.ok, outcome.http_status) == (
            channel.encode(),
            failed.id,
            False,
            499,
        )
        assert outcome == await b.queue.outcome(failed.id)

        plain = new()
        await b.queue.enqueue(plain)
        await b.queue.cancel(plain.id)
        assert await published() == (done.encode(), plain.id.encode())
        await pubsub.aclose()

    run(redis_url, body)


def test_enqueue_reports_the_position_get_reports(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        reqs = [new() for _ in range(3)]
        positions = []
        for req in reqs:
            positions.append(await b.queue.enqueue(req, position=True))
            await asyncio.sleep(0.005)
        assert positions == [0, 1, 2]
        states = [await b.queue.get(r.id) for r in reqs]
        assert [s.queue_position for s in states if s] == positions
        assert await b.queue.enqueue(new()) is None

    run(redis_url, body)


def test_wakes_of_two_loops_do_not_wait_behind_each_other(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        idle, busy = b.queue.wakes(), b.queue.wakes()
        try:
            started = time.monotonic()
            sleeper = asyncio.create_task(idle.wait(["quiet"], 3.0))  # nothing will come
            await asyncio.sleep(0.1)
            waiter = asyncio.create_task(busy.wait(["CPU"], 3.0))
            await asyncio.sleep(0.1)
            await b.queue.enqueue(new("CPU"))
            await asyncio.wait_for(waiter, 2.0)
            assert time.monotonic() - started < 1.5  # not behind the other loop's 3 s wait
            assert not sleeper.done()
            await asyncio.wait_for(sleeper, 5.0)
            assert time.monotonic() - started >= 2.9
        finally:
            idle.close()
            busy.close()

    run(redis_url, body)


def test_reindex_builds_the_lane_index_for_requests_queued_before_it(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        first, second = new(), new()
        await enqueue_spaced(b, first, second)
        index = (
            keys.LANES_PREFIX, keys.LANE_PREFIX, keys.FLOW_PREFIX, keys.LANE_JOBS_PREFIX,
            keys.LANE_APP_PREFIX, keys.FN_LANES_PREFIX, keys.TENANT_LANES_PREFIX,
            keys.APP_LANES_PREFIX,
        )  # fmt: skip
        for prefix in index:  # data of a Klieg without the index: the queue alone
            async for key in b.redis.scan_iter(match=prefix + "*"):
                await b.redis.delete(key)
        await b.redis.delete(keys.INDEX_VERSION)
        assert await b.queue.dispatch(["CPU"], "w1", 30) is None
        assert await b.queue.reindex(chunk=1) == 2
        assert await b.queue.reindex() == 0, "once whole, the index is not rebuilt"
        got = [await b.queue.dispatch(["CPU"], "w1", 30) for _ in range(3)]
        assert [j.id if j else None for j in got] == [first.id, second.id, None]

    run(redis_url, body)


def test_depths_count_waiting_requests_per_pool_and_tier_with_the_oldest_wait(
    redis_url: str,
) -> None:
    async def body(b: Broker) -> None:
        assert await b.queue.depths() == []
        at = now_ms()
        await b.queue.enqueue(new("CPU"), at_ms=at - 4000)
        await b.queue.enqueue(new("CPU"), at_ms=at - 1000)
        await b.queue.enqueue(replace(new("GPU-H100"), tier="enterprise"))
        found = {(d.pool, d.tier): d for d in await b.queue.depths()}
        assert set(found) == {(p, t) for p in ("CPU", "GPU-H100") for t in b.queue.tiers}
        cpu = found[("CPU", "free")]
        assert cpu.queued == 2 and 3.9 <= cpu.oldest_wait_s <= 6
        assert found[("GPU-H100", "enterprise")].queued == 1
        empty = replace(cpu, pool="GPU-H100", queued=0, oldest_wait_s=0)
        assert found[("GPU-H100", "free")] == empty
        started = await b.queue.dispatch(["CPU"], "w1", 30)
        assert started is not None
        after = {(d.pool, d.tier): d for d in await b.queue.depths()}
        assert after[("CPU", "free")].queued == 1
        assert after[("CPU", "free")].oldest_wait_s < 3

    run(redis_url, body)


def test_history_pages_newest_first_through_equal_times_and_drops_expired(
    redis_url: str,
) -> None:
    async def body(b: Broker) -> None:
        at = now_ms()
        reqs = [new(rid=f"r{i:02d}") for i in range(7)]
        for i, req in enumerate(reqs):  # r00..r02 share a millisecond, then 1 ms apart
            await b.queue.enqueue(req, at_ms=at + max(0, i - 2))
        other = replace(new(rid="theirs"), tenant="t-bob")
        await b.queue.enqueue(other, at_ms=at + 50)
        ids: list[str] = []
        cursor = None
        for _ in range(10):
            page, cursor = await b.queue.history("t-alice", after=cursor, limit=2)
            ids += [s.id for s in page]
            if cursor is None:
                break
        assert ids == ["r06", "r05", "r04", "r03", "r02", "r01", "r00"]
        await b.redis.delete(keys.request("r05"))
        page, cursor = await b.queue.history("t-alice", limit=100)
        assert [s.id for s in page] == ["r06", "r04", "r03", "r02", "r01", "r00"] and not cursor
        assert await b.redis.zscore(keys.history("t-alice"), "r05") is None
        recent, _ = await b.queue.history("t-alice", since_ms=at + 2)
        assert [s.id for s in recent] == ["r06", "r04"]
        odd, _ = await b.queue.history("t-alice", keep=lambda s: s.id[-1] in "13")
        assert [s.id for s in odd] == ["r03", "r01"]
        assert [s.id for s in (await b.queue.history("t-bob"))[0]] == ["theirs"]
        assert page[0].endpoint == "/say" and page[0].revision == "rev-1"

    run(redis_url, body)


def test_the_history_keeps_ids_as_long_as_records_and_at_most_history_max(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        at = now_ms()
        kept_ms = (TTL_S + HISTORY_GRACE_S) * 1000
        await b.queue.enqueue(new(rid="stale"), at_ms=at - kept_ms - 1)  # past the result TTL
        await b.queue.enqueue(new(rid="aging"), at_ms=at - kept_ms + 1000)
        history = keys.history("t-alice")
        assert await b.redis.zrange(history, 0, -1) == [b"stale", b"aging"]
        for i in range(3):  # the first enqueue of now trims "stale", not yet "aging"
            await b.queue.enqueue(new(rid=f"r{i}"), at_ms=at + i)
        assert await b.redis.zrange(history, 0, -1) == [b"aging", b"r0", b"r1", b"r2"]
        await b.queue.enqueue(new(rid="r3"), at_ms=at + 3)  # a fifth: the oldest leaves
        assert await b.redis.zrange(history, 0, -1) == [b"r0", b"r1", b"r2", b"r3"]
        page, _ = await b.queue.history("t-alice")
        assert [s.id for s in page] == ["r3", "r2", "r1", "r0"]

    run(redis_url, body, history_max=4)


def in_other_db(url: str, db: int) -> str:
    """``url`` with database ``db`` instead of its own (a unix socket's or a TCP server's)."""
    if url.startswith("unix://"):
        return f"{url.split('?')[0]}?db={db}"
    return f"{url.rsplit('/', 1)[0]}/{db}"


def test_clusters_on_other_databases_of_one_server_do_not_hear_each_other(redis_url: str) -> None:
    """Redis's pub/sub spans a server's databases: each database's completions, cancels and
    alias changes go on channels of its own (``keys.channel``), so a Klieg on another database
    of the same server (the machine's Redis shared by several) hears none of them."""

    async def body(b: Broker) -> None:
        other_db = 15 if b.streams.db != 15 else 14
        other = Broker.from_url(in_other_db(redis_url, other_db), result_ttl_s=TTL_S,
                                max_attempts=3)  # fmt: skip
        heard: dict[str, list[tuple[str, bytes]]] = {"here": [], "there": []}
        ready = {name: asyncio.Event() for name in heard}
        channels = [keys.DONE_CHANNEL, keys.CANCEL_CHANNEL, keys.ALIAS_CHANNEL]
        tasks = [
            asyncio.create_task(
                broker.streams.listen(
                    channels, lambda c, d, n=name: heard[n].append((c, d)), ready[name]
                )
            )
            for name, broker in (("here", b), ("there", other))
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready.values())), 5)
            assert other.streams.db == other_db and b.streams.db != other_db
            req = new()
            await b.queue.enqueue(req)
            await b.queue.cancel(req.id)
            await b.streams.publish(keys.ALIAS_CHANNEL, "local/app")
            deadline = time.monotonic() + 5
            while len(heard["here"]) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert (keys.DONE_CHANNEL, req.id.encode()) in heard["here"]
            assert (keys.ALIAS_CHANNEL, b"local/app") in heard["here"]
            await asyncio.sleep(0.2)
            assert heard["there"] == []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await other.close()

    run(redis_url, body)


def test_fixed_channels_are_named_for_their_database() -> None:
    assert keys.channel(keys.DONE_CHANNEL, 0) == "klieg:done"
    assert keys.channel(keys.CANCEL_CHANNEL, 9) == "klieg:cancel@9"
    assert keys.channel(keys.reply("gw"), 9) == keys.reply("gw")  # unique already
