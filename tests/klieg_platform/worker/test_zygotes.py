"""Zygotes as real processes: runners forked from one serve as started ones do, their exits are
reported (and survive the zygote's death), and a zygote that initialised an accelerator or
started a thread at import refuses, so its starts go the plain way."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from klieg.types import FunctionSpec
from klieg_platform.worker import zygotes as zygotes_module
from klieg_platform.worker.process import RunnerProcess, exit_text
from klieg_platform.worker.zygotes import (
    UNKNOWN_EXIT,
    Zygote,
    ZygoteFailed,
    ZygoteKey,
    Zygotes,
    preload_key,
    zygote_keys,
)

pytestmark = pytest.mark.timeout(60)

APP = textwrap.dedent(
    """
    import gc, os, random, sys

    from pydantic import BaseModel

    import klieg

    app = klieg.App("zygotetest")


    class In(BaseModel):
        n: int = 0


    LOADED_BY = os.getpid()  # the process that imported this module


    @app.function()
    @klieg.endpoint("/")
    def where(req: In) -> dict:
        gc.collect()  # a full collection: it must leave the zygote's frozen objects alone
        return {
            "frozen": gc.get_freeze_count(), "gc": gc.isenabled(),
            "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "path0": sys.path[0],
            "secret": os.environ.get("APP_SECRET"), "random": random.random(),
            "preloaded": "json" in sys.modules, "sid": os.getsid(0), "loaded_by": LOADED_BY,
        }
    """
)


def _spec() -> FunctionSpec:
    """The ``where`` function's spec, as ``klieg deploy`` would record it."""
    namespace: dict[str, Any] = {"__name__": "app"}
    exec(compile(APP, "app.py", "exec"), namespace)
    fn = namespace["app"].spec().function("where")
    assert fn is not None
    return fn.model_copy(update={"startup_timeout": 20.0})


SPEC = _spec()


@pytest.fixture()
def code(tmp_path: Path) -> tuple[Path, Path]:
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / "app.py").write_text(APP)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(SPEC.model_dump_json())
    return code_dir, spec_file


def zygote_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "APP_SECRET")}
    return env | extra


async def call(runner: RunnerProcess) -> dict[str, Any]:
    reply, body = await runner.call("r1", "/", b"{}", 10, lambda *_: None)
    assert reply.ok, reply.error
    return dict(json.loads(body))


async def fork(zygote: Zygote, code: tuple[Path, Path], **env: str) -> RunnerProcess:
    runner = RunnerProcess(("rev", "where"), SPEC)
    await runner.start(Path(sys.executable), code[0], code[1], zygote_env(**env), zygote)
    return runner


def test_a_forked_runner_serves_in_its_own_env_cwd_and_session(
    tmp_path: Path, code: tuple[Path, Path]
) -> None:
    async def scenario() -> None:
        zygote = Zygote(ZygoteKey("env", ("json", "no_such_module")), Path(sys.executable))
        await zygote.start(zygote_env(), tmp_path / "zcwd")
        assert zygote.preloaded == ["json"]
        assert "ModuleNotFoundError" in zygote.failed["no_such_module"]
        first = await fork(zygote, code, APP_SECRET="s3cret")
        second = await fork(zygote, code)
        one, two = await call(first), await call(second)
        assert one["ppid"] == two["ppid"] == zygote.pid
        assert one["pid"] == first.pid != two["pid"]
        assert one["sid"] == first.pid  # its own session: a kill of its group is its alone
        assert one["cwd"] == one["path0"] == str(code[0])
        assert one["secret"] == "s3cret" and two["secret"] is None
        assert one["preloaded"] and one["random"] != two["random"]
        # the preloaded objects stay frozen in the child (its collections never scan them,
        # so their pages stay shared with the zygote) and the child collects its own garbage
        assert one["frozen"] > 1000 and two["frozen"] > 1000
        assert one["gc"] and two["gc"]
        await first.stop()
        assert first.proc is not None and first.proc.returncode == 0
        await second.kill()
        assert second.proc is not None and second.proc.returncode == -signal.SIGKILL
        await zygote.stop()

    asyncio.run(scenario())


