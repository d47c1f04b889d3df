"""Telemetry and stats, in Redis so every gateway and worker of the fleet sees the same figures.

- Running means of service and cold-start times per app (``keys.SERVICE_STATS``,
  ``keys.COLD_STATS``; ms, one decimal), which the scheduler's estimates use.
- The metrics' counts (``keys.METRICS_*``): requests by status and their queue and run times are
  counted by the scripts as each request completes (``scripts.measure``: a line on
  ``keys.METRICS_PENDING``, folded into the counts 64 at a time); cold starts and batch sizes by
  the worker, here. ``snapshot`` folds what is pending, then reads them all for ``GET /metrics``:
  every completed request is counted in what it reports.

A count's hash field is its label values joined by ``|``, then its status or bucket
(``keys.py``), in the order of ``REQUEST_LABELS``, ``COLD_LABELS`` and ``BATCH_LABELS``. Only
the endpoint may hold a ``|``: it is the last label, so a field splits unambiguously. A field
with fewer labels than its hash has now (counted by a Klieg before the ``endpoint`` label) is
ignored: its series ended when the labelled ones began.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis

from klieg_platform import keys
from klieg_platform.broker import scripts as lua
from klieg_platform.scheduler import Tier

Kind = Literal["service", "cold"]
Labels = tuple[str, ...]

REQUEST_LABELS = ("pool", "tier", "app", "endpoint")
"""Labels of the request counts and of the queue and run histograms (``app``: "owner/app")."""
COLD_LABELS = ("pool", "app")
"""Labels of the cold-start histogram: a runner serves every endpoint of its function, and a
runner started ahead of demand (``min_concurrency``) serves none yet, so no endpoint."""
BATCH_LABELS = ("pool", "app", "endpoint")


def split_labels(field: bytes | str, names: tuple[str, ...]) -> tuple[Labels, str] | None:
    """A count's hash field as (label values in the order of ``names``, status or bucket);
    None for a field of another shape (an older Klieg's)."""
    text = field.decode() if isinstance(field, bytes) else field
    head, sep, slot = text.rpartition("|")
    values = tuple(head.split("|", len(names) - 1))
    if not sep or len(values) != len(names):
        return None
    return values, slot


def _key(kind: Kind) -> str:
    return keys.SERVICE_STATS if kind == "service" else keys.COLD_STATS


@dataclass
class Histogram:
    """Per label set (values in the order of ``names``): count per bucket (``bounds``, then
    +Inf; not cumulative) and the sum."""

    bounds: tuple[float, ...]
    names: tuple[str, ...]
    buckets: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=dict)

    @classmethod
    def read(cls, raw: dict[Any, Any], bounds: tuple[float, ...], names: Labels) -> Histogram:
        out = cls(bounds, names)
        for name, value in raw.items():
            parsed = split_labels(name, names)
            if parsed is None:
                continue
            key, slot = parsed
            if slot == "sum":
                out.sums[key] = float(value)
            elif slot.isdigit() and 1 <= int(slot) <= len(bounds) + 1:
                out.buckets.setdefault(key, [0] * (len(bounds) + 1))[int(slot) - 1] += int(value)
        for key in out.buckets:
            out.sums.setdefault(key, 0.0)
        return out

    def app_key(self, labels: Labels) -> str:
        """The "owner/app" of a label set."""
        return labels[self.names.index("app")]


@dataclass
class Snapshot:
    """What ``GET /metrics`` reports from Redis: fleet-wide, whichever gateway reads it."""

    requests: dict[Labels, int]
    """(pool, tier, owner/app, endpoint, status) -> requests completed."""
    queue_s: Histogram
    run_s: Histogram
    cold_s: Histogram
    batch: Histogram
    slo: dict[str, tuple[int, int]]
    """tier -> (started within the SLO, started) over the last 10 minutes."""
    webhooks: dict[Labels, int] = field(default_factory=dict)
    """(owner/app, result) -> webhook tries."""


