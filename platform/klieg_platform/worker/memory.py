"""The worker's memory budget: what its runners and zygotes take, and the least recently used
idle ones stopped when the budget would be exceeded.

Measure: each process's proportional set size (PSS, ``Pss:`` of ``/proc/<pid>/smaps_rollup``):
a page shared by n processes counts 1/n in each, so a zygote and the runners forked from it add
up to what they take together, not n times the imports they share (RSS from
``/proc/<pid>/statm`` where smaps_rollup cannot be read). A cold start reads figures at most
``MEASURE_TTL_S`` old; housekeeping measures every ``MEASURE_EVERY_S``.

Budget (``Settings.worker_memory_mb``; 0: none): before a cold start, room is made for what a
runner of that function took when last measured here (plus its zygote's last figure when that
has to start), and each housekeeping round brings the total back under the budget: idle runners
and idle zygotes are stopped in ONE least-recently-used order until the figures fit. A zygote's
last use is its last fork or the last use of a runner of its that is still alive (a busy one:
now), so its idle runners go before it; a zygote may be stopped with runners of its alive (they
go on serving, as when a zygote dies; it frees its own pages then, the shared ones stay with
them). Never stopped: a runner that is busy or starting, a zygote with a fork in flight. A cold
start that still does not fit goes ahead, logged: the budget bounds what is kept idle, the slots
bound what runs. Prewarming (``Warmth.keep_warm``, zygotes ahead of use) starts only what fits
without stopping anything, so two functions kept warm never evict each other in turn. Figures
are as of the last measurement: what a stop frees is its PSS then (a runner's shared pages stay
with its zygote), and the next measurement corrects the total.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from klieg_platform.worker.process import RunnerKey, RunnerProcess
from klieg_platform.worker.runners import RunnerSet
from klieg_platform.worker.zygotes import Zygote, ZygoteKey, Zygotes

log = logging.getLogger("klieg.worker")

MEASURE_TTL_S = 2.0
"""A cold start measures again the figures older than this."""
MEASURE_EVERY_S = 5.0
"""Housekeeping measures every runner and zygote this often."""
PAGE = 4096


def footprint(pid: int) -> int | None:
    """Bytes ``pid`` takes: its PSS, or its RSS where smaps_rollup cannot be read; None once it
    is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def _measure(pids: Sequence[int]) -> list[int | None]:
    return [footprint(pid) for pid in pids]