def test_runners_outlive_their_zygote_and_a_dead_zygote_is_started_again(
    tmp_path: Path, code: tuple[Path, Path]
) -> None:
    async def scenario() -> None:
        zygotes = Zygotes(2, tmp_path / "run")
        key = ZygoteKey("env", ())
        zygote = await zygotes.get(key, Path(sys.executable), zygote_env())
        assert zygote is not None and zygote.pid is not None
        runner = await fork(zygote, code)
        os.kill(zygote.pid, signal.SIGKILL)
        for _ in range(100):
            if not zygote.alive:
                break
            await asyncio.sleep(0.05)
        assert not zygote.alive
        assert (await call(runner))["ppid"] != zygote.pid  # reparented, still serving
        with pytest.raises(ZygoteFailed):
            await fork(zygote, code)
        await runner.stop()
        assert runner.proc is not None and runner.proc.returncode == UNKNOWN_EXIT
        assert "unknown" in exit_text(UNKNOWN_EXIT)
        again = await zygotes.get(key, Path(sys.executable), zygote_env())
        assert again is not None and again is not zygote and again.alive
        await zygotes.stop_all()

    asyncio.run(scenario())


def test_the_least_recently_used_zygote_is_stopped_past_the_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        zygotes = Zygotes(1, tmp_path / "run")
        first = await zygotes.get(ZygoteKey("a", ()), Path(sys.executable), zygote_env())
        second = await zygotes.get(ZygoteKey("b", ()), Path(sys.executable), zygote_env())
        assert first is not None and second is not None
        assert not first.alive and second.alive and len(zygotes) == 1
        assert zygotes.room() == 0
        await zygotes.stop_all()
        assert await Zygotes(0, tmp_path).get(ZygoteKey("a", ()), Path(sys.executable), {}) is None

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("import threading, time\nthreading.Thread(target=time.sleep, args=(60,),"
         " name='poller', daemon=True).start()\n", "a thread was started at import (poller)"),
        ("class cuda:\n    @staticmethod\n    def is_initialized():\n        return True\n",
         "CUDA was initialised at import"),
    ],
)  # fmt: skip
def test_a_zygote_that_started_a_thread_or_cuda_refuses_and_is_not_retried(
    tmp_path: Path, source: str, reason: str
) -> None:
    """``torch`` here is a stand-in module on PYTHONPATH that says CUDA is initialised."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "torch.py").write_text(source)

    async def scenario() -> None:
        zygotes = Zygotes(2, tmp_path / "run")
        key = ZygoteKey("env", ("torch",))
        env = zygote_env(PYTHONPATH=str(tmp_path / "lib"))
        zygote = Zygote(key, Path(sys.executable))
        with pytest.raises(ZygoteFailed, match=re.escape(reason)):
            await zygote.start(env, tmp_path / "zcwd")
        assert not zygote.alive
        assert await zygotes.get(key, Path(sys.executable), env) is None
        assert not zygotes.usable(key) and not zygotes.wanted(key)

    asyncio.run(scenario())


def test_a_fork_order_without_its_descriptor_is_ignored(tmp_path: Path) -> None:
    """The zygote reads orders as JSON lines; one that came without an fd forks nothing."""

    async def scenario() -> None:
        zygote = Zygote(ZygoteKey("env", ()), Path(sys.executable))
        await zygote.start(zygote_env(), tmp_path / "zcwd")
        assert zygote._sock is not None
        zygote._sock.send(json.dumps({"type": "fork"}).encode() + b"\n")
        await asyncio.sleep(0.2)
        assert zygote.alive and zygote.forks == 0
        await zygote.stop()

    asyncio.run(scenario())


def test_a_forked_runner_that_fails_setup_reports_it(
    tmp_path: Path, code: tuple[Path, Path]
) -> None:
    (code[0] / "app.py").write_text("raise RuntimeError('no weights')\n")

    async def scenario() -> None:
        zygote = Zygote(ZygoteKey("env", ()), Path(sys.executable))
        await zygote.start(zygote_env(), tmp_path / "zcwd")
        runner = RunnerProcess(("rev", "where"), SPEC)
        with pytest.raises(Exception, match="no weights"):
            await runner.start(Path(sys.executable), code[0], code[1], zygote_env(), zygote)
        assert runner.proc is not None and await runner.proc.wait() in (1, -signal.SIGKILL)
        assert zygote.alive
        await zygote.stop()

    asyncio.run(scenario())


def test_a_revision_zygote_imports_the_revisions_code_and_its_runners_skip_loading_it(
    tmp_path: Path, code: tuple[Path, Path]
) -> None:
    """``App(preload_code=True)``: the zygote imports the revision's modules from its code
    folder, so the module a runner forked from it serves was loaded by the zygote (once for
    all its runners); an env's zygote imports nothing of the app."""
    functions = [{"module": "app"}, {"module": "__main__"}, {"module": "app"}]
    spec = {"preload": ["json"], "preload_code": True, "functions": functions}
    own, shared = zygote_keys("rev-1", "env", spec)
    assert own == ZygoteKey("env", ("json",), "rev-1", ("app",))
    assert shared == ZygoteKey("env", ("json",)) == preload_key("env", ["json", "json"])
    assert zygote_keys("rev-1", "env", {**spec, "preload_code": False}) == [shared]

    async def scenario() -> None:
        zygotes = Zygotes(2, tmp_path / "run")
        revision = await zygotes.get(own, Path(sys.executable), zygote_env(), code[0])
        env = await zygotes.get(shared, Path(sys.executable), zygote_env())
        assert revision is not None and env is not None
        assert revision.preloaded == ["json", "app"] and env.preloaded == ["json"]
        forked, plain = await fork(revision, code), await fork(env, code)
        one, two = await call(forked), await call(plain)
        assert one["loaded_by"] == revision.pid and one["ppid"] == revision.pid
        assert two["loaded_by"] == plain.pid and two["ppid"] == env.pid
        assert one["cwd"] == one["path0"] == str(code[0])
        assert [(z["revision"], z["code"]) for z in zygotes.describe()] == [
            ("rev-1", ["app"]), (None, []),
        ]  # fmt: skip
        for runner in (forked, plain):
            await runner.stop()
        await zygotes.stop_all()

    asyncio.run(scenario())