class Stats:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._record = redis.register_script(lua.RECORD_TIME)
        self._cold = redis.register_script(lua.RECORD_COLD)
        self._fold = redis.register_script(lua.FOLD_METRICS)

    async def record_time(self, kind: Kind, app_key: str, seconds: float) -> None:
        """Fold a service or cold-start time into the app's running mean (one atomic step:
        weight 0.2 for the new sample)."""
        await self._record(keys=[_key(kind)], args=[app_key, f"{seconds * 1000:.1f}"])

    async def record_cold_start(self, pool: str, app_key: str, seconds: float) -> None:
        """A runner of ``app_key`` started in ``seconds``: its mean and its histogram."""
        await self._cold(args=[pool, app_key, f"{seconds:.6f}"])

    async def mean_time(self, kind: Kind, app_key: str) -> float | None:
        value = await self.redis.hget(_key(kind), app_key)
        return float(value) / 1000 if value is not None else None

    async def means(self, kind: Kind) -> dict[str, float]:
        """Every app's running mean service or cold-start time, in seconds."""
        raw: dict[Any, Any] = await self.redis.hgetall(_key(kind))
        return {k.decode(): float(v) / 1000 for k, v in raw.items()}

    async def publish_slos(self, tiers: Iterable[Tier]) -> None:
        """Tell the scripts each tier's queue-wait SLO (for the SLO attainment counts)."""
        args: list[str | int] = []
        for t in tiers:
            args += [t.name, int(t.slo_s * 1000)]
        if args:
            await self.redis.execute_command("HSET", keys.SLO, *args)

    async def add_sample(self, sample: dict[str, Any], keep: int) -> None:
        """Append a fleet sample (``FleetSampler``), keeping the newest ``keep``."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.FLEET_SAMPLES, json.dumps(sample, separators=(",", ":")))
            pipe.ltrim(keys.FLEET_SAMPLES, 0, keep - 1)
            await pipe.execute()

    async def samples(self) -> list[dict[str, Any]]:
        """The fleet samples kept, oldest first."""
        raw: list[Any] = await self.redis.lrange(keys.FLEET_SAMPLES, 0, -1)
        return [json.loads(s) for s in reversed(raw)]

    async def latest_sample(self) -> dict[str, Any] | None:
        """The newest fleet sample (None before the first)."""
        raw: Any = await self.redis.lindex(keys.FLEET_SAMPLES, 0)
        return json.loads(raw) if raw is not None else None

    async def snapshot(self, now_s: float | None = None) -> Snapshot:
        await self._fold()
        minute = int((time.time() if now_s is None else now_s) // 60)
        windows = [keys.metrics_slo(m) for m in range(minute - 9, minute + 1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.METRICS_REQUESTS)
            for name in (keys.METRICS_QUEUE_S, keys.METRICS_RUN_S, keys.METRICS_COLD_S,
                         keys.METRICS_BATCH):  # fmt: skip
                pipe.hgetall(name)
            pipe.hgetall(keys.METRICS_WEBHOOKS)
            for window in windows:
                pipe.hgetall(window)
            replies = await pipe.execute()
        requests: dict[Labels, int] = {}
        for name, value in replies[0].items():
            parsed = split_labels(name, REQUEST_LABELS)
            if parsed is not None:
                requests[(*parsed[0], parsed[1])] = int(value)
        slo: dict[str, list[int]] = {}
        webhooks: dict[Labels, int] = {}
        for name, value in replies[5].items():
            app_key, _, result = name.decode().rpartition("|")
            webhooks[(app_key, result)] = int(value)
        for counts in replies[6:]:
            for name, value in counts.items():
                tier, _, what = name.decode().rpartition("|")
                pair = slo.setdefault(tier, [0, 0])
                pair[0 if what == "met" else 1] += int(value)
        return Snapshot(
            requests=requests,
            queue_s=Histogram.read(replies[1], lua.DURATIONS, REQUEST_LABELS),
            run_s=Histogram.read(replies[2], lua.DURATIONS, REQUEST_LABELS),
            cold_s=Histogram.read(replies[3], lua.DURATIONS, COLD_LABELS),
            batch=Histogram.read(replies[4], lua.BATCH_SIZES, BATCH_LABELS),
            slo={tier: (met, total) for tier, (met, total) in slo.items()},
            webhooks=webhooks,
        )
