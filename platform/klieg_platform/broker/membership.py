"""Worker membership: heartbeats in ``keys.WORKERS`` and what they tell about the fleet.

Each worker writes its heartbeat document (pools, slots, the apps it holds warm, the
"revision/function" of its idle runners and of all its runners, the runner hints its idle
runners report (``hints``: ["revision/function", hint] pairs), ``seen_ms``, and for the fleet
views each runner's state, its zygotes, its memory budget and use, its cold starts, GPU ids and
whether it drains) every housekeeping round; a worker not heard from in ``WORKER_FRESH_S`` is
taken for gone.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from klieg_platform import keys
from klieg_platform.broker.jobs import now_ms

WORKER_FRESH_S = 15.0
"""A worker whose last heartbeat is older than this is taken for gone."""


@dataclass
class Peers:
    """What the other live workers hold: idle runners by the pools they serve, how many
    runners of each "revision/function" they have (and how many of those are busy), and how
    many serve each pool."""

    idle: dict[str, set[str]] = field(default_factory=dict)
    hinted: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    """Pool -> ("revision/function", hint) of the hints their idle runners report."""
    holders: dict[str, set[str]] = field(default_factory=dict)
    """"revision/function" -> the workers holding a runner of it idle."""
    hint_holders: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """("revision/function", hint) -> the workers whose idle runner of it reports the hint."""
    runners: Counter[str] = field(default_factory=Counter)
    busy: Counter[str] = field(default_factory=Counter)
    """"revision/function" -> how many of those runners serve (or start for) a request."""
    workers: Counter[str] = field(default_factory=Counter)
    """Pool (``keys.ALL_POOLS`` for those serving every pool) -> how many other live workers
    name it."""
    live: int = 0
    """How many other live workers there are."""


class Membership:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def heartbeat(
        self,
        worker_id: str,
        pools: Sequence[str],
        slots: int,
        warm: Collection[str],
        idle: Collection[str],
        runners: Sequence[str] = (),
        *,
        detail: Sequence[Mapping[str, Any]] = (),
        cold_starts: int = 0,
        gpu_ids: Sequence[int] = (),
        draining: bool = False,
        zygotes: Sequence[Mapping[str, Any]] = (),
        memory: Mapping[str, Any] | None = None,
        hints: Collection[tuple[str, str]] = (),
    ) -> Peers:
        """A worker says it is alive: its pools, its slots, the apps it holds warm, and the
        "revision/function" of its idle runners and of all its runners; for the fleet views
        also each runner's ``detail`` (``RunnerSet.describe``), its ``zygotes``
        (``Zygotes.describe``), its ``memory`` budget and use (``Memory.describe``), its cold
        starts so far, its GPU ids and whether it drains; ``hints``: ("revision/function",
        hint) of the runner hints its idle runners report. Returns what the other live
        workers hold."""
        doc = {
            "pools": list(pools), "slots": slots, "warm": sorted(set(warm)),
            "idle": sorted(set(idle)), "runners": list(runners), "seen_ms": now_ms(),
            "detail": list(detail), "cold_starts": cold_starts, "gpu_ids": list(gpu_ids),
            "draining": draining, "zygotes": list(zygotes), "memory": dict(memory or {}),
            "hints": sorted(set(hints)),
        }  # fmt: skip
        await self.redis.hset(keys.WORKERS, worker_id, json.dumps(doc))
        peers = Peers()
        for wid, other in await self.live():
            if wid == worker_id:
                continue
            peers.live += 1
            idle = other.get("idle", [])
            hinted = {(str(fn), str(hint)) for fn, hint in other.get("hints", [])}
            for pool in other["pools"]:
                peers.idle.setdefault(pool, set()).update(idle)
                peers.hinted.setdefault(pool, set()).update(hinted)
                peers.workers[pool] += 1
            for fn in idle:
                peers.holders.setdefault(fn, set()).add(wid)
            for pair in hinted:
                peers.hint_holders.setdefault(pair, set()).add(wid)
            peers.runners.update(other.get("runners", []))
            peers.busy.update(
                str(runner.get("function"))
                for runner in other.get("detail", [])
                if runner.get("state") in ("busy", "starting") and runner.get("function")
            )
        return peers

    async def forget(self, worker_id: str) -> None:
        await self.redis.hdel(keys.WORKERS, worker_id)

    async def live(self) -> list[tuple[str, dict[str, Any]]]:
        """(worker id, heartbeat document) of every worker heard from in ``WORKER_FRESH_S``."""
        raw: dict[Any, Any] = await self.redis.hgetall(keys.WORKERS)
        docs = [(wid.decode(), json.loads(value)) for wid, value in raw.items()]
        return [(w, d) for w, d in docs if now_ms() - d["seen_ms"] <= WORKER_FRESH_S * 1000]

    async def capacity(self, pool: str) -> tuple[int, set[str]]:
        """Slots serving ``pool`` now (from recent heartbeats) and the apps warm on them."""
        slots, warm = 0, set()
        for _, doc in await self.live():
            if pool in doc["pools"] or keys.ALL_POOLS in doc["pools"]:
                slots += int(doc["slots"])
                warm.update(doc["warm"])
        return slots, warm
