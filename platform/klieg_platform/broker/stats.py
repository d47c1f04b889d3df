"""Measured times per app: running means of service and cold-start times, in Redis so every
gateway and worker of the fleet sees the same figures (``keys.SERVICE_STATS``,
``keys.COLD_STATS``; ms, one decimal)."""

from __future__ import annotations

from typing import Literal

import redis.asyncio as aioredis

from klieg_platform import keys
from klieg_platform.broker import scripts as lua

Kind = Literal["service", "cold"]


def _key(kind: Kind) -> str:
    return keys.SERVICE_STATS if kind == "service" else keys.COLD_STATS


class Stats:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._record = redis.register_script(lua.RECORD_TIME)

    async def record_time(self, kind: Kind, app_key: str, seconds: float) -> None:
        """Fold a service or cold-start time into the app's running mean (one atomic step:
        weight 0.2 for the new sample)."""
        await self._record(keys=[_key(kind)], args=[app_key, f"{seconds * 1000:.1f}"])

    async def mean_time(self, kind: Kind, app_key: str) -> float | None:
        value = await self.redis.hget(_key(kind), app_key)
        return float(value) / 1000 if value is not None else None
