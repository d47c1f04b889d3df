"""RunnerProcess against a scripted runner: typed errors on setup, events routed, bad frames.

``RunnerProcess.start`` runs ``<python> -m klieg._runtime.runner --fd N ...``; here ``<python>`` is
a shell script running ``FAKE`` instead, which speaks the protocol as ``$FAKE_SCENARIO`` says.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from klieg._runtime import protocol
from klieg.exceptions import RunnerCrashedError, SetupError
from klieg.types import FunctionSpec
from klieg_platform.worker.process import RunnerProcess, SetupFailed

pytestmark = pytest.mark.timeout(30)

FAKE = textwrap.dedent(
    """
    import os, signal, socket, struct, sys, time
    from klieg._runtime import protocol as p

    sock = socket.socket(fileno=int(sys.argv[sys.argv.index("--fd") + 1]))
    scenario = os.environ["FAKE_SCENARIO"]
    line = {"message": "loading", "level": "INFO", "source": "stdout", "timestamp": "t"}
    if scenario == "setup_failed":
        error = p.WireError("setup failed: RuntimeError: no weights", "SetupError", "Traceback")
        sock.sendall(p.encode(p.SetupFailed(error, [line])))
        sys.exit(1)
    if scenario == "garbage_first":
        sock.sendall(struct.pack(">II", 1, 0) + b"\\xc1")
        time.sleep(30)
    signal.signal(signal.SIGUSR1, lambda *_: None)  # idle: the cancel signal does nothing
    sock.sendall(p.encode(p.Ready(os.getpid())))
    while True:
        msg, body = p.recv(sock)
        if isinstance(msg, p.Shutdown):
            sys.exit(0)
        if scenario == "late_start":  # the call's code starts 0.5 s after its frame came
            time.sleep(0.5)
            cancelled = []
            signal.signal(signal.SIGUSR1, lambda *_: cancelled.append(1))
            deadline = time.monotonic() + 10
            while not cancelled and time.monotonic() < deadline:
                time.sleep(0.01)
            error = p.WireError("cancelled", "RequestCancelledError") if cancelled else None
            sock.sendall(p.encode(p.Result(msg.id, not cancelled, error)))
            continue
        if scenario == "garbage_in_call":
            sock.sendall(struct.pack(">II", 1, 0) + b"\\xc1")
            time.sleep(30)
        sock.sendall(p.encode(p.Log(msg.id, line)))
        sock.sendall(p.encode(p.Ready(0)))
        sock.sendall(p.encode(p.Media(msg.id, "a" * 24, "text/plain", "a.txt"), b"file"))
        sock.sendall(p.encode(p.Chunk(msg.id), b"[1]"))
        error = p.WireError("no such thing", "NotFoundError")
        sock.sendall(p.encode(p.Result(msg.id, body == b"ok", error if body != b"ok" else None)))
    """
)

SPEC = FunctionSpec(name="fn", kind="function", module="app", qualname="fn", startup_timeout=20)


async def started(tmp_path: Path, scenario: str) -> RunnerProcess:
    (tmp_path / "fake.py").write_text(FAKE)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} {tmp_path / "fake.py"} "$@"\n')
    python.chmod(0o755)
    runner = RunnerProcess(("rev", "fn"), SPEC)
    env = {**os.environ, "FAKE_SCENARIO": scenario}
    await runner.start(python, tmp_path, tmp_path / "spec.json", env)
    return runner


def test_setup_failed_carries_the_typed_error_and_the_logs(tmp_path: Path) -> None:
    with pytest.raises(SetupFailed) as failed:
        asyncio.run(started(tmp_path, "setup_failed"))
    assert isinstance(failed.value.error, SetupError)
    assert failed.value.error.detail == "setup failed: RuntimeError: no weights"
    assert [line["message"] for line in failed.value.logs] == ["loading"]


def test_a_bad_frame_before_ready_fails_setup(tmp_path: Path) -> None:
    with pytest.raises(SetupFailed) as failed:
        asyncio.run(started(tmp_path, "garbage_first"))
    assert isinstance(failed.value.error, SetupError)
    assert "broke the protocol" in str(failed.value.error.detail)


def test_events_reach_on_event_in_order_and_the_result_comes_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        runner = await started(tmp_path, "ok")
        events: list[tuple[protocol.Event, bytes]] = []
        try:
            result, body = await runner.call(
                "r1", "/", b"ok", 10, lambda m, b: events.append((m, b))
            )
            assert result == protocol.Result("r1", True) and body == b""
            assert [(type(m).__name__, b) for m, b in events] == [
                ("Log", b""),
                ("Media", b"file"),
                ("Chunk", b"[1]"),
            ]
            result, _ = await runner.call("r2", "/", b"no", 10, lambda m, b: None)
            assert result.error is not None
            error = result.error.to_exception()
            assert (type(error).__name__, error.status_code) == ("NotFoundError", 404)
        finally:
            await runner.stop()
        assert not runner.alive

    asyncio.run(scenario())


def test_a_bad_frame_during_a_call_kills_the_runner(tmp_path: Path) -> None:
    async def scenario() -> None:
        runner = await started(tmp_path, "garbage_in_call")
        try:
            with pytest.raises(RunnerCrashedError, match="broke the protocol"):
                await runner.call("r1", "/", b"{}", 10, lambda m, b: None)
            assert not runner.alive
        finally:
            await runner.kill()

    asyncio.run(scenario())


def test_a_cancel_before_the_code_starts_is_signalled_again_until_it_lands(
    tmp_path: Path,
) -> None:
    """The first signal reaches the runner between the call's frame and its code, where it is
    ignored; ``keep_interrupting`` signals again until one lands, and stops with the result."""

    async def body() -> None:
        runner = await started(tmp_path, "late_start")
        try:
            call = asyncio.create_task(runner.call("r1", "/", b"{}", 30, lambda *_: None))
            while runner.serving != ("r1",):
                await asyncio.sleep(0.005)
            began = time.monotonic()
            assert runner.interrupt("r1")  # lands before the code runs: ignored
            again = asyncio.create_task(runner.keep_interrupting("r1", every_s=0.1))
            result, _ = await call
            assert not result.ok and result.error is not None
            assert result.error.error_type == "RequestCancelledError"
            assert time.monotonic() - began < 3  # not the 10 s the code would otherwise wait
            await asyncio.wait_for(again, 1)  # served: it stopped by itself
            assert not runner.interrupt("r1")
        finally:
            await runner.kill()

    asyncio.run(body())