async def _killed(zygote: Zygote) -> None:
    assert zygote.pid is not None
    os.kill(zygote.pid, signal.SIGKILL)
    for _ in range(200):
        if not zygote.alive:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the zygote did not die")


def test_a_zygote_that_keeps_dying_young_is_restarted_after_a_doubling_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first death restarts at once; each further death within STABLE_S of its start
    pauses the key (plain starts meanwhile) for DEATH_BACKOFF_S, then twice that, capped at
    RETRY_S; a zygote that lived past STABLE_S before it died starts the count again."""
    monkeypatch.setattr(zygotes_module, "DEATH_BACKOFF_S", 0.4)
    monkeypatch.setattr(zygotes_module, "RETRY_S", 0.6)
    caplog.set_level("WARNING", logger="klieg.worker")
    key, python = ZygoteKey("env", ()), Path(sys.executable)

    async def scenario() -> None:
        zygotes = Zygotes(2, tmp_path / "run")
        first = await zygotes.get(key, python, zygote_env())
        assert first is not None
        await _killed(first)
        second = await zygotes.get(key, python, zygote_env())  # a first death: at once
        assert second is not None and second is not first
        await _killed(second)
        assert await zygotes.get(key, python, zygote_env()) is None  # young twice: paused
        assert not zygotes.usable(key) and len(zygotes) == 0
        assert "2 times in a row" in caplog.text and "without it for 0s" in caplog.text
        await asyncio.sleep(0.45)
        third = await zygotes.get(key, python, zygote_env())
        assert third is not None
        await _killed(third)
        assert await zygotes.reap() == 1  # housekeeping finds it dead: counted once
        assert not zygotes.usable(key)
        await asyncio.sleep(0.45)
        assert not zygotes.usable(key)  # 0.8 s, capped at RETRY_S = 0.6
        await asyncio.sleep(0.2)
        assert zygotes.usable(key)
        monkeypatch.setattr(zygotes_module, "STABLE_S", 0.0)  # the next one lived long enough
        fourth = await zygotes.get(key, python, zygote_env())
        assert fourth is not None
        await _killed(fourth)
        fifth = await zygotes.get(key, python, zygote_env())
        assert fifth is not None and fifth.alive
        await zygotes.stop_all()

    asyncio.run(scenario())


def test_a_zygote_stopped_with_a_fork_in_flight_is_not_marked_failed(
    tmp_path: Path, code: tuple[Path, Path]
) -> None:
    """A zygote that cannot answer (stopped with SIGSTOP) holds a fork in flight: the memory
    budget does not evict it; past the count limit it goes last, and the fork it fails falls
    back without pausing its key."""
    python = Path(sys.executable)

    async def scenario() -> None:
        zygotes = Zygotes(1, tmp_path / "run")
        key = ZygoteKey("a", ())
        zygote = await zygotes.get(key, python, zygote_env())
        assert zygote is not None and zygote.pid is not None
        os.kill(zygote.pid, signal.SIGSTOP)
        forking = asyncio.create_task(fork(zygote, code))
        while not zygote.forking:
            await asyncio.sleep(0.01)
        assert not await zygotes.evict(zygote) and zygote.alive
        other = await zygotes.get(ZygoteKey("b", ()), python, zygote_env())  # over the limit
        assert other is not None and not zygote.alive and zygote.retired
        with pytest.raises(ZygoteFailed):
            await forking
        assert not zygotes.fork_failed(zygote)
        assert zygotes.usable(key) and zygotes.wanted(key)
        assert zygotes.fork_failed(other) is True  # a live zygote whose fork failed: paused
        assert not zygotes.usable(other.key)
        await zygotes.stop_all()

    asyncio.run(scenario())
