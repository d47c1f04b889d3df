"""Zygotes: preloaded processes of an env's interpreter that fork runners (``_runtime/zygote.py``).

A cold start forked from a zygote skips the interpreter's start and the imports the app declared
preloadable (``App(preload=[...])``, by default what its code imports), and its pages stay
shared with its siblings until written. One zygote per (env key, preload) on this worker, and
one per revision for a revision that asks (``App(preload_code=True)``: it also imports the
revision's own modules), started on first use (or ahead of it, for the aliased revisions whose
env is here), at most ``Settings.zygotes`` of them, the least recently used stopped past that
(one with a fork in flight last), after ``ZYGOTE_IDLE_S`` without a fork, or by the worker's
memory budget (``memory.py``). A stopped zygote's runners go on serving.

Failures: one that could not start or refused (an accelerator initialised or a thread started
at import) is not tried again for ``RETRY_S``; one that died after it said ready is started
again on the next cold start, at once the first time, then, while each dies within
``STABLE_S`` of its start, after a doubling pause (``DEATH_BACKOFF_S`` up to ``RETRY_S``). In
the meantime its revisions start runners without it (a revision's own zygote falls back to its
env's, an env's to a plain start), logged. A zygote this worker stopped itself (evicted) never
counts as failed, even with a fork in flight.

``Zygote.fork`` hands the zygote the runner's end of its socketpair (SCM_RIGHTS) and returns a
:class:`ForkedProcess`, the ``pid``/``returncode``/``wait()`` face ``RunnerProcess`` needs of a
child it did not start itself. The exit code comes from the zygote (the child's parent); a child
that outlives its zygote ends with :data:`UNKNOWN_EXIT`, seen through a pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger("klieg.worker")

UNKNOWN_EXIT = -256
"""``ForkedProcess.returncode`` of a runner that ended after its zygote: nobody reaped it."""
ZYGOTE_IDLE_S = 600.0
"""A zygote that forked nothing for this long is stopped."""
RETRY_S = 300.0
"""How long a zygote that could not start, or refused, is not tried again; the longest pause
before a zygote that keeps dying is started again."""
START_TIMEOUT_S = 120.0
"""How long a zygote may take to preload before it counts as failed."""
STABLE_S = 60.0
"""A zygote that dies within this long of its start died young: the next one waits longer."""
DEATH_BACKOFF_S = 5.0
"""The pause after the second young death in a row; it doubles with each further one."""


class ZygoteKey(NamedTuple):
    """What a zygote holds: an env's interpreter with ``preload`` imported and, for a revision
    that asked (``revision`` set), that revision's own ``code`` modules too."""

    env: str
    preload: tuple[str, ...]
    revision: str = ""
    code: tuple[str, ...] = ()

    def name(self) -> str:
        """For logs and views: "env 0123456789ab", "revision rev-...", as it is."""
        return f"revision {self.revision}" if self.revision else f"env {self.env[:12]}"


class ZygoteFailed(Exception):
    """A zygote could not start, refused to serve, or died before it forked."""


