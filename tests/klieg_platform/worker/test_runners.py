"""RunnerSet policy: warm reuse, slot bound with LRU eviction, max_concurrency, reaping.

The starter stands in for ``RunnerProcess.start``: it gives the runner a real (trivial) child
process, so ``alive`` is true, whose stdin is the runner's command channel; ``stop()`` writes the
shutdown frame there and the child exits at once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import pytest

from klieg.types import FunctionSpec
from klieg_platform.worker.process import RunnerKey, RunnerProcess
from klieg_platform.worker.runners import RunnerSet

pytestmark = pytest.mark.timeout(30)

CHILD = "import sys; sys.stdin.buffer.read(1)"


def spec(
    name: str = "fn",
    *,
    max_concurrency: int = 1,
    min_concurrency: int = 0,
    keep_alive: float = 60.0,
    gpus: int = 0,
) -> FunctionSpec:
    return FunctionSpec(
        name=name,
        kind="function",
        module="app",
        qualname=name,
        gpu="H100" if gpus else None,
        num_gpus=gpus,
        max_concurrency=max_concurrency,
        min_concurrency=min_concurrency,
        keep_alive=keep_alive,
    )


class FakeStarter:
    """Starts a sleeping child per runner; records every start; can be told to fail."""

    def __init__(self) -> None:
        self.started: list[RunnerProcess] = []
        self.procs: list[asyncio.subprocess.Process] = []
        self.fail_next = False

    async def __call__(self, runner: RunnerProcess) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("setup failed")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE, start_new_session=True
        )
        self.procs.append(proc)
        runner.proc = proc
        runner._writer = proc.stdin
        self.started.append(runner)

    async def cleanup(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


Test = Callable[[RunnerSet, FakeStarter], Awaitable[None]]


def run(slots: int, body: Test, gpu_ids: tuple[int, ...] = ()) -> None:
    async def main() -> None:
        runners = RunnerSet(slots, gpu_ids)
        starter = FakeStarter()
        try:
            await asyncio.wait_for(body(runners, starter), 20)
        finally:
            await runners.stop_all()
            await starter.cleanup()

    asyncio.run(main())


def key(name: str) -> RunnerKey:
    return ("rev-1", name)


def test_warm_idle_runner_is_reused() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        first = await rs.acquire(key("a"), spec("a"), start)
        assert first.busy and first.alive
        await rs.release(first)
        assert not first.busy
        second = await rs.acquire(key("a"), spec("a"), start)
        assert second is first and second.busy
        assert len(start.started) == 1 and rs.cold_starts == 1
        assert rs.runners == [first]

    run(2, body)


def test_a_different_function_gets_its_own_runner() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        a = await rs.acquire(key("a"), spec("a"), start)
        await rs.release(a)
        b = await rs.acquire(key("b"), spec("b"), start)
        assert b is not a and b.key == key("b")
        assert len(start.started) == 2 and set(rs.runners) == {a, b}

    run(2, body)


def test_full_slots_evict_the_least_recently_used_idle_runner() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        a = await rs.acquire(key("a"), spec("a"), start)
        b = await rs.acquire(key("b"), spec("b"), start)
        await rs.release(a)
        await asyncio.sleep(0.01)
        await rs.release(b)
        c = await rs.acquire(key("c"), spec("c"), start)
        assert c not in (a, b) and c.alive
        assert set(rs.runners) == {b, c}
        assert len(rs.runners) <= rs.slots
        assert a.proc is not None
        await asyncio.wait_for(a.proc.wait(), 10)
        assert b.alive
        again = await rs.acquire(key("b"), spec("b"), start)
        assert again is b and len(start.started) == 3

    run(2, body)


def test_full_slots_with_every_runner_busy_wait_for_a_release() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        a = await rs.acquire(key("a"), spec("a"), start)
        b = await rs.acquire(key("b"), spec("b"), start)
        waiting = asyncio.create_task(rs.acquire(key("c"), spec("c"), start))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert len(start.started) == 2
        await rs.release(a)
        c = await asyncio.wait_for(waiting, 10)
        assert c.key == key("c") and set(rs.runners) == {b, c}
        assert len(start.started) == 3

    run(2, body)


def test_max_concurrency_makes_a_second_acquire_wait() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        one = spec("a", max_concurrency=1)
        first = await rs.acquire(key("a"), one, start)
        waiting = asyncio.create_task(rs.acquire(key("a"), one, start))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert len(start.started) == 1 and len(rs.runners) == 1
        await rs.release(first)
        second = await asyncio.wait_for(waiting, 10)
        assert second is first and second.busy
        assert len(start.started) == 1

    run(4, body)


def test_max_concurrency_above_one_starts_more_runners() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        two = spec("a", max_concurrency=2)
        first = await rs.acquire(key("a"), two, start)
        second = await rs.acquire(key("a"), two, start)
        assert first is not second and len(start.started) == 2
        third = asyncio.create_task(rs.acquire(key("a"), two, start))
        await asyncio.sleep(0.2)
        assert not third.done()
        await rs.release(second)
        assert await asyncio.wait_for(third, 10) is second

    run(4, body)


def test_a_runner_that_died_while_idle_does_not_block_its_function() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        one = spec("a", max_concurrency=1, keep_alive=300)
        first = await rs.acquire(key("a"), one, start)
        await rs.release(first)
        assert first.proc is not None
        first.proc.kill()
        await first.proc.wait()
        assert not first.alive
        fresh = await asyncio.wait_for(rs.acquire(key("a"), one, start), 3)
        assert fresh is not first and fresh.alive
        assert len(start.started) == 2

    run(4, body)


def test_release_drops_a_dead_runner() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        runner = await rs.acquire(key("a"), spec("a"), start)
        assert runner.proc is not None
        runner.proc.kill()
        await runner.proc.wait()
        await rs.release(runner)
        assert rs.runners == []

    run(2, body)


def test_reap_idle_stops_runners_past_keep_alive_but_keeps_min_concurrency() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        short = spec("a", max_concurrency=3, min_concurrency=1, keep_alive=0.05)
        long = spec("b", keep_alive=60)
        gone = spec("c", keep_alive=0.05)
        a_runners = [await rs.acquire(key("a"), short, start) for _ in range(3)]
        b = await rs.acquire(key("b"), long, start)
        c = await rs.acquire(key("c"), gone, start)
        busy_a = a_runners[0]
        for runner in [*a_runners[1:], b, c]:
            await rs.release(runner)
        await asyncio.sleep(0.15)
        assert await rs.reap_idle() == 3
        assert set(rs.runners) == {busy_a, b}
        assert not any(r.alive for r in (a_runners[1], a_runners[2], c))
        assert busy_a.alive and b.alive
        await rs.release(busy_a)
        await asyncio.sleep(0.15)
        assert await rs.reap_idle() == 0
        assert set(rs.runners) == {busy_a, b} and busy_a.alive

    run(8, body)


def test_reap_idle_with_zero_min_concurrency_stops_everything_idle() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        quick = spec("a", max_concurrency=2, keep_alive=0.05)
        runners = [await rs.acquire(key("a"), quick, start) for _ in range(2)]
        for runner in runners:
            await rs.release(runner)
        assert await rs.reap_idle() == 0
        await asyncio.sleep(0.15)
        assert await rs.reap_idle() == 2
        assert rs.runners == [] and not any(r.alive for r in runners)

    run(4, body)


def test_reap_idle_keeps_the_concurrency_buffer_beyond_the_busy_runners() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        buffered = spec("a", max_concurrency=4, keep_alive=0.05).model_copy(
            update={"concurrency_buffer": 1}
        )
        runners = [await rs.acquire(key("a"), buffered, start) for _ in range(4)]
        for runner in runners[1:]:
            await rs.release(runner)
        await asyncio.sleep(0.15)
        # one busy here and one elsewhere, one spare: three of the five kept, two here
        assert await rs.reap_idle({"rev-1/a": 1}, {"rev-1/a": 1}) == 2
        assert len(rs.runners) == 2 and runners[0] in rs.runners
        assert await rs.reap_idle() == 0  # one busy (here) and one spare
        await rs.release(runners[0])
        await asyncio.sleep(0.15)
        assert await rs.reap_idle() == 1  # nothing busy: the buffer alone, one runner
        assert len(rs.runners) == 1

    run(8, body)


def test_respec_gives_running_runners_the_overridden_scaling() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        one = spec("a", max_concurrency=1, keep_alive=60)
        first = await rs.acquire(key("a"), one, start)
        waiting = asyncio.create_task(rs.acquire(key("a"), one, start))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # at its max_concurrency of one
        two = one.model_copy(update={"max_concurrency": 2, "keep_alive": 0.05})
        await rs.respec(lambda k: two if k == key("a") else None)
        assert first.spec.keep_alive == 0.05
        await asyncio.wait_for(waiting, 5)  # the acquire waiting on the cap went on
        assert len(rs.runners) == 2
        for runner in rs.runners:
            await rs.release(runner)
        await asyncio.sleep(0.15)
        assert await rs.reap_idle() == 2  # the new keep_alive applied to both

    run(4, body)


def test_a_starter_that_raises_frees_the_slot() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        start.fail_next = True
        with pytest.raises(RuntimeError, match="setup failed"):
            await rs.acquire(key("a"), spec("a"), start)
        assert rs.runners == []
        b = await asyncio.wait_for(rs.acquire(key("b"), spec("b"), start), 5)
        assert rs.runners == [b]
        assert rs.cold_starts == 2

    run(1, body)


def test_a_failed_start_wakes_a_waiting_acquire() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        gate = asyncio.Event()

        async def slow_failing(runner: RunnerProcess) -> None:
            await gate.wait()
            raise RuntimeError("setup failed")

        failing = asyncio.create_task(rs.acquire(key("a"), spec("a"), slow_failing))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(rs.acquire(key("b"), spec("b"), start))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        gate.set()
        with pytest.raises(RuntimeError):
            await failing
        b = await asyncio.wait_for(waiting, 5)
        assert rs.runners == [b] and b.alive

    run(1, body)


def test_gpu_runners_get_disjoint_ids_and_cpu_runners_none() -> None:
    async def body(runners: RunnerSet, starter: FakeStarter) -> None:
        assert runners.slots == 4
        a = await runners.acquire(key("a"), spec("a", gpus=2), starter)
        b = await runners.acquire(key("b"), spec("b", gpus=1), starter)
        c = await runners.acquire(key("c"), spec("c"), starter)
        assert len(a.gpu_ids) == 2 and len(b.gpu_ids) == 1 and c.gpu_ids == ()
        assert set(a.gpu_ids).isdisjoint(b.gpu_ids)
        assert set(a.gpu_ids) | set(b.gpu_ids) <= {0, 1, 2, 3}
        assert runners.used() == 4

    run(0, body, gpu_ids=(0, 1, 2, 3))


def test_big_runner_evicts_enough_idle_runners_or_waits() -> None:
    async def body(runners: RunnerSet, starter: FakeStarter) -> None:
        small = [await runners.acquire(key(f"s{i}"), spec(f"s{i}", gpus=1), starter)
                 for i in range(4)]  # fmt: skip
        for r in small[:3]:
            await runners.release(r)
        waiting = asyncio.create_task(runners.acquire(key("big"), spec("big", gpus=4), starter))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "one busy runner still holds a GPU"
        assert len(runners.runners) == 4, "nothing is evicted while that would not make room"
        await runners.release(small[3])
        big = await asyncio.wait_for(waiting, 5)
        assert sorted(big.gpu_ids) == [0, 1, 2, 3]
        assert [r.key for r in runners.runners] == [key("big")]

    run(0, body, gpu_ids=(0, 1, 2, 3))


def test_full_names_functions_whose_runners_are_all_busy_at_max_concurrency() -> None:
    async def body(runners: RunnerSet, starter: FakeStarter) -> None:
        a = await runners.acquire(key("a"), spec("a", max_concurrency=1), starter)
        b = await runners.acquire(key("b"), spec("b", max_concurrency=2), starter)
        assert runners.full() == ["rev-1/a"], "b may still start a second runner"
        await runners.release(a)
        assert runners.full() == []
        del b

    run(4, body)


def test_an_idle_runner_reporting_the_requests_hint_is_preferred() -> None:
    async def body(rs: RunnerSet, start: FakeStarter) -> None:
        fn = spec("a", max_concurrency=2)
        one, two = await rs.acquire(key("a"), fn, start), await rs.acquire(key("a"), fn, start)
        one.ready = two.ready = True
        one.hints, two.hints = frozenset({"lora-1"}), frozenset({"lora-2"})
        await rs.release(one)
        await rs.release(two)  # two is the most recently used
        assert rs.idle_hints() == [("rev-1/a", "lora-1"), ("rev-1/a", "lora-2")]
        got = await rs.acquire(key("a"), fn, start, hint="lora-1")
        assert got is one, "the runner that reported the hint"
        assert rs.idle_hints() == [("rev-1/a", "lora-2")], "a busy runner advertises none"
        other = await rs.acquire(key("a"), fn, start, hint="lora-1")
        assert other is two, "without it free, another idle runner serves at once"
        await rs.release(one)
        await rs.release(two)
        assert await rs.acquire(key("a"), fn, start, hint="unknown") is two  # the most recent
        assert len(start.started) == 2

    run(2, body)
