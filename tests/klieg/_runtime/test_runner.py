"""The runner as a real child process, spoken to over a socketpair with the IPC protocol."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import klieg
from klieg._runtime import protocol
from klieg._runtime.protocol import Call, Chunk, Log, Ready, Result, SetupFailed, Shutdown

pytestmark = pytest.mark.timeout(60)

APP_SOURCE = textwrap.dedent(
    """
    from __future__ import annotations

    import asyncio
    import logging
    import sys
    import time
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from pydantic import BaseModel

    import klieg

    HERE = Path(__file__).parent
    app = klieg.App("runnertest")


    class In(BaseModel):
        text: str
        n: int = 1


    class Out(BaseModel):
        text: str
        setups: int


    @app.cls()
    class Echo:
        setups = 0

        def setup(self) -> None:
            Echo.setups += 1
            count = HERE / "setup-count"
            count.write_text(str(int(count.read_text()) + 1 if count.exists() else 1))
            print("setup ran")

        def teardown(self) -> None:
            (HERE / "teardown").write_text(f"torn down after {Echo.setups} setup")

        @klieg.endpoint("/")
        def echo(self, req: In) -> Out:
            return Out(text=req.text * req.n, setups=Echo.setups)

        @klieg.endpoint("/fail")
        def fail(self, req: In) -> Out:
            raise ValueError(f"cannot handle {req.text}")

        @klieg.endpoint("/log")
        def log(self, req: In) -> dict[str, bool]:
            print(f"printed {req.text}")
            logging.getLogger("myapp").warning("warned %s", req.text)
            logging.getLogger("myapp").info("informed %s", req.text)
            return {"ok": True}

        @klieg.endpoint("/stderr")
        def stderr(self, req: In) -> dict[str, bool]:
            print(f"full {req.text}", file=sys.stderr)
            sys.stderr.write(f"partial {req.text}")
            return {"ok": True}

        @klieg.endpoint("/async")
        async def slow(self, req: In) -> Out:
            await asyncio.sleep(0.01)
            return Out(text=req.text[::-1], setups=Echo.setups)

        @klieg.endpoint("/gen")
        def gen(self, req: In) -> Iterator[Out]:
            for i in range(req.n):
                print(f"item {i}")
                yield Out(text=f"{req.text}{i}", setups=Echo.setups)

        @klieg.endpoint("/agen")
        async def agen(self, req: In) -> AsyncIterator[dict[str, int]]:
            for i in range(req.n):
                yield {"i": i}

        @klieg.endpoint("/sleep")
        def sleep(self, req: In) -> dict[str, bool]:
            print("going to sleep")
            time.sleep(req.n)
            return {"woke": True}


    @app.cls()
    class Loras:
        def setup(self) -> None:
            self.loaded = ["base"]

        def provide_hints(self) -> list[object]:
            if "boom" in self.loaded:
                raise RuntimeError("hints broke")
            return [*self.loaded, "", 7, "base"]  # the invalid ones and the repeat are dropped

        @klieg.endpoint("/load")
        def load(self, req: In) -> dict[str, int]:
            self.loaded.append(req.text)
            return {"loaded": len(self.loaded)}


    @app.function()
    @klieg.endpoint("/plain")
    def plain(req: In) -> dict[str, int]:
        return {"length": len(req.text) * req.n}


    def _register_local() -> None:
        suffix = "!"

        @app.function(name="local")
        @klieg.endpoint("/local")
        def local(req: In) -> dict[str, str]:
            return {"local": req.text + suffix}


    _register_local()


    broken = klieg.App("runnerbroken")


    @broken.cls()
    class Broken:
        def setup(self) -> None:
            print("loading weights that are not there")
            raise RuntimeError("weights missing: /models/x.safetensors")

        @klieg.endpoint("/")
        def run(self, req: In) -> Out:
            return Out(text=req.text, setups=0)
    """
)
MODULE = "klieg_runner_test_app"


@dataclass
class Runner:
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    code: Path

    def send(self, msg: protocol.Message, body: bytes = b"") -> None:
        self.sock.sendall(protocol.encode(msg, body))

    def recv(self) -> tuple[protocol.Message, bytes]:
        return protocol.recv(self.sock)

    def call(self, endpoint: str, body: Any, rid: str = "r") -> tuple[Result, Any]:
        """One call; live ``log`` frames are gathered into the result's ``logs``."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send(Call(rid, endpoint), raw)
        live: list[protocol.LogLine] = []
        self.chunks: list[Any] = []
        while True:
            msg, out = self.recv()
            assert isinstance(msg, Log | Chunk | Result) and msg.id == rid
            if isinstance(msg, Log):
                live.append(msg.line)
            elif isinstance(msg, Chunk):
                self.chunks.append(json.loads(out))
            else:
                break
        result = msgspec.structs.replace(msg, logs=live + msg.logs)
        return result, json.loads(out) if out else None