class ForkedProcess:
    """A runner forked by a zygote, waited on as ``asyncio.subprocess.Process`` is."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._done = asyncio.Event()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # already gone (its exit is on its way from the zygote) or no pidfds
            self._pidfd = None

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
        self._close_pidfd()
        self._done.set()

    def orphaned(self) -> None:
        """Its zygote died: watch the child itself; its exit code can no longer be known."""
        if self.returncode is not None:
            return
        if self._pidfd is None:
            self.exited(UNKNOWN_EXIT)
            return
        asyncio.get_running_loop().add_reader(self._pidfd, self.exited, UNKNOWN_EXIT)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode


class Zygote:
    """One zygote process and its control socket."""

    def __init__(self, key: ZygoteKey, python: Path) -> None:
        self.key = key
        self.python = python
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.preloaded: list[str] = []
        self.failed: dict[str, str] = {}
        self.started_at = self.last_used = time.monotonic()
        self.forks = 0
        self.forking = 0
        """Fork orders sent and not answered yet."""
        self.retired = False
        """Stopped by this worker (evicted, idle, the worker stopping): a fork that fails
        because of it is no failure of the zygote's."""
        self.memory_bytes: int | None = None
        """Its proportional set size when last measured (``memory.py``)."""
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._forks: list[asyncio.Future[ForkedProcess]] = []
        self._children: dict[int, ForkedProcess] = {}

    @property
    def alive(self) -> bool:
        return self._sock is not None and self.proc is not None and self.proc.returncode is None

    @property
    def children(self) -> int:
        """Runners forked from it that have not ended (as far as it has told)."""
        return len(self._children)

    def forked(self, child: object) -> bool:
        """Whether ``child`` (a runner's process) is a live child of this zygote."""
        return any(c is child for c in self._children.values())

    async def start(
        self, env: dict[str, str], cwd: Path, timeout_s: float = START_TIMEOUT_S
    ) -> None:
        """Start the zygote in ``cwd`` (a revision's code folder for a revision's zygote: its
        modules import from there, as a runner's do) and wait until it preloaded;
        ``ZygoteFailed`` says why not."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        cwd.mkdir(parents=True, exist_ok=True)
        code = ["--code", ",".join(self.key.code)] if self.key.code else []
        try:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.python), "-m", "klieg._runtime.zygote", "--fd", str(theirs.fileno()),
                "--preload", ",".join(self.key.preload), *code,
                pass_fds=[theirs.fileno()], env=env, cwd=str(cwd), start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            raise ZygoteFailed(f"could not start {self.python}: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._ready = loop.create_future()
        loop.add_reader(ours, self._readable)
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except TimeoutError:
            await self.stop()
            raise ZygoteFailed(f"not ready within {timeout_s:g}s") from None
        except ZygoteFailed:
            await self.stop()
            raise
        if hello.get("type") == "refused":
            await self.stop()
            raise ZygoteFailed(f"refused: {hello.get('reason')}")
        self.pid = int(hello["pid"])
        self.preloaded = list(hello.get("preloaded") or ())
        self.failed = dict(hello.get("failed") or {})
        self.started_at = self.last_used = time.monotonic()

    async def fork(
        self, fd: int, code_dir: Path, spec_file: Path, env: dict[str, str]
    ) -> ForkedProcess:
        """Fork a runner serving on ``fd`` (the runner's end of its socketpair, still ours to
        close) for the function in ``spec_file``; ``ZygoteFailed`` if the zygote is gone."""
        if not self.alive or self._sock is None:
            raise ZygoteFailed("the zygote is not running")
        order = {"type": "fork", "code": str(code_dir), "spec": str(spec_file),
                 "cwd": str(code_dir), "env": env}  # fmt: skip
        waiter: asyncio.Future[ForkedProcess] = asyncio.get_running_loop().create_future()
        self._forks.append(waiter)
        self.forking += 1
        try:
            try:
                socket.send_fds(self._sock, [json.dumps(order).encode() + b"\n"], [fd])
            except OSError as exc:  # a full buffer is as good as a dead zygote: fall back
                self._forks.remove(waiter)
                raise ZygoteFailed(f"could not reach the zygote: {exc}") from exc
            child = await waiter
        finally:
            self.forking -= 1
        self.last_used = time.monotonic()
        self.forks += 1
        return child

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone()
            return
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                self._message(json.loads(line))
            except (ValueError, KeyError, TypeError, IndexError):
                log.warning("zygote %s sent a line it should not have: %r", self.pid, line[:200])

    def _message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind in ("ready", "refused"):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(msg)
        elif kind == "forked":  # registered now: its "exited" may be in this very read
            child = self._children[int(msg["pid"])] = ForkedProcess(int(msg["pid"]))
            waiter = self._forks.pop(0)
            if not waiter.done():
                waiter.set_result(child)
        elif kind == "exited":
            ended = self._children.pop(int(msg["pid"]), None)
            if ended is not None:
                ended.exited(int(msg["code"]))

    def _gone(self) -> None:
        """The control socket closed: the zygote exited or was killed."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock)
            self._sock.close()
            self._sock = None
        code = self.proc.returncode if self.proc else None
        failure = ZygoteFailed(f"the zygote exited (code {code})")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(failure)
        for waiter in self._forks:
            if not waiter.done():
                waiter.set_exception(failure)
        self._forks.clear()
        for child in self._children.values():
            child.orphaned()
        self._children.clear()

    async def stop(self) -> None:
        """Stop the zygote (its runners go on: each ends with its own socket)."""
        self.retired = True
        if self._sock is not None:
            self._gone()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()


