"""The request queue in Redis: enqueue, dispatch with a lease, renew, complete, requeue, cancel.

Contract: a request record (``keys.request(id)``) moves IN_QUEUE -> IN_PROGRESS -> COMPLETED, and
every move is one Lua script, so a record is never in two places or in none. A dispatched request
sits in ``keys.INFLIGHT`` under a lease; a worker that stops renewing it loses it to
``requeue_expired`` (bounded by ``max_attempts``, then the request fails with WorkerLostError).
Completion from a worker that no longer holds the lease is refused, so a late result never
overwrites a retried one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from klieg_platform import keys

ENQUEUE = """
local seq = redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[1], 'seq', seq, unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('SADD', KEYS[5], ARGV[2])
for i = 3, 4 do
  redis.call('LPUSH', KEYS[i], '1')
  redis.call('LTRIM', KEYS[i], 0, 63)
end
return seq
"""

DISPATCH = """
local queues = {}
if ARGV[6] == '*' then
  for _, pool in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    queues[#queues + 1] = ARGV[5] .. pool
  end
else
  for i = 6, #ARGV do queues[#queues + 1] = ARGV[5] .. ARGV[i] end
end
for _ = 1, 64 do
  local best, bestscore, bestq = nil, nil, nil
  for _, q in ipairs(queues) do
    local head = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
    if head[1] and (best == nil or tonumber(head[2]) < bestscore) then
      best, bestscore, bestq = head[1], tonumber(head[2]), q
    end
  end
  if best == nil then return nil end
  redis.call('ZREM', bestq, best)
  local rk = ARGV[4] .. best
  if redis.call('HGET', rk, 'status') == 'IN_QUEUE' then
    redis.call('HSET', rk, 'status', 'IN_PROGRESS', 'worker', ARGV[3], 'started_ms', ARGV[1])
    local attempts = redis.call('HINCRBY', rk, 'attempts', 1)
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), best)
    local f = redis.call('HMGET', rk, 'revision', 'function', 'endpoint', 'payload', 'timeout_s',
                         'owner', 'app')
    local more = 0
    for _, q in ipairs(queues) do more = more + redis.call('ZCARD', q) end
    return {best, f[1], f[2], f[3], f[4], f[5], f[6], f[7], tostring(attempts), tostring(more)}
  end
end
return nil
"""

RENEW = """
local st = redis.call('HMGET', KEYS[1], 'status', 'worker')
if st[1] ~= 'IN_PROGRESS' or st[2] ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
return 1
"""

COMPLETE = """
local st = redis.call('HMGET', KEYS[1], 'status', 'worker')
if st[1] ~= 'IN_PROGRESS' or st[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'COMPLETED', unpack(ARGV, 5))
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
"""

REQUEUE_EXPIRED = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local n = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local rk = ARGV[3] .. id
  local st = redis.call('HMGET', rk, 'status', 'attempts', 'pool', 'seq')
  if st[1] == 'IN_PROGRESS' then
    n = n + 1
    if tonumber(st[2]) < tonumber(ARGV[2]) then
      redis.call('HSET', rk, 'status', 'IN_QUEUE', 'worker', '')
      redis.call('ZADD', ARGV[4] .. st[3], st[4], id)
      for _, wake in ipairs({ARGV[5] .. st[3], ARGV[5] .. '*'}) do
        redis.call('LPUSH', wake, '1')
        redis.call('LTRIM', wake, 0, 63)
      end
    else
      redis.call('HSET', rk, 'status', 'COMPLETED', 'outcome', 'error', 'error', ARGV[8],
                 'http_status', '500', 'finished_ms', ARGV[1])
      redis.call('EXPIRE', rk, ARGV[6])
      redis.call('PUBLISH', ARGV[7], id)
    end
  end
end
return n
"""