def failure(result: Result) -> protocol.WireError:
    """The error of a failed result."""
    assert result.ok is False and result.error is not None
    return result.error


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    code = tmp_path_factory.mktemp("code")
    (code / f"{MODULE}.py").write_text(APP_SOURCE)
    return code


def app_specs(code: Path) -> tuple[klieg.App, klieg.App]:
    spec = importlib.util.spec_from_file_location(MODULE, code / f"{MODULE}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[MODULE]
    return module.app, module.broken


def start_runner(code: Path, app: klieg.App, function: str, workdir: Path) -> Runner:
    fn = app.spec().function(function)
    assert fn is not None and fn.module == MODULE
    spec_file = workdir / f"{function}.json"
    spec_file.write_text(fn.model_dump_json())
    parent, child = socket.socketpair()
    parent.settimeout(30)
    with (workdir / f"{function}.stderr").open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "klieg._runtime.runner",
                "--fd",
                str(child.fileno()),
                "--code",
                str(code),
                "--spec",
                str(spec_file),
            ],
            pass_fds=[child.fileno()],
            cwd=str(code),
            stdout=err,
            stderr=err,
        )
    child.close()
    return Runner(proc, parent, code)


@pytest.fixture()
def runners(code_dir: Path, tmp_path: Path) -> Iterator[list[Runner]]:
    started: list[Runner] = []
    yield started
    for r in started:
        r.sock.close()
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.wait(timeout=10)


@pytest.fixture()
def echo(code_dir: Path, tmp_path: Path, runners: list[Runner]) -> Runner:
    for leftover in ("setup-count", "teardown"):
        (code_dir / leftover).unlink(missing_ok=True)
    app, _ = app_specs(code_dir)
    runner = start_runner(code_dir, app, "Echo", tmp_path)
    runners.append(runner)
    msg, body = runner.recv()
    assert isinstance(msg, Ready) and msg.pid == runner.proc.pid
    assert 0 <= msg.setup_s < 10  # how long Echo.setup() took
    assert body == b""
    return runner


def test_call_returns_the_endpoint_output(echo: Runner) -> None:
    result, out = echo.call("/", {"text": "ab", "n": 3}, rid="req-1")
    assert result.ok is True and result.error is None
    assert out == {"text": "ababab", "setups": 1}


def test_plain_function_kind(code_dir: Path, tmp_path: Path, runners: list[Runner]) -> None:
    app, _ = app_specs(code_dir)
    runner = start_runner(code_dir, app, "plain", tmp_path)
    runners.append(runner)
    assert isinstance(runner.recv()[0], Ready)
    result, out = runner.call("plain/", {"text": "abcd", "n": 2})
    assert result.ok is True and out == {"length": 8}


def test_function_defined_inside_a_function_travels_by_value(
    code_dir: Path, tmp_path: Path, runners: list[Runner]
) -> None:
    app, _ = app_specs(code_dir)
    fn = app.spec().function("local")
    assert fn is not None and fn.pickled is not None
    runner = start_runner(code_dir, app, "local", tmp_path)
    runners.append(runner)
    assert isinstance(runner.recv()[0], Ready)
    result, out = runner.call("/local", {"text": "hey"})
    assert result.ok is True and out == {"local": "hey!"}
    result, _ = runner.call("/local", {"n": 1})
    assert failure(result).error_type == "ValidationError"