class Memory:
    """The memory budget of one worker over its ``RunnerSet`` and ``Zygotes``."""

    def __init__(self, budget_bytes: int, runners: RunnerSet, zygotes: Zygotes) -> None:
        self.budget = budget_bytes
        """Bytes its runners and zygotes may keep (0: no budget, figures only)."""
        self.runners = runners
        self.zygotes = zygotes
        self._measured_at = -1e9
        """When every runner and zygote was last measured."""
        self._measured: set[int] = set()
        """Pids measured since then (a runner only once ready)."""
        self._runner_seen: dict[RunnerKey, int] = {}
        """The last figure of a ready runner of each function here (kept after it stops)."""
        self._zygote_seen: dict[ZygoteKey, int] = {}
        self._lock = asyncio.Lock()
        self.evicted = {"runners": 0, "zygotes": 0}
        """Runners and zygotes stopped for the budget so far."""

    async def measure(self, max_age_s: float = 0.0) -> None:
        """Measure the runners and zygotes not measured within ``max_age_s`` (a runner that
        got ready since counts as not measured)."""
        now = time.monotonic()
        stale = now - self._measured_at >= max_age_s
        runners = [r for r in self.runners.runners if r.pid is not None and
                   (stale or (r.ready and r.pid not in self._measured))]  # fmt: skip
        zygotes = [z for z in self.zygotes.running() if z.pid is not None and
                   (stale or z.pid not in self._measured)]  # fmt: skip
        if not runners and not zygotes:
            return
        pids = [int(r.pid or 0) for r in runners] + [int(z.pid or 0) for z in zygotes]
        figures = await asyncio.to_thread(_measure, pids)
        if stale:
            self._measured_at = now
            self._measured.clear()
        self._measured.update(pids)
        for runner, value in zip(runners, figures[: len(runners)], strict=True):
            runner.memory_bytes = value
            if value and runner.ready:
                self._runner_seen[runner.key] = value
        for zygote, value in zip(zygotes, figures[len(runners) :], strict=True):
            zygote.memory_bytes = value
            if value:
                self._zygote_seen[zygote.key] = value

    def used(self) -> int:
        """Bytes the runners and zygotes took when last measured."""
        runners = sum(r.memory_bytes or 0 for r in self.runners.runners)
        return runners + sum(z.memory_bytes or 0 for z in self.zygotes.running())

    def expected(self, key: RunnerKey) -> int:
        """What a new runner of ``key`` is likely to take: its function's last figure here (0
        when unknown)."""
        return self._runner_seen.get(key, 0)

    def expected_zygote(self, key: ZygoteKey | None) -> int:
        """What starting ``key``'s zygote is likely to take: 0 when it runs (or ``key`` is
        None), else its last figure here (0 when unknown)."""
        if key is None or any(z.key == key for z in self.zygotes.running()):
            return 0
        return self._zygote_seen.get(key, 0)

    def fits(self, need: int) -> bool:
        """Whether ``need`` more bytes fit the budget without stopping anything."""
        return not self.budget or self.used() + need <= self.budget

    async def make_room(
        self,
        need: int,
        why: str,
        keep: Collection[ZygoteKey] = (),
        fresh_s: float = MEASURE_TTL_S,
    ) -> list[RunnerProcess | Zygote]:
        """Stop idle runners and zygotes, least recently used first, until ``need`` more bytes
        fit the budget (``why``: for the log; ``keep``: the zygotes a cold start is about to
        fork from, not stopped; figures at most ``fresh_s`` old); those stopped, in order."""
        if not self.budget:
            return []
        async with self._lock:
            await self.measure(fresh_s)
            used = self.used()
            stopped: list[RunnerProcess | Zygote] = []
            for _, _, held in self._by_last_use():
                if isinstance(held, Zygote) and held.key in keep:
                    continue
                if used + need <= self.budget:
                    break
                size = held.memory_bytes or 0
                if isinstance(held, RunnerProcess):
                    done, kind = await self.runners.evict(held), "runners"
                    what = f"runner pid {held.pid} of {held.key[0]}/{held.key[1]}"
                else:
                    done, kind = await self.zygotes.evict(held), "zygotes"
                    what = f"zygote pid {held.pid} of {held.key.name()}"
                if done:
                    used -= size
                    stopped.append(held)
                    self.evicted[kind] += 1
                    log.info("memory budget: stopped idle %s (%d MiB) for %s", what,
                             size >> 20, why)  # fmt: skip
            if used + need > self.budget:
                log.warning("memory budget of %d MiB: %d MiB in use and %d MiB wanted for %s, "
                            "with nothing idle left to stop", self.budget >> 20, used >> 20,
                            need >> 20, why)  # fmt: skip
            return stopped

    def _by_last_use(self) -> list[tuple[float, int, RunnerProcess | Zygote]]:
        """Idle runners and zygotes with their last use, least recent first (a runner before
        its zygote at the same time)."""
        now = time.monotonic()
        runners = self.runners.runners
        out: list[tuple[float, int, RunnerProcess | Zygote]] = [
            (r.last_used, 0, r) for r in runners if not r.busy and r.ready and r.alive
        ]
        for zygote in self.zygotes.running():
            if zygote.forking:
                continue
            children = [r for r in runners if r.alive and zygote.forked(r.proc)]
            last = max([zygote.last_used, *(now if r.busy else r.last_used for r in children)])
            out.append((last, 1, zygote))
        out.sort(key=lambda item: item[:2])
        return out

    def describe(self) -> dict[str, Any]:
        """For the heartbeat: the budget (0: none), what is in use, and the runners and
        zygotes stopped for it so far."""
        return {"budget_bytes": self.budget, "used_bytes": self.used(),
                "evicted_runners": self.evicted["runners"],
                "evicted_zygotes": self.evicted["zygotes"]}  # fmt: skip
