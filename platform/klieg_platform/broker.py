"""The request queue in Redis: enqueue, dispatch with a lease, renew, complete, requeue, cancel.

Contract: a request record (``keys.request(id)``) moves IN_QUEUE -> IN_PROGRESS -> COMPLETED, and
every move is one Lua script (``broker_scripts.py``), so a record is never in two places or in
none. A dispatched request sits in ``keys.INFLIGHT`` under a lease; a worker that stops renewing
it loses it to ``requeue_expired`` (bounded by ``max_attempts``, then the request fails with
WorkerLostError). Completion from a worker that no longer holds the lease is refused, so a late
result never overwrites a retried one. Logs and streamed output live beside the record
(``keys.logs``, ``keys.chunks``) and expire with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from klieg.exceptions import InvalidRequestError, QueueFullError
from klieg_platform import broker_scripts as lua
from klieg_platform import keys
from klieg_platform.scheduler import DEFAULT_TIERS, Tier

log = logging.getLogger("klieg.broker")

WORKER_FRESH_S = 15.0
"""A worker whose last heartbeat is older than this is taken for gone."""

CHUNK_END = b"end"
"""Field name of the last entry of a chunk stream (its value: empty, or an error JSON)."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class NewRequest:
    """What the gateway enqueues. ``payload_ref`` names a blob holding a large payload."""

    id: str
    owner: str
    tenant: str
    app: str
    revision: str
    function: str
    endpoint: str
    pool: str
    payload: bytes
    timeout_s: float
    payload_ref: str = ""
    deadline_ms: int = 0
    webhook: str = ""
    stream: bool = False
    tier: str = "free"
    tenant_cap: int = 0
    app_cap: int = 0
    gpus: int = 0

    @property
    def app_key(self) -> str:
        return f"{self.owner}/{self.app}"


@dataclass(frozen=True)
class Job:
    """What a worker receives from ``dispatch``."""

    id: str
    revision: str
    function: str
    endpoint: str
    payload: bytes
    timeout_s: float
    owner: str
    app: str
    attempts: int
    more: bool = False
    """Whether the worker's pools still had queued requests after this one was taken."""

    @property
    def app_key(self) -> str:
        return f"{self.owner}/{self.app}"

    payload_ref: str = ""
    deadline_ms: int = 0
    stream: bool = False
    units: int = 1
    """Worker slots the request takes: its function's num_gpus, at least one."""
    tenant: str = ""
    """The id of the tenant that made the request."""


@dataclass(frozen=True)
class Blocked:
    """Dispatch took nothing: the request the policy chose needs ``units`` slots, more than
    the worker has free. The worker takes nothing smaller until it has room."""

    units: int


@dataclass(frozen=True)
class Elsewhere:
    """Dispatch took nothing: the request the policy chose is held warm by another worker,
    which should serve it without a cold start."""


@dataclass
class Peers:
    """What the other live workers hold: idle runners by the pools they serve, and how many
    runners of each "revision/function" they have."""

    idle: dict[str, set[str]] = field(default_factory=dict)
    runners: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Outcome:
    """How a request ended: ``result`` JSON bytes (or ``result_ref``, a blob) when ok, else
    ``error`` {detail, error_type}. ``logs`` are lines not yet appended with ``append_logs``."""

    ok: bool
    result: bytes = b""
    error: dict[str, Any] | None = None
    http_status: int = 200
    logs: list[dict[str, Any]] = field(default_factory=list)
    result_ref: str = ""


@dataclass(frozen=True)
class RequestState:
    """A request record as the gateway reports it (without its result; see ``outcome``)."""

    id: str
    status: str
    owner: str
    tenant: str
    app: str
    pool: str
    outcome: str | None
    error: dict[str, Any] | None
    http_status: int
    logs: list[dict[str, Any]] | None
    queue_position: int | None
    created_ms: int
    started_ms: int | None
    finished_ms: int | None
    attempts: int
    cancel_requested: bool = False
    webhook: str = ""
    tier: str = ""
    extra: dict[str, str] = field(default_factory=dict)


_JOB_FIELDS = 15


