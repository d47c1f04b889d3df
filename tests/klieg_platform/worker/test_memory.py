"""The memory budget over real processes: zygotes and runners forked from them are measured by
their PSS, and idle ones are stopped in one least-recently-used order (a zygote after its idle
runners, never a busy runner; a zygote's busy runner goes on serving without it)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from klieg_platform.worker.memory import Memory, footprint
from klieg_platform.worker.process import RunnerProcess
from klieg_platform.worker.runners import RunnerSet
from klieg_platform.worker.zygotes import Zygote, ZygoteKey, Zygotes
from tests.klieg_platform.worker.test_zygotes import SPEC, call, code, zygote_env

pytestmark = pytest.mark.timeout(90)
__all__ = ["code"]  # the fixture, imported for these tests

PYTHON = Path(sys.executable)
Scenario = Callable[[RunnerSet, Zygotes, Callable[[str, Zygote], Awaitable[RunnerProcess]]],
                    Awaitable[None]]  # fmt: skip


def run(tmp_path: Path, files: tuple[Path, Path], body: Scenario) -> None:
    """``body(runners, zygotes, start)``; ``start(revision, zygote)`` forks a ready, busy
    runner of ``revision``'s ``where`` from ``zygote``."""

    async def main() -> None:
        runners, zygotes = RunnerSet(4), Zygotes(3, tmp_path / "run")

        async def start(revision: str, zygote: Zygote) -> RunnerProcess:
            async def fork(runner: RunnerProcess) -> None:
                await runner.start(PYTHON, files[0], files[1], zygote_env(), zygote)

            return await runners.acquire((revision, "where"), SPEC, fork)

        try:
            await body(runners, zygotes, start)
        finally:
            await runners.stop_all()
            await zygotes.stop_all()

    asyncio.run(main())


async def _zygote(zygotes: Zygotes, name: str) -> Zygote:
    zygote = await zygotes.get(ZygoteKey(name, ()), PYTHON, zygote_env())
    assert zygote is not None
    return zygote


def _rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096


def test_the_footprint_is_the_pss_less_than_the_rss_of_a_forked_runner(
    tmp_path: Path, code: tuple[Path, Path]
) -> None:
    assert 1 << 20 < (footprint(os.getpid()) or 0) <= _rss(os.getpid()) * 1.05
    assert footprint(2**22 + 12345) is None  # above pid_max: no such process

    async def body(runners: RunnerSet, zygotes: Zygotes, start: Callable) -> None:
        zygote = await _zygote(zygotes, "a")
        runner = await start("rev", zygote)
        assert runner.pid is not None and zygote.pid is not None
        memory = Memory(0, runners, zygotes)
        await memory.measure()
        assert runner.memory_bytes is not None and zygote.memory_bytes is not None
        # the imports it shares with its zygote count half in each
        assert runner.memory_bytes < _rss(runner.pid) and zygote.memory_bytes < _rss(zygote.pid)
        assert memory.used() == runner.memory_bytes + zygote.memory_bytes
        assert memory.fits(10**15)  # no budget
        assert await memory.make_room(10**15, "a test") == []
        assert memory.expected(runner.key) == runner.memory_bytes  # it is ready
        assert memory.expected(("other", "where")) == 0
        assert memory.expected_zygote(zygote.key) == 0  # it runs
        assert memory.describe()["budget_bytes"] == 0

    run(tmp_path, code, body)


def test_idle_runners_and_zygotes_are_stopped_in_one_least_recently_used_order(
    tmp_path: Path, code: tuple[Path, Path]
) -> None:
    """A zygote's last use is its idle runners' latest: they go before it; an unused zygote
    started before them goes first; a budget that needs less stops less."""

    async def body(runners: RunnerSet, zygotes: Zygotes, start: Callable) -> None:
        unused = await _zygote(zygotes, "b")
        zygote = await _zygote(zygotes, "a")
        older = await start("rev1", zygote)
        newer = await start("rev2", zygote)
        await runners.release(older)
        await runners.release(newer)
        memory = Memory(1, runners, zygotes)
        await memory.measure()
        assert unused.memory_bytes is not None
        memory.budget = memory.used() - unused.memory_bytes // 2  # the unused zygote will do
        assert not memory.fits(0)
        assert await memory.make_room(0, "a test") == [unused]
        assert not unused.alive and memory.expected_zygote(unused.key) == unused.memory_bytes
        memory.budget = 1
        assert await memory.make_room(0, "a test") == [older, newer, zygote]
        assert runners.runners == [] and zygotes.running() == []
        assert {**memory.describe(), "used_bytes": 0} == {
            "budget_bytes": 1, "used_bytes": 0, "evicted_runners": 2, "evicted_zygotes": 2,
        }  # fmt: skip

    run(tmp_path, code, body)


def test_a_busy_runner_is_never_stopped_and_serves_on_when_its_zygote_is(
    tmp_path: Path, code: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="klieg.worker")

    async def body(runners: RunnerSet, zygotes: Zygotes, start: Callable) -> None:
        zygote = await _zygote(zygotes, "a")
        idle = await start("rev1", zygote)
        await runners.release(idle)
        busy = await start("rev2", zygote)  # held: busy from here on
        memory = Memory(1, runners, zygotes)
        assert await memory.make_room(0, "a test") == [idle, zygote]
        assert runners.runners == [busy] and busy.alive and not zygote.alive
        assert "with nothing idle left to stop" in caplog.text
        served = await call(busy)
        assert served["pid"] == busy.pid and served["ppid"] != zygote.pid

    run(tmp_path, code, body)


def test_a_cold_start_keeps_the_zygote_it_is_about_to_fork_from(
    tmp_path: Path, code: tuple[Path, Path]
) -> None:
    async def body(runners: RunnerSet, zygotes: Zygotes, start: Callable) -> None:
        mine = await _zygote(zygotes, "a")
        other = await _zygote(zygotes, "b")
        runner = await start("rev1", other)
        await runners.release(runner)
        memory = Memory(1, runners, zygotes)
        assert await memory.make_room(0, "a test", keep=[mine.key]) == [runner, other]
        assert zygotes.running() == [mine] and mine.alive

    run(tmp_path, code, body)
