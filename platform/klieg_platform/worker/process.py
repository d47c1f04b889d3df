"""One runner process: a child on the env's interpreter, spoken to over a socketpair.

``start`` returns once the runner said ``ready``; raises :class:`SetupFailed` when setup() raised,
the process died or it did not get ready within ``startup_timeout``. ``call`` serves one request,
``call_batch`` several of a batched endpoint; both raise ``RequestTimeoutError`` (the process is
killed) or ``RunnerCrashedError`` (it died, or broke the protocol and was killed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from klieg._runtime import protocol
from klieg._runtime.runner import CANCEL_SIGNAL
from klieg.exceptions import KliegError, RequestTimeoutError, RunnerCrashedError, SetupError
from klieg.types import FunctionSpec
from klieg_platform.worker.zygotes import UNKNOWN_EXIT, ForkedProcess, Zygote

RunnerKey = tuple[str, str]  # (revision id, function name)
OnEvent = Callable[[protocol.Event, bytes], None]
"""Receives the ``log``, ``chunk`` and ``media`` frames of the running call, as they arrive."""
Reply = tuple[protocol.Result, bytes]
"""A request's ``result`` frame and its body."""
INTERRUPT_AGAIN_S = 0.25
INTERRUPT_TRIES = 40
"""``keep_interrupting``: how often, and at most how many more times, a cancel is signalled."""


def exit_text(code: int | None) -> str:
    """How a runner ended, for error details: "exit code 3", "signal 9"."""
    if code == UNKNOWN_EXIT:
        return "exit status unknown: its zygote had stopped"
    if code is not None and code < 0:
        return f"signal {-code}"
    return f"exit code {code}"


class SetupFailed(Exception):
    """The runner could not get ready; ``error`` says why, ``logs`` are its output."""

    def __init__(self, error: KliegError, logs: list[protocol.LogLine] | None = None) -> None:
        super().__init__(error.detail)
        self.error = error
        self.logs = logs or []


