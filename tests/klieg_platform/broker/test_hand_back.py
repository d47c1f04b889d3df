"""``Queue.hand_back`` (the ``HAND_BACK`` script) against real servers: a stopping worker's
leased requests go back to their queues at once, at their original positions, their attempts
not counted, and its reservations end; what it does not hold is left alone."""

from __future__ import annotations

import pytest

from klieg_platform import keys
from klieg_platform.broker import Blocked, Broker, Job, NewRequest, Outcome
from tests.klieg_platform.broker.test_queue import enqueue_spaced, new, run

pytestmark = pytest.mark.timeout(30)


def test_hand_back_requeues_at_the_original_position_without_an_attempt(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        first, second, third = new(), new(), new()
        await enqueue_spaced(b, first, second, third)
        one = await b.queue.dispatch(["CPU"], "w1", 30)
        two = await b.queue.dispatch(["CPU"], "w1", 30)
        other = await b.queue.dispatch(["CPU"], "w2", 30)
        assert isinstance(one, Job) and isinstance(two, Job) and isinstance(other, Job)
        assert (one.id, two.id, other.id, one.attempts) == (first.id, second.id, third.id, 1)
        # w1 hands back both of its requests and names w2's: only its own go back
        assert await b.queue.hand_back([first.id, second.id, third.id, "gone"], "w1") == 2
        for position, req in enumerate((first, second)):
            state = await b.queue.get(req.id)
            assert state is not None
            assert (state.status, state.queue_position, state.attempts) == (
                "IN_QUEUE", position, 0,
            )  # fmt: skip
            assert await b.redis.zscore(keys.INFLIGHT, req.id) is None
        kept = await b.queue.get(third.id)
        assert kept is not None and kept.status == "IN_PROGRESS"
        assert await b.queue.complete(first.id, "w1", Outcome(ok=True)) is False
        again = await b.queue.dispatch(["CPU"], "w3", 30)
        assert isinstance(again, Job) and (again.id, again.attempts) == (first.id, 1)
        assert await b.queue.hand_back([third.id], "w2") == 1
        assert await b.queue.hand_back([third.id], "w2") == 0  # handed back already

    run(redis_url, body)


def test_hand_back_ends_the_workers_reservation(redis_url: str) -> None:
    async def body(b: Broker) -> None:
        big = NewRequest(
            id="big", owner="o", tenant="t", app="a", revision="rev", function="f",
            endpoint="/", pool="GPU-H100", payload=b"{}", timeout_s=30, gpus=4,
        )  # fmt: skip
        await b.queue.enqueue(big)
        got = await b.queue.dispatch(["GPU-H100"], "w1", 30, free_units=2, total_units=4)
        assert got == Blocked(4)
        assert await b.redis.hget(keys.reserved("GPU-H100"), "w1") == b"big"
        assert await b.queue.hand_back([], "w1") == 0
        assert await b.redis.hget(keys.reserved("GPU-H100"), "w1") is None
        # back in the lane index: a worker with room takes it (not left to w1's reservation)
        taken = await b.queue.dispatch(["GPU-H100"], "w2", 30, free_units=4, total_units=4)
        assert isinstance(taken, Job) and taken.id == "big"

    run(redis_url, body)
