"""Per-key rate limits: a token bucket per API key in Redis (``keys.rate``), shared by every
gateway, so a key's limit holds across the fleet. Only keys with a limit cost a call."""

from __future__ import annotations

import redis.asyncio as aioredis

from klieg_platform import keys
from klieg_platform.broker import scripts as lua
from klieg_platform.broker.jobs import now_ms


class Limits:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._take = redis.register_script(lua.TAKE_TOKEN)

    async def take(self, key_id: str, rate_per_s: float, burst: int) -> float:
        """Spend one of ``key_id``'s tokens (refilled at ``rate_per_s``, at most ``burst`` held):
        0 when it had one, else the seconds until it will."""
        wait_ms = await self._take(keys=[keys.rate(key_id)], args=[now_ms(), rate_per_s, burst])
        return int(wait_ms) / 1000