CANCEL = """
local st = redis.call('HMGET', KEYS[1], 'status', 'pool')
if not st[1] then return -1 end
if st[1] == 'IN_QUEUE' then
  redis.call('ZREM', ARGV[2] .. st[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'COMPLETED', 'outcome', 'error', 'error', ARGV[6],
             'http_status', '499', 'finished_ms', ARGV[5], 'cancelled', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[1])
  return 1
end
if st[1] == 'IN_PROGRESS' then return 2 end
return 0
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class NewRequest:
    """What the gateway enqueues."""

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


@dataclass(frozen=True)
class Outcome:
    """How a request ended: ``result`` JSON bytes when ok, else ``error`` {detail, error_type}."""

    ok: bool
    result: bytes = b""
    error: dict[str, Any] | None = None
    http_status: int = 200
    logs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RequestState:
    """A request record as the gateway reports it."""

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


def _s(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


class Broker:
    """All queue operations; one instance per process, sharing one Redis connection pool."""

    def __init__(self, redis: aioredis.Redis, *, result_ttl_s: int, max_attempts: int) -> None:
        self.redis = redis
        self.result_ttl_s = result_ttl_s
        self.max_attempts = max_attempts
        self._enqueue = redis.register_script(ENQUEUE)
        self._dispatch = redis.register_script(DISPATCH)
        self._renew = redis.register_script(RENEW)
        self._complete = redis.register_script(COMPLETE)
        self._requeue = redis.register_script(REQUEUE_EXPIRED)
        self._cancel = redis.register_script(CANCEL)

    @classmethod
    def from_url(cls, url: str, *, result_ttl_s: int, max_attempts: int) -> Broker:
        return cls(
            aioredis.Redis.from_url(url, max_connections=256),
            result_ttl_s=result_ttl_s,
            max_attempts=max_attempts,
        )

    async def close(self) -> None:
        await self.redis.aclose()

    async def enqueue(self, req: NewRequest) -> None:
        """Write the record and queue it, atomically; wakes one waiting worker of the pool."""
        fields: list[Any] = [
            "id",
            req.id,
            "owner",
            req.owner,
            "tenant",
            req.tenant,
            "app",
            req.app,
            "revision",
            req.revision,
            "function",
            req.function,
            "endpoint",
            req.endpoint,
            "pool",
            req.pool,
            "payload",
            req.payload,
            "timeout_s",
            str(req.timeout_s),
            "status",
            "IN_QUEUE",
            "created_ms",
            str(now_ms()),
            "attempts",
            "0",
        ]
        await self._enqueue(
            keys=[
                keys.request(req.id),
                keys.queue(req.pool),
                keys.wake(req.pool),
                keys.wake(keys.ALL_POOLS),
                keys.POOLS,
                keys.SEQ,
            ],
            args=[req.id, req.pool, *fields],
        )

    async def dispatch(self, pools: Sequence[str], worker_id: str, lease_s: float) -> Job | None:
        """Take the oldest queued request of ``pools`` (``["*"]``: every pool) for ``worker_id``.

        Queue keys are derived inside the script from ``keys.QUEUE_PREFIX`` (single-node Redis).
        """
        row = await self._dispatch(
            keys=[keys.INFLIGHT, keys.POOLS],
            args=[
                now_ms(),
                int(lease_s * 1000),
                worker_id,
                keys.REQUEST_PREFIX,
                keys.QUEUE_PREFIX,
                *pools,
            ],
        )
        if not row:
            return None
        rid, rev, fn, ep, payload, timeout_s, owner, app, attempts, more = row
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
        )

    async def wait_for_work(self, pools: Sequence[str], timeout_s: float) -> None:
        """Block until a wake token arrives for one of ``pools`` or the timeout passes."""
        await self.redis.blpop([keys.wake(p) for p in pools], timeout=timeout_s)

    async def renew(self, request_id: str, worker_id: str, lease_s: float) -> bool:
        deadline = now_ms() + int(lease_s * 1000)
        ok = await self._renew(
            keys=[keys.request(request_id), keys.INFLIGHT], args=[request_id, worker_id, deadline]
        )
        return bool(ok)

    async def complete(self, request_id: str, worker_id: str, outcome: Outcome) -> bool:
        """Record the outcome and notify waiters. False when the lease was lost meanwhile."""
        fields: list[Any] = [
            "outcome",
            "ok" if outcome.ok else "error",
            "result",
            outcome.result,
            "error",
            json.dumps(outcome.error) if outcome.error else "",
            "http_status",
            str(outcome.http_status),
            "logs",
            json.dumps(outcome.logs),
            "finished_ms",
            str(now_ms()),
        ]
        done = await self._complete(
            keys=[keys.request(request_id), keys.INFLIGHT],
            args=[request_id, worker_id, self.result_ttl_s, keys.DONE_CHANNEL, *fields],
        )
        return bool(done)

    async def requeue_expired(self) -> int:
        """Requeue (or fail, past max_attempts) every request whose lease has expired."""
        error = json.dumps(
            {
                "detail": f"the worker serving this request was lost {self.max_attempts} times",
                "error_type": "WorkerLostError",
            }
        )
        n = await self._requeue(
            keys=[keys.INFLIGHT],
            args=[
                now_ms(),
                self.max_attempts,
                keys.REQUEST_PREFIX,
                keys.QUEUE_PREFIX,
                keys.WAKE_PREFIX,
                self.result_ttl_s,
                keys.DONE_CHANNEL,
                error,
            ],
        )
        return int(n)

    async def cancel(self, request_id: str) -> int:
        """1: a queued request was cancelled; 2: it is running; 0: already done; -1: unknown."""
        error = json.dumps({"detail": "request cancelled", "error_type": "RequestCancelledError"})
        n = await self._cancel(
            keys=[keys.request(request_id)],
            args=[
                request_id,
                keys.QUEUE_PREFIX,
                self.result_ttl_s,
                keys.DONE_CHANNEL,
                now_ms(),
                error,
            ],
        )
        return int(n)

    async def outcome(self, request_id: str) -> Outcome | None:
        """Just how a COMPLETED request ended (no logs); None when unknown or not completed."""
        values: list[Any] = await self.redis.hmget(
            keys.request(request_id), ["status", "outcome", "result", "error", "http_status"]
        )
        status, outcome, result, error, http_status = values
        if status != b"COMPLETED":
            return None
        return Outcome(
            ok=outcome == b"ok",
            result=result or b"",
            error=json.loads(error) if error else None,
            http_status=int(http_status or 200),
        )

    async def get(self, request_id: str) -> RequestState | None:
        """The record without its result (read that with ``outcome``)."""
        names = [
            "status",
            "owner",
            "tenant",
            "app",
            "pool",
            "outcome",
            "error",
            "http_status",
            "logs",
            "created_ms",
            "started_ms",
            "finished_ms",
            "attempts",
        ]
        values: list[Any] = await self.redis.hmget(keys.request(request_id), names)
        row: dict[str, Any] = dict(zip(names, values, strict=True))
        if row["status"] is None:
            return None
        status = _s(row["status"])
        position: int | None = None
        if status == "IN_QUEUE":
            rank = await self.redis.zrank(keys.queue(_s(row["pool"])), request_id)
            position = rank if isinstance(rank, int) else None
        logs = row["logs"]
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
            logs=json.loads(logs) if logs else None,
            queue_position=position,
            created_ms=int(_s(row["created_ms"]) or 0),
            started_ms=int(_s(row["started_ms"])) if row["started_ms"] else None,
            finished_ms=int(_s(row["finished_ms"])) if row["finished_ms"] else None,
            attempts=int(_s(row["attempts"]) or 0),
        )
