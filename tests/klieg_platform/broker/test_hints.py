"""Runner hints in the broker: heartbeats carry the hints of a worker's idle runners to its
peers, and a dispatch leaves a young hinted request to the worker whose idle runner reports its
hint (W1's exception), for ``HINT_WAIT_S`` at most."""

from __future__ import annotations

import asyncio

import pytest

from klieg_platform import keys
from klieg_platform.broker import Broker, Elsewhere, Job, NewRequest, now_ms
from klieg_platform.scheduler import HINT_WAIT_S

pytestmark = pytest.mark.timeout(30)

FN = "a-r1/f"


def req(rid: str, hint: str = "") -> NewRequest:
    return NewRequest(
        id=rid, owner="o", tenant="t", app="a", revision="a-r1", function="f", endpoint="/",
        pool="GPU", payload=b"{}", timeout_s=30, tier="free", hint=hint,
    )  # fmt: skip


def test_heartbeats_tell_peers_the_hints_of_idle_runners_per_pool(redis_url: str) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3)
        try:
            workers = broker.workers
            await workers.heartbeat("w1", ["GPU"], 1, [], [FN], hints=[(FN, "lora-a")])
            await workers.heartbeat("w2", ["*"], 1, [], [FN], hints=[(FN, "lora b")])
            peers = await workers.heartbeat("w3", ["GPU"], 1, [], [])
            assert peers.hinted == {"GPU": {(FN, "lora-a")}, "*": {(FN, "lora b")}}
            peers = await workers.heartbeat("w1", ["GPU"], 1, [], [FN])  # no hints now
            assert peers.hinted == {"*": {(FN, "lora b")}, "GPU": set()}
        finally:
            await broker.close()

    asyncio.run(main())


def test_a_young_hinted_request_is_left_to_the_worker_whose_runner_reports_its_hint(
    redis_url: str,
) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3)
        q = broker.queue
        now = now_ms()
        window_ms = int(HINT_WAIT_S * 1000)
        try:
            await q.enqueue(req("hinted", "lora-a"), at_ms=now)

            async def ask(worker: str, here: list[tuple[str, str]], at: int) -> object:
                elsewhere = [(FN, "lora-a"), (FN, "lora-b")]
                elsewhere = [p for p in elsewhere if p not in here]
                return await q.dispatch(
                    ["GPU"], worker, 30, warm_here=[FN], warm_elsewhere=[FN], hinted_here=here,
                    hinted_elsewhere=elsewhere, at_ms=at,
                )  # fmt: skip

            # w2's idle runner reports lora-b, w1's lora-a: w2 leaves it to w1
            assert isinstance(await ask("w2", [(FN, "lora-b")], now + 10), Elsewhere)
            got = await ask("w1", [(FN, "lora-a")], now + 20)
            assert isinstance(got, Job) and got.id == "hinted" and got.hint == "lora-a"
            # past the window any idle runner takes it; a request without a hint at once
            await q.enqueue(req("late", "lora-a"), at_ms=now)
            got = await ask("w2", [(FN, "lora-b")], now + window_ms)
            assert isinstance(got, Job) and got.id == "late"
            await q.enqueue(req("plain"), at_ms=now + window_ms)
            got = await ask("w2", [(FN, "lora-b")], now + window_ms + 1)
            assert isinstance(got, Job) and got.id == "plain" and got.hint == ""
        finally:
            await broker.close()

    asyncio.run(main())


def test_a_request_left_to_a_hinted_peer_wakes_that_peer_alone_for_the_window_left(
    redis_url: str,
) -> None:
    async def main() -> None:
        broker = Broker.from_url(redis_url, result_ttl_s=60, max_attempts=3)
        q, r = broker.queue, broker.redis
        now = now_ms()
        lists = [keys.wake("GPU"), keys.wake(keys.ALL_POOLS)]
        own = [keys.wake(keys.own_wake(w)) for w in ("w-a", "w-b")]
        try:
            await q.enqueue(req("hinted", "lora-a"), at_ms=now)
            await r.delete(*lists, *own)  # the enqueue's tokens
            hinted = {(FN, "lora-a"): ["w-a"], (FN, "lora-b"): ["w-b"]}
            got = await q.dispatch(
                ["GPU"], "w-c", 30, warm_here=[FN], warm_elsewhere={FN: ["w-a", "w-b"]},
                hinted_elsewhere=hinted, at_ms=now + 100,
            )  # fmt: skip
            assert got == Elsewhere(wait_s=(HINT_WAIT_S * 1000 - 100) / 1000)
            assert [await r.llen(k) for k in (*lists, *own)] == [0, 0, 1, 0]
            # the peers reporting the hint not named: the pool's workers are woken
            got = await q.dispatch(
                ["GPU"], "w-c", 30, warm_here=[FN], hinted_elsewhere=list(hinted), at_ms=now + 200
            )
            assert isinstance(got, Elsewhere) and await r.llen(keys.wake("GPU")) == 1
            # a request left to a peer's idle runner by W2 has no window
            await q.enqueue(req("plain"), at_ms=now + 300)
            taken = await q.dispatch(["GPU"], "w-a", 30, warm_here=[FN], at_ms=now + 300)
            assert isinstance(taken, Job) and taken.id == "hinted"
            got = await q.dispatch(["GPU"], "w-c", 30, warm_elsewhere={FN: ["w-b"]})
            assert got == Elsewhere() and await r.llen(own[1]) == 1
        finally:
            await broker.close()

    asyncio.run(main())
