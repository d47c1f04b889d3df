"""Runner hints in the broker: heartbeats carry the hints of a worker's idle runners to its
peers, and a dispatch leaves a young hinted request to the worker whose idle runner reports its
hint (W1's exception), for ``HINT_WAIT_S`` at most."""

from __future__ import annotations

import asyncio

import pytest

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