def test_setup_runs_once_across_calls(echo: Runner) -> None:
    for i in range(4):
        result, out = echo.call("/", {"text": str(i)}, rid=f"r{i}")
        assert result.ok is True
        assert out == {"text": str(i), "setups": 1}
    assert (echo.code / "setup-count").read_text() == "1"


def test_setup_output_does_not_leak_into_the_first_request(echo: Runner) -> None:
    result, _ = echo.call("/", {"text": "x"})
    assert all("setup ran" not in line["message"] for line in result.logs)


@pytest.mark.parametrize(
    ("body", "field"),
    [({"n": 2}, "text"), ({"text": "a", "n": "many"}, "n"), ({"text": 5}, "text")],
)
def test_invalid_body_is_a_validation_error_naming_the_field(
    echo: Runner, body: dict[str, Any], field: str
) -> None:
    result, out = echo.call("/", body)
    assert result.ok is False and out is None
    error = failure(result)
    assert error.error_type == "ValidationError"
    assert [d["loc"] for d in error.detail] == [["body", field]]
    assert all(d["msg"] and d["type"] for d in error.detail)
    result, out = echo.call("/", {"text": "ok"})
    assert result.ok is True and out["text"] == "ok"


def test_malformed_json_is_a_validation_error(echo: Runner) -> None:
    result, _ = echo.call("/", b"{not json")
    assert result.ok is False
    assert failure(result).error_type == "ValidationError"


def test_endpoint_raising_is_an_app_error_and_the_runner_keeps_serving(echo: Runner) -> None:
    result, out = echo.call("/fail", {"text": "this"}, rid="bad")
    assert result.ok is False and out is None
    error = failure(result)
    assert error.error_type == "AppError"
    assert error.detail == "ValueError: cannot handle this"
    assert error.traceback is not None and "ValueError" in error.traceback
    result, out = echo.call("/", {"text": "next"}, rid="good")
    assert result.ok is True and out == {"text": "next", "setups": 1}
    assert all("ValueError" not in line["message"] for line in result.logs)


def test_print_and_logging_come_back_per_request(echo: Runner) -> None:
    result, out = echo.call("/log", {"text": "one"})
    assert result.ok is True and out == {"ok": True}
    lines = result.logs
    by_message = {line["message"]: line for line in lines}
    assert by_message["printed one"]["level"] == "INFO"
    assert by_message["warned one"]["level"] == "WARNING"
    assert by_message["informed one"]["level"] == "INFO"
    for line in lines:
        stamp = datetime.fromisoformat(line["timestamp"])
        assert stamp.tzinfo is not None
    result, _ = echo.call("/log", {"text": "two"})
    messages = [line["message"] for line in result.logs]
    assert "printed two" in messages and "warned two" in messages
    assert not any("one" in m for m in messages)
    result, _ = echo.call("/", {"text": "quiet"})
    assert result.logs == []


def test_stderr_lines_are_tagged_stderr_even_without_a_newline(echo: Runner) -> None:
    result, _ = echo.call("/stderr", {"text": "e"})
    by_message = {line["message"]: line for line in result.logs}
    assert (by_message["full e"]["level"], by_message["full e"]["source"]) == ("STDERR", "stderr")
    partial = by_message["partial e"]
    assert (partial["level"], partial["source"]) == ("STDERR", "stderr")


def test_async_endpoint(echo: Runner) -> None:
    result, out = echo.call("/async", {"text": "abc"})
    assert result.ok is True and out == {"text": "cba", "setups": 1}
    result, out = echo.call("async/", {"text": "xy"})
    assert result.ok is True and out == {"text": "yx", "setups": 1}


def test_unknown_endpoint_is_not_found(echo: Runner) -> None:
    result, out = echo.call("/nope", {"text": "x"})
    assert result.ok is False and out is None
    assert failure(result).error_type == "NotFoundError"
    assert "/nope" in failure(result).detail
    assert echo.call("/", {"text": "still"})[0].ok is True


def test_frames_that_are_no_message_are_skipped(echo: Runner) -> None:
    for head in (msgspec.msgpack.encode({"type": "hello"}), b"\xc1 not msgpack"):
        echo.sock.sendall(struct.pack(">II", len(head), 2) + head + b"{}")
    echo.send(Ready(1))
    result, out = echo.call("/", {"text": "after"})
    assert result.ok is True and out["text"] == "after"


