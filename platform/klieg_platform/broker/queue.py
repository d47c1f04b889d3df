"""The request lifecycle in Redis: enqueue, dispatch with a lease, renew, complete, requeue,
cancel, and reading a record.

Contract: a job record (``jobs.py``) moves IN_QUEUE -> IN_PROGRESS -> COMPLETED, and every move
is one Lua script (``scripts.py``). A dispatched request sits in ``keys.INFLIGHT`` under a
lease; a worker that stops renewing it loses it to ``requeue_expired`` (bounded by
``max_attempts``, then the request fails with WorkerLostError). Completion from a worker that no
longer holds the lease is refused, so a late result never overwrites a retried one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from klieg.exceptions import (
    InvalidRequestError,
    QueueFullError,
    RequestCancelledError,
    WorkerLostError,
)
from klieg_platform import keys
from klieg_platform.broker import scripts as lua
from klieg_platform.broker.jobs import (
    OUTCOME_VIEW,
    STATE_VIEW,
    Job,
    NewRequest,
    Outcome,
    RequestState,
    Status,
    error_fields,
    now_ms,
)
from klieg_platform.broker.outage import UNAVAILABLE
from klieg_platform.broker.streams import Streams
from klieg_platform.broker.wire import HotScript, Wire
from klieg_platform.config import HISTORY_GRACE_S, HISTORY_MAX
from klieg_platform.scheduler import Tier

INDEX_VERSION = "1"
"""The lane index's version in ``keys.INDEX_VERSION`` (``Queue.reindex``)."""

T = TypeVar("T")

MAX_LINES_INLINE = 1000
"""Log lines a completion carries in its script; more are appended before it (Lua's unpack has
a bound)."""


@dataclass(frozen=True)
class Blocked:
    """Dispatch took nothing: the request the policy chose needs ``units`` slots, more than
    the worker has free. It is reserved for this worker (no other drains for it) while the
    worker dispatches at least once a lease; the worker takes nothing smaller until it has
    room."""

    units: int


@dataclass(frozen=True)
class Elsewhere:
    """Dispatch took nothing: the request the policy chose is held warm by another worker,
    which should serve it without a cold start; that worker was woken for it. Nothing changed
    for this one: it waits for a wake token (or its view of the idle runners to change)
    before it dispatches again. ``wait_s``: the request was left to a peer whose idle runner
    reports its runner hint (``scheduler``, W1's exception) for this long at most, after which
    any idle runner takes it; None: for as long as that peer holds its function idle (W2)."""

    wait_s: float | None = None


def _named(
    items: Collection[T] | Mapping[T, Collection[str]], name: Callable[[T], str], sep: str
) -> list[str]:
    """``items`` as DISPATCH's arguments name them: each item's ``name``, and where ``items``
    maps them to the workers holding them, ``sep`` and those workers' ids joined by "|"."""
    if isinstance(items, Mapping):
        return [name(k) + sep + "|".join(ws) if ws else name(k) for k, ws in items.items()]
    return [name(k) for k in items]


class Wakes:
    """One dispatch loop's waits for wake tokens, on a connection of its own (a blocking pop
    holds its connection: two loops sharing one would wait behind each other)."""

    def __init__(self, redis: aioredis.Redis, wire: Wire | None) -> None:
        self.redis = redis
        self.wire = wire

    async def wait(
        self,
        pools: Sequence[str],
        timeout_s: float,
        startable: Callable[[str], bool] | None = None,
    ) -> None:
        """Block until a wake token arrives for one of ``pools`` or the timeout passes. A token
        names the "revision/function" of the request that woke the list (or of the runner that
        freed), or is ``keys.WAKE_ANY`` (anything may start: a cap fell, a slot freed). With
        ``startable``, a token naming a function for which it answers False (its runners here
        are all busy: a dispatch could not start it) is passed over, and the wait goes on until
        the same deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            token = await self._pop(pools, timeout_s)
            if token is None or startable is None or token == keys.WAKE_ANY or startable(token):
                return
            timeout_s = deadline - loop.time()
            if timeout_s < 0.001:  # (a zero timeout would block for good)
                return

    async def _pop(self, pools: Sequence[str], timeout_s: float) -> str | None:
        """One blocking pop over the pools' wake lists: the token, or None at the timeout."""
        names = [keys.wake(p) for p in pools]
        if self.wire is None:
            got = await self.redis.blpop(names, timeout=timeout_s)
        else:
            got = await self.wire.call("BLPOP", *names, f"{timeout_s:.3f}")
        if not got:
            return None
        token = got[1]
        return token.decode() if isinstance(token, bytes) else str(token)

    def close(self) -> None:
        if self.wire is not None:
            self.wire.close()


