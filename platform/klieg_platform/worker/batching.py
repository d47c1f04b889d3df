"""Dynamic batching: requests of one batched endpoint gathered into one runner call.

One :class:`Batcher` per (revision, function, endpoint) on a worker. Requests arrive by
``submit`` (the worker dispatched them); the batcher takes a runner, then gathers: it keeps the
first request waiting at most ``batch_wait_ms`` while it asks the broker for more requests of
the same endpoint (``fill``, which leases them to this worker and submits them here), until it
has ``max_batch_size``. The batch goes to the runner as one ``batch`` message; each request gets
its own result or error. Guarantees:

- a request waits for others at most ``batch_wait_ms`` (plus one broker round trip) once a
  runner is ready for it; requests already leased here join the next batch if they miss one;
- while a full batch runs, the next one is leased as its requests reach the queue
  (``_prefill``: at most ``max_batch_size`` requests ahead), so a saturated endpoint's runner
  goes from one batch to the next without waiting for the queue;
- the batcher holds at most ``max_concurrency`` runners (``acquire`` enforces it), each serving
  one batch at a time, and holds a runner only while it gathers or runs a batch;
- a failed runner (crash, timeout, setup failure) fails every request of its batch with that
  error; cancelling one request of a batch of several completes it at once as cancelled, and the
  others run on (its result is dropped); a batch of one is interrupted in the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from klieg._runtime import protocol
from klieg.exceptions import RequestCancelledError
from klieg.types import EndpointSpec
from klieg_platform.worker.events import EventForwarder
from klieg_platform.worker.process import Reply, RunnerProcess

log = logging.getLogger("klieg.worker")

Fill = Callable[[int], Awaitable[list[str]]]
"""Lease up to n more queued requests of the endpoint to this worker (each is then
``submit``-ted here by its own handler); returns their ids."""


@dataclass
class _Member:
    request_id: str
    payload: bytes
    timeout_s: float
    events: EventForwarder
    token: str = ""
    begin: Callable[[], None] | None = None
    arrived: float = field(default_factory=time.monotonic)
    future: asyncio.Future[Reply] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Batcher:
    def __init__(
        self,
        endpoint: EndpointSpec,
        *,
        acquire: Callable[[], Awaitable[RunnerProcess]],
        release: Callable[[RunnerProcess], Awaitable[None]],
        fill: Fill,
    ) -> None:
        self.endpoint = endpoint
        self.max_size = max(1, endpoint.max_batch_size)
        self.wait_s = endpoint.batch_wait_ms / 1000
        self._acquire = acquire
        self._release = release
        self._fill = fill
        self._pending: list[_Member] = []
        self._expected: dict[str, float] = {}
        self._running: dict[str, tuple[RunnerProcess, int, _Member]] = {}
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._ahead: asyncio.Task[None] | None = None
        self.sizes: list[int] = []
        """Sizes of the batches run, newest last (at most 1000 kept)."""
        self._cold: dict[str, tuple[float, float | None]] = {}
        self._counts: dict[str, int] = {}
        """The first request of each batch run -> the batch's size (``counts_batch``)."""

    async def submit(
        self,
        request_id: str,
        payload: bytes,
        timeout_s: float,
        events: EventForwarder,
        *,
        token: str = "",
        begin: Callable[[], None] | None = None,
    ) -> Reply:
        """Run one request as part of a batch; its ``result`` frame and body. ``token``: its call
        token; ``begin``: called as its batch goes to the runner (what it raises fails the
        request, which then stays out of the batch). Raises the runner's error
        (``RunnerCrashedError``, ``RequestTimeoutError``, ``SetupFailed``) or
        ``RequestCancelledError``."""
        member = _Member(request_id, payload, timeout_s, events, token, begin)
        self._expected.pop(request_id, None)
        self._pending.append(member)
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._loop())
        return await member.future

    @property
    def has_next(self) -> bool:
        """Requests submitted here, or leased here and on their way, wait for a runner: the
        loop gathers them into the next batch as soon as it has one."""
        return bool(self._pending or self._expected)

    def counts_batch(self, request_id: str) -> int:
        """The size of the batch ``request_id`` (submitted here) ran in, when it is the request
        that counts that batch in the batch-size metric (its completion does), else 0. Asked
        once, after ``submit``."""
        return self._counts.pop(request_id, 0)

    def cold_start_of(self, request_id: str) -> tuple[float, float | None] | None:
        """How long ``request_id`` (submitted here) waited for a runner started for its batch,
        and how long that runner's setup() took; None when a warm runner took it. Asked once,
        after ``submit``."""
        return self._cold.pop(request_id, None)

    def settled(self, request_id: str) -> None:
        """A request leased by ``fill`` will not be submitted (it failed before): stop waiting
        for it."""
        self._expected.pop(request_id, None)
        self._arrived.set()

    def cancel(self, request_id: str) -> bool:
        """Cancel ``request_id`` if it is gathered or running here."""
        cancelled = RequestCancelledError(f"request {request_id} cancelled")
        for member in self._pending:
            if member.request_id == request_id:
                self._pending.remove(member)
                _fail(member, cancelled)
                return True
        running = self._running.get(request_id)
        if running is None:
            return False
        runner, size, member = running
        if size > 1 or not runner.interrupt(request_id):
            _fail(member, cancelled)
        return True

    async def _loop(self) -> None:
        while self._pending or self._expected:
            if not self._pending:  # only requests leased by a prefill, still on their way
                await self._await_expected()
                continue
            asked = time.monotonic()
            try:
                runner = await self._acquire()
            except BaseException as exc:
                pending, self._pending = self._pending, []
                for member in pending:
                    _fail(member, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            if runner.calls == 0:  # started for the requests waiting now
                now = time.monotonic()
                for member in self._pending:
                    waited = now - max(asked, member.arrived)
                    setup = None if runner.setup_s is None else min(runner.setup_s, waited)
                    self._cold[member.request_id] = waited, setup
            try:
                await self._gather()
            except BaseException:
                await self._release(runner)
                raise
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
            if not batch:
                await self._release(runner)
                continue
            task = asyncio.create_task(self._run(runner, batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            if len(batch) == self.max_size and (self._ahead is None or self._ahead.done()):
                self._ahead = asyncio.create_task(self._prefill(task))

    async def _prefill(self, running: asyncio.Task[None]) -> None:
        """While a full batch runs (``running``), lease the next one as its requests reach the
        queue, looking every ``batch_wait_ms`` (at least 5 ms), and half as often after each
        look that found nothing (down to every 8 ``batch_wait_ms``; a look that finds some
        goes back to every one): when the runner frees, the next batch is here instead of
        being gathered then, with the runner idle meanwhile, and a quiet queue is not asked
        every few ms while a long batch runs. At most one batch is leased ahead; a runner that
        frees stops the look-ahead."""
        first = interval = max(0.005, self.wait_s)
        while not running.done():
            room = self.max_size - len(self._pending) - len(self._expected)
            if room <= 0:
                return
            try:
                got = await self._lease(room)
            except Exception:  # the queue stays as it was: these requests come the usual way
                log.warning("could not lease the next batch ahead", exc_info=True)
                return
            interval = first if got else min(2 * interval, 8 * first)
            await asyncio.wait([running], timeout=interval)

    async def _lease(self, n: int) -> int:
        """Lease up to ``n`` more queued requests here (``fill``); they are expected until they
        are submitted. Returns how many it leased."""
        got = await self._fill(n)
        self._expected.update(dict.fromkeys(got, asyncio.get_running_loop().time()))
        return len(got)

    async def _await_expected(self) -> None:
        """Wait until a request leased here arrives (or 50 ms); forget those leased more than a
        second ago that never arrived."""
        self._arrived.clear()
        self._forget_stale(asyncio.get_running_loop().time())
        if self._expected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), 0.05)

    def _forget_stale(self, now: float) -> None:
        """Stop waiting for requests leased here more than a second ago that never arrived."""
        for rid, at in list(self._expected.items()):
            if now - at > 1.0:
                del self._expected[rid]

    async def _gather(self) -> None:
        """Wait until the batch is full, or the first request has waited ``batch_wait_ms`` and
        no request leased by ``fill`` is still on its way here (those get 50 ms more)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        asked = False
        while self._pending and len(self._pending) < self.max_size:
            self._arrived.clear()
            now = loop.time()
            self._forget_stale(now)
            room = self.max_size - len(self._pending) - len(self._expected)
            if room > 0 and (not asked or now < deadline):
                asked = True
                await self._lease(room)
                now = loop.time()
            if self._expected:
                if now >= deadline + 0.05:
                    return
                timeout = 0.05
            elif now >= deadline:
                return
            else:  # the queue had nothing more: look again shortly
                timeout = min(0.002, deadline - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)

    async def _run(self, runner: RunnerProcess, batch: list[_Member]) -> None:
        live = [m for m in batch if not m.future.done() and _begun(m)]
        for member in live:
            self._running[member.request_id] = (runner, len(live), member)
        self.sizes = [*self.sizes[-999:], len(live)]
        if live:
            self._counts[live[0].request_id] = len(live)
        by_id = {m.request_id: m for m in live}

        def route(msg: protocol.Event, body: bytes) -> None:
            """A batch's ``log`` frame goes to every request in its ``ids``, others to ``id``."""
            ids = msg.ids if isinstance(msg, protocol.Log) and msg.ids else [msg.id]
            for rid in ids:
                member = by_id.get(rid)
                if member is not None:
                    member.events(msg, body)

        try:
            if live:
                results = await runner.call_batch(
                    [m.request_id for m in live],
                    self.endpoint.path,
                    [m.payload for m in live],
                    max(m.timeout_s for m in live),
                    route,
                    tokens=[m.token for m in live],
                )
                for member, result in zip(live, results, strict=True):
                    if not member.future.done():
                        member.future.set_result(result)
        except Exception as exc:
            for member in live:
                _fail(member, exc)
        finally:
            for member in live:
                self._running.pop(member.request_id, None)
            await self._release(runner)


def _begun(member: _Member) -> bool:
    """Whether ``member`` may go to the runner (its ``begin`` raised nothing; else it fails)."""
    try:
        if member.begin is not None:
            member.begin()
    except Exception as exc:
        _fail(member, exc)
        return False
    return True


def _fail(member: _Member, exc: BaseException) -> None:
    if not member.future.done():
        member.future.set_exception(exc)
