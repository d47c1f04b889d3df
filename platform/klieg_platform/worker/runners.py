"""The runners of one worker, bounded by its slots.

A runner holds ``units(spec)`` slots: ``num_gpus`` for a GPU function, one otherwise. On a worker
with GPU ids, a GPU function's runner also holds that many ids (its CUDA_VISIBLE_DEVICES); on a
machine without GPUs the ids are logical. Guarantees: the runners (starting ones included) never
hold more than ``slots`` units, and no two hold the same GPU id; a function never has more than
its ``max_concurrency`` runners here; a warm idle runner of the same function is always
preferred to a cold start (among those, one whose app reported the request's runner hint, then
the most recently used); when the slots are full, the least recently used idle runners of
other functions are stopped to make room (only if that makes enough room); idle runners past
``keep_alive`` are stopped, but each function keeps ``wanted`` runners across the platform:
``max(min_concurrency, busy runners + concurrency_buffer)``. A runner's spec carries its
function's scaling as overridden now (``respec``), so a change applies to running runners.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from klieg.types import FunctionSpec
from klieg_platform.worker.process import RunnerKey, RunnerProcess

Starter = Callable[[RunnerProcess], Awaitable[None]]


def units(spec: FunctionSpec) -> int:
    """Slots a runner of ``spec`` holds."""
    return max(spec.num_gpus, 1)


def wanted(spec: FunctionSpec, busy: int) -> int:
    """Runners a function keeps across the platform while ``busy`` of them serve requests."""
    return max(spec.min_concurrency, busy + spec.concurrency_buffer)


class RunnerSet:
    def __init__(self, slots: int, gpu_ids: Sequence[int] = ()) -> None:
        self.gpu_ids = tuple(gpu_ids)
        self.slots = len(self.gpu_ids) if self.gpu_ids else slots
        self.runners: list[RunnerProcess] = []
        self._cond = asyncio.Condition()
        self._stopping: dict[asyncio.Task[None], tuple[str, str]] = {}  # function, app
        """Runners being stopped to make room -> their "revision/function"."""
        self.cold_starts = 0
        self._effective: Callable[[RunnerKey], FunctionSpec | None] = lambda _: None
        """A function's spec with its scaling as overridden now (``respec``)."""

    async def acquire(
        self,
        key: RunnerKey,
        spec: FunctionSpec,
        start: Starter,
        *,
        fresh: bool = False,
        hint: str = "",
    ) -> RunnerProcess:
        """A busy runner for ``key``: warm if one is idle (unless ``fresh``; one reporting
        ``hint`` first), else a new one started by ``start``. ``spec``'s scaling gives way to
        the one ``respec`` learnt."""
        async with self._cond:
            while True:
                spec = self._effective(key) or spec
                for dead in [r for r in self.runners if not r.busy and not r.alive]:
                    self._remove(dead)
                idle = [r for r in self.runners if r.key == key and not r.busy]
                if idle and not fresh:
                    runner = max(idle, key=lambda r: (bool(hint) and hint in r.hints, r.last_used))
                    runner.busy = True
                    return runner
                mine = len([r for r in self.runners if r.key == key])
                if mine < spec.max_concurrency and self._make_room(units(spec)):
                    break
                await self._cond.wait()
            runner = RunnerProcess(key, spec)
            runner.gpu_ids = self._free_gpus(spec)
            self.runners.append(runner)
            self.cold_starts += 1
        try:
            await start(runner)
        except BaseException:
            await runner.kill()
            await self.discard(runner)
            raise
        return runner

    def full(self) -> list[str]:
        """ "revision/function" of functions whose runners here are all busy at their
        max_concurrency: a request for one could not start now."""
        out = []
        for key in {r.key for r in self.runners}:
            mine = [r for r in self.runners if r.key == key]
            if len(mine) >= mine[0].spec.max_concurrency and all(r.busy for r in mine):
                out.append(f"{key[0]}/{key[1]}")
        return out

    def idle_hints(self) -> list[tuple[str, str]]:
        """("revision/function", hint) of each hint an idle, live runner here reports."""
        return sorted({
            (f"{r.key[0]}/{r.key[1]}", h)
            for r in self.runners
            if not r.busy and r.alive and r.ready
            for h in r.hints
        })  # fmt: skip

    def describe(self) -> list[dict[str, Any]]:
        """Each runner for the fleet views: its "revision/function", "owner/app", state
        (``starting``, ``busy``, ``idle``, ``stopping``), seconds idle, GPU ids, slots, pid,
        whether it was forked from a zygote, and its memory (PSS bytes when last measured,
        ``memory.py``; None before)."""
        now = time.monotonic()
        out = []
        for r in self.runners:
            state = "starting" if not r.ready else "busy" if r.busy else "idle"
            out.append({
                "function": f"{r.key[0]}/{r.key[1]}", "app": r.app, "state": state,
                "idle_s": round(now - r.last_used, 1) if state == "idle" else 0.0,
                "gpus": list(r.gpu_ids), "slots": units(r.spec), "pid": r.pid,
                "forked": r.forked, "memory_bytes": r.memory_bytes,
            })  # fmt: skip
        out.extend({"function": name, "app": app, "state": "stopping", "idle_s": 0.0, "gpus": [],
                    "slots": 0, "pid": None, "forked": False, "memory_bytes": None}
                   for name, app in self._stopping.values())  # fmt: skip
        return out

    def used(self) -> int:
        return sum(units(r.spec) for r in self.runners)

    def busy_units(self) -> int:
        """Slots held by runners serving (or starting for) a request or a batch now."""
        return sum(units(r.spec) for r in self.runners if r.busy)

    def _make_room(self, need: int) -> bool:
        """Whether ``need`` units are free, after stopping idle runners (LRU first) if that
        frees enough; stops nothing otherwise."""
        free = self.slots - self.used()
        if free >= need:
            return True
        victims = sorted((r for r in self.runners if not r.busy), key=lambda r: r.last_used)
        chosen: list[RunnerProcess] = []
        for victim in victims:
            if free >= need:
                break
            chosen.append(victim)
            free += units(victim.spec)
        if free < need:
            return False
        for victim in chosen:
            self._stop_in_background(victim)
        return True

    def _stop_in_background(self, runner: RunnerProcess) -> None:
        """Take ``runner`` out of the set and stop it; it shows as ``stopping`` until it did."""
        self._remove(runner)
        task = asyncio.create_task(runner.stop())
        self._stopping[task] = (f"{runner.key[0]}/{runner.key[1]}", runner.app)
        task.add_done_callback(lambda t: self._stopping.pop(t, None))

    async def evict(self, runner: RunnerProcess) -> bool:
        """Stop ``runner`` if it is still here and idle (the memory budget's pick); False when
        it went busy or away meanwhile."""
        async with self._cond:
            if runner.busy or all(r is not runner for r in self.runners):
                return False
            self._stop_in_background(runner)
            self._cond.notify_all()
        return True

    def _free_gpus(self, spec: FunctionSpec) -> tuple[int, ...]:
        if not self.gpu_ids or spec.num_gpus == 0:
            return ()
        held = {i for r in self.runners for i in r.gpu_ids}
        return tuple(i for i in self.gpu_ids if i not in held)[: spec.num_gpus]

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

    async def respec(self, effective: Callable[[RunnerKey], FunctionSpec | None]) -> None:
        """Give each runner its function's spec as ``effective`` has it now (scale overrides
        changed), and to the runners started from now on; a raised ``max_concurrency`` lets
        waiting acquires start runners at once."""
        async with self._cond:
            self._effective = effective
            for runner in self.runners:
                runner.spec = effective(runner.key) or runner.spec
            self._cond.notify_all()

    async def reap_idle(
        self,
        elsewhere: Mapping[str, int] | None = None,
        busy_elsewhere: Mapping[str, int] | None = None,
    ) -> int:
        """Stop idle runners past their keep_alive, keeping ``wanted`` runners per function
        (counting the ``elsewhere`` runners other workers have, by "revision/function", and
        the ``busy_elsewhere`` ones of those)."""
        now = time.monotonic()
        stopping: list[RunnerProcess] = []
        others, others_busy = elsewhere or {}, busy_elsewhere or {}
        async with self._cond:
            for runner in sorted(self.runners, key=lambda r: r.last_used):
                if runner.busy or now - runner.last_used < runner.spec.keep_alive:
                    continue
                name = f"{runner.key[0]}/{runner.key[1]}"
                peers = [r for r in self.runners if r.key == runner.key]
                total = len(peers) + others.get(name, 0)
                busy = sum(1 for r in peers if r.busy) + others_busy.get(name, 0)
                if total > wanted(runner.spec, busy) or not runner.alive:
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
