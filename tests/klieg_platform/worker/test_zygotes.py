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
from klieg_platform.worker.process import RunnerProcess, exit_text
from klieg_platform.worker.zygotes import UNKNOWN_EXIT, Zygote, ZygoteFailed, Zygotes

pytestmark = pytest.mark.timeout(60)

APP = textwrap.dedent(
    """
    import gc, os, random, sys

    from pydantic import BaseModel

    import klieg

    app = klieg.App("zygotetest")


    class In(BaseModel):
        n: int = 0


    @app.function()
    @klieg.endpoint("/")
    def where(req: In) -> dict:
        gc.collect()  # a full collection: it must leave the zygote's frozen objects alone
        return {
            "frozen": gc.get_freeze_count(), "gc": gc.isenabled(),
            "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "path0": sys.path[0],
            "secret": os.environ.get("APP_SECRET"), "random": random.random(),
            "preloaded": "json" in sys.modules, "sid": os.getsid(0),
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
        zygote = Zygote(("env", ("json", "no_such_module")), Path(sys.executable))
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
        key = ("env", ())
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
        first = await zygotes.get(("a", ()), Path(sys.executable), zygote_env())
        second = await zygotes.get(("b", ()), Path(sys.executable), zygote_env())
        assert first is not None and second is not None
        assert not first.alive and second.alive and len(zygotes) == 1
        assert zygotes.room() == 0
        await zygotes.stop_all()
        assert await Zygotes(0, tmp_path).get(("a", ()), Path(sys.executable), {}) is None

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
        key = ("env", ("torch",))
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
        zygote = Zygote(("env", ()), Path(sys.executable))
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
        zygote = Zygote(("env", ()), Path(sys.executable))
        await zygote.start(zygote_env(), tmp_path / "zcwd")
        runner = RunnerProcess(("rev", "where"), SPEC)
        with pytest.raises(Exception, match="no weights"):
            await runner.start(Path(sys.executable), code[0], code[1], zygote_env(), zygote)
        assert runner.proc is not None and await runner.proc.wait() in (1, -signal.SIGKILL)
        assert zygote.alive
        await zygote.stop()

    asyncio.run(scenario())