def _job(row: Sequence[Any]) -> Job:
    """A Job from the 15 fields the dispatch scripts return for one leased request."""
    rid, attempts, more, units, rev, fn, ep, payload, timeout_s, owner, app, ref = row[:12]
    deadline, stream, tenant = row[12:15]
    return Job(
        id=_s(rid),
        revision=_s(rev),
        function=_s(fn),
        endpoint=_s(ep),
        payload=payload or b"",
        timeout_s=float(_s(timeout_s) or 600),
        owner=_s(owner),
        app=_s(app),
        attempts=int(_s(attempts)),
        more=int(_s(more)) > 0,
        payload_ref=_s(ref),
        deadline_ms=int(_s(deadline) or 0),
        stream=bool(stream),
        units=int(_s(units)),
        tenant=_s(tenant),
    )


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


_STATE_FIELDS = [
    "status", "owner", "tenant", "app", "pool", "outcome", "error", "http_status",
    "created_ms", "started_ms", "finished_ms", "attempts", "cancel_requested", "webhook", "tier",
]  # fmt: skip


class Broker:
    """All queue operations; one instance per process, sharing one Redis connection pool."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        result_ttl_s: int,
        max_attempts: int,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
    ) -> None:
        self.redis = redis
        self.result_ttl_s = result_ttl_s
        self.max_attempts = max_attempts
        self.tiers = {t.name: t for t in tiers}
        self.tiers_spec = ",".join(f"{t.name}:{int(t.slo_s * 1000)}" for t in tiers)
        self._enqueue = redis.register_script(lua.ENQUEUE)
        self._dispatch = redis.register_script(lua.DISPATCH)
        self._dispatch_for = redis.register_script(lua.DISPATCH_FOR)
        self._renew = redis.register_script(lua.RENEW)
        self._complete = redis.register_script(lua.COMPLETE)
        self._requeue = redis.register_script(lua.REQUEUE)
        self._requeue_expired = redis.register_script(lua.REQUEUE_EXPIRED)
        self._cancel = redis.register_script(lua.CANCEL)
        self._position = redis.register_script(lua.POSITION)
        self._record_time = redis.register_script(lua.RECORD_TIME)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        result_ttl_s: int,
        max_attempts: int,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
    ) -> Broker:
        return cls(
            aioredis.Redis.from_url(url, max_connections=256),
            result_ttl_s=result_ttl_s,
            max_attempts=max_attempts,
            tiers=tiers,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    # ---- the request lifecycle ---------------------------------------------------------
    async def enqueue(self, req: NewRequest, *, at_ms: int | None = None) -> None:
        """Write the record and queue it in its pool and tier, atomically; wakes one waiting
        worker. Raises QueueFullError when the tier's queue is at its bound. ``at_ms``: the
        enqueue time (default now; a clock for replays and tests)."""
        tier = self.tiers.get(req.tier)
        if tier is None:
            raise InvalidRequestError(f"unknown tier {req.tier!r}")
        fields: list[Any] = [
            "id", req.id, "owner", req.owner, "tenant", req.tenant, "app", req.app,
            "app_key", req.app_key, "tier", req.tier, "gpus", str(req.gpus),
            "revision", req.revision, "function", req.function, "endpoint", req.endpoint,
            "pool", req.pool, "payload", req.payload, "payload_ref", req.payload_ref,
            "timeout_s", str(req.timeout_s), "deadline_ms", str(req.deadline_ms),
            "webhook", req.webhook, "stream", "1" if req.stream else "",
            "status", "IN_QUEUE", "created_ms", str(now_ms()), "attempts", "0",
        ]  # fmt: skip
        head: list[Any] = [req.id, req.pool, req.tier, at_ms or now_ms(), tier.max_queued]
        caps: list[Any] = [req.tenant, req.tenant_cap, req.app_key, req.app_cap]
        score, queued = await self._enqueue(args=[*head, *caps, *fields])
        if int(score) < 0:
            raise QueueFullError(
                f"the {req.tier} queue of pool {req.pool} is full ({int(queued)} waiting)",
                queued=int(queued),
            )

    async def dispatch(
        self,
        pools: Sequence[str],
        worker_id: str,
        lease_s: float,
        *,
        free_units: int = 1,
        total_units: int = 1,
        warm_here: Collection[str] = (),
        warm_elsewhere: Collection[str] = (),
        full: Collection[str] = (),
        at_ms: int | None = None,
    ) -> Job | Blocked | Elsewhere | None:
        """Lease the request the policy picks next from ``pools`` (``["*"]``: every pool) to
        ``worker_id``, which has ``free_units`` of ``total_units`` slots free and idle runners
        of ``warm_here`` ("revision/function"); other workers have idle ``warm_elsewhere``;
        requests of ``full`` functions (all runners here busy at max_concurrency) are left."""
        row = await self._dispatch(
            args=[
                at_ms or now_ms(),
                int(lease_s * 1000),
                worker_id,
                self.tiers_spec,
                free_units,
                total_units,
                ",".join(warm_here),
                ",".join(warm_elsewhere),
                ",".join(full),
                *pools,
            ]
        )
        if not row:
            return None
        if not row[0]:
            return Blocked(int(_s(row[2]))) if _s(row[1]) == "blocked" else Elsewhere()
        return _job(row)

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
        row = await self._dispatch_for(
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
        return [_job(row[i : i + _JOB_FIELDS]) for i in range(0, len(row or []), _JOB_FIELDS)]

    async def wait_for_work(self, pools: Sequence[str], timeout_s: float) -> None:
        """Block until a wake token arrives for one of ``pools`` or the timeout passes."""
        await self.redis.blpop([keys.wake(p) for p in pools], timeout=timeout_s)

    async def nudge(self, pool: str) -> None:
        """Push a wake token for ``pool`` (bounded, as the scripts' ``wake``)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(keys.wake(pool), "1")
            pipe.ltrim(keys.wake(pool), 0, 63)
            pipe.expire(keys.wake(pool), 60)
            await pipe.execute()

    async def renew(self, request_id: str, worker_id: str, lease_s: float) -> bool:
        deadline = now_ms() + int(lease_s * 1000)
        ok = await self._renew(
            keys=[keys.request(request_id), keys.INFLIGHT], args=[request_id, worker_id, deadline]
        )
        return bool(ok)

    async def hold_lease(self, request_id: str, worker_id: str, lease_s: float) -> None:
        """Renew the lease every third of ``lease_s`` until cancelled (run it as a task while
        the request is being worked on)."""
        while True:
            await asyncio.sleep(lease_s / 3)
            await self.renew(request_id, worker_id, lease_s)

    async def finish_job(self, job: Job, worker_id: str, outcome: Outcome) -> bool:
        """Close a streamed job's chunk stream, then ``complete`` it (False: lease lost)."""
        if job.stream:
            await self.end_chunks(job.id, None if outcome.ok else outcome.error)
        return await self.complete(job.id, worker_id, outcome)

    async def complete(self, request_id: str, worker_id: str, outcome: Outcome) -> bool:
        """Record the outcome and notify waiters. False when the lease was lost meanwhile."""
        if outcome.logs:
            await self.append_logs(request_id, outcome.logs)
        fields: list[Any] = [
            "outcome", "ok" if outcome.ok else "error",
            "result", outcome.result, "result_ref", outcome.result_ref,
            "error", json.dumps(outcome.error) if outcome.error else "",
            "http_status", str(outcome.http_status),
        ]  # fmt: skip
        done = await self._complete(
            args=[request_id, worker_id, now_ms(), self.result_ttl_s, *fields]
        )
        return bool(done)

    async def requeue(self, request_id: str, worker_id: str) -> bool:
        """Put a request this worker holds back in its queue, at its original position."""
        return bool(await self._requeue(args=[request_id, worker_id]))

    async def requeue_expired(self) -> int:
        """Requeue (or fail, past max_attempts) every request whose lease has expired."""
        error = json.dumps(
            {
                "detail": f"the worker serving this request was lost {self.max_attempts} times",
                "error_type": "WorkerLostError",
            }
        )
        n = await self._requeue_expired(
            args=[now_ms(), self.max_attempts, self.result_ttl_s, error]
        )
        return int(n)

    async def cancel(self, request_id: str) -> int:
        """1: a queued request was cancelled; 2: it is running and its worker was signalled;
        0: already completed; -1: unknown."""
        error = json.dumps({"detail": "request cancelled", "error_type": "RequestCancelledError"})
        return int(await self._cancel(args=[request_id, now_ms(), self.result_ttl_s, error]))

    async def listen(
        self,
        channels: Sequence[str],
        on_message: Callable[[str, str], None],
        ready: asyncio.Event | None = None,
    ) -> None:
        """Call ``on_message(channel, data)`` for every message on ``channels`` until cancelled;
        a dropped subscription is renewed. ``ready`` is set once subscribed."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(*channels)
                if ready is not None:
                    ready.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        on_message(message["channel"].decode(), message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("subscription to %s failed; subscribing again", list(channels))
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # ---- capacity and measurements -------------------------------------------------------
    async def heartbeat(
        self,
        worker_id: str,
        pools: Sequence[str],
        slots: int,
        warm: Collection[str],
        idle: Collection[str],
        runners: Sequence[str] = (),
    ) -> Peers:
        """A worker says it is alive: its pools, its slots, the apps it holds warm, and the
        "revision/function" of its idle runners and of all its runners. Returns what the other
        live workers hold."""
        doc = {
            "pools": list(pools), "slots": slots, "warm": sorted(set(warm)),
            "idle": sorted(set(idle)), "runners": list(runners), "seen_ms": now_ms(),
        }  # fmt: skip
        await self.redis.hset(keys.WORKERS, worker_id, json.dumps(doc))
        peers = Peers()
        for wid, other in await self._live_workers():
            if wid == worker_id:
                continue
            for pool in other["pools"]:
                peers.idle.setdefault(pool, set()).update(other.get("idle", []))
            peers.runners.update(other.get("runners", []))
        return peers

    async def claim(self, key: str, owner: str, ttl_s: float) -> bool:
        """A short exclusive claim (SET NX PX): True for the one caller that got it."""
        return bool(await self.redis.set(key, owner, nx=True, px=int(ttl_s * 1000)))

    async def forget_worker(self, worker_id: str) -> None:
        await self.redis.hdel(keys.WORKERS, worker_id)

    async def _live_workers(self) -> list[tuple[str, dict[str, Any]]]:
        """(worker id, heartbeat document) of every worker heard from in ``WORKER_FRESH_S``."""
        raw: dict[Any, Any] = await self.redis.hgetall(keys.WORKERS)
        docs = [(_s(wid), json.loads(value)) for wid, value in raw.items()]
        return [(w, d) for w, d in docs if now_ms() - d["seen_ms"] <= WORKER_FRESH_S * 1000]

    async def capacity(self, pool: str) -> tuple[int, set[str]]:
        """Slots serving ``pool`` now (from recent heartbeats) and the apps warm on them."""
        slots, warm = 0, set()
        for _, doc in await self._live_workers():
            if pool in doc["pools"] or keys.ALL_POOLS in doc["pools"]:
                slots += int(doc["slots"])
                warm.update(doc["warm"])
        return slots, warm

    async def record_time(self, kind: str, app_key: str, seconds: float) -> None:
        """Fold a service (``kind="service"``) or cold-start time into the app's running mean
        (one atomic step: weight 0.2 for the new sample)."""
        key = keys.SERVICE_STATS if kind == "service" else keys.COLD_STATS
        await self._record_time(keys=[key], args=[app_key, f"{seconds * 1000:.1f}"])

    async def mean_time(self, kind: str, app_key: str) -> float | None:
        key = keys.SERVICE_STATS if kind == "service" else keys.COLD_STATS
        value = await self.redis.hget(key, app_key)
        return float(value) / 1000 if value is not None else None

    # ---- reading ---------------------------------------------------------------------
    async def completed(
        self, request_id: str, done: asyncio.Future[None], poll_s: float = 5.0
    ) -> None:
        """Return once ``done`` resolves (a listener on ``keys.DONE_CHANNEL`` sets it) or the
        request's record, re-read every ``poll_s`` seconds, is COMPLETED or gone: a lost
        pub/sub message only delays a waiter, never hangs it."""
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(done), poll_s)
                return
            except TimeoutError:
                status = await self.redis.hget(keys.request(request_id), "status")
                if status is None or status == b"COMPLETED":
                    return

    async def outcome(self, request_id: str) -> Outcome | None:
        """How a COMPLETED request ended (no logs); None when unknown or not completed."""
        values: list[Any] = await self.redis.hmget(
            keys.request(request_id),
            ["status", "outcome", "result", "result_ref", "error", "http_status"],
        )
        status, outcome, result, ref, error, http_status = values
        if status != b"COMPLETED":
            return None
        return Outcome(
            ok=outcome == b"ok",
            result=result or b"",
            error=json.loads(error) if error else None,
            http_status=int(http_status or 200),
            result_ref=_s(ref),
        )

    async def get(
        self, request_id: str, *, with_logs: bool = False, extra: Sequence[str] = ()
    ) -> RequestState | None:
        """The record without its result; ``with_logs`` adds the log lines so far."""
        names = [*_STATE_FIELDS, *extra]
        values: list[Any] = await self.redis.hmget(keys.request(request_id), names)
        row: dict[str, Any] = dict(zip(names, values, strict=True))
        if row["status"] is None:
            return None
        status = _s(row["status"])
        position: int | None = None
        if status == "IN_QUEUE":
            # -1: it left the queue between the two reads (it is starting): nothing is ahead
            ahead = int(await self._position(args=[request_id, now_ms(), self.tiers_spec]))
            position = max(ahead, 0)
        err = row["error"]
        return RequestState(
            id=request_id,
            status=status,
            owner=_s(row["owner"]),
            tenant=_s(row["tenant"]),
            app=_s(row["app"]),
            pool=_s(row["pool"]),
            outcome=_s(row["outcome"]) or None,
            error=json.loads(err) if err else None,
            http_status=int(_s(row["http_status"]) or 200),
            logs=await self.logs(request_id) if with_logs else None,
            queue_position=position,
            created_ms=int(_s(row["created_ms"]) or 0),
            started_ms=int(_s(row["started_ms"])) if row["started_ms"] else None,
            finished_ms=int(_s(row["finished_ms"])) if row["finished_ms"] else None,
            attempts=int(_s(row["attempts"]) or 0),
            cancel_requested=bool(row["cancel_requested"]),
            webhook=_s(row["webhook"]),
            tier=_s(row["tier"]),
            extra={n: _s(row[n]) for n in extra},
        )

    # ---- logs and streamed output --------------------------------------------------------
    async def append_logs(self, request_id: str, lines: Sequence[dict[str, Any]]) -> None:
        key = keys.logs(request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(json.dumps(line) for line in lines))
            pipe.expire(key, self.result_ttl_s)
            await pipe.execute()

    async def logs(self, request_id: str, start: int = 0) -> list[dict[str, Any]]:
        """Log lines from index ``start`` on."""
        raw: list[Any] = await self.redis.lrange(keys.logs(request_id), start, -1)
        return [json.loads(line) for line in raw]

    async def add_chunk(self, request_id: str, data: bytes) -> None:
        """Append one item of a streaming endpoint's output."""
        key = keys.chunks(request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {b"data": data})
            pipe.expire(key, self.result_ttl_s)
            await pipe.execute()

    async def end_chunks(self, request_id: str, error: dict[str, Any] | None = None) -> None:
        """Close a chunk stream (with the error that ended it, if any)."""
        key = keys.chunks(request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {CHUNK_END: json.dumps(error).encode() if error else b""})
            pipe.expire(key, self.result_ttl_s)
            await pipe.execute()

    async def read_chunks(
        self, request_id: str, after: str, block_ms: int | None
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """Chunk entries after entry id ``after`` ("0" for all), waiting up to ``block_ms``
        (None: return at once)."""
        reply: Any = await self.redis.xread({keys.chunks(request_id): after}, block=block_ms)
        if not reply:
            return []
        return [(_s(entry_id), entry) for entry_id, entry in reply[0][1]]