class Zygotes:
    """The zygotes of one worker, at most ``limit`` (0: none, every start is plain)."""

    def __init__(self, limit: int, run_dir: Path) -> None:
        self.limit = limit
        self.cwd = run_dir / "zygote"
        """The working directory of an env's zygote: empty, so ``-m`` puts nothing of an app's
        on sys.path (a revision's zygote works in the revision's code folder)."""
        self._zygotes: OrderedDict[ZygoteKey, Zygote] = OrderedDict()
        self._locks: dict[ZygoteKey, asyncio.Lock] = {}
        self._failed: dict[ZygoteKey, float] = {}
        """Keys not to start until then (monotonic): failed, refused or dying young."""
        self._deaths: dict[ZygoteKey, int] = {}
        """Deaths in a row, each within ``STABLE_S`` of its zygote's start (the first counts)."""
        self._reserved: set[ZygoteKey] = set()
        """Keys whose zygote is being started ahead of use (``reserve``)."""

    def __len__(self) -> int:
        return len(self._zygotes)

    def running(self) -> list[Zygote]:
        """The zygotes kept now, least recently used first."""
        return list(self._zygotes.values())

    def usable(self, key: ZygoteKey) -> bool:
        """Whether a start of ``key`` may go through a zygote now."""
        return self.limit > 0 and self._failed.get(key, 0.0) <= time.monotonic()

    def room(self) -> int:
        """How many more zygotes may start without stopping one."""
        return self.limit - len(self._zygotes) - len(self._reserved - self._zygotes.keys())

    def wanted(self, key: ZygoteKey) -> bool:
        """Whether starting ``key``'s zygote ahead of use would help: none runs or is starting,
        and it did not fail lately."""
        return self.usable(key) and key not in self._zygotes and key not in self._reserved

    def reserve(self, key: ZygoteKey) -> None:
        self._reserved.add(key)

    def unreserve(self, key: ZygoteKey) -> None:
        self._reserved.discard(key)

    async def get(
        self, key: ZygoteKey, python: Path, env: dict[str, str], code_dir: Path | None = None
    ) -> Zygote | None:
        """The running zygote of ``key``, started (``env``: its environment; ``code_dir``: a
        revision zygote's code folder) if need be; None when zygotes are off or ``key``'s is
        paused or could not start (logged)."""
        if not self.usable(key):
            return None
        async with self._locks.setdefault(key, asyncio.Lock()):
            zygote = self._zygotes.get(key)
            if zygote is not None and zygote.alive:
                self._zygotes.move_to_end(key)
                return zygote
            if zygote is not None:
                await self._died(zygote)
            if not self.usable(key):
                return None
            zygote = Zygote(key, python)
            started = time.monotonic()
            try:
                await zygote.start(env, code_dir or self.cwd)
            except ZygoteFailed as exc:
                self._failed[key] = time.monotonic() + RETRY_S
                log.warning("zygote of %s: %s; its runners start without it for %.0fs",
                            key.name(), exc, RETRY_S)  # fmt: skip
                return None
            for name, why in zygote.failed.items():
                log.warning("zygote of %s could not preload %s: %s", key.name(), name, why)
            what = ", ".join(zygote.preloaded) or "the runtime only"
            took = time.monotonic() - started
            log.info("zygote pid %s for %s: preloaded %s in %.2fs", zygote.pid, key.name(),
                     what, took)  # fmt: skip
            self._zygotes[key] = zygote
            while len(self._zygotes) > self.limit:
                # the least recently used, one with a fork in flight only if all have one (its
                # fork then falls back to a plain start, and the key is not marked failed)
                idle = [z for z in self._zygotes.values() if not z.forking and z is not zygote]
                oldest = idle[0] if idle else next(iter(self._zygotes.values()))
                del self._zygotes[oldest.key]
                await oldest.stop()
            return zygote

    def fork_failed(self, zygote: Zygote) -> bool:
        """A fork through ``zygote`` failed. Whether that was the zygote's failure: not when this
        worker stopped it (evicted with the fork in flight); a zygote that died counts as a
        death (``STABLE_S``), one that is still up is not used for ``RETRY_S``."""
        if zygote.retired:
            return False
        if not zygote.alive:
            self._count_death(zygote)
            return True
        self._failed[zygote.key] = time.monotonic() + RETRY_S
        return True

    async def evict(self, zygote: Zygote) -> bool:
        """Stop ``zygote`` to free its memory, unless a fork through it is in flight or it is
        no longer kept; its runners go on serving."""
        if zygote.forking or self._zygotes.get(zygote.key) is not zygote:
            return False
        del self._zygotes[zygote.key]
        await zygote.stop()
        return True

    async def reap(self, idle_s: float = ZYGOTE_IDLE_S) -> int:
        """Stop zygotes that forked nothing for ``idle_s``; drop (and count) those that died."""
        now = time.monotonic()
        gone = 0
        for zygote in list(self._zygotes.values()):
            if not zygote.alive:
                await self._died(zygote)
            elif now - zygote.last_used > idle_s and not zygote.forking:
                await self.evict(zygote)
            else:
                continue
            gone += 1
        return gone

    async def _died(self, zygote: Zygote) -> None:
        self._count_death(zygote)
        await zygote.stop()

    def _count_death(self, zygote: Zygote) -> None:
        """``zygote`` died on its own: drop it; restart its key at once after a first death,
        after a doubling pause after young deaths in a row (logged)."""
        key = zygote.key
        if self._zygotes.get(key) is not zygote:
            return  # counted already
        del self._zygotes[key]
        code = zygote.proc.returncode if zygote.proc else None
        how = f"died (exit {code})" if code is not None else "died"
        young = time.monotonic() - zygote.started_at < STABLE_S
        deaths = self._deaths[key] = self._deaths.get(key, 0) + 1 if young else 1
        if deaths == 1:
            log.warning("zygote pid %s of %s %s; it starts again with the next cold start",
                        zygote.pid, key.name(), how)  # fmt: skip
            return
        pause = min(RETRY_S, DEATH_BACKOFF_S * 2 ** (deaths - 2))
        self._failed[key] = time.monotonic() + pause
        log.warning("zygote pid %s of %s %s, %d times in a row within %.0fs of its start; its "
                    "runners start without it for %.0fs", zygote.pid, key.name(), how, deaths,
                    STABLE_S, pause)  # fmt: skip

    def describe(self) -> list[dict[str, Any]]:
        """Each zygote for the fleet views: its env key (short), revision (None: the env's),
        what it preloads and which of its revision's modules, pid, memory (PSS bytes, None
        before it is measured), seconds since its last fork, forks so far, live children."""
        now = time.monotonic()
        return [{
            "env": z.key.env[:12], "revision": z.key.revision or None,
            "preload": list(z.key.preload), "code": list(z.key.code), "pid": z.pid,
            "memory_bytes": z.memory_bytes, "idle_s": round(now - z.last_used, 1),
            "forks": z.forks, "children": z.children,
        } for z in self._zygotes.values()]  # fmt: skip

    async def stop_all(self) -> None:
        zygotes, self._zygotes = list(self._zygotes.values()), OrderedDict()
        await asyncio.gather(*(z.stop() for z in zygotes))


def preload_key(env_key: str, preload: Sequence[str] | None) -> ZygoteKey:
    """The key of the zygote an env shares across revisions with the same ``preload``."""
    return ZygoteKey(env_key, tuple(sorted(set(preload or ()))))


def zygote_keys(revision: str, env_key: str, spec: Mapping[str, Any]) -> list[ZygoteKey]:
    """The zygotes a cold start of ``revision`` (its app ``spec`` as stored) may fork from, in
    order: its own when it asked (``preload_code``: it also imports the modules its functions
    live in), then its env's."""
    shared = preload_key(env_key, spec.get("preload"))
    functions = spec.get("functions") or ()
    modules = sorted({str(f.get("module")) for f in functions
                      if f.get("module") and f.get("module") != "__main__"})  # fmt: skip
    if not spec.get("preload_code") or not modules:
        return [shared]
    return [shared._replace(revision=revision, code=tuple(modules)), shared]
