"""The runners of one worker, bounded by its slots.

Guarantees: at most ``slots`` runners exist at once (a starting runner counts); a function never
has more than its ``max_concurrency`` runners here; a warm idle runner of the same function is
always preferred to a cold start; when the slots are full, the least recently used idle runner
of another function is stopped to make room; idle runners past ``keep_alive`` are stopped, but
``min_concurrency`` of each function are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from klieg.types import FunctionSpec
from klieg_platform.worker.process import RunnerKey, RunnerProcess

Starter = Callable[[RunnerProcess], Awaitable[None]]


class RunnerSet:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.runners: list[RunnerProcess] = []
        self._cond = asyncio.Condition()
        self._stopping: set[asyncio.Task[None]] = set()
        self.cold_starts = 0

    async def acquire(self, key: RunnerKey, spec: FunctionSpec, start: Starter) -> RunnerProcess:
        """A busy runner for ``key``: warm if one is idle, else a new one started by ``start``."""
        async with self._cond:
            while True:
                for dead in [r for r in self.runners if not r.busy and not r.alive]:
                    self._remove(dead)
                idle = [r for r in self.runners if r.key == key and not r.busy]
                if idle:
                    runner = max(idle, key=lambda r: r.last_used)
                    runner.busy = True
                    return runner
                if len([r for r in self.runners if r.key == key]) < spec.max_concurrency:
                    if len(self.runners) < self.slots:
                        break
                    victims = sorted(
                        (r for r in self.runners if not r.busy), key=lambda r: r.last_used
                    )
                    if victims:
                        self._remove(victims[0])
                        task = asyncio.create_task(victims[0].stop())
                        self._stopping.add(task)
                        task.add_done_callback(self._stopping.discard)
                        break
                await self._cond.wait()
            runner = RunnerProcess(key, spec)
            self.runners.append(runner)
            self.cold_starts += 1
        try:
            await start(runner)
        except BaseException:
            await runner.kill()
            await self.discard(runner)
            raise
        return runner

    def _remove(self, runner: RunnerProcess) -> None:
        with contextlib.suppress(ValueError):
            self.runners.remove(runner)

    async def release(self, runner: RunnerProcess) -> None:
        """Return a runner after a request; a dead one is dropped."""
        async with self._cond:
            runner.busy = False
            runner.last_used = time.monotonic()
            if not runner.alive:
                self._remove(runner)
            self._cond.notify_all()

    async def discard(self, runner: RunnerProcess) -> None:
        async with self._cond:
            self._remove(runner)
            self._cond.notify_all()

    async def reap_idle(self) -> int:
        """Stop idle runners past their keep_alive, keeping min_concurrency per function."""
        now = time.monotonic()
        stopping: list[RunnerProcess] = []
        async with self._cond:
            for runner in sorted(self.runners, key=lambda r: r.last_used):
                if runner.busy or now - runner.last_used < runner.spec.keep_alive:
                    continue
                peers = [r for r in self.runners if r.key == runner.key]
                if len(peers) > runner.spec.min_concurrency or not runner.alive:
                    self._remove(runner)
                    stopping.append(runner)
            if stopping:
                self._cond.notify_all()
        await asyncio.gather(*(r.stop() for r in stopping))
        return len(stopping)

    async def stop_all(self) -> None:
        async with self._cond:
            runners, self.runners = self.runners, []
        await asyncio.gather(*(r.stop() for r in runners))
