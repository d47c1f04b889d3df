"""The worker agent: pull, run, report. One per node (or per GPU pool on a node).

Loop: while a slot is free, dispatch the next request of our pools (atomic, leased) and hand it
to an ``Execution`` (``execution.py``), which runs it on a warm runner of its revision or a
cold-started one and completes it. A ``Blocked`` dispatch reserves a request for this worker:
it drains (takes nothing else) until that request fits, dispatching again as slots free and at
least every third of a lease to keep the reservation, and advertises no idle runners to its
peers meanwhile. An ``Elsewhere`` dispatch (the request is left to a peer's idle runner, and the
script woke that peer on its own wake list) makes the loop wait for a wake token, or for its view
of the peers' idle runners to change, before it dispatches again (a request left to the peer
whose idle runner reports its runner hint: until that preference ends at the latest).
Housekeeping, every third of a lease: requeue expired leases (any worker's), stop idle runners
past keep_alive and idle zygotes, heartbeat, and keep min_concurrency runners warm and zygotes
started (``warmth.py``). The parts: ``RunnerSet`` (the runners and their slots), ``Warmth``
(cold starts, zygotes, setup backoff, prewarming), ``Revisions`` (the revision cache),
``Leases`` (one renewal loop for every lease held here, ``broker/leases.py``), a ``Batcher``
per batched endpoint.

Stopping (``stop()``, SIGTERM) drains: the worker takes no more work (no dispatch, no batch
leased ahead, no prewarming, no idle runner advertised), hands back at once what it leased but
has not started on a runner (a batch leased ahead, a request waiting for a runner), keeps
serving and renewing the leases of what runs for up to ``drain_s``, then hands back whatever is
unfinished. Handing back (``HAND_BACK``) puts a request back in its queue at its original
position without counting an attempt, so another worker takes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

from klieg.types import EndpointSpec, FunctionSpec
from klieg_platform import calltokens, keys
from klieg_platform.broker import (
    UNAVAILABLE,
    Blocked,
    Broker,
    Elsewhere,
    Job,
    Leases,
    Outage,
    Peers,
    until_available,
)
from klieg_platform.config import Settings, touch_probe
from klieg_platform.packager import Packager
from klieg_platform.registry import Registry, Revision
from klieg_platform.scheduler import max_reserved
from klieg_platform.storage import BlobStore
from klieg_platform.worker.batching import Batcher
from klieg_platform.worker.code import CodeCache
from klieg_platform.worker.execution import PREPARING, RUNNING, Execution
from klieg_platform.worker.process import RunnerProcess
from klieg_platform.worker.revisions import Revisions
from klieg_platform.worker.runners import RunnerSet
from klieg_platform.worker.warmth import Warmth

log = logging.getLogger("klieg.worker")
_T = TypeVar("_T")

FINISH_GRACE_S = 10.0
"""After the drain, how long requests whose runner has answered get to report their outcome."""
UNANSWERED: tuple[type[Exception], ...] = (TimeoutError, *UNAVAILABLE)
"""A hand-back that Redis did not take (out of reach, or no answer within 10 s)."""
CANCELS_KEPT_S = 300.0
"""How long a cancel for a request not running here is remembered (it may start soon)."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        registry: Registry,
        packager: Packager,
        store: BlobStore,
        *,
        pools: tuple[str, ...] = ("*",),
        slots: int | None = None,
        gpu_ids: tuple[int, ...] = (),
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.store = store
        self.pools = pools
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.runners = RunnerSet(slots or settings.worker_slots, gpu_ids)
        self.revisions = Revisions(registry)
        code = CodeCache(settings.code_dir, store)
        self.warmth = Warmth(
            settings, broker, registry, packager, code, self.runners, self.revisions
        )
        self.active: dict[str, RunnerProcess | None] = {}
        """Requests being executed here, with the runner serving each (None between runners)."""
        self.cancelled: dict[str, float] = {}
        """Ids cancelled while (or before) they ran here, with when (monotonic)."""
        self.leases = Leases(broker.queue, self.id, settings.lease_s)
        self.tokens = calltokens.Issued(settings.signing_key)
        """The call tokens handed to runners with their requests (``klieg.call``)."""
        self.outage = Outage(f"worker {self.id}")
        """Redis out of reach: the loops keep trying, results wait (``until_available``)."""
        self._batchers: dict[tuple[str, str, str], Batcher] = {}
        self._busy = 0
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._executions: dict[str, tuple[Execution, asyncio.Task[None]]] = {}
        self.handed_back: set[str] = set()
        """Requests this worker gave back to the queue as it stopped: none may start here."""
        self._warm_elsewhere: dict[str, tuple[str, ...]] = {}
        """"revision/function" idle on peers serving our pools -> those peers."""
        self._hinted_elsewhere: dict[tuple[str, str], tuple[str, ...]] = {}
        """("revision/function", hint) of the hints idle runners of its peers serving our pools
        report -> those peers."""
        self._peers = Peers()
        self._own_wake = keys.own_wake(self.id)
        """A wake list of this worker alone (``keys.wake``), pushed when it frees a runner or
        a request is left to its idle runner."""
        self._told_elsewhere = False
        """The last dispatch left the request to a peer's idle runner: wait for a wake token,
        or for that view of the peers to change, before dispatching again."""
        self._left_full = False
        self._draining = False
        """A request is reserved for this worker (Blocked): it drains for it and serves nothing
        else, so it advertises no idle runners to its peers meanwhile."""

    # ---- main loops -------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until ``stop()``; then finish in-flight requests and stop the runners."""
        indexed = await until_available(self.broker.queue.reindex, self.outage)
        if indexed:
            log.warning("indexed %d requests queued before the lane index", indexed)
        housekeeping = asyncio.create_task(self._housekeeping())
        leases = asyncio.create_task(self.leases.keep(self.outage))
        cancels = asyncio.create_task(
            self.broker.streams.listen([keys.CANCEL_CHANNEL, keys.ALIAS_CHANNEL], self._message)
        )
        log.info(
            "worker %s serving pools %s with %d slots", self.id, self.pools, self.runners.slots
        )
        wakes = self.broker.queue.wakes()
        drained = False  # the last dispatch left nothing queued: block for a wake token first
        wait_s = 1.0  # for at most this long
        need = 1  # slots the next request needs (more after a Blocked dispatch)
        # while draining, dispatch at least this often: it renews the reservation (it expires
        # after a lease) and learns when the reserved request went elsewhere
        keepalive_s = min(1.0, self.settings.lease_s / 3)
        loop = asyncio.get_running_loop()
        dispatched_at = 0.0
        try:
            while not self._stopping.is_set():
                free = self.runners.slots - max(self._busy, self.runners.busy_units())
                renew = self._draining and loop.time() - dispatched_at >= keepalive_s
                if free < need and not renew:
                    self._slot_free.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._slot_free.wait(), keepalive_s)
                    continue
                try:
                    if drained:
                        await wakes.wait([*self.pools, self._own_wake], wait_s, self._startable)
                        if self._stopping.is_set():
                            break
                    full = self.runners.full()
                    self._left_full = bool(full)
                    dispatched_at = loop.time()
                    job = await self.broker.queue.dispatch(
                        self.pools,
                        self.id,
                        self.settings.lease_s,
                        free_units=free,
                        total_units=self.runners.slots,
                        warm_here=self._idle_here(),
                        warm_elsewhere=self._warm_elsewhere,
                        full=full,
                        max_reserved=self._max_reserved(),
                        hinted_here=self._idle_hints(),
                        hinted_elsewhere=self._hinted_elsewhere,
                    )
                except UNAVAILABLE as exc:  # what runs here goes on; dispatch when it is back
                    self.outage.lost(exc)
                    await self.outage.pause()
                    drained = False
                    continue
                self.outage.back()
                self._draining = isinstance(job, Blocked)
                self._told_elsewhere = isinstance(job, Elsewhere)
                if isinstance(job, Blocked):  # the request is reserved for us: drain for it
                    need, drained = job.units, False
                    continue
                if isinstance(job, Elsewhere):  # the warm peer was woken for it: wait for news
                    drained = True  # (a hinted request: until it is anyone's at the latest)
                    wait_s = 1.0 if job.wait_s is None else min(1.0, job.wait_s + 0.01)
                    continue
                wait_s = 1.0
                need = 1
                drained = job is None or not job.more
                if job is None:
                    continue
                self._busy += job.units
                self._spawn(job)
        finally:
            self._stopping.set()
            await self._drain()
            housekeeping.cancel()
            leases.cancel()
            with contextlib.suppress(Exception):
                await self.broker.workers.forget(self.id)
            cancels.cancel()
            wakes.close()
            await self.runners.stop_all()
            await self.warmth.zygotes.stop_all()

    def stop(self) -> None:
        """Stop taking work and drain (``run`` returns once drained)."""
        self._stopping.set()

    async def _drain(self) -> None:
        """Hand back what has not started on a runner; let what runs finish, its leases renewed,
        for up to ``drain_s``; hand back what is still running then; give the requests whose
        runner has answered ``FINISH_GRACE_S`` to report."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_s
        await self.hand_back(self._in_phase(PREPARING), "leased here, not started")
        running = {t for rid, (_, t) in self._executions.items() if rid not in self.handed_back}
        if running:
            log.info("draining: %d requests running, for up to %.0f s",
                     len(running), self.settings.drain_s)  # fmt: skip
            await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
        await self.hand_back(self._in_phase(PREPARING, RUNNING), "unfinished at the drain deadline")
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=FINISH_GRACE_S)

    def _in_phase(self, *phases: str) -> list[str]:
        return [rid for rid, (ex, _) in self._executions.items() if ex.phase in phases]

    async def hand_back(self, request_ids: list[str], why: str) -> None:
        """Give ``request_ids`` back to the queue (``Queue.hand_back``: at once, the attempt not
        counted) and stop their executions here; a Redis out of reach leaves them to their
        leases' expiry."""
        if not request_ids:
            return
        self.handed_back.update(request_ids)
        for rid in request_ids:
            self.leases.drop(rid)
            _, task = self._executions.get(rid, (None, None))
            if task is not None:
                task.cancel()
        try:
            n = await asyncio.wait_for(self.broker.queue.hand_back(request_ids, self.id), 10)
        except UNANSWERED as exc:
            log.warning("could not hand back %d requests (%s); they return to the queue when "
                        "their leases expire", len(request_ids), exc)  # fmt: skip
        else:
            log.info("handed back %d requests (%s)", n, why)

    async def _housekeeping(self) -> None:
        period = max(0.2, min(1.0, self.settings.lease_s / 3))
        failed = False
        while True:  # the first round at once: peers and the probes learn of us from it
            self._probe("alive")
            try:
                if failed:  # Redis may have been out for longer than a lease: ours first
                    await self.leases.renew()
                requeued = await self.broker.queue.requeue_expired()
                if requeued:
                    log.warning("requeued %d requests with expired leases", requeued)
                await self.runners.reap_idle(self._peers.runners, self._peers.busy)
                await self.warmth.tidy()
                mine = self.runners.runners
                warm = [self.revisions.app_key(r.key[0]) for r in mine]
                self._peers = await self.broker.workers.heartbeat(
                    self.id, self.pools, self.runners.slots, warm,
                    [] if self._draining else self._idle_here(),
                    [f"{r.key[0]}/{r.key[1]}" for r in mine],
                    detail=self.runners.describe(), cold_starts=self.runners.cold_starts,
                    gpu_ids=self.runners.gpu_ids, zygotes=self.warmth.zygotes.describe(),
                    memory=self.warmth.memory.describe(),
                    draining=self._draining or self._stopping.is_set(),
                    hints=[] if self._draining else self._idle_hints(),
                )  # fmt: skip
                self._view_peers()
                if not self._stopping.is_set():
                    await self.warmth.keep_warm(
                        self.id, self.pools, self._busy, self._peers.runners, self.background,
                        self._peers.busy,
                    )  # fmt: skip
            except UNAVAILABLE as exc:
                self.outage.lost(exc)
                failed = True
            except Exception:
                log.exception("housekeeping failed")
                failed = True
            else:
                failed = False
                self._probe("ready")
            await asyncio.sleep(period)

    def _view_peers(self) -> None:
        """Take the functions idle on peers serving our pools, and the hints their idle runners
        report, with the peers holding each, from the latest heartbeats; after an
        ``Elsewhere``, a change there wakes this worker's loop (the request it left to a peer
        may be its own to take now)."""
        peers = self._peers
        warm = {fn: tuple(sorted(peers.holders.get(fn, ()))) for fn in self._serving(peers.idle)}
        hinted = {
            pair: tuple(sorted(peers.hint_holders.get(pair, ())))
            for pair in self._serving(peers.hinted)
        }
        changed = warm != self._warm_elsewhere or hinted != self._hinted_elsewhere
        self._warm_elsewhere, self._hinted_elsewhere = warm, hinted
        if changed and self._told_elsewhere:
            self._told_elsewhere = False
            self.background(self.broker.queue.nudge(self._own_wake))

    def _probe(self, name: str) -> None:
        """``alive``: the loop runs; ``ready``: Redis took the heartbeat (``touch_probe``)."""
        touch_probe(self.settings.probe_dir, name)

    # ---- what executions share ----------------------------------------------------------
    def settled(self, job: Job, batched: bool = False) -> None:
        """``job``'s execution no longer holds its slots or a runner (it holds its lease until
        its outcome is in Redis). ``batched``: it ran in a batch, whose runner's release the
        batcher reported (and woke this loop for, when that was needed)."""
        self.active.pop(job.id, None)
        self._busy -= job.units
        self._freed(wake=not batched)
        for batcher in self._batchers.values():
            batcher.settled(job.id)

    def batcher(self, rev: Revision, fn: FunctionSpec, ep: EndpointSpec) -> Batcher:
        """The ``Batcher`` of a batched endpoint (made on first use)."""
        bkey = (rev.id, fn.name, ep.path)
        found = self._batchers.get(bkey)
        if found is not None:
            return found
        start = self.warmth.starter(rev, fn)
        fn_key = f"{rev.id}/{fn.name}"  # as wake tokens and ``RunnerSet.full`` name it

        async def acquire() -> RunnerProcess:
            now = self.revisions.effective((rev.id, fn.name)) or fn  # scaling as overridden now
            return await self.runners.acquire((rev.id, fn.name), now, start)

        async def release(runner: RunnerProcess) -> None:
            # its function's last busy runner, and the next batch is here or leased ahead: that
            # batch takes it again at once, so there is nothing to wake the loop for (yet)
            again = batcher.has_next and fn_key in self.runners.full()
            await self.runners.release(runner)
            self._freed(fn_key, wake=not again)

        async def fill(n: int) -> list[str]:
            if self._stopping.is_set():  # a stopping worker leases nothing more
                return []
            jobs = await self.broker.queue.dispatch_for(
                fn.pool, rev.id, fn.name, ep.path, n, self.id, self.settings.lease_s
            )
            for extra in jobs:
                self._spawn(extra)
            return [extra.id for extra in jobs]

        batcher = Batcher(ep, acquire=acquire, release=release, fill=fill)
        self._batchers[bkey] = batcher
        return batcher

    def background(self, work: Awaitable[None]) -> None:
        """Run bookkeeping off the request's path; failures are logged, not raised."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("background bookkeeping failed")

        self._track(asyncio.create_task(guarded()))

    # ---- inside the agent ---------------------------------------------------------------
    def _freed(self, fn: str = keys.WAKE_ANY, wake: bool = True) -> None:
        """A slot or a runner became free (a runner of ``fn``, "revision/function", when
        named). When the last dispatch left requests of busy functions queued, wake this
        worker's loop: the queue will not (nothing new arrived). The token names ``fn``: by the
        time the loop pops it, a batcher with its next batch leased ahead may hold the runner
        again, and the loop then passes it over (``_startable``) instead of dispatching.
        Without ``wake``, the loop is not woken now but still is by the next release."""
        self._slot_free.set()
        if self._left_full and wake:
            self._left_full = False
            self.background(self.broker.queue.nudge(self._own_wake, fn))

    def _startable(self, fn: str) -> bool:
        """Whether a request of ``fn`` ("revision/function") could start here now: not all of
        its runners here are busy at their max_concurrency (a dispatch leaves ``full`` ones
        out). A wake token for one that could not is no reason to dispatch; the release of one
        of its runners wakes this loop instead (``_freed``, told so here)."""
        if fn in self.runners.full():
            self._left_full = True
            return False
        return True

    def _spawn(self, job: Job) -> None:
        self.active[job.id] = None
        self.leases.hold(job.id)
        execution = Execution(self, job)
        task = asyncio.create_task(execution.run())
        self._executions[job.id] = (execution, task)
        task.add_done_callback(lambda _: self._executions.pop(job.id, None))
        self._track(task)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _max_reserved(self) -> int:
        """How many requests may be reserved for draining workers in this worker's pools: by
        the policy's share of the workers serving them (this one and its live peers)."""
        peers, workers = self._peers, self._peers.workers
        if keys.ALL_POOLS in self.pools:
            serving = peers.live
        else:
            serving = workers[keys.ALL_POOLS] + sum(workers[p] for p in self.pools)
        return max_reserved(1 + min(serving, peers.live))

    def _serving(self, by_pool: dict[str, set[_T]]) -> set[_T]:
        """What ``by_pool`` holds for the pools this worker serves (all of them for ``*``)."""
        if "*" in self.pools:
            return set().union(*by_pool.values())
        return set().union(*(by_pool.get(p, set()) for p in self.pools))

    def _idle_hints(self) -> list[tuple[str, str]]:
        """("revision/function", hint) of the hints its idle runners report (none once it
        stops)."""
        return [] if self._stopping.is_set() else self.runners.idle_hints()

    def _idle_here(self) -> list[str]:
        """ "revision/function" of this worker's idle, live runners (none once it stops)."""
        if self._stopping.is_set():
            return []
        return [f"{r.key[0]}/{r.key[1]}" for r in self.runners.runners if not r.busy and r.alive]

    def _message(self, channel: str, data: bytes) -> None:
        """A cancel (interrupt the request if it runs here) or an app's aliases or scaling
        changed (read the keep-warm targets and scale overrides again)."""
        if channel == keys.ALIAS_CHANNEL:
            self.warmth.forget_targets()
        else:
            self._cancel(data.decode())

    def _cancel(self, request_id: str) -> None:
        """Interrupt ``request_id`` if it runs here; remember it in case it starts soon."""
        now = time.monotonic()
        self.cancelled[request_id] = now
        for rid, at in list(self.cancelled.items()):
            if now - at > CANCELS_KEPT_S:
                del self.cancelled[rid]
        runner = self.active.get(request_id)
        if runner is not None and runner.interrupt(request_id):
            log.info("request %s: cancelling on runner pid %s", request_id, runner.pid)
            self.background(runner.keep_interrupting(request_id))
        for batcher in self._batchers.values():
            if batcher.cancel(request_id):
                log.info("request %s: cancelled in its batch", request_id)