class RunnerProcess:
    """A runner of one (revision, function); serves one request at a time."""

    def __init__(self, key: RunnerKey, spec: FunctionSpec) -> None:
        self.key = key
        self.spec = spec
        self.busy = True
        self.ready = False
        """Whether the runner said ``ready`` (setup done); until then it is starting."""
        self.last_used = time.monotonic()
        self.proc: asyncio.subprocess.Process | ForkedProcess | None = None
        self.forked = False
        """Whether it was forked from a zygote (else started on the env's interpreter)."""
        self.serving: tuple[str, ...] = ()
        self.gpu_ids: tuple[int, ...] = ()
        self.calls = 0
        """Requests and batches sent to it so far (0: started for the one acquiring it now)."""
        self.setup_s: float | None = None
        """How long its app's setup() took (once ready)."""
        self.app = ""
        """The "owner/app" of its revision (set when it starts), for the fleet views."""
        self.memory_bytes: int | None = None
        """Its proportional set size when last measured (``memory.py``)."""
        self.hints: frozenset[str] = frozenset()
        """What its app's ``provide_hints()`` last returned (after setup, then after each call):
        a request with one of these runner hints prefers this runner."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(
        self,
        python: Path,
        code_dir: Path,
        spec_file: Path,
        env: dict[str, str],
        zygote: Zygote | None = None,
    ) -> None:
        """Start the runner on ``python`` (or fork it from ``zygote``: ``ZygoteFailed`` when the
        zygote is gone, before anything else happened) and wait until it is ready."""
        parent, child = socket.socketpair()
        try:
            if zygote is not None:
                self.proc = await zygote.fork(child.fileno(), code_dir, spec_file, env)
            else:
                self.proc = await asyncio.create_subprocess_exec(
                    str(python), "-m", "klieg._runtime.runner", "--fd", str(child.fileno()),
                    "--code", str(code_dir), "--spec", str(spec_file),
                    pass_fds=[child.fileno()], env=env, cwd=str(code_dir), start_new_session=True,
                )  # fmt: skip
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.forked = zygote is not None
        self._reader, self._writer = await asyncio.open_unix_connection(sock=parent)
        try:
            msg, _ = await asyncio.wait_for(protocol.read(self._reader), self.spec.startup_timeout)
        except TimeoutError:
            await self.kill()
            detail = f"runner not ready within startup_timeout={self.spec.startup_timeout}s"
            raise SetupFailed(SetupError(detail)) from None
        except EOFError:
            code = await self.proc.wait()
            detail = f"runner exited ({exit_text(code)}) before it was ready"
            raise SetupFailed(SetupError(detail)) from None
        except protocol.ProtocolError as exc:
            await self.kill()
            detail = f"runner broke the protocol before it was ready: {exc}"
            raise SetupFailed(SetupError(detail)) from None
        if isinstance(msg, protocol.SetupFailed):
            await self.kill()
            raise SetupFailed(msg.error.to_exception(), msg.logs)
        if not isinstance(msg, protocol.Ready):
            await self.kill()
            raise SetupFailed(SetupError(f"runner sent {msg!r} before it was ready"))
        self.setup_s = msg.setup_s
        if msg.hints is not None:
            self.hints = frozenset(msg.hints)
        self.ready = True

    async def call(
        self,
        request_id: str,
        endpoint: str,
        payload: bytes,
        timeout_s: float,
        on_event: OnEvent,
        *,
        token: str = "",
    ) -> Reply:
        """Serve one request; its ``log``, ``chunk`` and ``media`` frames go to ``on_event`` as
        they arrive. ``token``: the request's call token, for ``klieg.call`` inside it."""
        frame = protocol.encode(protocol.Call(request_id, endpoint, token), payload)
        results = await self._exchange((request_id,), frame, timeout_s, on_event)
        return results[0]

    async def call_batch(
        self,
        request_ids: Sequence[str],
        endpoint: str,
        payloads: Sequence[bytes],
        timeout_s: float,
        on_event: OnEvent,
        *,
        tokens: Sequence[str] = (),
    ) -> list[Reply]:
        """Serve requests of a batched endpoint in one call; one reply per request, in order.
        ``log`` frames carry the batch's ``ids``; ``media`` frames the one ``id``.
        ``tokens``: each request's call token."""
        batch = protocol.Batch(
            list(request_ids), [len(p) for p in payloads], endpoint, list(tokens)
        )
        frame = protocol.encode(batch, b"".join(payloads))
        return await self._exchange(tuple(request_ids), frame, timeout_s, on_event)

    async def _exchange(
        self, ids: tuple[str, ...], frame: bytes, timeout_s: float, on_event: OnEvent
    ) -> list[Reply]:
        """Send ``frame``, then read until one ``result`` per id came (other messages are
        ignored). A runner breaking the protocol is killed (``RunnerCrashedError``)."""
        assert self._reader is not None and self._writer is not None
        self.last_used = time.monotonic()
        self.serving = ids
        self.calls += 1
        results: list[Reply] = []
        try:
            self._writer.write(frame)
            await self._writer.drain()
            async with asyncio.timeout(timeout_s):
                while len(results) < len(ids):
                    msg, body = await protocol.read(self._reader)
                    if isinstance(msg, protocol.Result):
                        results.append((msg, body))
                        if msg.hints is not None:
                            self.hints = frozenset(msg.hints)
                    elif isinstance(msg, protocol.Event):
                        on_event(msg, body)
            return results
        except TimeoutError:
            await self.kill()
            raise RequestTimeoutError(f"request ran past its timeout of {timeout_s:g}s") from None
        except protocol.ProtocolError as exc:
            await self.kill()
            raise RunnerCrashedError(
                f"the runner broke the protocol and was killed: {exc}"
            ) from None
        except (EOFError, ConnectionError):
            code = await self.proc.wait() if self.proc else None
            raise RunnerCrashedError(f"the runner process died ({exit_text(code)})") from None
        finally:
            self.serving = ()
            self.last_used = time.monotonic()

    def interrupt(self, request_id: str) -> bool:
        """Signal the runner to cancel ``request_id`` if that is all it is serving now (a batch
        of several is never interrupted: that would cancel the others too)."""
        if self.serving != (request_id,) or not self.alive or self.proc is None:
            return False
        os.kill(self.proc.pid, CANCEL_SIGNAL)
        return True

    async def keep_interrupting(
        self, request_id: str, every_s: float = INTERRUPT_AGAIN_S, tries: int = INTERRUPT_TRIES
    ) -> None:
        """After ``interrupt``: signal again every ``every_s`` (at most ``tries`` times) while
        the runner still serves ``request_id``. A signal that lands between the call's frame
        and the start of its code is ignored by the runner (it serves nothing yet); a later one
        interrupts the code. Once the result is in, ``interrupt`` refuses and this stops."""
        for _ in range(tries):
            await asyncio.sleep(every_s)
            if not self.interrupt(request_id):
                return

    async def stop(self, grace_s: float = 5.0) -> None:
        """Ask for teardown() and exit; kill if it does not exit within ``grace_s``."""
        if not self.alive:
            return
        assert self.proc is not None
        with contextlib.suppress(Exception):
            assert self._writer is not None
            self._writer.write(protocol.encode(protocol.Shutdown()))
            await self._writer.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            await self.kill()
        self._close()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
