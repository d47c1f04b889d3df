"""Queue priority in the live broker: a low request waits behind the normal requests of its
flow (its tenant's, of its function, in its tier) and behind nothing else, through dispatch,
batch fills, requeues, hand-backs and queue positions."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest

from klieg_platform import keys
from klieg_platform.broker import Broker, Job, NewRequest, Outcome, now_ms
from klieg_platform.broker.jobs import LOW, NORMAL
from tests.klieg_platform.broker.test_queue import run

pytestmark = pytest.mark.timeout(30)

Body = Callable[[Broker], Awaitable[None]]
T0 = now_ms() - 60_000


def req(
    name: str, *, tenant: str = "t1", priority: str = NORMAL, function: str = "f"
) -> NewRequest:
    return NewRequest(
        id=f"{name}-{uuid.uuid4().hex[:6]}", owner="o", tenant=tenant, app="a", revision="a-r1",
        function=function, endpoint="/", pool="CPU", payload=b"{}", timeout_s=30, tier="free",
        priority=priority,
    )  # fmt: skip


async def enqueue(b: Broker, *reqs: NewRequest) -> None:
    """Enqueue in order, 1 s apart (in queue time), from ``T0``."""
    for i, r in enumerate(reqs):
        await b.queue.enqueue(r, at_ms=T0 + i * 1000)


async def order(b: Broker, n: int) -> list[str]:
    """The ids of the next ``n`` dispatches (each one completed before the next)."""
    out = []
    for _ in range(n):
        job = await b.queue.dispatch(["CPU"], "w", 30)
        assert isinstance(job, Job)
        out.append(job.id)
        assert await b.queue.complete(job.id, "w", Outcome(ok=True, result=b"{}"))
    assert await b.queue.dispatch(["CPU"], "w", 30) is None
    return out


async def index_keys(b: Broker) -> list[bytes]:
    found = []
    for prefix in (keys.FLOW_PREFIX, keys.LOW_FLOW_PREFIX, keys.LANE_PREFIX, keys.LANES_PREFIX):
        found += [k async for k in b.redis.scan_iter(match=prefix + "*")]
    return found


def test_low_waits_behind_normal_of_its_tenant_and_function_only(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        low1, low2 = req("low1", priority=LOW), req("low2", priority=LOW)
        other_fn = req("other-fn", function="g")
        other_tenant = req("other-tenant", tenant="t2")
        late = req("late-normal")
        await enqueue(b, low1, other_fn, low2, other_tenant, late)
        # t1's flow of f is (late | low1, low2): its head, late, is placed by its own arrival,
        # after t2's request; the other function's request keeps its place ahead of them all
        want = [other_fn, other_tenant, late, low1, low2]
        assert await order(b, 5) == [r.id for r in want]
        assert await index_keys(b) == []

    run(redis_url, body)


def test_a_low_request_is_not_held_behind_other_tenants_or_later_normal_ones(
    redis_url: str,
) -> None:
    async def body(b: Broker) -> None:
        low, theirs = req("low", priority=LOW), req("theirs", tenant="t2")
        await enqueue(b, low, theirs)
        assert await order(b, 2) == [low.id, theirs.id]
        state = await b.queue.get(low.id)
        assert state is not None and state.status == "COMPLETED"
        assert await b.redis.hget(keys.request(low.id), "priority") == LOW.encode()

    run(redis_url, body)


@pytest.mark.parametrize("how", ["requeue", "hand_back"])
def test_requeued_and_handed_back_requests_keep_their_priority_and_place(
    redis_url: str, how: str
) -> None:
    async def body(b: Broker) -> None:
        low, normal = req("low", priority=LOW), req("normal")
        await enqueue(b, low)
        job = await b.queue.dispatch(["CPU"], "w", 30)
        assert isinstance(job, Job) and job.id == low.id
        theirs = req("theirs", tenant="t2")
        await enqueue(b, normal, theirs)  # both after low in queue time (T0 + 0, 1000)
        if how == "requeue":
            assert await b.queue.requeue(low.id, "w")
        else:
            assert await b.queue.hand_back([low.id], "w") == 1
        # low is back at its place (T0 - its score unchanged) and still low: t1's normal
        # request goes first, and t2's request (queued after low) does not pass it
        state = await b.queue.get(low.id)
        assert state is not None and state.status == "IN_QUEUE"
        assert await order(b, 3) == [normal.id, low.id, theirs.id]

    run(redis_url, body)


def test_queue_positions_count_the_normal_requests_a_low_one_waits_behind(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        low, normal, later = req("low", priority=LOW), req("normal"), req("later")
        await enqueue(b, low, normal, later)
        positions = {}
        for r in (low, normal, later):
            state = await b.queue.get(r.id)
            assert state is not None
            positions[r.id] = state.queue_position
        assert positions == {low.id: 2, normal.id: 0, later.id: 1}
        assert await order(b, 3) == [normal.id, later.id, low.id]

    run(redis_url, body)


def test_a_batch_fill_takes_each_flows_normal_requests_before_its_low_ones(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        low1, low2 = req("low1", priority=LOW), req("low2", priority=LOW)
        theirs, mine = req("theirs", tenant="t2"), req("mine")
        await enqueue(b, low1, theirs, low2, mine)
        jobs = await b.queue.dispatch_for("CPU", "a-r1", "f", "/", 2, "w", 30)
        assert [j.id for j in jobs] == [theirs.id, mine.id]
        jobs = await b.queue.dispatch_for("CPU", "a-r1", "f", "/", 8, "w", 30)
        assert [j.id for j in jobs] == [low1.id, low2.id]
        assert await index_keys(b) == []

    run(redis_url, body)
