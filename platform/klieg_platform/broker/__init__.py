"""The broker: every Redis operation of Klieg, in parts over one connection pool.

- ``jobs``: the job record (fields, encoding, state machine) and its views;
- ``queue``: enqueue, dispatch with a lease, renew, complete, requeue, cancel, read a record;
- ``membership``: worker heartbeats and the fleet's capacity;
- ``stats``: measured service and cold-start times per app;
- ``streams``: log lines, streamed items and the pub/sub channels;
- ``claims``: short exclusive claims and the webhook due set;
- ``limits``: per-key rate limits (a token bucket per key);
- ``leases``: one renewal loop for every lease a worker or executor holds;
- ``scripts``: every Lua script, the only writers of a record's status;
- ``wire``: a lean pipelined connection the request path's scripts run over;
- ``outage``: what Redis being out of reach raises, and how a loop rides it out.

No module outside this package holds a Redis handle; key names live in ``keys.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from klieg_platform.broker.claims import Claims
from klieg_platform.broker.jobs import Job, NewRequest, Outcome, RequestState, Status, now_ms
from klieg_platform.broker.leases import Leases
from klieg_platform.broker.limits import Limits
from klieg_platform.broker.membership import WORKER_FRESH_S, Membership, Peers
from klieg_platform.broker.outage import UNAVAILABLE, Outage, until_available
from klieg_platform.broker.queue import Blocked, Depth, Elsewhere, LaneDepth, Queue
from klieg_platform.broker.stats import Stats
from klieg_platform.broker.streams import CHUNK_END, Streams
from klieg_platform.broker.wire import Wire
from klieg_platform.config import HISTORY_MAX
from klieg_platform.scheduler import DEFAULT_TIERS, Tier

__all__ = [
    "CHUNK_END", "UNAVAILABLE", "WORKER_FRESH_S", "Blocked", "Broker", "Depth", "Elsewhere", "Job",
    "LaneDepth", "Leases", "NewRequest", "Outage", "Outcome", "Peers", "RequestState", "Status",
    "now_ms", "until_available",
]  # fmt: skip


class Broker:
    """One per process: the broker's parts sharing one Redis connection pool."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        result_ttl_s: int,
        max_attempts: int,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
        history_max: int = HISTORY_MAX,
    ) -> None:
        self.redis = redis
        self.wire = Wire.of(redis)
        self.streams = Streams(redis, result_ttl_s, self.wire)
        self.queue = Queue(
            redis,
            self.streams,
            ttl_s=result_ttl_s,
            max_attempts=max_attempts,
            tiers=tiers,
            wire=self.wire,
            history_max=history_max,
        )
        self.workers = Membership(redis)
        self.stats = Stats(redis)
        self.claims = Claims(redis)
        self.limits = Limits(redis)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        result_ttl_s: int,
        max_attempts: int,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
        history_max: int = HISTORY_MAX,
    ) -> Broker:
        return cls(
            aioredis.Redis.from_url(url, max_connections=256),
            result_ttl_s=result_ttl_s,
            max_attempts=max_attempts,
            tiers=tiers,
            history_max=history_max,
        )

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self.redis.ping()

    async def close(self) -> None:
        if self.wire is not None:
            self.wire.close()
        await self.redis.aclose()