@dataclass(frozen=True)
class LaneDepth:
    """Requests of one lane (a "revision/function" and its size) waiting in the lane index of
    a pool and tier: ``function`` is "revision/function", ``app`` its "owner/app"."""

    pool: str
    tier: str
    function: str
    app: str
    queued: int
    units: int = 1
    """Slots (GPUs) each of its requests takes."""


@dataclass(frozen=True)
class Depth:
    """The queue of one pool and tier: requests waiting and the oldest one's wait (s)."""

    pool: str
    tier: str
    queued: int
    oldest_wait_s: float
    overdue: int = 0
    """Of those waiting, how many have waited longer than their tier's SLO."""


class Queue:
    def __init__(
        self,
        redis: aioredis.Redis,
        streams: Streams,
        *,
        ttl_s: int,
        max_attempts: int,
        tiers: Sequence[Tier],
        wire: Wire | None = None,
        history_max: int = HISTORY_MAX,
    ) -> None:
        self.redis = redis
        self.wire = wire
        self.streams = streams
        self.ttl_s = ttl_s
        self.history_max = history_max
        self.history_keep_ms = (ttl_s + HISTORY_GRACE_S) * 1000
        self.max_attempts = max_attempts
        self.tiers = {t.name: t for t in tiers}
        self.tiers_spec = ",".join(f"{t.name}:{int(t.slo_s * 1000)}" for t in tiers)
        db = streams.db

        def hot(source: str) -> HotScript:
            return HotScript(redis, wire, lua.in_db(source, db))

        self._enqueue = hot(lua.ENQUEUE)
        self._dispatch = hot(lua.DISPATCH)
        self._dispatch_for = hot(lua.DISPATCH_FOR)
        self._renew = hot(lua.RENEW)
        self._complete = hot(lua.COMPLETE)
        self._requeue = hot(lua.REQUEUE)
        self._requeue_expired = hot(lua.REQUEUE_EXPIRED)
        self._hand_back = hot(lua.HAND_BACK)
        self._cancel = hot(lua.CANCEL)
        self._position = hot(lua.POSITION)
        self._reindex = hot(lua.REINDEX)
        self._nudge = hot(lua.NUDGE)

    # ---- moves ------------------------------------------------------------------------
    async def enqueue(
        self, req: NewRequest, *, at_ms: int | None = None, position: bool = False
    ) -> int | None:
        """Write the record and queue it in its pool and tier, atomically; wakes one waiting
        worker. Raises QueueFullError when the tier's queue is at its bound. ``at_ms``: the
        enqueue time (default now; a clock for replays and tests). With ``position``, returns
        its queue position as ``get`` would report it then (None otherwise)."""
        reply = await self._enqueue(args=self.enqueue_args(req, at_ms or now_ms(), position))
        if int(reply[0]) < 0:
            raise QueueFullError(
                f"the {req.tier} queue of pool {req.pool} is full ({int(reply[1])} waiting)",
                queued=int(reply[1]),
            )
        return max(int(reply[2]), 0) if position else None

    def enqueue_args(self, req: NewRequest, at: int, position: bool = False) -> list[Any]:
        """The ``ENQUEUE`` script's ARGV for ``req`` enqueued at ``at`` (ms)."""
        tier = self.tiers.get(req.tier)
        if tier is None:
            raise InvalidRequestError(f"unknown tier {req.tier!r}")
        head: list[Any] = [req.id, req.pool, req.tier, at, tier.max_queued]
        caps: list[Any] = [req.tenant, req.tenant_cap, req.app_key, req.app_cap]
        spec = self.tiers_spec if position else ""
        history = [self.history_max, at - self.history_keep_ms]
        return [*head, *caps, spec, *history, *req.values(at)]

    async def reindex(self, chunk: int = 1000) -> int:
        """Build the lane index for requests queued before it existed (data from an older
        Klieg), once: ``keys.INDEX_VERSION`` marks an index that is whole. Returns how many
        requests it indexed. Safe to run while others enqueue and dispatch."""
        if await self.redis.get(keys.INDEX_VERSION) == INDEX_VERSION.encode():
            return 0
        indexed = 0
        for raw in await self.redis.smembers(keys.POOLS):
            pool = raw.decode() if isinstance(raw, bytes) else raw
            for tier in self.tiers:
                start = 0
                while start >= 0:
                    start, n = await self._reindex(args=[pool, tier, start, chunk])
                    indexed += int(n)
        await self.redis.set(keys.INDEX_VERSION, INDEX_VERSION)
        return indexed

    async def dispatch(
        self,
        pools: Sequence[str],
        worker_id: str,
        lease_s: float,
        *,
        free_units: int = 1,
        total_units: int = 1,
        warm_here: Collection[str] = (),
        warm_elsewhere: Collection[str] | Mapping[str, Collection[str]] = (),
        full: Collection[str] = (),
        max_reserved: int | None = None,
        hinted_here: Collection[tuple[str, str]] = (),
        hinted_elsewhere: Collection[tuple[str, str]]
        | Mapping[tuple[str, str], Collection[str]] = (),
        at_ms: int | None = None,
    ) -> Job | Blocked | Elsewhere | None:
        """Lease the request the policy picks next from ``pools`` (``["*"]``: every pool) to
        ``worker_id``, which has ``free_units`` of ``total_units`` slots free and idle runners
        of ``warm_here`` ("revision/function"); other workers have idle ``warm_elsewhere``
        (a mapping names the workers holding each: an ``Elsewhere`` answer wakes those on
        their own lists, else the pool's workers); requests of ``full`` functions (all runners
        here busy at max_concurrency) are left. At most ``max_reserved`` requests are reserved
        for draining workers at once (None: no limit); past it a worker backfills
        (``scheduler``, rule W3). ``hinted_here`` and ``hinted_elsewhere``: ("revision/function",
        hint) of the hints idle runners here and on other workers report (rule W1; a mapping
        names the workers reporting each, woken alone when a request is left to them)."""
        row = await self._dispatch(
            args=[
                at_ms or now_ms(),
                int(lease_s * 1000),
                worker_id,
                self.tiers_spec,
                free_units,
                total_units,
                ",".join(warm_here),
                ",".join(_named(warm_elsewhere, str, "|")),
                ",".join(full),
                "" if max_reserved is None else max_reserved,
                "\n".join(f"{fn}\t{hint}" for fn, hint in hinted_here),
                "\n".join(_named(hinted_elsewhere, "\t".join, "\t")),
                *pools,
            ]
        )
        if not row:
            return None
        if not row[0]:
            if row[1] == b"blocked":
                return Blocked(int(row[2]))
            return Elsewhere(int(row[2]) / 1000 if len(row) > 2 else None)
        return Job.from_row(row)

    async def dispatch_for(
        self,
        pool: str,
        revision: str,
        function: str,
        endpoint: str,
        n: int,
        worker_id: str,
        lease_s: float,
        *,
        at_ms: int | None = None,
    ) -> list[Job]:
        """Lease up to ``n`` queued requests of one endpoint to ``worker_id``, in the policy's
        order and within tenant and app caps: the requests that join a batch its runner is
        gathering. They take no slots of their own (``units`` 0)."""
        if n <= 0:
            return []
        reply = await self._dispatch_for(
            args=[
                at_ms or now_ms(),
                int(lease_s * 1000),
                worker_id,
                self.tiers_spec,
                pool,
                revision,
                function,
                endpoint,
                n,
            ]
        )
        return Job.rows(reply)

    def wakes(self) -> Wakes:
        """A connection of its own for one loop's blocking waits for work (``Wakes.wait``)."""
        return Wakes(self.redis, Wire.of(self.redis))

    async def nudge(self, pool: str, token: str = keys.WAKE_ANY) -> None:
        """Push a wake token for ``pool`` (bounded, as the scripts' ``wake``; the list expires
        a minute after its last token: a worker's own list outlives it by no more): ``token``
        names a "revision/function" that may start now, or is ``keys.WAKE_ANY`` (``Wakes.wait``).
        One script over the wire: it leaves with whatever else this turn of the event loop
        sends."""
        await self._nudge(args=[keys.wake(pool), token])

    async def renew_many(self, request_ids: Sequence[str], worker_id: str, lease_s: float) -> int:
        """Extend by ``lease_s`` the leases of ``request_ids`` that ``worker_id`` still holds;
        how many it holds. One script for all of them."""
        if not request_ids:
            return 0
        deadline = now_ms() + int(lease_s * 1000)
        return int(await self._renew(args=[worker_id, deadline, *request_ids]))

    async def finish_job(
        self,
        job: Job,
        worker_id: str,
        outcome: Outcome,
        *,
        service_s: float | None = None,
        cold_s: float | None = None,
        setup_s: float | None = None,
        batch: int = 0,
    ) -> bool:
        """Close a streamed job's chunk stream, then ``complete`` it (False: lease lost);
        ``service_s``: how long its runner took, folded into its app's service time; ``cold_s``:
        how long it waited for a runner started for it, ``setup_s`` how much of that the app's
        setup() took; ``batch``: the size of the batch it ran in, when it is the request that
        counts that batch (``complete``)."""
        if job.stream:
            await self.streams.end_chunks(job.id, None if outcome.ok else outcome.error)
        service = (job.app_key, service_s) if service_s is not None else None
        return await self.complete(
            job.id, worker_id, outcome, service=service, cold_s=cold_s, setup_s=setup_s,
            batch=batch,
        )  # fmt: skip

    async def complete(
        self,
        request_id: str,
        worker_id: str,
        outcome: Outcome,
        *,
        service: tuple[str, float] | None = None,
        cold_s: float | None = None,
        setup_s: float | None = None,
        batch: int = 0,
    ) -> bool:
        """Record the outcome (and its log lines, ``service``: an app key and a service time
        to fold into its mean, ``cold_s``, the request's cold start, and ``setup_s``, its
        setup() part) and notify waiters, in one script. ``batch`` (> 0): count a batch of that
        size run for the request's endpoint (one request of each batch carries it: the count
        costs no round trip of its own). False when the lease was lost meanwhile."""
        logs = outcome.logs
        if len(logs) > MAX_LINES_INLINE:
            await self.streams.append_logs(request_id, logs)
            logs = []
        app, ms = (service[0], f"{service[1] * 1000:.1f}") if service else ("", "0")
        lines = [json.dumps(line) for line in logs]
        head: list[Any] = [request_id, worker_id, now_ms(), self.ttl_s, app, ms, len(lines)]
        cold = ["cold_ms", str(round(cold_s * 1000))] if cold_s else []
        if cold and setup_s is not None:
            cold += ["setup_ms", str(round(setup_s * 1000))]
        counted = ["batch", str(batch)] if batch > 0 else []
        return bool(await self._complete(args=[*head, *lines, *outcome.fields(), *cold, *counted]))

    async def requeue(self, request_id: str, worker_id: str) -> bool:
        """Put a request this worker holds back in its queue, at its original position."""
        return bool(await self._requeue(args=[request_id, worker_id]))

    async def hand_back(self, request_ids: Sequence[str], worker_id: str) -> int:
        """A stopping worker gives back ``request_ids`` (those it still leases): each returns to
        its queue at its original position at once, its attempt not counted, and the worker's
        reservations end; one script. How many went back."""
        return int(await self._hand_back(args=[worker_id, *request_ids]))

    async def requeue_expired(self) -> int:
        """Requeue (or fail, past max_attempts) every request whose lease has expired."""
        lost = WorkerLostError(
            f"the worker serving this request was lost {self.max_attempts} times"
        )
        fields = error_fields(lost.to_dict(), lost.status_code)
        n = await self._requeue_expired(args=[now_ms(), self.max_attempts, self.ttl_s, *fields])
        return int(n)

    async def cancel(self, request_id: str) -> int:
        """1: a queued request was cancelled; 2: it is running and its worker was signalled;
        0: already completed; -1: unknown."""
        cancelled = RequestCancelledError("request cancelled")
        fields = error_fields(cancelled.to_dict(), cancelled.status_code)
        return int(await self._cancel(args=[request_id, now_ms(), self.ttl_s, *fields]))

    # ---- reading ----------------------------------------------------------------------
    async def completed(
        self,
        request_id: str,
        done: asyncio.Future[T],
        poll_s: float = 5.0,
        *,
        within_s: float | None = None,
    ) -> T | None:
        """``done``'s result once it resolves (a listener on ``keys.DONE_CHANNEL`` or a reply
        channel sets it), or None once the request's record, re-read every ``poll_s`` seconds,
        is COMPLETED or gone: a lost pub/sub message only delays a waiter, never hangs it, and
        neither does Redis being out of reach for a while.
        ``within_s``: give up (None) after that long, completed or not."""
        loop = asyncio.get_running_loop()
        deadline = None if within_s is None else loop.time() + within_s
        while True:
            wait = poll_s if deadline is None else min(poll_s, deadline - loop.time())
            if wait <= 0:
                return None
            if await settled_within(done, wait):
                return done.result()
            try:
                status = await self.redis.hget(keys.request(request_id), "status")
            except UNAVAILABLE:  # Redis restarting: the request is kept; wait on
                continue
            if status is None or status == Status.COMPLETED.encode():
                return None

    async def outcome(self, request_id: str) -> Outcome | None:
        """How a COMPLETED request ended (no logs); None when unknown or not completed."""
        values = await self._read(keys.request(request_id), OUTCOME_VIEW)
        return Outcome.from_values(values)

    async def get(self, request_id: str, *, with_logs: bool = False) -> RequestState | None:
        """The record without its result; ``with_logs`` adds the log lines so far."""
        values = await self._read(keys.request(request_id), STATE_VIEW)
        if values[0] is None:
            return None
        position: int | None = None
        if values[0] == Status.IN_QUEUE.encode():
            # -1: it left the queue between the two reads (it is starting): nothing is ahead
            ahead = int(await self._position(args=[request_id, now_ms(), self.tiers_spec]))
            position = max(ahead, 0)
        logs = await self.streams.logs(request_id) if with_logs else None
        return RequestState.from_values(request_id, values, logs=logs, queue_position=position)

    async def payload(self, request_id: str) -> tuple[bytes, str]:
        """A request's input as it was accepted: its JSON bytes, or the blob key holding a
        large one (``b""``, ``""`` once the record is gone)."""
        values: list[Any] = await self.redis.hmget(
            keys.request(request_id), ["payload", "payload_ref"]
        )
        body, ref = values
        return body or b"", ref.decode() if ref else ""

    async def _read(self, key: str, fields: Sequence[str]) -> list[Any]:
        """HMGET of a record, over the wire where there is one."""
        if self.wire is not None:
            values: list[Any] = await self.wire.call("HMGET", key, *fields)
            return values
        return await self.redis.hmget(key, fields)

    async def history(
        self,
        tenant_id: str,
        *,
        after: str | None = None,
        since_ms: int = 0,
        limit: int = 100,
        keep: Callable[[RequestState], bool] = lambda _: True,
    ) -> tuple[list[RequestState], str | None]:
        """The tenant's requests that ``keep`` accepts, newest first, enqueued at or after
        ``since_ms``, and after the cursor ``after`` (a page's last); at most ``limit``. Also
        the cursor of the next page (None when there are no more). Ids whose record has
        expired leave the history here."""
        key = keys.history(tenant_id)
        top, last = "+inf", ""
        if after:
            at, _, last = after.partition(":")
            top = at if at.isdigit() else "+inf"
        found: list[RequestState] = []
        chunk = max(limit, 100)
        while True:
            rows: list[Any] = await self.redis.zrevrangebyscore(
                key, top, since_ms, start=0, num=chunk, withscores=True
            )
            fresh = [
                (rid.decode(), int(score)) for rid, score in rows
                if not (str(int(score)) == top and last and rid.decode() >= last)
            ]  # fmt: skip
            async with self.redis.pipeline(transaction=False) as pipe:
                for rid, _ in fresh:
                    pipe.hmget(keys.request(rid), STATE_VIEW)
                values = await pipe.execute()
            gone = []
            for (rid, score), row in zip(fresh, values, strict=True):
                state = RequestState.from_values(rid, row)
                if state is None:
                    gone.append(rid)
                elif keep(state):
                    found.append(state)
                    if len(found) == limit:
                        return found, f"{score}:{rid}"
            if gone:
                await self.redis.zrem(key, *gone)
            if len(rows) < chunk or not fresh:
                return found, None
            top, last = str(fresh[-1][1]), fresh[-1][0]

    async def depths(self) -> list[Depth]:
        """How many requests wait in each pool and tier of every pool that has had a request,
        and how long the oldest has waited (reserved ones included: they have not started)."""
        members: set[Any] = await self.redis.smembers(keys.POOLS)
        pools = sorted(p.decode() if isinstance(p, bytes) else str(p) for p in members)
        cells = [(pool, tier) for pool in pools for tier in self.tiers]
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool, tier in cells:
                pipe.zcard(keys.queue(pool, tier))
                pipe.zrange(keys.queue(pool, tier), 0, 0, withscores=True)
                late = (now - int(self.tiers[tier].slo_s * 1000)) * 1000  # scores: ms x 1000
                pipe.zcount(keys.queue(pool, tier), "-inf", late)
            replies = await pipe.execute()
        out = []
        for i, (pool, tier) in enumerate(cells):
            queued, head, overdue = replies[3 * i : 3 * i + 3]
            oldest = max(0.0, (now - head[0][1] / 1000) / 1000) if head else 0.0
            out.append(Depth(pool, tier, int(queued), round(oldest, 3), int(overdue)))
        return out

    async def lanes(self, pools: Sequence[str]) -> list[LaneDepth]:
        """What waits in the lane index of each of ``pools``, per tier and lane (a reserved
        request has left the index: ``depths`` counts it, this does not)."""
        cells = [(pool, tier) for pool in pools for tier in self.tiers]
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool, tier in cells:
                pipe.hgetall(keys.lane_jobs(pool, tier))
                pipe.hgetall(keys.lane_apps(pool, tier))
            replies = await pipe.execute()
        out = []
        for i, (pool, tier) in enumerate(cells):
            counts, apps = replies[2 * i], replies[2 * i + 1]
            for lane, n in counts.items():
                function, _, units = lane.decode().rpartition("#")
                app = apps.get(lane, b"").decode()
                if int(n) > 0:
                    out.append(LaneDepth(pool, tier, function, app, int(n), int(units or 1)))
        return out

    async def heads_waited(self, pools: Sequence[str]) -> dict[tuple[str, str], float]:
        """Per pool and tier, how long the oldest request that can start has waited (s): the
        head of the tier's lane order, which leaves out the apps and tenants at their caps;
        cells whose lane order is empty are left out."""
        cells = [(pool, tier) for pool in pools for tier in self.tiers]
        now = now_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool, tier in cells:
                pipe.zrange(keys.lanes(pool, tier), 0, 0, withscores=True)
            replies = await pipe.execute()
        return {
            cell: round(max(0.0, (now - head[0][1] / 1000) / 1000), 3)
            for cell, head in zip(cells, replies, strict=True)
            if head
        }

    async def app_room(self) -> dict[str, int]:
        """Per app with an in-flight cap ("owner/app"), how many more of its requests the cap
        lets start now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.APP_CAPS)
            pipe.hgetall(keys.APP_INFLIGHT)
            caps, running = await pipe.execute()
        room = {}
        for app, cap in caps.items():
            if int(cap) > 0:
                room[app.decode()] = max(0, int(cap) - int(running.get(app, 0)))
        return room

    async def revisions_busy(self, app_key: str) -> set[str]:
        """The revisions of ``app_key`` ("owner/app") that requests still need: queued (in
        its lanes, or reserved by a draining worker) or running. A revision outside this set
        has nothing left in flight: its code and env may go."""
        busy: set[str] = set()
        refs: set[Any] = await self.redis.smembers(keys.app_lanes(app_key))
        for ref in refs:
            lane = ref.decode().split(":", 2)[-1]  # "{pool}:{tier}:{revision}/{function}#{n}"
            busy.add(lane.split("/", 1)[0])
        ids: list[Any] = []
        if int(await self.redis.hget(keys.APP_INFLIGHT, app_key) or 0) > 0:
            ids += await self.redis.zrange(keys.INFLIGHT, 0, -1)
        pools: set[Any] = await self.redis.smembers(keys.POOLS)
        for pool in pools:
            ids += await self.redis.hvals(keys.reserved(pool.decode()))
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for rid in ids:
                    pipe.hmget(keys.request(rid.decode()), ["owner", "app", "revision"])
                rows = await pipe.execute()
            busy.update(
                rev.decode()
                for owner, app, rev in rows
                if rev is not None and f"{_text(owner)}/{_text(app)}" == app_key
            )
        return busy

    async def existing(self, request_ids: Sequence[str]) -> list[bool]:
        """Whether each request still has a record."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in request_ids:
                pipe.exists(keys.request(rid))
            return [bool(n) for n in await pipe.execute()]


async def settled_within(fut: asyncio.Future[Any], timeout_s: float) -> bool:
    """Whether ``fut`` is done within ``timeout_s``; it is never cancelled here (as under
    ``asyncio.shield``, with one future and one timer instead of ``wait_for``'s tasks)."""
    if fut.done():
        return True
    loop = asyncio.get_running_loop()
    tick: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not tick.done():
            tick.set_result(None)

    timer = loop.call_later(timeout_s, wake)
    fut.add_done_callback(wake)
    try:
        await tick
    finally:
        timer.cancel()
        fut.remove_done_callback(wake)
    return fut.done()


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""