def test_setup_failure_reports_and_exits_non_zero(
    code_dir: Path, tmp_path: Path, runners: list[Runner]
) -> None:
    _, broken = app_specs(code_dir)
    runner = start_runner(code_dir, broken, "Broken", tmp_path)
    runners.append(runner)
    msg, _ = runner.recv()
    assert isinstance(msg, SetupFailed)
    error = msg.error
    assert error.error_type == "SetupError"
    assert "weights missing: /models/x.safetensors" in error.detail
    assert "RuntimeError" in error.detail
    assert error.traceback is not None and "RuntimeError" in error.traceback
    messages = [line["message"] for line in msg.logs]
    assert "loading weights that are not there" in messages
    assert runner.proc.wait(timeout=15) != 0


def test_shutdown_runs_teardown_and_exits_zero(echo: Runner) -> None:
    assert echo.call("/", {"text": "x"})[0].ok is True
    assert not (echo.code / "teardown").exists()
    echo.send(Shutdown())
    assert echo.proc.wait(timeout=15) == 0
    assert (echo.code / "teardown").read_text() == "torn down after 1 setup"


def test_closing_the_socket_makes_the_runner_exit(echo: Runner) -> None:
    assert echo.call("/", {"text": "x"})[0].ok is True
    echo.sock.close()
    assert echo.proc.wait(timeout=15) == 0


def test_generator_endpoint_streams_chunks_and_returns_the_last(echo: Runner) -> None:
    result, out = echo.call("/gen", {"text": "x", "n": 3})
    assert result.ok is True
    assert [c["text"] for c in echo.chunks] == ["x0", "x1", "x2"]
    assert out == echo.chunks[-1]
    assert [line["message"] for line in result.logs] == ["item 0", "item 1", "item 2"]
    _, out = echo.call("/agen", {"text": "", "n": 2})
    assert echo.chunks == [{"i": 0}, {"i": 1}] and out == {"i": 1}


def test_logs_arrive_live_before_the_result(echo: Runner) -> None:
    echo.send(Call("live", "/sleep"), b'{"text": "", "n": 1}')
    msg, _ = echo.recv()
    assert isinstance(msg, Log) and msg.line["message"] == "going to sleep"
    msg, out = echo.recv()
    assert isinstance(msg, Result) and json.loads(out) == {"woke": True}


def test_cancel_signal_interrupts_the_running_call_and_the_runner_serves_on(
    echo: Runner,
) -> None:
    echo.send(Call("c1", "/sleep"), b'{"text": "", "n": 30}')
    msg, _ = echo.recv()
    assert isinstance(msg, Log)
    started = time.monotonic()
    os.kill(echo.proc.pid, signal.SIGUSR1)
    msg, _ = echo.recv()
    assert time.monotonic() - started < 5
    assert isinstance(msg, Result) and msg.ok is False
    assert msg.error is not None and msg.error.error_type == "RequestCancelledError"
    os.kill(echo.proc.pid, signal.SIGUSR1)  # idle: ignored
    result, out = echo.call("/", {"text": "after"})
    assert result.ok is True and out["text"] == "after"


def test_provide_hints_rides_on_ready_and_on_each_result(
    code_dir: Path, tmp_path: Path, runners: list[Runner], echo: Runner
) -> None:
    app, _ = app_specs(code_dir)
    runner = start_runner(code_dir, app, "Loras", tmp_path)
    runners.append(runner)
    ready, _ = runner.recv()
    assert isinstance(ready, Ready) and ready.hints == ["base"]
    result, out = runner.call("/load", {"text": "lora-a"})
    assert out == {"loaded": 2} and result.hints == ["base", "lora-a"]
    ignored = [line["message"] for line in result.logs if "provide_hints()" in line["message"]]
    assert len(ignored) == 2 and "got ''" in ignored[0] and "got 7" in ignored[1]
    result, out = runner.call("/load", {"text": "boom"})  # it raises: the hints stay as they were
    assert out == {"loaded": 3} and result.ok and result.hints is None
    assert any("hints broke" in line["message"] for line in result.logs)
    # an app without provide_hints() reports none
    result, _ = echo.call("/", {"text": "x"})
    assert result.hints is None
